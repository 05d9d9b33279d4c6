"""What a user does with reminders: list the upcoming ones, snooze, dismiss."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from duetide.errors import NotFound, ValidationFailed
from duetide.rules.quiet_hours import snooze_until
from duetide.services import keyset
from duetide.services.responses import UpcomingPage, UpcomingReminder, rfc3339
from duetide.services.schemas import SnoozeIn
from duetide.storage.models import Reminder, Series, Task


def get_owned(session: Session, owner: str, reminder_id: str) -> Reminder:
    reminder = session.get(Reminder, reminder_id)
    if reminder is None or reminder.owner != owner:
        raise NotFound(f"no reminder {reminder_id}")
    return reminder


def _locked(session: Session, owner: str, reminder_id: str) -> Reminder:
    """The reminder locked and read as it is now. Unlocked, a snooze racing the sweep's
    claim wrote its new time over the claimed row but not `state` (the ORM writes what
    it saw change, and it saw `pending` stay `pending`): the row ended `fired` at the new
    time, and the reminder never fired again. Locked, the sweep skips it (SKIP LOCKED)
    or this waits for the claim's commit and re-arms what was claimed."""
    reminder = session.exec(
        select(Reminder)
        .where(col(Reminder.id) == reminder_id, col(Reminder.owner) == owner)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if reminder is None:
        raise NotFound(f"no reminder {reminder_id}")
    return reminder


def upcoming(session: Session, owner: str, limit: int, cursor: str | None) -> UpcomingPage:
    """Pending reminders of open tasks, soonest first, a keyset page at a time (by
    `fire_at`, then id: a reminder that fired, or was snoozed, while the client paged
    moves no other one onto a page already read); each in its task's zone."""
    fire_at, key = col(Reminder.fire_at), col(Reminder.id)
    query = (
        select(Reminder, Task, Series.timezone)
        .join(Task, col(Task.id) == col(Reminder.task_id))
        .outerjoin(Series, col(Series.id) == col(Task.series_id))
        .where(
            Reminder.owner == owner,
            Reminder.state == "pending",
            fire_at.is_not(None),
            Task.status == "open",
        )
    )
    if cursor is not None:
        at, last_id = keyset.decode(cursor)
        query = query.where(keyset.after(fire_at, key, at, last_id, descending=False))
    rows = session.exec(query.order_by(fire_at, key).limit(limit + 1)).all()
    shown, after = keyset.page(list(rows), limit, lambda row: (row[0].fire_at, row[0].id))
    return UpcomingPage(
        items=[
            UpcomingReminder(
                id=reminder.id,
                task_id=task.id,
                title=task.title,
                fire_at=rfc3339(reminder.fire_at, ZoneInfo(zone) if zone else None),
                due_at=rfc3339(task.due_at, ZoneInfo(zone) if zone else None),
            )
            for reminder, task, zone in shown
            if reminder.fire_at is not None
        ],
        next_cursor=after,
    )


def snooze(
    session: Session, owner: str, reminder_id: str, spec: SnoozeIn, now: datetime
) -> Reminder:
    """Fire again later: `for` a duration or `until` a time; a fired reminder re-arms."""
    reminder = _locked(session, owner, reminder_id)
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
    reminder = _locked(session, owner, reminder_id)
    reminder.state = "dismissed"
    session.add(reminder)
    return reminder
