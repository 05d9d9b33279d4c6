"""The events a task change emits: the task's state after the change, into the outbox.

Each event names its actor (who made the change): the command intake sets it for the
change it runs (`acting_as`); otherwise it follows from the event's source, the tasks
API acting for the owner and the functions for themselves.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from sqlmodel import Session

from duetide import events
from duetide.services.task_rows import TaskState
from duetide.storage import outbox
from duetide.storage.models import Task
from duetide.vocabulary import PRIORITIES

_ACTOR: ContextVar[str | None] = ContextVar("duetide_actor", default=None)

SYSTEM_ACTORS = {
    events.SOURCE_RECURRENCE: "duetide:recurrence",
    events.SOURCE_SWEEP: "duetide:sweep",
}


@contextmanager
def acting_as(actor: str) -> Iterator[None]:
    """Name `actor` on the events emitted inside the block (a command's sender)."""
    token = _ACTOR.set(actor[:300])
    try:
        yield
    finally:
        _ACTOR.reset(token)


def default_actor(source: str, owner: str) -> str:
    """Who made a change when the event does not say: the owner through the API, or
    the function that emitted it."""
    return SYSTEM_ACTORS.get(source, f"user:{owner}" if source == events.SOURCE_TASKS else source)


def watched(task: Task) -> dict[str, Any]:
    """The fields a task.updated reports before/after of, as the event shows them."""
    return {
        "title": task.title,
        "description": task.description,
        "priority": PRIORITIES[task.priority],
        "tags": task.tags,
        "due_at": _when(task.due_at),
    }


def changes_between(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    return {
        name: {"before": before[name], "after": value}
        for name, value in after.items()
        if before.get(name) != value
    }


def _when(value: datetime | None) -> str | None:
    """In UTC: the stored value and a new one in another offset compare as instants."""
    return value.astimezone(UTC).isoformat() if value is not None else None


def event_data(
    task: Task | TaskState, source: str = events.SOURCE_TASKS, changes: dict[str, Any] | None = None
) -> dict[str, Any]:
    return events.TaskEvent(
        task_id=task.id,
        owner=task.owner,
        title=task.title,
        status=task.status,
        due_at=task.due_at,
        completed_at=task.completed_at,
        series_id=task.series_id,
        scheduled_at=task.scheduled_at,
        occurrence_index=task.occurrence_index,
        description=task.description,
        priority=PRIORITIES[task.priority],
        tags=task.tags,
        actor=_ACTOR.get() or default_actor(source, task.owner),
        changes=changes,
    ).model_dump(mode="json")


def emit(
    session: Session,
    task: Task | TaskState,
    event_type: str,
    source: str = events.SOURCE_TASKS,
    changes: dict[str, Any] | None = None,
) -> str:
    """Record the event in the caller's transaction; returns the outbox row id."""
    data = event_data(task, source, changes)
    row = outbox.record(session, type=event_type, key=task.id, data=data, source=source)
    return row.id
