"""Every hookspec is documented: it has a docstring, and docs/hooks.md (generated from the
docstrings by docs/gen_hooks.py) is up to date and has a section for it."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType

import pytest

from zstack_core import hookspecs

ROOT = Path(__file__).resolve().parents[2]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("zstack_"))


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_hooks", ROOT / "docs" / "gen_hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("hook", HOOKS)
def test_hookspec_has_a_docstring(hook: str) -> None:
    doc = inspect.getdoc(getattr(hookspecs, hook)) or ""
    assert len(doc.split()) >= 4, f"hookspec {hook} needs a docstring saying when it is called and what it means"
    assert ".. versionadded::" in doc, f"hookspec {hook}: say `.. versionadded:: X.Y`"


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_section_in_docs_hooks_md(hook: str) -> None:
    text = (ROOT / "docs" / "hooks.md").read_text()
    assert f"### `{hook}`" in text, f"docs/hooks.md has no section for {hook}: run python docs/gen_hooks.py"


def test_docs_hooks_md_is_what_the_generator_writes() -> None:
    assert (ROOT / "docs" / "hooks.md").read_text() == generator().render(), \
        "docs/hooks.md is out of date: run python docs/gen_hooks.py"


def test_every_hookspec_is_in_a_section_and_has_a_documented_calling_convention() -> None:
    gen = generator()
    listed = [name for _, names in gen.sections() for name in names]
    assert sorted(listed) == HOOKS
    called = gen.how_called()
    registration = {n for n, (kind, _) in called.items() if kind == "registration"}
    # Registration hooks return lists (typed Sequence[...]); the facade must collect exactly those.
    returns_sequence = {n for n in HOOKS
                        if re.match(r"Sequence\[", str(inspect.signature(getattr(hookspecs, n)).return_annotation))}
    assert returns_sequence - registration == set(), \
        "registration hooks (they return Sequence[...]) that the Hooks facade never collects with _collect_sync"
    assert registration - returns_sequence == set(), "hooks the facade collects whose spec does not return a Sequence"
