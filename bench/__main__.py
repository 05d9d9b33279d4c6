"""`scripts/bench [NAME ...]`: run benchmarks side by side with their baseline and write
each result table to bench/results/NAME.md (with the machine and the command)."""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from datetime import UTC, datetime
from pathlib import Path

BENCHMARKS = {
    "recurrence_next": "next occurrence of old series vs dateutil's after()",
    "reminder_lateness": "10,000 reminders due within a minute, 1 s ping, local stack",
    "http_edge": "GET /tasks median beside slow-body clients and 16 MiB request lines",
    "up_supervision": "duetide up: a killed child back, Ctrl-C and SIGKILL of up, all children",
    "recurrence_budget": "a sparse rule's forecasts vs GET /tasks, before and after the budgets",
}
RESULTS = Path(__file__).parent / "results"


def table(rows: list[dict[str, object]]) -> str:
    header = list(rows[0])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(row[k]) for k in header) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[[], *BENCHMARKS], default=[])
    names = parser.parse_args(argv).names or list(BENCHMARKS)
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        print(f"bench {name}: {BENCHMARKS[name]} ...", flush=True)
        module = importlib.import_module(f"bench.{name}")
        rows = module.run()
        body = table(rows)
        print(body, flush=True)
        when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        machine = f"{platform.machine()}, {os.cpu_count()} cores, "
        machine += f"Python {platform.python_version()}"
        (RESULTS / f"{name}.md").write_text(
            f"# {name}: {BENCHMARKS[name]}\n\n{module.describe()}\n\n{body}\n\n"
            f"Measured {when} on {machine} with `scripts/bench {name}`.\n"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
