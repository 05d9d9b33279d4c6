"""The reminder sweep: claim due reminders from stored state, once, in batches.

It works from `fire_at <= now AND state = pending`, never from "this tick's window",
so a missed ping is caught up by the next one. The claim (state change) and the
outbox row of `reminder.due` commit together; PostgreSQL locks the batch with
SKIP LOCKED and SQLite takes its write lock at BEGIN, so two concurrent sweeps
fire each reminder exactly once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlmodel import Session, col, select

from duetide import events
from duetide.rules.quiet_hours import defer_for_quiet_hours
from duetide.rules.reminders import is_missed
from duetide.services import preferences, ratelimit
from duetide.storage import db, outbox
from duetide.storage.models import Outbox, Preference, ProcessedEvent, Reminder, Task

log = logging.getLogger("duetide.services.sweep")

PROCESSED_EVENT_TTL = timedelta(days=7)
# Sent outbox rows are kept this long: what a replaced memory-only broker lost can be
# sent again (consumers deduplicate), and an operator can see what went out.
SENT_OUTBOX_TTL = PROCESSED_EVENT_TTL


@dataclass
class SweepResult:
    seen: int = 0
    fired: int = 0
    missed: int = 0
    deferred: int = 0
    batches: int = 0


def claim_batch(now: datetime, limit: int, engine: Engine | None = None) -> SweepResult:
    """Claim up to `limit` due reminders in one transaction.

    A reminder due inside its owner's quiet hours is moved to their end and stays
    pending; one claimed later than the owner's grace period is reported missed.
    """
    result = SweepResult(batches=1)
    with db.session_scope(engine) as session:
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
        result.seen = len(rows)
        prefs = _preferences(session, {task.owner for _, task in rows})
        for reminder, task in rows:
            fire_at = reminder.fire_at
            assert fire_at is not None  # `fire_at <= now` matches no NULL
            pref = prefs[task.owner]
            window = preferences.quiet_window(pref)
            if window is not None:
                fire_at = defer_for_quiet_hours(fire_at, pref.timezone, *window)
                reminder.fire_at = fire_at
                if fire_at > now:
                    session.add(reminder)  # deferred to the end of quiet hours
                    result.deferred += 1
                    continue
            late = is_missed(fire_at, now, preferences.grace(pref))
            reminder.state, reminder.fired_at = ("missed" if late else "fired"), now
            session.add(reminder)
            _emit(session, reminder, task, fire_at, late)
            result.missed += late
            result.fired += not late
    return result


def _preferences(session: Session, owners: set[str]) -> dict[str, Preference]:
    stored = session.exec(select(Preference).where(col(Preference.owner).in_(owners))).all()
    found = {p.owner: p for p in stored}
    return {owner: found.get(owner) or Preference(owner=owner) for owner in owners}


def _emit(session: Session, reminder: Reminder, task: Task, fire_at: datetime, late: bool) -> None:
    data = events.ReminderEvent(
        reminder_id=reminder.id,
        task_id=task.id,
        owner=task.owner,
        title=task.title,
        due_at=task.due_at,
        scheduled_at=fire_at,
    ).model_dump(mode="json")
    event_type = events.REMINDER_MISSED if late else events.REMINDER_DUE
    outbox.record(session, type=event_type, key=task.id, data=data, source=events.SOURCE_SWEEP)


def claim_due(now: datetime, batch: int, engine: Engine | None = None) -> SweepResult:
    """Claim every due reminder, batch after batch, until a batch comes back short."""
    total = SweepResult()
    started = time.perf_counter()
    while True:
        claimed = claim_batch(now, batch, engine)
        total.seen += claimed.seen
        total.fired += claimed.fired
        total.missed += claimed.missed
        total.deferred += claimed.deferred
        total.batches += 1
        if claimed.seen < batch:
            break
    if total.seen:
        log.info(
            "sweep claimed reminders",
            extra={
                "fired": total.fired,
                "missed": total.missed,
                "deferred": total.deferred,
                "batches": total.batches,
                "ms_per_batch": round((time.perf_counter() - started) * 1000 / total.batches, 1),
            },
        )
    return total


def purge_processed(now: datetime, engine: Engine | None = None) -> None:
    """Forget processed-event ids older than any redelivery could be, spent rate windows
    and sent outbox rows past their keeping time (unsent rows are never purged)."""
    with db.session_scope(engine) as session:
        ratelimit.purge(session, now)
        session.exec(
            delete(ProcessedEvent).where(
                col(ProcessedEvent.processed_at) < now - PROCESSED_EVENT_TTL
            )
        )
        session.exec(delete(Outbox).where(col(Outbox.sent_at) < now - SENT_OUTBOX_TTL))
