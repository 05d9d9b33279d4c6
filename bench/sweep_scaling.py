"""Issue 12: the sweep's claim of 10,000 due reminders among 10k, 100k and 1M stored, on
PostgreSQL, before and after the set-based claim.

One database (`bench_sweep` on `BENCH_SWEEP_POSTGRES`, created and dropped here) at this
branch's schema, seeded in SQL (generate_series): 10,000 due reminders (pending, their
time spread over the 50 minutes before the sweep's `now`, so inside the default grace,
and each of an open task), then stored ones that are not due, up to each size: half
pending in the next 30 days, half fired a day or more ago (of done tasks). 1,000 owners:
a fifth with quiet hours 22:00-07:00 in Europe/Berlin (not quiet at `now`, 13:00 there,
so the rule is evaluated but defers nothing), two fifths with stored defaults, the rest
without a preference row. The sizes grow in place (10k, then 100k, then 1M rows).

A measurement is one `claim_due(now, 500)` in a fresh process importing the code measured
(after one warm-up claim that finds nothing), timed from the call to its return: the
reminders claimed and their `reminder.due` rows committed to the outbox (publishing to
Kafka is not included). Before it the due reminders are set pending again, the outbox
emptied and the tables vacuumed and analysed. Every run must claim all 10,000 in the
outbox; the outbox rows of the baseline and of this branch (topic, key, type, source,
subject and the stored JSON text of `data`) must be identical.

Baseline: `DUETIDE_BENCH_SWEEP_BASELINE` (default: main before this work) checked out into
a temporary git worktree. `BENCH_SWEEP_ROUNDS` rounds (default 3), baseline and branch in
alternating order; the table gives the median and the range.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from bench.serving import checkout, postgres_admin, postgres_url, progress
from duetide.storage import migrate
from duetide_tools.local.stack import project_root

SERVER = os.environ.get("BENCH_SWEEP_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
DATABASE = "bench_sweep"
BASELINE = os.environ.get("DUETIDE_BENCH_SWEEP_BASELINE", "c3cbffc")
ROUNDS = int(os.environ.get("BENCH_SWEEP_ROUNDS", "3"))
SIZES = [int(s) for s in os.environ.get("BENCH_SWEEP_SIZES", "10000,100000,1000000").split(",")]
DUE = 10_000
BATCH = 500
OWNERS = 1000
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# Rows `first`..`last` (1-based): the first DUE are due, the others are not (see above).
SEED_TASKS = """
INSERT INTO task (id, owner, title, description, status, priority, due_at, completed_at,
                  created_at, updated_at)
SELECT md5('t' || i)::uuid::text, 'user' || (i %% %(owners)s::int), 'bench task ' || i, '',
       CASE WHEN i <= %(due)s OR i %% 2 = 0 THEN 'open' ELSE 'done' END, 0,
       CASE WHEN i %% 3 = 0 THEN NULL ELSE %(now)s + make_interval(hours => i %% 48) END,
       CASE WHEN i > %(due)s AND i %% 2 = 1 THEN %(now)s - interval '1 day' END,
       %(now)s - interval '60 days', %(now)s - interval '60 days'
FROM generate_series(%(first)s::int, %(last)s::int) AS i
"""
SEED_REMINDERS = """
INSERT INTO reminder (id, owner, task_id, at, fire_at, state, fired_at, created_at)
SELECT md5('r' || i)::uuid::text, 'user' || (i %% %(owners)s::int), md5('t' || i)::uuid::text,
       f.at, f.at,
       CASE WHEN i <= %(due)s OR i %% 2 = 0 THEN 'pending' ELSE 'fired' END,
       CASE WHEN i > %(due)s AND i %% 2 = 1 THEN f.at END,
       %(now)s - interval '60 days'
FROM generate_series(%(first)s::int, %(last)s::int) AS i,
LATERAL (SELECT CASE
    WHEN i <= %(due)s THEN %(now)s - make_interval(secs => 3000.0 * i / %(due)s::int)
    WHEN i %% 2 = 0 THEN %(now)s + make_interval(secs => 60 + i %% (30 * 86400))
    ELSE %(now)s - interval '1 day' - make_interval(secs => i %% (30 * 86400))
END AS at) AS f
"""
SEED_PREFERENCES = """
INSERT INTO preference (owner, timezone, default_reminders, channels, quiet_start, quiet_end,
                        updated_at, verification_sends)
SELECT 'user' || o, CASE WHEN o %% 5 = 0 THEN 'Europe/Berlin' ELSE 'UTC' END, '[]', '["log"]',
       CASE WHEN o %% 5 = 0 THEN '22:00' END, CASE WHEN o %% 5 = 0 THEN '07:00' END,
       %(now)s, '{}'
FROM generate_series(0, %(owners)s::int - 1) AS o WHERE o %% 5 < 3
"""
RESET = [
    "UPDATE reminder SET state = 'pending', fired_at = NULL, fire_at = at"
    " WHERE fired_at = %(now)s OR (state = 'pending' AND fire_at <> at)",
    "DELETE FROM outbox",
]

MEASURE = """
import json, sys, time
from datetime import datetime, timedelta
from sqlalchemy import text
from duetide.services import sweep
from duetide.storage import db
now, batch = datetime.fromisoformat(sys.argv[1]), int(sys.argv[2])
sweep.claim_due(now - timedelta(days=3650), batch)  # warm: connection, compiled statements
start = time.perf_counter()
result = sweep.claim_due(now, batch)
took = time.perf_counter() - start
print(json.dumps({"seconds": took, "fired": result.fired, "missed": result.missed,
                  "deferred": result.deferred, "batches": result.batches}))
