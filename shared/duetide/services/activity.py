"""The activity log: each task event once, in its owner's append-only log (the
activity function), and its purge (the sweep). `activity_feed` reads it back.

Order. The KafkaSource delivers a task's events in order (the Kafka key is the task id),
so appending them as they come keeps each task's order. `seq` is the log's order: on
PostgreSQL an identity value is drawn at INSERT but becomes visible at COMMIT, so two
writers could commit 8 after a reader already moved past 9; a per-owner advisory lock
held to the commit makes one owner's entries commit in `seq` order (SQLite has one
writer at a time anyway). A reader that resumes after `seq` therefore misses nothing.

Late events. The Kafka order can still differ from the order of the changes: the outbox
sends a row its fast path could not send later, after the task's next change went out
(a broker outage between the two), and a dead letter is replayed after everything that
followed it. Appended as it comes, such an event would be the task's last entry, and a
client applying the feed would show it: a `task.created` after the `task.deleted` brings
the task back, a `task.updated` after the `task.completed` reopens it. So an event whose
time is earlier than an entry already logged for its task is appended `superseded`: the
history keeps it, and a client keeping state skips it. Event times are the writers'
clocks; one task's changes are made one after another under its row lock, so only a
skew between two pods larger than the gap between two changes could misjudge one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import insert
from sqlmodel import Session, col

from duetide import events
from duetide.services.task_events import default_actor
from duetide.storage.models import ActivityEntry, utcnow

TASK_TYPES = frozenset(events.TASK_EVENTS)
# The task fields an entry keeps from its event (the feed's `ActivityTask`).
STATE_FIELDS = frozenset(
    {
        "title",
        "status",
        "description",
        "priority",
        "tags",
        "due_at",
        "completed_at",
        "series_id",
        "scheduled_at",
        "occurrence_index",
    }
)


def record(
    session: Session,
    *,
    event_type: str,
    event_id: str,
    source: str,
    time: datetime | None,
    data: events.TaskEvent,
) -> None:
    """Append one task event to its owner's log, in the caller's transaction (which
    records the event as processed: a redelivery appends nothing)."""
    _lock_owner(session, data.owner)
    deleted = event_type == events.TASK_DELETED
    state = None if deleted else _state(data)
    changes = (
        {name: change.model_dump(mode="json") for name, change in data.changes.items()}
        if data.changes
        else None
    )
    now = utcnow()
    at = time or now
    # A Core INSERT: the entry is never read back here, and the ORM's unit of work for
    # one row cost more than the statement (the activity function's profile).
    session.connection().execute(
        _INSERT_ENTRY,
        {
            "owner": data.owner,
            "type": event_type,
            "event_id": event_id,
            "source": source,
            "task_id": data.task_id,
            "series_id": data.series_id,
            "actor": (data.actor or default_actor(source, data.owner))[:300],
            "at": at,
            "recorded_at": now,
            "state": state,
            "changes": changes,
            # The same values again, for the subquery: a bindparam may not share a
            # column's name in an INSERT.
            "later_owner": data.owner,
            "later_task_id": data.task_id,
            "later_at": at,
        },
    )


_ACTIVITY = ActivityEntry.metadata.tables["activity"]
_LATER = _ACTIVITY.alias("later")
# Built once. An entry is late when its task already has one at a later time: decided in
# the INSERT itself, not by a SELECT before it (a round trip an event).
_INSERT_ENTRY = insert(_ACTIVITY).values(
    superseded=sa.exists().where(
        _LATER.c.owner == sa.bindparam("later_owner"),
        _LATER.c.task_id == sa.bindparam("later_task_id"),
        _LATER.c.at > sa.bindparam("later_at"),
    )
)


def _state(data: events.TaskEvent) -> dict[str, Any]:
    """The task's fields the entry keeps, times in UTC (an event may carry any offset)."""
    state = data.model_dump(include=set(STATE_FIELDS))
    for name, value in state.items():
        if isinstance(value, datetime):
            state[name] = value.astimezone(UTC).isoformat()
    return state


def _lock_owner(session: Session, owner: str) -> None:
    """Serialise the owner's appends until the commit (see the module's docstring)."""
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        connection.execute(_LOCK_OWNER, {"key": f"duetide.activity:{owner}"})


_LOCK_OWNER = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))")


def event_time(text: str) -> datetime | None:
    """The CloudEvent's `time` attribute as an aware instant, or None when it has none
    or none that is an instant (naive, or out of range once in UTC): the entry is then
    at the time it was logged, as the attribute is optional anyway."""
    try:
        parsed = datetime.fromisoformat(text)
        return parsed.astimezone(UTC) if parsed.tzinfo is not None else None
    except (ValueError, OverflowError):
        return None


def expired(now: datetime, retention: timedelta) -> Any:
    """Entries logged before the retention: the sweep purges them."""
    return col(ActivityEntry.recorded_at) < now - retention
