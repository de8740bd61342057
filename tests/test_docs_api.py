"""The API reference (docs/api/*.md) documents the public API: every name the packages
export (their `__all__`) exactly once, and no helper behind them."""

import importlib
import inspect
import pathlib
import re

import pytest

API = pathlib.Path(__file__).resolve().parents[1] / "docs" / "api"
PACKAGES = ("arithlens", "arithlens.data", "arithlens.cna", "arithlens.circuits")
ENTRY = re.compile(r"^::: ([\w.]+)\n    options:\n      members: \[([^\]]*)\]", re.M)


def documented() -> list[tuple[str, object]]:
    """(page, object) for every entry of every API page."""
    out = []
    for page in sorted(API.glob("*.md")):
        for module, members in ENTRY.findall(page.read_text(encoding="utf-8")):
            mod = importlib.import_module(module)
            out += [(page.name, getattr(mod, name.strip())) for name in members.split(",")]
    return out


def exported() -> dict[int, str]:
    """id(object) -> a name, for every class, function and constant in the packages' `__all__`."""
    out = {}
    for package in PACKAGES:
        mod = importlib.import_module(package)
        for name in mod.__all__:
            obj = getattr(mod, name)
            if not inspect.ismodule(obj) and name != "__version__":
                out[id(obj)] = f"{package}.{name}"
    return out


def test_every_exported_name_is_documented_once():
    entries = documented()
    ids = [id(obj) for _, obj in entries]
    missing = sorted(name for key, name in exported().items() if key not in ids)
    assert missing == []
    assert len(ids) == len(set(ids)), "a name is documented twice"


@pytest.mark.parametrize("helper", ["check_w", "check_layers", "choose_w", "side_cache", "V_BLOCK", "MAX_TERMS", "pass_batch"])
def test_no_page_lists_a_helper(helper):
    text = "\n".join(p.read_text(encoding="utf-8") for p in API.glob("*.md"))
    assert not re.search(rf"members: \[[^\]]*\b{helper}\b", text)


def test_the_probe_sees_an_undocumented_name(monkeypatch):
    """Negative control: a name added to a package's __all__ but to no page is reported."""
    cna = importlib.import_module("arithlens.cna")
    monkeypatch.setattr(cna, "__all__", [*cna.__all__, "extra_helper"], raising=True)
    monkeypatch.setattr(cna, "extra_helper", lambda: None, raising=False)
    assert "arithlens.cna.extra_helper" in [n for k, n in exported().items() if k not in [id(o) for _, o in documented()]]
