"""The tools beside the service, the bench (`bench/`) and the reliability run (`reliability/`),
are not run by the suite (they take minutes to an hour), but every module of theirs must at
least import: a module whose imports a refactor broke fails here, not on the day someone
runs it (`reliability/callbacks.py` once imported names `reliability/run.py` no longer had)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(
    ".".join(path.relative_to(ROOT).with_suffix("").parts)
    for folder in ("bench", "reliability")
    for path in (ROOT / folder).rglob("*.py")
    if path.name != "__main__.py"
)


def test_the_tools_have_modules() -> None:
    assert "reliability.callbacks" in MODULES
    assert "bench.latency" in MODULES


@pytest.mark.parametrize("module", MODULES)
def test_every_module_of_the_tools_imports(module: str) -> None:
    importlib.import_module(module)
