"""Series state: reading, forecasting, and materialising the next occurrence.

Materialisation is idempotent by natural keys: an occurrence is unique by
(series_id, scheduled_at), and a completed occurrence has at most one successor
(`Task.previous_id` is unique). A duplicate, reordered or replayed `task.completed`
therefore never yields a second copy.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, select

from duetide import events, recurrence, reminders
from duetide.errors import NotFound
from duetide.models import Reminder, Series, Task, utcnow
from duetide.schemas import rfc3339
from duetide.tasks import emit

log = logging.getLogger("duetide.series")


def rule_of(series: Series) -> recurrence.SeriesRule:
    policy = recurrence.Policy(series.mode, series.month_end, series.catch_up)
    zone = ZoneInfo(series.timezone)
    return recurrence.parse(series.rrule, series.timezone, series.dtstart.astimezone(zone), policy)


def get_owned(session: Session, owner: str, series_id: str) -> Series:
    series = session.get(Series, series_id)
    if series is None or series.owner != owner:
        raise NotFound(f"no series {series_id}")
    return series


def series_out(series: Series) -> dict[str, Any]:
    zone = ZoneInfo(series.timezone)
    return {
        "id": series.id,
        "rrule": series.rrule,
        "timezone": series.timezone,
        "start": rfc3339(series.dtstart, zone),
        "mode": series.mode,
        "month_end": series.month_end,
        "catch_up": series.catch_up,
        "status": series.status,
        "title": series.title,
        "last_index": series.last_index,
        "last_scheduled_at": rfc3339(series.last_at, zone),
        "created_at": rfc3339(series.created_at),
        "updated_at": rfc3339(series.updated_at),
    }


def forecast(series: Series, count: int) -> list[str]:
    return [at.isoformat() for at in rule_of(series).forecast(count)]


def materialise_next(session: Session, data: events.TaskEvent, now: datetime) -> list[str]:
    """On `task.completed`: create the one next occurrence, or do nothing if it exists.

    Stale events are no-ops: the task was reopened since (not done now), deleted, or
    already has its successor. Returns the outbox ids to publish.
    """
    if data.series_id is None or data.scheduled_at is None or data.occurrence_index is None:
        return []
    series = session.get(Series, data.series_id)
    if series is None or series.owner != data.owner or series.status != "active":
        return []
    task = session.get(Task, data.task_id)
    if task is not None and task.status != "done":
        return []
    if session.exec(select(Task.id).where(Task.previous_id == data.task_id)).first():
        return []
    following = rule_of(series).next(
        data.scheduled_at, data.occurrence_index, completed_at=data.completed_at or now, now=now
    )
    if following is None:
        series.status, series.updated_at = "ended", now
        session.add(series)
        return []
    return [_create_occurrence(session, series, data.task_id, following)]


def _create_occurrence(
    session: Session, series: Series, previous_id: str, following: recurrence.Next
) -> str:
    scheduled = following.scheduled_at
    task = Task(
        owner=series.owner,
        title=series.title,
        description=series.description,
        priority=series.priority,
        due_at=scheduled,
        series_id=series.id,
        occurrence_index=following.index,
        scheduled_at=scheduled,
        previous_id=previous_id,
    )
    task.set_tags(series.tags)
    for offset in series.reminder_offsets:
        task.reminders.append(
            Reminder(
                owner=series.owner,
                task_id=task.id,
                before_due_s=offset,
                fire_at=reminders.fire_time(None, offset, scheduled),
            )
        )
    session.add(task)
    if following.index > series.last_index:
        series.last_index, series.last_at = following.index, scheduled
    series.updated_at = utcnow()
    session.add(series)
    session.flush()  # the unique constraints speak here, inside the transaction
    log.info(
        "materialised occurrence",
        extra={"series_id": series.id, "task_id": task.id, "index": following.index},
    )
    return emit(session, task, events.TASK_CREATED, source=events.SOURCE_RECURRENCE)
