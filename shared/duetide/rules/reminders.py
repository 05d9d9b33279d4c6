"""Pure reminder rules: when a reminder fires, and whether a late one is still worth it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from duetide.vocabulary import ReminderState


def fire_time(
    at: datetime | None, before_due_s: int | None, due_at: datetime | None
) -> datetime | None:
    """When a reminder fires: its `at`, or `before_due` ahead of the due time (None: no
    due), in the due time's zone.

    Elapsed time, as README promises (a day is 24 hours): Python subtracts on the wall
    clock of an aware time's zone, so an occurrence the recurrence function made (its
    due time in the series' zone) had a PT30M reminder fire 30 minutes after its due
    time across a spring-forward gap, and a P1D one 23 or 25 hours ahead (an audit,
    2026-12-07)."""
    if at is not None:
        return at
    if before_due_s is None or due_at is None:
        return None
    before = timedelta(seconds=before_due_s)
    if due_at.tzinfo is None:  # no zone: no wall clock to be fooled by
        return due_at - before
    return (due_at.astimezone(UTC) - before).astimezone(due_at.tzinfo)


def moved_with_due(
    state: ReminderState,
    fire_at: datetime | None,
    before_due_s: int | None,
    old_due: datetime | None,
    new_due: datetime | None,
    now: datetime,
    rearm: bool = True,
) -> tuple[datetime | None, ReminderState] | None:
    """A reminder's (fire time, state) after its task's due time moved from `old_due` to
    `new_due`, or None where it stays as it is.

    - An `at` reminder and a dismissed one do not follow the due time. (Recomputing every
      pending one from its `at` undid a snooze: the reminder fired at once, early.)
    - A relative one is set for the new due time minus its offset. If that is still
      ahead, it is armed again (`rearm`: its task is open), also when it already fired
      or was missed for the old due time, which no longer holds: moved later, the task
      had no reminder left before its new time.
    - If the new time has passed already, only a pending one that still followed the old
      due time takes it (it fires now, or is missed past the grace); one that fired
      stays so, and a snooze in progress is kept.
    - Without a due time a pending one waits (no fire time) until one is set.
    """
    if before_due_s is None or state == "dismissed":
        return None
    new = fire_time(None, before_due_s, new_due)
    if new is None:
        return (None, "pending") if state == "pending" else None
    if new > now and (state == "pending" or rearm):
        return new, "pending"
    if state == "pending" and fire_at == fire_time(None, before_due_s, old_due):
        return new, "pending"
    return None


MIN_GRACE = timedelta(minutes=2)
"""The shortest grace: the sweep claims once a minute (its PingSource), so a reminder is
claimed up to a minute after its time, more when a ping is slow. A grace of PT0S had
every reminder missed, PT30S about half of them (a review, 2026-12-07)."""


def is_missed(fire_at: datetime, now: datetime, grace: timedelta) -> bool:
    """A reminder claimed later than `grace` after its time is reported missed, not sent."""
    return now - fire_at > grace
