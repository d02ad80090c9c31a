"""The README's Python examples run: every ```python block, in order, in one fresh interpreter
(so later blocks may use what earlier ones defined), with data in a temporary directory.

```bash blocks (set-up commands) are not run here; tests/packaging checks those. A block that is
not meant to run on its own can be marked with ``<!-- not-run -->`` on the line before it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"

_BLOCK = re.compile(r"^(?P<mark><!-- not-run -->\n)?```python[ \t]*\n(?P<code>.*?)^```", re.M | re.S)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """(first line number, code) of each ```python block not marked ``<!-- not-run -->``."""
    out = []
    for m in _BLOCK.finditer(text):
        if m.group("mark"):
            continue
        line = text.count("\n", 0, m.start("code")) + 1
        out.append((line, m.group("code")))
    return out


# Runs the blocks with README.md line numbers, so a traceback points at the README's own line.
RUNNER = textwrap.dedent("""
    import json, sys
    blocks = json.loads(sys.stdin.read())
    namespace = {"__name__": "__main__"}
    for line, code in blocks:
        exec(compile("\\n" * (line - 1) + code, "README.md", "exec"), namespace)
""")


def test_python_blocks_are_found_with_their_line_numbers() -> None:
    text = "intro\n```python\nx = 1\n```\n<!-- not-run -->\n```python\nnope\n```\n```bash\nls\n```\n```python\ny = x\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n"), (13, "y = x\n")]


def test_readme_python_blocks_run(tmp_path: Path) -> None:
    import json

    blocks = python_blocks(README.read_text())
    if not blocks:
        pytest.skip("README.md has no ```python blocks")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTACK_")}
    env["ZSTACK_NODE_DATA_DIR"] = str(tmp_path / "data")
    result = subprocess.run([sys.executable, "-c", RUNNER], input=json.dumps(blocks), capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, f"a README example failed:\n{result.stdout}{result.stderr}"
