"""The reminder sweep: claim due reminders from stored state, once, in batches.

It works from `fire_at <= now AND state = pending`, never from "this tick's window",
so a missed ping is caught up by the next one. The claim (state change) and the
outbox row of `reminder.due` commit together; PostgreSQL locks the batch with
SKIP LOCKED and SQLite takes its write lock at BEGIN, so two concurrent sweeps
fire each reminder exactly once.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from time import perf_counter
from typing import Any

from sqlalchemy import Engine, Row, Select, bindparam, delete, select, tuple_, update
from sqlmodel import col

from duetide import events
from duetide.config import get_settings
from duetide.logs import log_event
from duetide.rules.quiet_hours import defer_for_quiet_hours
from duetide.rules.reminders import is_missed
from duetide.services import activity, idempotency, preferences, ratelimit, webhook_deliveries
from duetide.storage import db, outbox
from duetide.storage.models import (
    ActivityEntry,
    IdempotentRequest,
    Outbox,
    Preference,
    ProcessedEvent,
    RateWindow,
    Reminder,
    Task,
    UTCDateTime,
    WebhookDelivery,
)

log = logging.getLogger("duetide.services.sweep")

DEAD_LETTER_RETENTION = timedelta(days=30)
"""The dead-letters topic's `retention.ms` (kafka/base/topics.yaml): the longest any
event the functions consume is kept anywhere it can be replayed from."""
PROCESSED_EVENT_TTL = DEAD_LETTER_RETENTION + timedelta(days=1)
"""Processed ids outlive every dead letter (and its retries, minutes): an event
processed whose answer was lost and then dead-lettered, replayed on its last day, is
still a duplicate. At 7 days, a `task.create` command replayed from the dead letters
after a week made a second task (it has no natural key), and a task event was logged
twice in the activity."""
SENT_OUTBOX_TTL = timedelta(days=7)
"""Sent outbox rows are kept as long as the topics keep their records: what a replaced
memory-only broker lost can be sent again (consumers deduplicate), and an operator can
see what went out."""


@dataclass
class SweepResult:
    seen: int = 0
    fired: int = 0
    missed: int = 0
    deferred: int = 0
    dismissed: int = 0
    batches: int = 0
    published: int = 0
    events: list[outbox.Pending] = field(default_factory=list)
    """The outbox rows a batch committed, for `claim_due` to send (not summed)."""


def claim_batch(now: datetime, limit: int, engine: Engine | None = None) -> SweepResult:
    """Claim up to `limit` due reminders in one transaction.

    A reminder due inside its owner's quiet hours, or claimed inside them (late: the
    sweep was away), is moved to their end and stays pending; one claimed later than
    the owner's grace period is reported missed. One whose task is done by its time is
    dismissed, with no event: left pending (the claim read only open tasks' reminders),
    every such reminder stayed in the due part of the index for good, and each ping's
    claim, and each `/reminders/upcoming`, read past all of them (a task done before its
    reminder, the common case: 300,000 made an idle ping's claim 142 ms on PostgreSQL,
    growing without end). Reopened before its time, a task's reminder still fires.

    Set-based, a constant number of statements per batch: one read of plain rows (the
    reminder, its task and its owner's preferences, locked), the rules in Python over
    those rows (quiet hours need the owner's zone), one UPDATE per outcome (and one
    executemany for the times quiet hours moved) and one INSERT of all the events
    (`outbox.record_many`). No ORM objects: building them, loading a task's
    relationships and flushing row by row was most of a batch's time (issue 12).
    """
    result = SweepResult(batches=1)
    with db.session_scope(engine) as session:
        connection = session.connection()
        rows = connection.execute(_due(now, limit)).all()
        result.seen = len(rows)
        rules: dict[str, tuple[tuple[time, time] | None, timedelta]] = {}
        moved: list[dict[str, Any]] = []
        claimed: dict[bool, list[str]] = {False: [], True: []}  # by `late`
        dismissed: list[str] = []
        emitted: list[outbox.Event] = []
        due: list[events.ReminderEvent] = []
        for row in rows:
            if row.status != "open":
                dismissed.append(row.reminder_id)
                continue
            if row.owner not in rules:  # the defaults when the owner has no preference row
                rules[row.owner] = (preferences.quiet_window(row), preferences.grace(row))
            window, grace = rules[row.owner]
            fire_at: datetime = row.fire_at  # `fire_at <= now` matches no NULL
            if window is not None:
                deferred = defer_for_quiet_hours(fire_at, row.timezone, *window)
                if deferred <= now and not is_missed(deferred, now, grace):
                    # claimed late (a slow or missed ping), within its grace: is now quiet?
                    # (one past its grace is missed, wherever the quiet hours are)
                    later = defer_for_quiet_hours(now, row.timezone, *window)
                    deferred = later if later > now else deferred
                if deferred != fire_at:
                    moved.append({"moved_id": row.reminder_id, "moved_to": deferred})
                    fire_at = deferred
                if fire_at > now:  # deferred to the end of quiet hours
                    result.deferred += 1
                    continue
            late = is_missed(fire_at, now, grace)
            claimed[late].append(row.reminder_id)
            if late:
                emitted.append(_missed(_reminder(row, fire_at)))
            else:
                due.append(_reminder(row, fire_at))
            result.missed += late
            result.fired += not late
        if moved:
            connection.execute(_MOVE, moved)
        for late, ids in claimed.items():
            if ids:
                connection.execute(
                    update(Reminder)
                    .where(col(Reminder.id).in_(ids))
                    .values(state="missed" if late else "fired", fired_at=now)
                )
        if dismissed:
            connection.execute(
                update(Reminder).where(col(Reminder.id).in_(dismissed)).values(state="dismissed")
            )
        result.dismissed = len(dismissed)
        emitted += _due_events(due, get_settings().duetide_reminders_per_event)
        result.events = outbox.pending_rows(emitted, source=events.SOURCE_SWEEP)
        outbox.insert_pending(session, result.events)
    return result


def _due(now: datetime, limit: int) -> Select[*tuple[Any, ...]]:
    """The batch: due pending reminders, oldest first, with their task's status and what the rules
    and the event need; PostgreSQL locks the reminders and skips those another sweep
    holds. A missing preference row reads as NULLs, which are the defaults."""
    return (
        select(
            col(Reminder.id).label("reminder_id"),
            col(Reminder.fire_at),
            col(Task.id).label("task_id"),
            col(Task.status),
            col(Task.owner),
            col(Task.title),
            col(Task.due_at),
            col(Preference.timezone),
            col(Preference.quiet_start),
            col(Preference.quiet_end),
            col(Preference.grace_s),
        )
        .select_from(Reminder)
        .join(Task, col(Task.id) == col(Reminder.task_id))
        .outerjoin(Preference, col(Preference.owner) == col(Task.owner))
        .where(
            col(Reminder.state) == "pending",
            col(Reminder.fire_at) <= now,
        )
        .order_by(col(Reminder.fire_at))
        .limit(limit)
        .with_for_update(skip_locked=True, of=Reminder)
    )


# A reminder whose time quiet hours moved (executemany: few rows, the quiet hours' ones).
_MOVE = (
    update(Reminder)
    .where(col(Reminder.id) == bindparam("moved_id"))
    .values(fire_at=bindparam("moved_to", type_=UTCDateTime()))
)


def _reminder(row: Row[*tuple[Any, ...]], fire_at: datetime) -> events.ReminderEvent:
    return events.ReminderEvent(
        reminder_id=row.reminder_id,
        task_id=row.task_id,
        owner=row.owner,
        title=row.title,
        due_at=row.due_at,
        scheduled_at=fire_at,
    )


def _missed(reminder: events.ReminderEvent) -> outbox.Event:
    return outbox.Event(events.REMINDER_MISSED, reminder.task_id, reminder.model_dump(mode="json"))


def _due_events(due: list[events.ReminderEvent], per_event: int) -> list[outbox.Event]:
    """A `reminder.due` per reminder, or with `per_event` above 1 `reminder.due.batch`
    events of up to that many (even a lone reminder, so a deployment's consumers see one
    type), each keyed by its first task: the notify source is unordered, a key only
    spreads the events over the partitions."""
    if per_event == 1:
        return [
            outbox.Event(events.REMINDER_DUE, one.task_id, one.model_dump(mode="json"))
            for one in due
        ]
    return [
        outbox.Event(
            events.REMINDER_DUE_BATCH,
            chunk[0].task_id,
            events.ReminderBatchEvent(reminders=chunk).model_dump(mode="json"),
        )
        for chunk in (due[at : at + per_event] for at in range(0, len(due), per_event))
    ]


CLAIM_BUDGET_S = 30.0
"""How long one ping claims at most: the rest of a burst goes with the next pings. The
ping's webhook retries, relay and purge come after the claim, inside the sweep's 60 s
request timeout; 200,000 reminders past their grace took a claim of 37 s (an audit,
2026-12-07), and a ping cut off by its timeout ran none of them."""


def claim_due(
    now: datetime,
    batch: int,
    engine: Engine | None = None,
    *,
    publish: bool = True,
    claimers: int | None = None,
    budget_s: float = CLAIM_BUDGET_S,
) -> SweepResult:
    """Claim every due reminder, batch after batch, until a batch comes back short or
    `budget_s` has passed (no new batch is begun after it).

    Each batch's events are sent right after its commit (`outbox.publish_claimed`: one
    produce call, one UPDATE marking them sent), so a burst reaches notify as fast as it
    is claimed instead of a relay's batch per ping. A batch the broker did not wholly
    acknowledge ends the publishing for this sweep: the rest wait for the relay, which
    finds the broker back, rather than each batch waiting out the broker's timeout.

    On PostgreSQL `claimers` threads (DUETIDE_SWEEP_CLAIMERS) claim and send at once,
    as sweep replicas would: SKIP LOCKED gives each a disjoint batch, and one's claim
    overlaps another's produce and commit (a batch of 500 spent most of its time waiting
    for the broker's ack and the database). A claimer stops at its first short batch
    (the due rows are done, or the others hold them). SQLite has one writer: one claimer.
    """
    bind = engine or db.get_engine()
    wanted = claimers or get_settings().duetide_sweep_claimers
    count = wanted if bind.dialect.name == "postgresql" else 1
    total = SweepResult()
    publishing = [publish]
    lock = threading.Lock()
    started = perf_counter()
    deadline = started + budget_s

    def claim_until_short() -> None:
        while True:
            claimed = claim_batch(now, batch, engine)
            sent = 0
            if publishing[0] and claimed.events:
                sent = outbox.publish_claimed(claimed.events)
                if sent < len(claimed.events):
                    publishing[0] = False
            with lock:
                total.seen += claimed.seen
                total.fired += claimed.fired
                total.missed += claimed.missed
                total.deferred += claimed.deferred
                total.dismissed += claimed.dismissed
                total.batches += 1
                total.published += sent
            if claimed.seen < batch or perf_counter() >= deadline:
                return

    if count == 1:
        claim_until_short()
    else:
        with ThreadPoolExecutor(count, thread_name_prefix="duetide-claim") as pool:
            # Each in a copy of this request's context: the trace its events carry.
            claims = [
                pool.submit(contextvars.copy_context().run, claim_until_short) for _ in range(count)
            ]
            for running in claims:
                running.result()  # a claimer's failure fails the sweep (503, retried)
    if total.seen:
        log_event(
            log,
            "sweep.claimed",
            fired=total.fired,
            missed=total.missed,
            deferred=total.deferred,
            dismissed=total.dismissed,
            batches=total.batches,
            claimers=count,
            published=total.published,
            budget_spent=perf_counter() >= deadline,
            ms_per_batch=round((perf_counter() - started) * 1000 / total.batches, 1),
        )
    return total


PURGE_BATCH = 2_000
"""Rows a purge deletes in one transaction: its locks, and on SQLite the write lock every
writer waits for, are held for a few milliseconds, however much has piled up."""
PURGE_BUDGET_S = 5.0
"""How long one ping purges at most; what is left goes with the next pings."""


def purge_processed(now: datetime, engine: Engine | None = None) -> int:
    """Forget processed-event ids older than any redelivery could be, spent rate windows
    and idempotency keys,
    sent outbox rows past their keeping time (unsent rows are never purged), and activity
    entries and webhook deliveries past the retention (DUETIDE_ACTIVITY_RETENTION_DAYS).

    In batches of PURGE_BATCH rows, each its own transaction, a batch of each kind in
    turn until none is left or, after a round, PURGE_BUDGET_S has passed. One transaction
    deleting everything at once held its locks as long as a backlog took (a sweep that
    was down for a week: millions of ids), and on SQLite kept every writer waiting
    meanwhile. Returns the rows deleted."""
    retention = timedelta(days=get_settings().duetide_activity_retention_days)
    kinds: list[tuple[Any, Any]] = [
        (RateWindow, ratelimit.expired(now)),
        (IdempotentRequest, idempotency.expired(now)),
        (ActivityEntry, activity.expired(now, retention)),
        (WebhookDelivery, webhook_deliveries.expired(now, retention)),
        (ProcessedEvent, col(ProcessedEvent.processed_at) < now - PROCESSED_EVENT_TTL),
        (Outbox, col(Outbox.sent_at) < now - SENT_OUTBOX_TTL),
    ]
    deadline = perf_counter() + PURGE_BUDGET_S
    purged = 0
    while kinds:
        left = []
        for model, condition in kinds:
            deleted = _delete_batch(model, condition, engine)
            purged += deleted
            if deleted == PURGE_BATCH:
                left.append((model, condition))
        kinds = left
        if perf_counter() >= deadline:
            break
    released = db.shrink(engine)  # on SQLite, the pages the purges (and deletes) freed
    if purged or released:
        log_event(log, "sweep.purged", rows=purged, more=bool(kinds), pages_released=released)
    return purged


def _delete_batch(model: Any, condition: Any, engine: Engine | None) -> int:
    """Delete up to PURGE_BATCH rows of `model` matching `condition`, chosen by key."""
    key = list(model.__table__.primary_key.columns)
    chosen = select(*key).where(condition).limit(PURGE_BATCH)
    with db.session_scope(engine) as session:
        result = session.exec(delete(model).where(tuple_(*key).in_(chosen)))
        return int(result.rowcount or 0)
