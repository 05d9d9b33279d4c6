"""A page of `GET /tasks` for an owner of 1,000 and of 200,000 tasks, per sort and filter,
on PostgreSQL, before and after the task list read its pages from indexes.

Two databases on `BENCH_LIST_POSTGRES`, created and dropped here: one migrated by the
baseline's code, one by this branch's (the branch adds an index), seeded alike in SQL
(generate_series, ids from md5, so both hold the same rows): the owner `heavy` with a
tenth of its tasks without a due time, a third done, priorities and titles spread; the
owner `veteran` alike but with one task in 20,000 open (10 of 200,000: a long-time
user, whose open tasks a status filter must find among the done ones); the sizes grow
in place. Each measurement runs in a fresh process importing the code
measured: `tasks.list_tasks` (the query and the rows rendered, no HTTP) once to warm up,
then `BENCH_LIST_REPEAT` times (default 7), timed one by one; a query's time is the
median. Each query is also asked for its second page (through `next_cursor`), and the
ids of both pages must be the same from the baseline and from the branch.

Baseline: `DUETIDE_BENCH_LIST_BASELINE` (default: main before this work) in a temporary
git worktree. `BENCH_LIST_ROUNDS` rounds (default 3), baseline and branch alternating;
the table gives the median of the rounds' medians.
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
from pathlib import Path
from typing import Any

import psycopg

from bench.serving import checkout, postgres_admin, postgres_url, progress
from duetide_tools.local.stack import project_root

SERVER = os.environ.get("BENCH_LIST_POSTGRES", "postgresql://postgres@127.0.0.1:5432")
BASELINE = os.environ.get("DUETIDE_BENCH_LIST_BASELINE", "1eda682")
ROUNDS = int(os.environ.get("BENCH_LIST_ROUNDS", "3"))
REPEAT = int(os.environ.get("BENCH_LIST_REPEAT", "7"))
SIZES = [int(s) for s in os.environ.get("BENCH_LIST_SIZES", "1000,200000").split(",")]
QUERIES = [
    {},
    {"sort": "due_at"},
    {"sort": "due_at", "order": "desc"},
    {"sort": "priority", "order": "desc"},
    {"status": "done", "sort": "due_at"},
    {"sort": "title"},
    {"q": "no such words"},
    {"owner": "veteran", "status": "open"},
    {"owner": "veteran", "status": "open", "sort": "due_at"},
    {"owner": "veteran", "status": "open", "sort": "priority", "order": "desc"},
]
OWNERS = {
    "heavy": "CASE WHEN i %% 3 = 0 THEN 'done' ELSE 'open' END",
    "veteran": "CASE WHEN i %% 20000 = 1 THEN 'open' ELSE 'done' END",
}

SEED = """
INSERT INTO task (id, owner, title, description, status, priority, due_at, created_at,
                  updated_at)
SELECT md5('{owner}' || i)::uuid::text, '{owner}', 'task ' || md5('title' || i), '',
       {status}, i %% 5,
       CASE WHEN i %% 10 = 0 THEN NULL
            ELSE timestamptz '2026-12-01 00:00+00' + (i %% 50000) * interval '1 minute' END,
       timestamptz '2026-01-01 00:00+00' + i * interval '1 second',
       timestamptz '2026-01-01 00:00+00'
FROM generate_series(%(first)s::int, %(last)s::int) AS i
"""

MEASURE = """
import json, statistics, sys, time
from duetide.services import tasks
from duetide.services.schemas import TaskQuery
from duetide.storage import db
queries, repeat = json.loads(sys.argv[1]), int(sys.argv[2])

def page(query):
    query = dict(query)
    owner = query.pop("owner", "heavy")
    with db.session_scope(read_only=True) as session:
        return tasks.list_tasks(session, owner, TaskQuery(**query))

results = []
for query in queries:
    page(query)  # warm: the connection, the compiled statement
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        first = page(query)
        times.append((time.perf_counter() - start) * 1000)
    second = page({**query, "cursor": first.next_cursor}) if first.next_cursor else None
    ids = [[t.id for t in first.items], [t.id for t in second.items] if second else []]
    results.append({"ms": statistics.median(times), "ids": ids})
