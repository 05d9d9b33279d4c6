"""Reminder lateness on the local stack: 10,000 reminders due within one minute, a
one-second ping. Lateness is measured from each reminder's time to its claim by the
sweep (the floor a 1 s ping allows: the baseline) and to its recorded delivery by
notify (end to end, through the outbox, Kafka and the KafkaSource dispatcher)."""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert
from sqlmodel import select

from duetide.config import get_settings
from duetide.storage import db, migrate
from duetide.storage.models import Notification, Reminder, Task
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import Stack, project_root

COUNT = int(os.environ.get("BENCH_REMINDERS", "10000"))
SPREAD_S = 60
LEAD_S = 15
TIMEOUT_S = 300


def _seed(start: datetime) -> None:
    tasks, reminders = [], []
    for i in range(COUNT):
        at = start + timedelta(seconds=SPREAD_S * i / COUNT)
        task_id, owner = str(uuid.uuid4()), f"user{i % 100}"
        tasks.append(
            {"id": task_id, "owner": owner, "title": "bench", "description": "", "status": "open",
             "priority": 0, "created_at": start, "updated_at": start}
        )  # fmt: skip
        reminders.append(
            {"id": str(uuid.uuid4()), "owner": owner, "task_id": task_id, "at": at,
             "fire_at": at, "state": "pending", "created_at": start}
        )  # fmt: skip
    with db.session_scope() as session:
        session.execute(insert(Task), tasks)
        session.execute(insert(Reminder), reminders)


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50 s": round(statistics.median(ordered), 3),
        "p99 s": round(ordered[int(len(ordered) * 0.99) - 1], 3),
        "max s": round(ordered[-1], 3),
    }


def _sweep_batches(log: Path) -> list[float]:
    found = []
    for line in log.read_text().splitlines():
        if '"ms_per_batch"' in line:
            found.append(float(json.loads(line)["ms_per_batch"]))
    return found


def run() -> list[dict[str, object]]:
    home = Path(tempfile.mkdtemp(prefix="duetide-bench-"))
    url = f"sqlite:///{home / 'duetide.db'}"
    os.environ.update(DUETIDE_HOME=str(home), DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS="")
    get_settings.cache_clear()
    db.get_engine.cache_clear()
    migrate.upgrade(url)
    stack = Stack(root=project_root(), home=home, port=free_loopback_port(),
                  ping_interval_s=1.0, echo=False, database_url=url)  # fmt: skip
    try:
        stack.start()
        start = datetime.now(UTC) + timedelta(seconds=LEAD_S)
        _seed(start)
        deadline = time.monotonic() + LEAD_S + SPREAD_S + TIMEOUT_S
        delivered = 0
        while time.monotonic() < deadline and delivered < COUNT:
            time.sleep(1)
            with db.session_scope() as session:
                delivered = session.exec(select(func.count()).select_from(Notification)).one()
        with db.session_scope() as session:
            claims = session.exec(select(Reminder.fire_at, Reminder.fired_at)).all()
            deliveries = session.exec(
                select(Notification.scheduled_at, Notification.delivered_at)
            ).all()
    finally:
        stack.stop()
    claim_late = [(fired - due).total_seconds() for due, fired in claims if due and fired]
    deliver_late = [(done - due).total_seconds() for due, done in deliveries]
    early = sum(1 for value in claim_late + deliver_late if value < 0)
    batches = _sweep_batches(home / "logs" / "sweep.log")
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
