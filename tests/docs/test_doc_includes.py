"""Code shown in docs/*.md is the code of the files it names (docs/includes.py), so the guide
cannot drift from the example plugin it walks through, which its own tests run."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCS = sorted((ROOT / "docs").glob("*.md"))


def includes() -> ModuleType:
    spec = importlib.util.spec_from_file_location("doc_includes", ROOT / "docs" / "includes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("doc", DOCS, ids=[d.name for d in DOCS])
def test_included_code_matches_its_source(doc: Path) -> None:
    text = doc.read_text()
    assert includes().render(text) == text, f"{doc.name} shows code that changed since: run python docs/includes.py"


def test_the_plugin_guide_shows_real_code() -> None:
    guide = (ROOT / "docs" / "plugin-guide.md").read_text()
    selectors = includes().selectors(guide)
    assert len(selectors) >= 8
    assert all(s.startswith("examples/") for s in selectors)


def test_selectors(tmp_path: Path) -> None:
    inc = includes()
    source = (ROOT / "examples" / "zstack-quota" / "src" / "zstack_quota" / "quota.py").read_text()
    whole = inc.extract("examples/zstack-quota/src/zstack_quota/quota.py")
    assert whole == source
    one = inc.extract("examples/zstack-quota/src/zstack_quota/quota.py::QuotaErrors")
    assert one.startswith("QuotaErrors = ErrorCodeSpace(") and one.endswith(")\n")
    method = inc.extract("examples/zstack-quota/src/zstack_quota/quota.py::QuotaService.release")
    assert method.startswith("def release(self")
    span = inc.extract("examples/zstack-quota/src/zstack_quota/quota.py::VM_NUM..QUOTA_VM_NUM")
    assert span.startswith("VM_NUM = ") and "QUOTA_VM_NUM = PatternedSystemTag(" in span
    with pytest.raises(LookupError, match="no definition named 'Nope'"):
        inc.extract("examples/zstack-quota/src/zstack_quota/quota.py::Nope")