"""


@contextmanager
def bench_database() -> Iterator[str]:
    """A fresh `bench_sweep` at this branch's schema; dropped afterwards."""
    postgres_admin(SERVER, f"DROP DATABASE IF EXISTS {DATABASE}")
    postgres_admin(SERVER, f"CREATE DATABASE {DATABASE}")
    try:
        url = postgres_url(SERVER, DATABASE, "postgresql+psycopg")
        migrate.upgrade(url)
        with psycopg.connect(postgres_url(SERVER, DATABASE), autocommit=True) as conn:
            conn.execute(SEED_PREFERENCES, {"owners": OWNERS, "now": NOW})
        yield url
    finally:
        postgres_admin(SERVER, f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")


def grow(stored: int, to: int) -> None:
    """Add rows `stored + 1` .. `to` (tasks and their reminders), then analyse."""
    params = {"owners": OWNERS, "due": DUE, "now": NOW, "first": stored + 1, "last": to}
    with psycopg.connect(postgres_url(SERVER, DATABASE), autocommit=True) as conn:
        conn.execute(SEED_TASKS, params)
        conn.execute(SEED_REMINDERS, params)
        conn.execute("VACUUM ANALYZE task")
        conn.execute("VACUUM ANALYZE reminder")


def reset() -> None:
    """The due reminders pending again, an empty outbox, no dead rows left behind."""
    with psycopg.connect(postgres_url(SERVER, DATABASE), autocommit=True) as conn:
        for sql in RESET:
            conn.execute(sql, {"now": NOW})
        for table in ("reminder", "outbox", "task", "preference"):
            conn.execute(f"VACUUM ANALYZE {table}")
        counts = conn.execute(
            "SELECT count(*) FILTER (WHERE state = 'pending' AND fire_at <= %(now)s) FROM reminder",
            {"now": NOW},
        ).fetchone()
    assert counts is not None and counts[0] == DUE, counts


def outbox_rows() -> list[tuple[Any, ...]]:
    """What the claim wrote, in a stable order, as stored (the JSON text of `data`)."""
    with psycopg.connect(postgres_url(SERVER, DATABASE)) as conn:
        return conn.execute(
            "SELECT topic, key, type, source, subject, data::text, sent_at, attempts"
            " FROM outbox ORDER BY key, type"
        ).fetchall()


def claimed() -> int:
    with psycopg.connect(postgres_url(SERVER, DATABASE)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM reminder WHERE state = 'fired' AND fired_at = %(now)s",
            {"now": NOW},
        ).fetchone()
    assert row is not None
    return int(row[0])


def measure(code: Path, url: str) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(code / "shared"), DATABASE_URL=url,
               KAFKA_BOOTSTRAP_SERVERS="", DUETIDE_LOG_LEVEL="WARNING")  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, NOW.isoformat(), str(BATCH)],
        env=env, cwd=code, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _summary(seconds: list[float]) -> str:
    return f"{statistics.median(seconds):.2f} s ({min(seconds):.2f}-{max(seconds):.2f})"


def run() -> list[dict[str, object]]:
    sides = {"baseline": Path(), "branch": project_root()}
    times: dict[tuple[int, str], list[float]] = {}
    batches: dict[tuple[int, str], int] = {}
    with checkout(BASELINE, "baseline") as base, bench_database() as url:
        sides["baseline"] = base
        stored = 0
        for size in SIZES:
            started = time.perf_counter()
            grow(stored, size)
            stored = size
            progress(f"seeded {size:,} reminders in {time.perf_counter() - started:.1f} s")
            written: dict[str, list[tuple[Any, ...]]] = {}
            for round_ in range(ROUNDS):
                order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                for side in order:
                    reset()
                    result = measure(sides[side], url)
                    assert result["fired"] == DUE and claimed() == DUE, (side, result)
                    stored_rows = outbox_rows()
                    assert len(stored_rows) == DUE, (side, len(stored_rows))
                    written.setdefault(side, stored_rows)
                    times.setdefault((size, side), []).append(result["seconds"])
                    batches[(size, side)] = result["batches"]
                    took, count = result["seconds"], result["batches"]
                    progress(f"{size:,} stored, round {round_ + 1}/{ROUNDS}, {side}: "
                              f"{took:.2f} s, {count} batches")  # fmt: skip
            assert written["baseline"] == written["branch"], "the outbox rows differ"
    rows: list[dict[str, object]] = []
    smallest = SIZES[0]
    for size in SIZES:
        before, after = times[(size, "baseline")], times[(size, "branch")]
        rows.append({
            "stored reminders": f"{size:,}",
            "due": f"{DUE:,}",
            "main (baseline)": _summary(before),
            "this branch": _summary(after),
            "speed-up": f"{statistics.median(before) / statistics.median(after):.1f}x",
            f"branch vs {smallest:,}": (
                f"{statistics.median(after) / statistics.median(times[(smallest, 'branch')]):.2f}x"
            ),
            "batches": f"{batches[(size, 'baseline')]} / {batches[(size, 'branch')]}",
        })  # fmt: skip
    return rows


def describe() -> str:
    return (__doc__ or "").strip() + (
        f"\n\nBaseline commit {BASELINE}; {ROUNDS} rounds; batch {BATCH}. Times are median "
        "(min-max) of the rounds; issue figures for comparison (the baseline): 4.0-4.2 / "
        "4.0-4.5 / 5.4-6.1 s. The 2 cores are shared by PostgreSQL and the sweep."
    )


if __name__ == "__main__":
    for row in run():
        print(row)
