"""`scripts/bench [NAME ...]`: run benchmarks side by side with their baseline and write
each result to bench/results/NAME.md (a table) and NAME.json (the rows, and what a
module's `details()` adds), with the machine, the date, the commit and the load average
before and after the run: a number measured on a busy machine says so."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = {
    "recurrence_next": "next occurrence of old series vs dateutil's after()",
    "reminder_lateness": "10,000 reminders due within a minute, 1 s ping, local stack",
    "reminder_burst": "10k and 100k reminders due in one minute, SQLite and PostgreSQL",
    "http_edge": "GET /tasks median beside slow-body clients and 16 MiB request lines",
    "up_supervision": "duetide up: a killed child back, Ctrl-C and SIGKILL of up, all children",
    "recurrence_budget": "a sparse rule's forecasts vs GET /tasks, before and after the budgets",
    "api_mix": "the tasks API under a create/get/list/complete mix vs FastAPI+SQLModel and pgbench",
    "sweep_scaling": "10,000 due reminders claimed into the outbox among 10k / 100k / 1M stored",
    "list_scaling": "a page of GET /tasks per sort and filter for an owner of 1k and 200k tasks",
    "cold_start": "each function: launch to first 2xx and worker RSS, beside the import floor",
    "pipeline": "complete -> next occurrence at fixed rates on the local stack vs raw Kafka",
    "broker_holes": "records lost to the embedded broker's produce/fetch race, hole check or not",
    "kafka_client": "Kafka clients' CPU a fetch and a record, and the embedded broker's",
    "up_restart": "duetide up started again after a run of many events: sent again, idle after",
}
RESULTS = Path(__file__).parent / "results"
INSTALL = {"wrk": "apt-get install wrk", "pgbench": "apt-get install postgresql-client"}
"""Programs a benchmark runs (its module's `NEEDS`), and how Debian installs them."""


def table(rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def commit() -> str:
    """The checkout measured: its commit, marked when it has uncommitted changes (other
    than earlier results, which a run rewrites)."""
    root = Path(__file__).resolve().parents[1]
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        [
            "git",
            "-C",
            str(root),
            "status",
            "--porcelain",
            "--untracked-files=no",
            "--",
            ".",
            ":(exclude)bench/results",
        ],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return f"{head or 'unknown'}{' (with uncommitted changes)' if dirty else ''}"


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], default=[])
    names = parser.parse_args(argv).names or list(BENCHMARKS)
    RESULTS.mkdir(exist_ok=True)
    missing = [
        (name, tool)
        for name in names
        for tool in getattr(importlib.import_module(f"bench.{name}"), "NEEDS", ())
        if shutil.which(tool) is None
    ]
    if missing:  # before any run: not a traceback minutes into one
        for name, tool in missing:
            print(f"bench {name} needs {tool} on PATH ({INSTALL[tool]})", file=sys.stderr)
        return 2
    for name in names:
        print(f"bench {name}: {BENCHMARKS[name]} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        load_before = load_average()
        rows = module.run()
        load_after = load_average()
        body = table(rows)
        print(body, flush=True)
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.machine()}, {os.cpu_count()} cores, "
        machine += f"Python {platform.python_version()}"
        measured = commit()
        (RESULTS / f"{name}.md").write_text(
            f"# {name}: {BENCHMARKS[name]}\n\n{module.describe()}\n\n{body}\n\n"
            f"Measured {when} on {machine}, commit {measured}, with `scripts/bench {name}`; "
            f"load average (1, 5, 15 min) {load_before} before, {load_after} after.\n"
        )
        record = {
            "name": name,
            "what": BENCHMARKS[name],
            "when": when,
            "machine": machine,
            "commit": measured,
            "load_average": {"before": load_before, "after": load_after},
            "rows": rows,
        }
        if hasattr(module, "details"):  # what does not fit the table: counts, profiles
            record["details"] = module.details()
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
