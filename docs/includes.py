"""Keep code shown in docs/*.md identical to the files it comes from (Markdown's literalinclude).

A fenced block preceded by an include marker is the source it names::

    <!-- include: examples/zstack-quota/src/zstack_quota/plugin.py::QuotaInterceptor -->
    ```python
    ...
    ```

``path`` alone is the whole file; ``path::Name`` one top-level definition (class, function or
assignment, with its decorators); ``path::Class.method`` a method; ``path::First..Last`` the
lines from one definition to another.

    python docs/includes.py           rewrite the blocks in docs/*.md from the sources
    python docs/includes.py --check   exit 1 if any block differs from its source

``tests/docs/test_doc_includes.py`` runs the check.
"""

from __future__ import annotations

import ast
import re
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = Path(__file__).resolve().parent

_INCLUDE = re.compile(r"(<!-- include: (?P<selector>\S+) -->\n```(?P<lang>\w*)\n)(?P<code>.*?)(^```)", re.M | re.S)


def _span(body: list[ast.stmt], dotted: str, selector: str) -> tuple[int, int]:
    """Lines (first, last) of the definition ``dotted`` (``Name`` or ``Class.method``) in ``body``."""
    name, _, rest = dotted.partition(".")
    for node in body:
        names: list[str] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names = [node.name]
        elif isinstance(node, ast.Assign):
            names = [t.id for t in node.targets if isinstance(t, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names = [node.target.id]
        if name not in names:
            continue
        if rest:
            if not isinstance(node, ast.ClassDef):
                break
            return _span(node.body, rest, selector)
        decorators = getattr(node, "decorator_list", [])
        start = min([node.lineno, *(d.lineno for d in decorators)])
        assert node.end_lineno is not None
        return start, node.end_lineno
    raise LookupError(f"{selector}: no definition named {dotted!r}")


def extract(selector: str) -> str:
    """The source text ``selector`` names, ending with a newline."""
    path, _, names = selector.partition("::")
    source = (ROOT / path).read_text()
    if not names:
        return source
    first, _, last = names.partition("..")
    body = ast.parse(source).body
    start, end = _span(body, first, selector)
    if last:
        end = _span(body, last, selector)[1]
    lines = source.splitlines(keepends=True)
    # A method keeps its indentation in the file; shown alone, it starts at the margin.
    return textwrap.dedent("".join(lines[start - 1:end]))


def render(text: str) -> str:
    """``text`` with every included block replaced by its current source."""
    return _INCLUDE.sub(lambda m: m.group(1) + extract(m.group("selector")) + m.group(5), text)


def selectors(text: str) -> list[str]:
    return [m.group("selector") for m in _INCLUDE.finditer(text)]


def main(argv: list[str]) -> int:
    stale = []
    for doc in sorted(DOCS.glob("*.md")):
        text = doc.read_text()
        try:
            new = render(text)
        except (LookupError, OSError) as exc:
            print(f"{doc.relative_to(ROOT)}: {exc}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(doc)
            if "--check" not in argv:
                doc.write_text(new)
                print(f"updated {doc.relative_to(ROOT)}")
    if stale and "--check" in argv:
        print("out of date: " + ", ".join(str(d.relative_to(ROOT)) for d in stale)
              + "; run python docs/includes.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
