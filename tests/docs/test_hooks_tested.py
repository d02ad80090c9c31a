"""Every hookspec has a test of its own (as datasette requires): its name appears in a test file
under tests/. Files of tests/docs/ count only when they test hooks being called
(test_hook_calls.py); the documentation checks name every hook without testing any."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zstack_core import hookspecs

TESTS = Path(__file__).resolve().parents[1]
HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("zstack_"))


def _test_sources() -> dict[Path, str]:
    out = {}
    for path in TESTS.rglob("*.py"):
        if path.parent == TESTS / "docs" and path.name != "test_hook_calls.py":
            continue
        out[path] = path.read_text()
    return out


SOURCES = _test_sources()


@pytest.mark.parametrize("hook", HOOKS)
def test_hook_has_a_test(hook: str) -> None:
    pattern = re.compile(rf"\b{hook}\b|\bhooks\.{hook.removeprefix('zstack_')}\(")
    users = [p.relative_to(TESTS).as_posix() for p, text in SOURCES.items() if pattern.search(text)]
    assert users, f"no test under tests/ mentions {hook}: write one (a plugin implementing it, and the call that reaches it)"
