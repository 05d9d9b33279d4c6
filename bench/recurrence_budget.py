"""Issue 10 item 2: one sparse rule against the tasks API, before and after the budgets.

The rule is FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0 (Feb 29 on a
Monday: a few times a century, and FREQ=MINUTELY walks every day in between).

Baseline: `BASELINE` (main before the work budgets; `DUETIDE_BENCH_BASELINE` to change)
checked out into a temporary git worktree, served and migrated with its own
code on its own SQLite file. This branch refuses the rule at creation (422), so its series is
created as FREQ=DAILY and the stored row then rewritten to the rule: a row stored before the
density check, which the work budget must still hold. Each server: `duetide.web.serve`, one
worker, THREADS=10. Then the engine alone: CPU per work budget for rule shapes that are
expensive per unit, which is what calibrates the units (`duetide/rules/rrule_meter.py`).
"""

from __future__ import annotations

import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import requests

from bench.serving import checkout, wait_healthy
from duetide.config import get_settings
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import project_root

RULE = "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0"
COUNT = 500
PARALLEL = 10
SECRET = "bench-recurrence-budget-secret-of-enough-length"
PROBE_TIMEOUT_S = 5.0


BASELINE = os.environ.get("DUETIDE_BENCH_BASELINE", "a8f1cb3")


def _env(code: Path, home: Path) -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(code / "shared"), DUETIDE_HOME=str(home),
                DATABASE_URL=f"sqlite:///{home / 'db'}", DUETIDE_JWT_SECRET=SECRET,
                KAFKA_BOOTSTRAP_SERVERS="", THREADS="10", WORKERS="1",
                DUETIDE_LOG_LEVEL="WARNING", DUETIDE_READ_RATE_PER_MINUTE="0")  # fmt: skip


@contextmanager
def serving(code: Path, home: Path) -> Iterator[str]:
    env = _env(code, home)
    # The module names of the checkout being served: the runtime moved into layers later.
    layered = (code / "shared" / "duetide" / "web").is_dir()
    migrate = f"from duetide{'.storage' if layered else ''} import migrate; migrate.upgrade()"
    serve = "duetide.web.serve" if layered else "duetide.serve"
    subprocess.run([sys.executable, "-c", migrate], env=env, check=True, cwd=code)
    port = free_loopback_port()
    source = str(code / "functions/tasks/main.py")
    command = [sys.executable, "-m", serve, "--target", "tasks", "--source", source,
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, process, f"the server of {code}")
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


def _create(base: str, headers: dict[str, str], rule: str) -> requests.Response:
    body = {"title": "sparse", "due_at": "2026-01-05T09:00:00Z",
            "recurrence": {"rrule": rule, "timezone": "UTC"}}  # fmt: skip
    return requests.post(f"{base}/tasks", json=body, headers=headers, timeout=600)


def _forecast(base: str, headers: dict[str, str], series_id: str) -> tuple[float, str]:
    start = time.perf_counter()
    url = f"{base}/series/{series_id}/occurrences?count={COUNT}"
    answer = requests.get(url, headers=headers, timeout=600)
    elapsed = time.perf_counter() - start
    body = answer.json()
    items = len(body.get("items", []))
    note = f"{answer.status_code}, {items} items"
    if "truncated" in body:
        note += f", truncated={str(body['truncated']).lower()}"
    return elapsed, note


def _tasks_latency(base: str, headers: dict[str, str], stop: threading.Event) -> list[float]:
    """Sequential GET /tasks until `stop`; a timed-out request counts as PROBE_TIMEOUT_S + 1."""
    samples: list[float] = []
    while not stop.is_set() or not samples:
        start = time.perf_counter()
        try:
            requests.get(f"{base}/tasks", headers=headers, timeout=PROBE_TIMEOUT_S)
            samples.append(time.perf_counter() - start)
        except requests.Timeout:
            samples.append(PROBE_TIMEOUT_S + 1)
    return samples


