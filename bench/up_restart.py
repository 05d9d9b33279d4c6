"""`duetide up` started again on a home whose last run sent many events: what the start
sends again, and how long and how much CPU until the stack is idle.

A first `up` (a temporary home, SQLite, DUETIDE_PING_INTERVAL=1 so that a sweep relays
within a second) gets BENCH_RESTART_TASKS tasks created through the API (8 clients), each
a `task.created` that recurrence and activity read; once every KafkaSource has taken
every record, Ctrl-C. Its home is then started again, in rounds, in two versions:
- `as the stop left it`: since 1ef5cbb a stop that finds every KafkaSource caught up and
  no dead letter removes the broker's start from the home, so the start has nothing to
  send again;
- `start kept`: the same home with the last broker's start written back, as every stop
  left it before: the start marks every event of that run pending again, the sweep sends
  them, and every consumer drops them as duplicates.
Each start is timed from launch to the banner and from the banner until the stack is
idle (no outbox row pending and every KafkaSource at the true end of its partitions);
`CPU s` is the user + system time of every process of the home (`up`, its functions and
its broker) from launch to then. The two versions alternate, first one then the other.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from bench.stack_cpu import cpu_seconds
from bench.up_supervision import start_up, with_home
from duetide.config import get_settings
from duetide.web.auth import issue_local_token
from duetide_tools import manifests
from duetide_tools.local.backlog import count_not_taken
from duetide_tools.local.stack import BROKER_START_FILE

TASKS = int(os.environ.get("BENCH_RESTART_TASKS", "3000"))
ROUNDS = int(os.environ.get("BENCH_RESTART_ROUNDS", "3"))
ROOT = Path(__file__).resolve().parents[1]
ENV = {"DUETIDE_PING_INTERVAL": "1"}
IDLE_TIMEOUT_S = 600.0
VERSIONS = ("as the stop left it", "start kept")

_details: dict[str, Any] = {}


def describe() -> str:
    return __doc__.split("\n\n", 1)[1].strip() if __doc__ else ""


def details() -> dict[str, Any]:
    return _details


def _progress(message: str) -> None:
    print(f"  {message}", flush=True)


def _pending(home: Path) -> int:
    with sqlite3.connect(home / "duetide.db", timeout=30) as db:
        return int(db.execute("SELECT count(*) FROM outbox WHERE sent_at IS NULL").fetchone()[0])


def _idle(home: Path, broker: str, readers: dict[str, tuple[str, ...]]) -> bool:
    return _pending(home) == 0 and count_not_taken(broker, readers, timeout_s=5) == 0


def _until_idle(home: Path, broker: str, readers: dict[str, tuple[str, ...]]) -> float:
    began = time.monotonic()
    while not _idle(home, broker, readers):
        if time.monotonic() - began > IDLE_TIMEOUT_S:
            raise TimeoutError(f"the stack on {home} was not idle after {IDLE_TIMEOUT_S:g} s")
        time.sleep(0.1)
    return time.monotonic() - began


def _stack_cpu(home: Path) -> float:
    total = 0.0
    for pid in with_home(home):
        try:
            total += cpu_seconds(pid)
        except OSError:
            continue
    return total


def _stop(process: Any) -> float:
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=60)
    return time.monotonic() - began


def _create_tasks(port: int, count: int) -> None:
    due = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    session = requests.Session()

    def create(n: int) -> None:  # a user each: one user's writes are rate-limited
        answer = session.post(
            f"http://127.0.0.1:{port}/tasks",
            json={"title": f"task {n}", "due_at": due},
            headers={"Authorization": f"Bearer {issue_local_token(f'restart{n:05d}')}"},
            timeout=30,
        )
        answer.raise_for_status()

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))


def _first_run(home: Path, readers: dict[str, tuple[str, ...]]) -> str:
    """The run whose events the next starts may send again; the start it wrote down."""
    os.environ["DUETIDE_HOME"] = str(home)  # the token this process signs
    get_settings.cache_clear()
    process, broker, port = start_up(home, ENV)
    try:
        began = time.monotonic()
        _create_tasks(port, TASKS)
        created = time.monotonic() - began
        idle = _until_idle(home, broker, readers)
        started = (home / BROKER_START_FILE).read_text()
    finally:
        stopped = _stop(process)
    _details["first run"] = {
        "tasks": TASKS,
        "created in s": round(created, 1),
        "then idle after s": round(idle, 1),
        "stopped in s": round(stopped, 2),
        "start file left": (home / BROKER_START_FILE).exists(),
    }
    _progress(f"first run: {_details['first run']}")
    return started


def _restart(home: Path, readers: dict[str, tuple[str, ...]]) -> dict[str, float]:
    console: list[str] = []
    launched = time.monotonic()
    process, broker, _ = start_up(home, ENV, console)
    try:
        banner = time.monotonic() - launched
        idle = _until_idle(home, broker, readers)
        cpu = _stack_cpu(home)
    finally:
        _stop(process)
    said = re.search(r"requeued (\d+) events?", "".join(console))
    return {"sent again": int(said.group(1)) if said else 0, "start": banner, "idle": idle,
            "cpu": cpu}  # fmt: skip


def run() -> list[dict[str, object]]:
    readers = manifests.load(ROOT).readers
    with tempfile.TemporaryDirectory(prefix="duetide-bench-restart-") as scratch:
        base = Path(scratch)
        started = _first_run(base / "first", readers)
        homes = {version: base / f"version-{n}" for n, version in enumerate(VERSIONS)}
        for home in homes.values():
            shutil.copytree(base / "first", home)
        (homes["start kept"] / BROKER_START_FILE).write_text(started)
        results: dict[str, list[dict[str, float]]] = {version: [] for version in VERSIONS}
        for round_number in range(ROUNDS):
            order = VERSIONS if round_number % 2 == 0 else VERSIONS[::-1]
            for version in order:
                home = base / f"round-{round_number}-{VERSIONS.index(version)}"
                shutil.copytree(homes[version], home)
                got = _restart(home, readers)
                results[version].append(got)
                shutil.rmtree(home, ignore_errors=True)
                _progress(
                    f"round {round_number + 1}, {version}: sent again {got['sent again']}, "
                    f"banner {got['start']:.2f} s, idle {got['idle']:.2f} s later, "
                    f"CPU {got['cpu']:.2f} s"
                )
    _details["rounds"] = results
    rows: list[dict[str, object]] = []
    for version, runs in results.items():

        def median(key: str, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs)

        rows.append({
            "home": version,
            "rounds": len(runs),
            "events sent again": int(median("sent again")),
            "launch → banner s": round(median("start"), 2),
            "banner → idle s": round(median("idle"), 2),
            "idle s (max)": round(max(r["idle"] for r in runs), 2),
            "CPU s": round(median("cpu"), 2),
        })  # fmt: skip
    return rows
