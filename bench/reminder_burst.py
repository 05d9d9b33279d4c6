"""The 09:00 burst (issue 16): 10,000 and 100,000 reminders due within one minute on the
local stack (embedded broker, 1 s ping), on SQLite (the default stack) and PostgreSQL.

Each run has the claim floor beside its end-to-end figure: the claim is when the sweep
fired the reminder (a 1 s ping allows up to 1 s), the delivery when notify recorded it,
after the outbox, Kafka and the KafkaSource dispatcher. `early` counts claims or
deliveries before the reminder's time, `twice` reminders the log channel delivered more
than once (from notify's log, since the database's unique key would hide a second
record). `peak /s` is the most deliveries recorded in one second; `done after s` when
the last was recorded, counted from the first reminder's time.

`per event` is DUETIDE_REMINDERS_PER_EVENT: 1 sends a `reminder.due` per reminder, more
sends `reminder.due.batch` events of up to that many.

BENCH_BURST_SIZES (default "10000,100000"), BENCH_BURST_DATABASES (default
"sqlite,postgresql") and BENCH_BURST_PER_EVENT (default "1,50") choose the runs."""

from __future__ import annotations

import os

from bench import stack_cpu
from bench.reminder_lateness import SPREAD_S, _percentiles, measure

SIZES = [int(n) for n in os.environ.get("BENCH_BURST_SIZES", "10000,100000").split(",")]
DATABASES = os.environ.get("BENCH_BURST_DATABASES", "sqlite,postgresql").split(",")
PER_EVENT = [int(n) for n in os.environ.get("BENCH_BURST_PER_EVENT", "1,50").split(",")]


_cpu: dict[str, dict[str, float]] = {}
"""ms of CPU per reminder delivered by process kind, for each run ("database size, n/event")."""


def run() -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    runs = [(d, n, per) for d in DATABASES for n in SIZES for per in PER_EVENT]
    for number, (database, size, per_event) in enumerate(runs, 1):
        os.environ["DUETIDE_REMINDERS_PER_EVENT"] = str(per_event)  # the stack inherits it
        got = measure(size, database)
        label = f"{database} {size}, {per_event}/event"
        print(f"  [{number}/{len(runs)}] {label}: done", flush=True)
        _cpu[label] = got["cpu_ms_per_reminder"]  # type: ignore[assignment]
        for what, key in (("claimed (floor)", "claim_late"), ("delivered", "deliver_late")):
            values = got[key]
            assert isinstance(values, list)
            early_key = "claim_early" if key == "claim_late" else "deliver_early"
            rows.append(
                {"database": database, "reminders": size, "per event": per_event,
                 "measure": what,
                 "count": len(values), **_percentiles(values), "early": got[early_key],
                 "twice": got["twice"] if what == "delivered" else "",
                 "peak /s": got["peak_per_s"] if what == "delivered" else "",
                 "done after s": got["done_after_s"] if what == "delivered" else ""}
            )  # fmt: skip
    return rows


def describe() -> str:
    return (
        f"Reminders due evenly over {SPREAD_S} s on `duetide up`'s stack (embedded broker, "
        "1 s ping), on each database; lateness = claim or delivery time minus the reminder "
        "time. "
        + (__doc__ or "").split("\n\n")[1].replace("\n", " ")
        + "\n\nWhere the CPU goes: milliseconds of CPU (user + system, /proc/<pid>/stat) "
        "each process of the stack spent per reminder delivered, from the seed stored to "
        "the last delivery; 2 cores give 2,000 ms a second, so `all` times the rate "
        "delivered stays below that (PostgreSQL's figure counts every backend on the "
        "machine).\n\n" + stack_cpu.table(_cpu)
    )


def details() -> dict[str, object]:
    return {"CPU ms per reminder delivered": _cpu}
