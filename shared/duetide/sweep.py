"""The reminder sweep: claim due reminders from stored state, once, in batches.

It works from `fire_at <= now AND state = pending`, never from "this tick's window",
so a missed ping is caught up by the next one. The claim (state change) and the
outbox row of `reminder.due` commit together; PostgreSQL locks the batch with
SKIP LOCKED and SQLite takes its write lock at BEGIN, so two concurrent sweeps
fire each reminder exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import col, select

from duetide import db, events, outbox
from duetide.models import ProcessedEvent, Reminder, Task
from duetide.reminders import is_missed

log = logging.getLogger("duetide.sweep")

PROCESSED_EVENT_TTL = timedelta(days=7)


@dataclass
class SweepResult:
    fired: int = 0
    missed: int = 0
    batches: int = 0
    outbox_ids: list[str] | None = None


def claim_batch(
    now: datetime, grace: timedelta, limit: int, engine: Engine | None = None
) -> tuple[int, int, list[str]]:
    """Claim up to `limit` due reminders in one transaction: (fired, missed, outbox ids)."""
    fired = missed = 0
    ids: list[str] = []
    with db.session_scope(engine, immediate=True) as session:
        rows = session.exec(
            select(Reminder, Task)
            .join(Task, col(Task.id) == col(Reminder.task_id))
            .where(
                Reminder.state == "pending",
                col(Reminder.fire_at) <= now,
                Task.status == "open",
            )
            .order_by(col(Reminder.fire_at))
            .limit(limit)
            .with_for_update(skip_locked=True, of=Reminder)
        ).all()
        for reminder, task in rows:
            late = is_missed(reminder.fire_at, now, grace)
            reminder.state, reminder.fired_at = ("missed" if late else "fired"), now
            session.add(reminder)
            data = events.ReminderEvent(
                reminder_id=reminder.id,
                task_id=task.id,
                owner=task.owner,
                title=task.title,
                due_at=task.due_at,
                scheduled_at=reminder.fire_at,
            ).model_dump(mode="json")
            event_type = events.REMINDER_MISSED if late else events.REMINDER_DUE
            row = outbox.record(
                session, type=event_type, key=task.id, data=data, source=events.SOURCE_SWEEP
            )
            ids.append(row.id)
            missed += late
            fired += not late
    return fired, missed, ids


def sweep(now: datetime, grace: timedelta, batch: int, engine: Engine | None = None) -> SweepResult:
    """Claim every due reminder, batch after batch, then relay unsent outbox rows."""
    result = SweepResult(outbox_ids=[])
    while True:
        fired, missed, ids = claim_batch(now, grace, batch, engine)
        result.fired, result.missed = result.fired + fired, result.missed + missed
        result.batches += 1
        result.outbox_ids.extend(ids)
        if fired + missed < batch:
            break
    if result.fired or result.missed:
        log.info("sweep claimed %d due, %d missed", result.fired, result.missed)
    return result


def purge_processed(now: datetime, engine: Engine | None = None) -> None:
    """Forget processed-event ids older than any redelivery could be."""
    with db.session_scope(engine) as session:
        session.exec(
            delete(ProcessedEvent).where(
                col(ProcessedEvent.processed_at) < now - PROCESSED_EVENT_TTL
            )
        )
