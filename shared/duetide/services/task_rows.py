"""A task as rows: its tables, the shapes a change writes and a read returns, the
statement that reads tasks as shown, and the insert of a new task.

Shared by the tasks API (create, complete, reads; `tasks` shows the rows) and the
recurrence function (the next occurrence; it imports no API model). Neither builds an ORM
object for a task it only writes or shows: SQLModel's validation and the unit of work
cost more than the statements (`bench/results/api_mix.md`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy import bindparam
from sqlmodel import Session

from duetide.rules import reminders
from duetide.storage.aggregates import json_list, json_row
from duetide.storage.models import Task, new_id, utcnow
from duetide.vocabulary import ReminderState, TaskStatus

TASK, TAG, REMINDER, SERIES = (
    Task.metadata.tables[name] for name in ("task", "task_tag", "reminder", "series")
)


class TaskState(NamedTuple):
    """A task's columns and its tags, sorted, as a change writes them without a model."""

    id: str
    owner: str
    title: str
    description: str
    status: TaskStatus
    priority: int
    due_at: datetime | None
    completed_at: datetime | None
    series_id: str | None
    occurrence_index: int | None
    scheduled_at: datetime | None
    previous_id: str | None
    created_at: datetime
    updated_at: datetime
    tags: list[str]

    def columns(self) -> dict[str, Any]:
        """The task row's values (the tags are rows of their own)."""
        values = self._asdict()
        del values["tags"]
        return values


def new_task(
    owner: str,
    title: str,
    description: str,
    priority: int,
    due_at: datetime | None,
    tags: list[str],
    *,
    series_id: str | None = None,
    occurrence_index: int | None = None,
    previous_id: str | None = None,
) -> TaskState:
    """An open task, created now; an occurrence (`series_id`) is scheduled at `due_at`."""
    now = utcnow()
    return TaskState(
        id=new_id(),
        owner=owner,
        title=title,
        description=description,
        status="open",
        priority=priority,
        due_at=due_at,
        completed_at=None,
        series_id=series_id,
        occurrence_index=occurrence_index,
        scheduled_at=due_at if series_id is not None else None,
        previous_id=previous_id,
        created_at=now,
        updated_at=now,
        tags=sorted(set(tags)),
    )


class ShownReminder(NamedTuple):
    """A reminder as `VIEW` reads it and `insert` writes it: what `reminder_out` shows."""

    id: str
    state: ReminderState
    at: datetime | None
    before_due_s: int | None
    fire_at: datetime | None
    created_at: datetime


def new_reminder(
    due_at: datetime | None, at: datetime | None, before_s: int | None
) -> ShownReminder:
    """A pending reminder, absolute (`at`) or `before_s` seconds before `due_at`."""
    fire_at = reminders.fire_time(at, before_s, due_at)
    return ShownReminder(new_id(), "pending", at, before_s, fire_at, utcnow())


def insert(session: Session, task: TaskState, attached: list[ShownReminder]) -> None:
    """Write a new task, its tags and its reminders in the caller's transaction, at once
    (a unique constraint speaks here, as a flush would)."""
    connection = session.connection()
    connection.execute(sa.insert(TASK), task.columns())
    if task.tags:
        connection.execute(sa.insert(TAG), [{"task_id": task.id, "tag": t} for t in task.tags])
    if attached:
        extra = {"owner": task.owner, "task_id": task.id, "fired_at": None}
        connection.execute(sa.insert(REMINDER), [{**r._asdict(), **extra} for r in attached])


VIEW = sa.select(
    TASK,
    sa.select(json_list(TAG.c.tag))
    .where(TAG.c.task_id == TASK.c.id)
    .scalar_subquery()
    .label("tag_list"),
    sa.select(json_list(json_row(*(REMINDER.c[name] for name in ShownReminder._fields))))
    .where(REMINDER.c.task_id == TASK.c.id)
    .scalar_subquery()
    .label("reminder_list"),
    sa.select(SERIES.c.timezone)
    .where(SERIES.c.id == TASK.c.series_id)
    .scalar_subquery()
    .label("zone_name"),
)
"""Tasks as they are shown: each row with its tags, its reminders and its series' zone,
read in the same statement (`storage.aggregates`), so showing a page of tasks is one
query and builds no ORM object."""

READ = VIEW.where(TASK.c.id == bindparam("task_id"), TASK.c.owner == bindparam("owner"))
"""One task of its owner, as shown."""
