"""What the benches share: waiting until a served function answers, and a checkout of
the commit a bench measures against."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from duetide_tools.local.stack import project_root


def wait_healthy(
    base: str, process: subprocess.Popen[bytes], what: str, timeout_s: float = 30
) -> None:
    """Poll `base`/healthz until it answers 200; fail if `process` exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if requests.get(f"{base}/healthz", timeout=1).ok:
                return
        except requests.RequestException:
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


@contextmanager
def checkout(commit: str, name: str) -> Iterator[Path]:
    """`commit` in a temporary git worktree of this repository, removed afterwards: the
    baseline a bench runs beside the code it measures."""
    root = project_root()
    where = Path(tempfile.mkdtemp(prefix=f"duetide-bench-{name}-")) / name
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(where), commit],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield where
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(where)],
                       check=False, capture_output=True)  # fmt: skip
