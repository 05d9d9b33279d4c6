"""The lock files (scripts/lock) pin exactly what the image needs, within pyproject.toml's
ranges, each with its hashes; and the venv the tests run in holds those versions
(scripts/_venv.sh constrains it), so the tests run on what the image ships.

The image installs with `pip install --require-hashes -r requirements.lock` and then
`pip install --no-deps .`: a dependency added to pyproject.toml but not locked would be
missing from the image (its `pip check` fails the build), a range moved without re-locking
would ship a version outside it. These tests say so before any image is built.
"""

from __future__ import annotations

import importlib.metadata
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO_ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
# The image's interpreter and platform, for which scripts/lock resolves.
TARGET = {
    "python_version": "3.11",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
}
RELOCK = "run scripts/lock and commit the lock files"


@dataclass
class Pin:
    version: str
    hashes: list[str] = field(default_factory=list)


def read_lock(name: str) -> dict[str, Pin]:
    """`name==version \\` lines, each followed by its `--hash=sha256:...` lines."""
    pins: dict[str, Pin] = {}
    current: Pin | None = None
    for line in (REPO_ROOT / name).read_text().splitlines():
        if found := re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line):
            current = pins[canonicalize_name(found[1])] = Pin(found[2])
        elif found := re.match(r"\s+--hash=sha256:([0-9a-f]{64})\b", line):
            assert current is not None, f"{name}: a hash before any requirement"
            current.hashes.append(found[1])
    return pins


LOCKS = {
    "requirements.lock": PYPROJECT["project"]["dependencies"],
    "requirements-build.lock": PYPROJECT["build-system"]["requires"],
}


@pytest.mark.parametrize("lock", sorted(LOCKS))
def test_each_requirement_is_pinned_within_its_range_with_hashes(lock: str) -> None:
    pins = read_lock(lock)
    assert pins, f"{lock} pins nothing"
    for spec in LOCKS[lock]:
        requirement = Requirement(spec)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {lock}: {RELOCK}"
        assert requirement.specifier.contains(pins[name].version, prereleases=True), (
            f"{lock} pins {name}=={pins[name].version}, outside {spec!r}: {RELOCK}"
        )
    assert {name: pin.version for name, pin in pins.items() if not pin.hashes} == {}


def closure(requirements: list[str]) -> set[str]:
    """The distributions `requirements` need on the image's platform, found through the
    installed distributions' metadata (extras followed, markers evaluated for TARGET)."""
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [Requirement(spec) for spec in requirements]
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        extras = frozenset(requirement.extras)
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        for spec in importlib.metadata.requires(name) or []:
            needed = Requirement(spec)
            marker = needed.marker
            if marker is None or any(
                marker.evaluate({**TARGET, "extra": extra}) for extra in extras or {""}
            ):
                todo.append(needed)
    return {name for name, _ in seen}


def test_the_runtime_lock_holds_exactly_what_the_runtime_needs() -> None:
    needed = closure(PYPROJECT["project"]["dependencies"])
    locked = set(read_lock("requirements.lock"))
    assert (sorted(needed - locked), sorted(locked - needed)) == ([], []), (
        f"(needed but not locked, locked but not needed): {RELOCK}"
    )


def test_the_build_lock_holds_the_build_backend_only() -> None:
    needed = {canonicalize_name(Requirement(s).name) for s in LOCKS["requirements-build.lock"]}
    assert set(read_lock("requirements-build.lock")) == needed


def test_the_tests_run_on_the_locked_versions() -> None:
    locked = {name: pin.version for name, pin in read_lock("requirements.lock").items()}
    installed = {name: importlib.metadata.version(name) for name in locked}
    assert installed == locked, "this venv is not the lock's: scripts/test re-installs it"
