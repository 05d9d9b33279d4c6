"""What the benches share: waiting until a served function answers, a checkout of the
commit a bench measures against, databases of their own on a PostgreSQL server, and
progress lines."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import psycopg
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


def progress(message: str) -> None:
    """A timestamped line on stderr while a bench runs (its table goes to stdout)."""
    print(f"  [{datetime.now().strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def postgres_url(server: str, database: str, driver: str = "postgresql") -> str:
    """`database` on `server` (a postgresql:// URL naming no database), for `driver`."""
    return f"{server.replace('postgresql://', f'{driver}://', 1)}/{database}"


def postgres_admin(server: str, sql: str) -> None:
    """`sql` (CREATE or DROP DATABASE) on `server`, outside a transaction."""
    with psycopg.connect(postgres_url(server, "postgres"), autocommit=True) as conn:
        conn.execute(sql)
