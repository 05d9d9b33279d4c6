"""Where a running `duetide up` can be found by the other commands of the same user.

`duetide token` must sign with the secret of the stack the user talks to, which lives in
that stack's DUETIDE_HOME. A shell without that variable would otherwise read (or
generate) the secret of the default home and get 401s. So `up` writes a small record
(pid, home, port, whether the secret came from the environment) into a per-user folder
once it is ready and removes it when it stops; a record whose process is gone (an `up`
that was SIGKILLed) is ignored and removed by the next reader.

The folder is `$XDG_RUNTIME_DIR/duetide` (per user, emptied at logout) when that exists,
else the user's cache folder (`~/.cache/duetide`). One file per `up` process, so two
stacks on different ports do not overwrite each other's record.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs


def folder() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime and Path(runtime).is_dir():
        return Path(runtime) / "duetide"
    return Path(platformdirs.user_cache_dir("duetide"))


@dataclass(frozen=True)
class RunningStack:
    """One `duetide up` as it recorded itself."""

    pid: int
    home: str
    port: int
    secret_from_env: bool
    started: str | None = None
    """The process's start time as the kernel counts it (Linux), so that a pid reused by
    another process after a SIGKILLed `up` is not taken for the stack."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return _process_started(self.pid) == self.started if self.started else _exists(self.pid)


def _record_path(pid: int) -> Path:
    return folder() / f"up-{pid}.json"


def record(home: Path, port: int, *, secret_from_env: bool) -> Path:
    """Write this process's record (mode 0600 in a 0700 folder); returns its path."""
    pid = os.getpid()
    entry = RunningStack(pid, str(home.resolve()), port, secret_from_env, _process_started(pid))
    path = _record_path(pid)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    partial = path.with_suffix(".tmp")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(asdict(entry), out)
    partial.replace(path)  # a reader never sees half a record
    return path


def forget(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink()


def live() -> list[RunningStack]:
    """The stacks that run now, oldest record first; stale records are removed."""
    found: list[tuple[float, RunningStack]] = []
    with contextlib.suppress(OSError):
        for path in folder().glob("up-*.json"):
            try:
                entry = RunningStack(**json.loads(path.read_text()))
                modified = path.stat().st_mtime
            except (OSError, ValueError, TypeError):
                continue  # being written, or not ours
            if entry.alive():
                found.append((modified, entry))
            else:
                forget(path)
    return [entry for _, entry in sorted(found, key=lambda pair: pair[0])]


def _process_started(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks); None where there is no /proc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else fields[19]


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