def measure(code: Path, label: str) -> dict[str, str]:
    home = Path(tempfile.mkdtemp(prefix=f"duetide-bench-{label}-"))
    headers = {"Authorization": f"Bearer {issue_local_token('bench')}"}
    out: dict[str, str] = {}
    with serving(code, home) as base:
        start = time.perf_counter()
        created = _create(base, headers, RULE)
        took = (time.perf_counter() - start) * 1000
        out["create the series"] = f"{created.status_code} in {took:.0f} ms"
        if created.status_code != 201:
            reason = created.json()["error"]["message"].split(":")[1].strip()[:60]
            out["create the series"] += f" ({reason}...)"
            created = _create(base, headers, "FREQ=DAILY")
            series_id = created.json()["series_id"]
            with sqlite3.connect(home / "db") as connection:  # the row as stored before the fix
                connection.execute("UPDATE series SET rrule = ? WHERE id = ?", (RULE, series_id))
        else:
            series_id = created.json()["series_id"]
        alone = [_tasks_latency(base, headers, _stopped())[0] for _ in range(20)]
        out["GET /tasks alone, median"] = f"{statistics.median(alone) * 1000:.1f} ms"
        elapsed, note = _forecast(base, headers, series_id)
        out[f"one forecast count={COUNT}"] = f"{elapsed:.2f} s ({note})"
        stop, results = threading.Event(), []
        probe: list[float] = []
        prober = threading.Thread(
            target=lambda: probe.extend(_tasks_latency(base, headers, stop)), daemon=True
        )
        prober.start()
        start = time.perf_counter()
        workers = [
            threading.Thread(
                target=lambda: results.append(_forecast(base, headers, series_id)), daemon=True
            )
            for _ in range(PARALLEL)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        wall = time.perf_counter() - start
        stop.set()
        prober.join()
        out[f"{PARALLEL} forecasts in parallel, all done"] = f"{wall:.2f} s"
        late = sum(1 for s in probe if s > PROBE_TIMEOUT_S)
        out["GET /tasks meanwhile: median / max"] = (
            f"{statistics.median(probe) * 1000:.0f} / {max(probe) * 1000:.0f} ms "
            f"({len(probe)} requests, {late} timed out at {PROBE_TIMEOUT_S:.0f} s)"
        )
    return out


def _stopped() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


CALIBRATION = {
    "MINUTELY sparse, BYHOUR=23;BYMINUTE=59 (most steps per day)": (
        "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=23;BYMINUTE=59"
    ),
    "MINUTELY sparse (the issue's rule)": RULE,
    "DAILY sparse": "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",
    "MONTHLY sparse": "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",
    "YEARLY, BYSETPOS over every day": "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYSETPOS=-1",
    "MINUTELY dense": "FREQ=MINUTELY",
}


def calibration() -> dict[str, str]:
    """CPU seconds of one forecast that spends the whole budget (or 10,000 occurrences)."""
    script = (
        "import json, sys, time; from datetime import datetime, UTC;"
        "from duetide.rules.recurrence import SeriesRule;"
        "out = {};"
        "cases = json.loads(sys.argv[1]);"
        "[out.__setitem__(name, None) for name in cases];"
        "\nfor name, rule in cases.items():\n"
        "    series = SeriesRule(rule, 'UTC', datetime(2026, 1, 5, tzinfo=UTC))\n"
        "    start = time.process_time(); found = series.preview(10000)\n"
        "    took = time.process_time() - start\n"
        "    out[name] = f'{took * 1000:.0f} ms CPU for {found.work:,} units'"
        " + (' (budget spent)' if found.truncated else f' ({len(found.occurrences)} items)')\n"
        "print(json.dumps(out))"
    )
    env = _env(project_root(), Path(tempfile.mkdtemp()))
    done = subprocess.run([sys.executable, "-c", script, json.dumps(CALIBRATION)], env=env,
                          check=True, capture_output=True, text=True)  # fmt: skip
    return json.loads(done.stdout)


def run() -> list[dict[str, object]]:
    os.environ["DUETIDE_JWT_SECRET"] = SECRET
    get_settings.cache_clear()
    with checkout(BASELINE, "main") as main:
        before = measure(main, "main")
    after = measure(project_root(), "branch")
    rows: list[dict[str, object]] = [
        {"measure": key, "main (baseline)": before[key], "this branch": after[key]}
        for key in before
    ]
    for name, figure in calibration().items():
        rows.append({"measure": f"engine: {name}, forecast(10000)", "main (baseline)": "-",
                     "this branch": figure})  # fmt: skip
    return rows


def describe() -> str:
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    return (__doc__ or "").strip() + (
        f"\n\nIssue figures for comparison: create 90 ms; count={COUNT} ~14 s alone, ~96 s with "
        f"{PARALLEL} in parallel, other users' GET /tasks timing out. GET /tasks is probed "
        f"sequentially with a {PROBE_TIMEOUT_S:.0f} s timeout while the {PARALLEL} forecasts "
        f"run. Measured {when}; the 2 cores are shared by the server and the clients."
    )


if __name__ == "__main__":
    for row in run():
        print(row)
