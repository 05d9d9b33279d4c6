"""The events a task change emits: the task's state after the change, into the outbox."""

from __future__ import annotations

from typing import Any

from sqlmodel import Session

from duetide import events
from duetide.storage import outbox
from duetide.storage.models import Task


def event_data(task: Task) -> dict[str, Any]:
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
    ).model_dump(mode="json")


def emit(session: Session, task: Task, event_type: str, source: str = events.SOURCE_TASKS) -> str:
    """Record the event in the caller's transaction; returns the outbox row id."""
    row = outbox.record(session, type=event_type, key=task.id, data=event_data(task), source=source)
    return row.id
