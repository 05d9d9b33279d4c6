"""Reminder lateness on the local stack: 10,000 reminders due within one minute, a
one-second ping. Lateness is measured from each reminder's time to its claim by the
sweep (the floor a 1 s ping allows: the baseline) and to its recorded delivery by
notify (end to end, through the outbox, Kafka and the KafkaSource dispatcher).

`measure` is shared with `bench.reminder_burst`, which runs it on PostgreSQL too and
at 100,000 reminders."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import tempfile
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert
from sqlmodel import select

from bench import stack_cpu
from duetide.config import get_settings
from duetide.storage import db, migrate
from duetide.storage.models import Notification, Reminder, Task
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import Stack, project_root

COUNT = int(os.environ.get("BENCH_REMINDERS", "10000"))
SPREAD_S = 60
LEAD_S = 15
TIMEOUT_S = 300
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "duetide_bench_reminders"
_SEED_CHUNK = 10_000


def _seed(start: datetime, count: int) -> None:
    for first in range(0, count, _SEED_CHUNK):
        tasks, reminders = [], []
        for i in range(first, min(count, first + _SEED_CHUNK)):
            at = start + timedelta(seconds=SPREAD_S * i / count)
            task_id, owner = str(uuid.uuid4()), f"user{i % 100}"
            tasks.append(
                {"id": task_id, "owner": owner, "title": "bench", "description": "",
                 "status": "open", "priority": 0, "created_at": start, "updated_at": start}
            )  # fmt: skip
            reminders.append(
                {"id": str(uuid.uuid4()), "owner": owner, "task_id": task_id, "at": at,
                 "fire_at": at, "state": "pending", "created_at": start}
            )  # fmt: skip
        with db.session_scope() as session:
            session.execute(insert(Task), tasks)
            session.execute(insert(Reminder), reminders)


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50 s": None, "p99 s": None, "max s": None}
    ordered = sorted(values)
    return {
        "p50 s": round(statistics.median(ordered), 3),
        "p99 s": round(ordered[max(int(len(ordered) * 0.99) - 1, 0)], 3),
        "max s": round(ordered[-1], 3),
    }


def _sweep_batches(log: Path) -> list[float]:
    found = []
    for line in log.read_text().splitlines():
        if '"ms_per_batch"' in line:
            found.append(float(json.loads(line)["ms_per_batch"]))
    return found


def _deliveries_logged(log: Path) -> Counter[str]:
    """How often the log channel delivered each reminder (notify's log): a count above
    one is a reminder delivered twice, which the database's unique key would hide."""
    counted: Counter[str] = Counter()
    for line in log.read_text().splitlines():
        if '"notification.delivered"' in line:
            counted[json.loads(line)["reminder_id"]] += 1
    return counted


def _fresh_postgres() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + (
        f"/{PG_DATABASE}"
    )


def measure(count: int, database: str = "sqlite") -> dict[str, object]:
    """`count` reminders due evenly over SPREAD_S on a fresh local stack (1 s ping):
    claim and delivery lateness, early and twice-delivered counts, peak rates."""
    home = Path(tempfile.mkdtemp(prefix="duetide-bench-"))
    url = f"sqlite:///{home / 'duetide.db'}" if database == "sqlite" else _fresh_postgres()
    os.environ.update(DUETIDE_HOME=str(home), DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS="")
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    migrate.upgrade(url)
    stack = Stack(root=project_root(), home=home, port=free_loopback_port(),
                  ping_interval_s=1.0, echo=False, database_url=url)  # fmt: skip
    lead_s = LEAD_S + count / 10_000  # the seed must be stored before the first is due
    try:
        stack.start()
        start = datetime.now(UTC) + timedelta(seconds=lead_s)
        _seed(start, count)
        before, own = stack_cpu.snapshot(home), time.process_time()
        deadline = time.monotonic() + lead_s + SPREAD_S + TIMEOUT_S
        delivered = 0
        while time.monotonic() < deadline and delivered < count:
            time.sleep(1)
            with db.session_scope(read_only=True) as session:
                delivered = session.exec(select(func.count()).select_from(Notification)).one()
        with db.session_scope(read_only=True) as session:
            claims = session.exec(select(Reminder.fire_at, Reminder.fired_at)).all()
            deliveries = session.exec(
                select(Notification.scheduled_at, Notification.delivered_at)
            ).all()
        cpu = stack_cpu.per_unit(
            before, stack_cpu.snapshot(home),
            ("dispatchers, ping and polling (this process)", time.process_time() - own),
            len(deliveries),
        )  # fmt: skip
    finally:
        stack.stop()
        db.get_engine().dispose()
    claim_late = [(fired - due).total_seconds() for due, fired in claims if due and fired]
    deliver_late = [(done - due).total_seconds() for due, done in deliveries]
    logged = _deliveries_logged(home / "logs" / "notify.log")
    batches = _sweep_batches(home / "logs" / "sweep.log")
    shutil.rmtree(home, ignore_errors=True)  # its database and logs: read, not kept
    per_second = Counter(int((done - start).total_seconds()) for _, done in deliveries)
    return {
        "claim_late": claim_late,
        "deliver_late": deliver_late,
        "claim_early": sum(1 for value in claim_late if value < 0),
        "deliver_early": sum(1 for value in deliver_late if value < 0),
        "twice": sum(1 for n in logged.values() if n > 1),
        "batches": batches,
        "cpu_ms_per_reminder": cpu,
        "peak_per_s": max(per_second.values(), default=0),
        "done_after_s": round(max((done - start).total_seconds() for _, done in deliveries), 1)
        if deliveries
        else None,
    }


def run() -> list[dict[str, object]]:
    got = measure(COUNT)
    claim_late, deliver_late = got["claim_late"], got["deliver_late"]
    assert isinstance(claim_late, list) and isinstance(deliver_late, list)
    early = int(str(got["claim_early"])) + int(str(got["deliver_early"]))
    batches = got["batches"]
    assert isinstance(batches, list)
    return [
        {"measure": "claimed by sweep (baseline: 1 s ping floor)", "count": len(claim_late),
         **_percentiles(claim_late), "early": early},
        {"measure": "delivered by notify (end to end)", "count": len(deliver_late),
         **_percentiles(deliver_late), "early": early},
        {"measure": "sweep ms per batch of <=500 (median / max)", "count": len(batches),
         "p50 s": round(statistics.median(batches) / 1000, 4) if batches else None,
         "p99 s": None, "max s": round(max(batches) / 1000, 4) if batches else None,
         "early": 0},
    ]  # fmt: skip


def describe() -> str:
    return (
        f"{COUNT} reminders due evenly over {SPREAD_S} s on `duetide up`'s stack (SQLite, "
        "embedded broker, 1 s ping); lateness = claim or delivery time minus the reminder time."
    )
