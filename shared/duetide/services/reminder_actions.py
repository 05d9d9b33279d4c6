"""What a user does with reminders: list the upcoming ones, snooze, dismiss."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from duetide.errors import NotFound, ValidationFailed
from duetide.rules.quiet_hours import snooze_until
from duetide.services.responses import UpcomingPage, UpcomingReminder, rfc3339
from duetide.services.schemas import SnoozeIn
from duetide.storage.models import Reminder, Series, Task


def get_owned(session: Session, owner: str, reminder_id: str) -> Reminder:
    reminder = session.get(Reminder, reminder_id)
    if reminder is None or reminder.owner != owner:
        raise NotFound(f"no reminder {reminder_id}")
    return reminder


def upcoming(session: Session, owner: str, limit: int) -> UpcomingPage:
    """Pending reminders of open tasks, soonest first; each in its task's zone."""
    rows = session.exec(
        select(Reminder, Task, Series.timezone)
        .join(Task, col(Task.id) == col(Reminder.task_id))
        .outerjoin(Series, col(Series.id) == col(Task.series_id))
        .where(
            Reminder.owner == owner,
            Reminder.state == "pending",
            col(Reminder.fire_at).is_not(None),
            Task.status == "open",
        )
        .order_by(col(Reminder.fire_at), col(Reminder.id))
        .limit(limit)
    ).all()
    return UpcomingPage(
        items=[
            UpcomingReminder(
                id=reminder.id,
                task_id=task.id,
                title=task.title,
                fire_at=rfc3339(reminder.fire_at, ZoneInfo(zone) if zone else None),
                due_at=rfc3339(task.due_at, ZoneInfo(zone) if zone else None),
            )
            for reminder, task, zone in rows
            if reminder.fire_at is not None
        ]
    )


def snooze(
    session: Session, owner: str, reminder_id: str, spec: SnoozeIn, now: datetime
) -> Reminder:
    """Fire again later: `for` a duration or `until` a time; a fired reminder re-arms."""
    reminder = get_owned(session, owner, reminder_id)
    try:
        reminder.fire_at = snooze_until(now, spec.for_, spec.until)
    except ValueError as exc:
        field = {(True, False): "for", (False, True): "until"}.get(
            (spec.for_ is not None, spec.until is not None)
        )
        raise ValidationFailed.of(field, str(exc)) from None
    reminder.state, reminder.fired_at = "pending", None
    session.add(reminder)
    return reminder


def dismiss(session: Session, owner: str, reminder_id: str) -> Reminder:
    reminder = get_owned(session, owner, reminder_id)
    reminder.state = "dismissed"
    session.add(reminder)
    return reminder
