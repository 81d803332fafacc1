"""The folders are the layers, and the imports keep to them.

`http/` answers HTTP, `cli/` and `worker.py` run as processes, `services/` holds the use
cases, and the pure core (`lifecycle`, `signatures`, `phi`, `clock`) knows no storage and no
web framework. These tests read the package's imports (no code runs) and fail on an arrow
that goes the wrong way, and on a module grown past 400 lines without a reason at its top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "webhook_service"
RELIABILITY = PACKAGE.parent / "reliability"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports() -> dict[str, set[str]]:
    """Each module of the package → the modules of the package it imports (anywhere in it)."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
        found[_module_name(path)] = names
    return {name: {n for n in names if n in found and n != name} for name, names in found.items()}


IMPORTS = _imports()


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def _arrows(sources: tuple[str, ...], targets: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{module} → {target}"
        for module, targets_of in IMPORTS.items()
        if _in(module, *sources)
        for target in targets_of
        if _in(target, *targets)
    )


def test_the_layers_are_folders() -> None:
    assert "webhook_service.http.api" in IMPORTS
    assert "webhook_service.cli.support" in IMPORTS
    assert "webhook_service.worker" in IMPORTS
    assert "webhook_service.services.jobs" in IMPORTS


def test_no_edge_imports_from_the_worker_or_the_commands() -> None:
    http = ("webhook_service.http",)
    assert (
        _arrows(
            http,
            ("webhook_service.worker", "webhook_service.worker_process", "webhook_service.cli"),
        )
        == []
    )


@pytest.mark.parametrize(
    ("layer", "must_not_reach"),
    [
        (
            ("webhook_service.services",),
            (
                "webhook_service.http",
                "webhook_service.cli",
                "webhook_service.worker",
                "webhook_service.worker_process",
            ),
        ),
        (
            (
                "webhook_service.lifecycle",
                "webhook_service.signatures",
                "webhook_service.phi",
                "webhook_service.clock",
            ),
            (
                "webhook_service.services",
                "webhook_service.models",
                "webhook_service.db",
                "webhook_service.http",
                "webhook_service.cli",
                "webhook_service.worker",
                "webhook_service.worker_process",
            ),
        ),
    ],
    ids=["services know no entry point", "the pure core knows no storage"],
)
def test_inner_layers_do_not_reach_out(
    layer: tuple[str, ...], must_not_reach: tuple[str, ...]
) -> None:
    assert _arrows(layer, must_not_reach) == []


def test_no_two_modules_import_each_other() -> None:
    """A package may import its own submodules (and they it); other pairs go one way."""

    def related(a: str, b: str) -> bool:
        return a.startswith(b + ".") or b.startswith(a + ".")

    both_ways = sorted(
        f"{a} ⇄ {b}"
        for a, targets in IMPORTS.items()
        for b in targets
        if a < b and a in IMPORTS.get(b, set()) and not related(a, b)
    )
    assert both_ways == []


MAX_LINES = 400
# A module may be longer if its docstring says why, on a line of its first few starting so.
LONGER_BECAUSE = "Longer than 400 lines because"


def _too_long(folder: Path) -> list[str]:
    found = []
    for path in sorted(folder.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines <= MAX_LINES:
            continue
        docstring = ast.get_docstring(ast.parse(text)) or ""
        if any(line.startswith(LONGER_BECAUSE) for line in docstring.splitlines()[:5]):
            continue
        found.append(f"{path.relative_to(folder.parent)}: {lines} lines")
    return found


@pytest.mark.parametrize("folder", [PACKAGE, RELIABILITY], ids=lambda folder: folder.name)
def test_no_module_is_over_400_lines_without_a_reason(folder: Path) -> None:
    """Split a long module along its seams, or say at its top why it stays whole."""
    assert _too_long(folder) == []