print(json.dumps(results))
"""


def _env(code: Path, database: str) -> dict[str, str]:
    url = postgres_url(SERVER, database, "postgresql+psycopg")
    return dict(os.environ, PYTHONPATH=str(code / "shared"), KAFKA_BOOTSTRAP_SERVERS="",
                DATABASE_URL=url, DUETIDE_LOG_LEVEL="WARNING",
                DUETIDE_READ_RATE_PER_MINUTE="0")  # fmt: skip


@contextmanager
def databases(sides: dict[str, Path]) -> Iterator[dict[str, str]]:
    """A database per side, migrated by that side's code; dropped afterwards."""
    names = {side: f"bench_list_{side}" for side in sides}
    try:
        for side, name in names.items():
            postgres_admin(SERVER, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            postgres_admin(SERVER, f"CREATE DATABASE {name}")
            subprocess.run(
                [sys.executable, "-c", "from duetide.storage import migrate; migrate.upgrade()"],
                env=_env(sides[side], name), cwd=sides[side], check=True, capture_output=True,
            )  # fmt: skip
        yield names
    finally:
        for name in names.values():
            postgres_admin(SERVER, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def grow(database: str, stored: int, to: int) -> None:
    with psycopg.connect(postgres_url(SERVER, database), autocommit=True) as conn:
        for owner, status in OWNERS.items():
            seed = SEED.format(owner=owner, status=status)
            conn.execute(seed, {"first": stored + 1, "last": to})
        conn.execute("VACUUM ANALYZE task")


def measure(code: Path, database: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(QUERIES), str(REPEAT)],
        env=_env(code, database), cwd=code, check=True, capture_output=True, text=True,
    )  # fmt: skip
    result: list[dict[str, Any]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _label(query: dict[str, str]) -> str:
    return "&".join(f"{k}={v}" for k, v in query.items()) or "(default: created_at)"


def run() -> list[dict[str, object]]:
    sides = {"baseline": Path(), "branch": project_root()}
    times: dict[tuple[int, str, int], list[float]] = {}
    with checkout(BASELINE, "baseline") as base:
        sides["baseline"] = base
        with databases(sides) as names:
            stored = 0
            for size in SIZES:
                started = time.perf_counter()
                for name in names.values():
                    grow(name, stored, size)
                stored = size
                took = time.perf_counter() - started
                progress(f"seeded {size:,} tasks per owner twice in {took:.1f} s")
                for round_ in range(ROUNDS):
                    order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
                    pages: dict[str, list[Any]] = {}
                    for side in order:
                        results = measure(sides[side], names[side])
                        pages[side] = [r["ids"] for r in results]
                        for n, result in enumerate(results):
                            times.setdefault((size, side, n), []).append(result["ms"])
                        shown = ", ".join(f"{r['ms']:.1f}" for r in results)
                        progress(f"{size:,} tasks, round {round_ + 1}, {side}: {shown} ms")
                    for n, query in enumerate(QUERIES):
                        same = pages["baseline"][n] == pages["branch"][n]
                        assert same, f"{_label(query)}: the pages differ at {size:,} tasks"
    rows: list[dict[str, object]] = []
    for n, query in enumerate(QUERIES):
        row: dict[str, object] = {"query (limit 50)": _label(query)}
        for size in SIZES:
            before = statistics.median(times[(size, "baseline", n)])
            after = statistics.median(times[(size, "branch", n)])
            row[f"{size:,}: before ms"] = f"{before:.1f}"
            row[f"{size:,}: after ms"] = f"{after:.1f}"
        rows.append(row)
    return rows


def describe() -> str:
    return (__doc__ or "").strip() + (
        f"\n\nBaseline commit {BASELINE}; {ROUNDS} rounds of {REPEAT} pages a query. "
        "`sort=title` and `q=` still read every task of the owner (a title index could "
        "outgrow PostgreSQL's index row for long titles in 4-byte characters; a substring "
        "search needs a trigram index), so they grow with the owner's tasks."
    )


if __name__ == "__main__":
    for row in run():
        print(row)
