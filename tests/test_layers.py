"""The direction of imports (docs/development.md): the command line composes both faces, the service never
imports the edge, the edge imports only the shared layer, the shared layer imports neither face, and the parts of
the service form layers without cycles. Read from the source (every import statement, also those inside
functions), so a new import that breaks the plan fails here before it tangles the tree."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each package's source lives in the repository (service/ and edge/ are linked into switchboard/).
SOURCES = {
    "switchboard.service": ROOT / "service",
    "switchboard.edge": ROOT / "edge",
    "switchboard.shared": ROOT / "switchboard" / "shared",
    "switchboard.cli": ROOT / "switchboard" / "cli",
}
# The parts of the service, top to bottom: a part may import only parts below it (and the shared layer).
SERVICE_LAYERS = ["api", "pipeline", "routing", "providers", "mcp", "local", "store"]
ALLOWED = {  # what a package of ours may import from the switchboard namespace, besides itself
    "switchboard.cli": ("switchboard.service", "switchboard.edge", "switchboard.shared", "switchboard.responses"),
    "switchboard.service": ("switchboard.shared", "switchboard.responses"),
    "switchboard.edge": ("switchboard.shared", "switchboard.responses"),
    "switchboard.shared": ("switchboard.responses",),
}


def modules() -> Iterator[tuple[str, Path]]:
    for package, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            yield ".".join([package, *parts]), path


def imports(name: str, path: Path) -> Iterator[str]:
    """Every module an import statement in the file names, relative imports resolved."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`


ALL = list(modules())
GRAPH = {name: set(imports(name, path)) for name, path in ALL}
OURS = {name for name, _ in ALL}


def owner(module: str) -> str | None:
    return next((package for package in SOURCES if module == package or module.startswith(package + ".")), None)


def part(module: str) -> str | None:
    """The service part (api, pipeline, ...) a module belongs to, or None for the service package itself."""
    rest = module.removeprefix("switchboard.service.").split(".")
    return rest[0] if module.startswith("switchboard.service.") and rest[0] in SERVICE_LAYERS else None


def test_every_module_is_seen() -> None:
    assert len(ALL) > 60 and "switchboard.service.pipeline.engine" in OURS and "switchboard.edge.codec" in OURS


def package_violations(graph: dict[str, set[str]], package: str) -> list[str]:
    """Imports by `package`'s modules of a top-level `service`/`edge` (not namespaced) or of a package of ours
    it may not use."""
    return sorted(f"{name} imports {target}" for name, targets in graph.items() if owner(name) == package
                  for target in targets if target.split(".")[0] in ("service", "edge")
                  or (target.startswith("switchboard.") and owner(target) != package
                      and not target.startswith(ALLOWED[package])))


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Imports by a service part of a part above it."""
    wrong = []
    for name, targets in graph.items():
        source = part(name)
        for target in targets:
            goal = part(target)
            if source and goal and SERVICE_LAYERS.index(goal) < SERVICE_LAYERS.index(source):
                wrong.append(f"{name} ({source}) imports {target} ({goal})")
    return sorted(wrong)


@pytest.mark.parametrize("package", list(SOURCES))
def test_packages_import_only_downwards(package: str) -> None:
    assert package_violations(GRAPH, package) == []


def test_nothing_imports_the_command_line() -> None:
    assert not sorted(f"{name} imports {target}" for name, targets in GRAPH.items() if owner(name) != "switchboard.cli"
                      for target in targets if owner(target) == "switchboard.cli")


def test_service_parts_form_layers() -> None:
    """api -> pipeline -> routing -> providers -> mcp -> local -> store: no part imports one above it, so the
    parts have no cycles."""
    assert layer_violations(GRAPH) == []


def test_the_checks_find_violations() -> None:
    """An upward import, the edge reaching into the service, a top-level `service` import: each is reported."""
    bad = {
        "switchboard.service.store.base": {"switchboard.service.api.servicer", "switchboard.shared.errors"},
        "switchboard.edge.app": {"switchboard.service.pipeline.engine", "switchboard.shared.config.settings"},
        "switchboard.shared.errors": {"service.errors"},
    }
    assert layer_violations(bad) == [
        "switchboard.service.store.base (store) imports switchboard.service.api.servicer (api)"]
    assert package_violations(bad, "switchboard.edge") == [
        "switchboard.edge.app imports switchboard.service.pipeline.engine"]
    assert package_violations(bad, "switchboard.shared") == ["switchboard.shared.errors imports service.errors"]
    assert package_violations(bad, "switchboard.service") == []
