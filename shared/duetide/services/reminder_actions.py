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


UPCOMING_SCAN = 2_000
"""The most pending reminders one page of `upcoming` reads (in `fire_at` order)."""


def upcoming(session: Session, owner: str, limit: int, cursor: str | None) -> UpcomingPage:
    """Pending reminders of open tasks, soonest first, a keyset page at a time (by
    `fire_at`, then id: a reminder that fired, or was snoozed, while the client paged
    moves no other one onto a page already read); each in its task's zone.

    A page reads at most `UPCOMING_SCAN` of the owner's pending reminders: those of done
    tasks stay pending until their time (a reopen re-arms them), and a page read past
    all of them, 1 s a page for 200,000 (an audit, 2026-12-07). A window that held too
    few of open tasks gives a short page, its cursor after the window's last reminder."""
    fire_at, key = col(Reminder.fire_at), col(Reminder.id)
    pending = select(key, fire_at).where(
        Reminder.owner == owner, Reminder.state == "pending", fire_at.is_not(None)
    )
    if cursor is not None:
        at, last_id = keyset.decode(cursor)
        pending = pending.where(keyset.after(fire_at, key, at, last_id, descending=False))
    pending = pending.order_by(fire_at, key)
    window = pending.limit(UPCOMING_SCAN).subquery()
    query = (
        select(Reminder, Task, Series.timezone)
        .join(window, window.c.id == key)
        .join(Task, col(Task.id) == col(Reminder.task_id))
        .outerjoin(Series, col(Series.id) == col(Task.series_id))
        .where(Task.status == "open")
    )
    rows = session.exec(query.order_by(fire_at, key).limit(limit + 1)).all()
    shown, after = keyset.page(list(rows), limit, lambda row: (row[0].fire_at, row[0].id))
    if after is None:  # the window's end, if it was full: the next page reads on from there
        last = session.exec(pending.offset(UPCOMING_SCAN - 1).limit(1)).first()
        if last is not None and last[1] is not None:
            after = keyset.encode(last[1], last[0])
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
