"""Pure rules for when a notification may go out: quiet hours and snoozing.

Quiet hours are wall-clock times in the user's zone, `[start, end)`, and may cross
midnight (22:00-07:00). A reminder that falls inside them is deferred to their end,
never dropped. Wall times follow the recurrence convention (RFC 5545 3.3.5, zoneinfo's
`fold=0`): an end time that does not exist that day (spring-forward gap) moves forward
by the size of the gap (02:30 -> 03:30), and an ambiguous one (fall back) is the first
of the two that is still ahead.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_SNOOZE = timedelta(days=30)
# A deferral lands outside the window; only a gap pushing the end past the next start
# (a window of nearly a day) needs a second one. Bounded so a bug cannot spin.
_MAX_DEFERRALS = 4


def defer_for_quiet_hours(fire_at: datetime, zone: str, start: time, end: time) -> datetime:
    """`fire_at` unchanged when outside quiet hours, else the window's end (aware UTC).

    `start == end` means no quiet hours. `start` and `end` are naive wall times in `zone`.
    """
    _require_aware("fire_at", fire_at)
    if start.tzinfo is not None or end.tzinfo is not None:
        raise ValueError("quiet hours start and end must be wall-clock times without a zone")
    tz = _zone(zone)
    if start == end:
        return fire_at
    result = fire_at
    for _ in range(_MAX_DEFERRALS):
        window_end = _window_end(result, tz, start, end)
        if window_end is None:
            return result
        result = window_end
    raise AssertionError(f"quiet hours {start}-{end} in {zone} did not settle for {fire_at}")


def is_quiet(at: datetime, zone: str, start: time, end: time) -> bool:
    """Whether the wall-clock time of `at` in `zone` lies inside `[start, end)`."""
    _require_aware("at", at)
    if start == end:
        return False
    wall = at.astimezone(_zone(zone)).time().replace(fold=0)
    return _inside(wall, start, end)


def snooze_until(now: datetime, for_: timedelta | None, until: datetime | None) -> datetime:
    """When a snoozed reminder fires again (aware UTC): `now + for_` (elapsed time, not
    wall clock) or `until`. Exactly one is given; positive, in the future, at most 30 days."""
    _require_aware("now", now)
    now = now.astimezone(UTC)
    if (for_ is None) == (until is None):
        raise ValueError("snooze needs exactly one of a duration or an until time")
    if for_ is not None:
        if for_ <= timedelta(0):
            raise ValueError("snooze duration must be positive")
        if for_ > MAX_SNOOZE:
            raise ValueError(f"snooze duration must be at most {MAX_SNOOZE.days} days")
        return now + for_
    assert until is not None
    _require_aware("until", until)
    until = until.astimezone(UTC)
    if until <= now:
        raise ValueError("snooze until must be in the future")
    if until - now > MAX_SNOOZE:
        raise ValueError(f"snooze until must be at most {MAX_SNOOZE.days} days ahead")
    return until


def _window_end(at: datetime, tz: ZoneInfo, start: time, end: time) -> datetime | None:
    """The end of the quiet window `at` is in, or None when it is not in one."""
    local = at.astimezone(tz)
    wall = local.time().replace(fold=0)
    if not _inside(wall, start, end):
        return None
    day = local.date()
    if start > end and wall >= start:  # the evening part of a window across midnight
        day += timedelta(days=1)
    return _first_after(day, end, tz, at)


def _inside(wall: time, start: time, end: time) -> bool:
    if start < end:
        return start <= wall < end
    return wall >= start or wall < end


def _first_after(day: date, wall: time, tz: ZoneInfo, after: datetime) -> datetime:
    """The wall time on `day` as a UTC instant: `fold=0` (a gap moves it forward), or
    the second of two ambiguous instants when the first is not after `after`."""
    naive = datetime.combine(day, wall.replace(fold=0))
    first = naive.replace(tzinfo=tz).astimezone(UTC)
    if first > after:
        return first
    return naive.replace(tzinfo=tz, fold=1).astimezone(UTC)


def _zone(zone: str) -> ZoneInfo:
    try:
        return ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a name too long (tzdata)
        raise ValueError(f"unknown time zone {zone!r}") from None


def _require_aware(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")
