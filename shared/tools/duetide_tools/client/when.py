"""Times and durations as people type them: `tomorrow 09:00`, `fri`, `in 2h`, `15m`.

Pure functions of the text, the current instant and a zone (the clock and the system's
zone are read by the caller), so each form is tested at a fixed "now". Anything they
cannot read is a `UsageError` naming the forms they do read.
"""

from __future__ import annotations

import contextlib
import os
import re
from contextvars import ContextVar
from datetime import date, datetime, time, timedelta, tzinfo
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil import parser as dateparser
from dateutil import tz

from duetide_tools.client.errors import UsageError

DEFAULT_TIME = time(9, 0)
"""The time of a day given without one (`tomorrow`, `fri`): the API stores instants, and a
morning due time lets a reminder before it land in the day."""

DUE_FORMS = (
    "ISO 8601 (2026-12-01T09:00, 2026-12-01), today/tomorrow [HH:MM], a weekday "
    "(fri, monday 18:30), a month and day (dec 24 18:00), or in N m/h/d/w (in 2h)"
)
DURATION_FORMS = "such as 15m, 2h, 1h30m, 1d, 1w or an ISO 8601 duration (PT15M)"

_UNITS = {
    "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hrs": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400,
    "w": 604800, "wk": 604800, "week": 604800, "weeks": 604800,
}  # fmt: skip
_PART = re.compile(r"\s*(\d{1,6})\s*([a-z]+)\s*,?\s*")
# At most 9 digits a number: ten years are 315,360,000 s, and a longer number was an
# OverflowError (or Python's 4,300-digit limit) before the ten-year check could speak.
_ISO_DURATION = re.compile(r"P(?:\d{1,9}[WD])*(?:T(?:\d{1,9}[HMS])+)?", re.IGNORECASE)
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_DURATION = timedelta(days=3660)


def duration(text: str) -> timedelta:
    """`15m`, `1h30m`, `2 hours`, `PT15M` as a timedelta (at most ten years)."""
    value = text.strip().lower()
    if _ISO_DURATION.fullmatch(value) and value not in ("p", "pt"):
        return _iso_duration(value.upper())
    seconds, pos = 0, 0
    for match in _PART.finditer(value):
        if match.start() != pos or match.group(2) not in _UNITS:
            break
        seconds += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or pos != len(value):
        raise UsageError(f"cannot read the duration {text!r}: give one {DURATION_FORMS}")
    found = timedelta(seconds=seconds)
    if found > MAX_DURATION:
        raise UsageError(f"the duration {text!r} is longer than ten years")
    return found


def _iso_duration(value: str) -> timedelta:
    days_part, _, time_part = value[1:].partition("T")
    seconds = 0
    for number, unit in re.findall(r"(\d+)([WD])", days_part):
        seconds += int(number) * (604800 if unit == "W" else 86400)
    for number, unit in re.findall(r"(\d+)([HMS])", time_part):
        seconds += int(number) * {"H": 3600, "M": 60, "S": 1}[unit]
    if seconds > MAX_DURATION.total_seconds():  # before a timedelta: P999999999W overflows it
        raise UsageError(f"the duration {value} is longer than ten years")
    return timedelta(seconds=seconds)


def iso_duration(value: timedelta) -> str:
    """A timedelta as the API's ISO 8601 duration: `PT15M`, `P1DT2H`, `PT0S`."""
    seconds = int(value.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = "".join(f"{n}{u}" for n, u in ((hours, "H"), (minutes, "M"), (secs, "S")) if n)
    text = "P" + (f"{days}D" if days else "") + (f"T{clock}" if clock else "")
    return "PT0S" if text == "P" else text


def short(value: timedelta) -> str:
    """A timedelta as `duration` reads it back: `15m`, `1d2h`, `0m`."""
    seconds = int(value.total_seconds())
    parts = []
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts) or "0m"


_MOVED: ContextVar[set[datetime] | None] = ContextVar("duetide_moved_by_a_gap", default=None)
"""While `due_as_written` reads: the instants `_on` moved out of a spring-forward gap."""


def due_as_written(text: str, now: datetime, zone: tzinfo) -> datetime:
    """`due`, refused where its wall time does not exist (a spring-forward gap): a series'
    first occurrence is its start, so 02:30 moved to 03:30 moved every occurrence to
    03:30, where the API moves only an occurrence that falls in a gap (an audit,
    2026-12-07)."""
    moved: set[datetime] = set()
    reading = _MOVED.set(moved)
    try:
        found = due(text, now, zone)
    finally:
        _MOVED.reset(reading)
    if found in moved:
        raise UsageError(
            f"{text!r} is in the hour the clocks skip on {found.astimezone(zone):%Y-%m-%d}: "
            "a series starting there would be at the time after it every day; give "
            "another time (the series' occurrences on such days move by the gap)"
        )
    return found


def due(text: str, now: datetime, zone: tzinfo) -> datetime:
    """The instant `text` names, read in `zone` (an offset in the text wins).

    `now` is aware. A day without a time is at `DEFAULT_TIME`; a weekday is the first one
    from today on whose time is still ahead.
    """
    value = " ".join(text.strip().lower().split())
    now = now.replace(microsecond=0)
    local_now = now.astimezone(zone)
    if value.startswith("in "):
        return now + duration(value[3:])
    if value == "now":
        return now
    word, _, rest = value.partition(" ")
    if word in ("today", "tomorrow", "tonight"):
        day = local_now.date() + timedelta(days=1 if word == "tomorrow" else 0)
        default = time(20, 0) if word == "tonight" else DEFAULT_TIME
        return _on(day, _clock(rest, text) if rest else default, zone)
    weekday = _weekday(word)
    if weekday is not None:
        at = _clock(rest, text) if rest else DEFAULT_TIME
        for ahead in range(8):
            day = local_now.date() + timedelta(days=ahead)
            if day.weekday() == weekday and _on(day, at, zone) > now:
                return _on(day, at, zone)
    return _absolute(text, local_now, zone)


def _weekday(word: str) -> int | None:
    if len(word) < 3:
        return None
    for index, name in enumerate(WEEKDAYS):
        if name.startswith(word):
            return index
    return None


def _clock(value: str, text: str) -> time:
    value = value.removeprefix("at ").strip()
    if not re.fullmatch(r"\d{1,2}(:\d{2})?(:\d{2})?\s*(am|pm)?|\d{1,2}\s*[ap]m?", value):
        raise UsageError(f"cannot read the time in {text!r}: give HH:MM such as 09:00 or 9am")
    if value.isdigit():  # `tomorrow 9` is 09:00; dateutil would read a day of the month
        value += ":00"
    try:
        return dateparser.parse(value).time()
    except (ValueError, OverflowError):
        raise UsageError(f"cannot read the time in {text!r}: give HH:MM such as 09:00") from None


def _on(day: date, at: time, zone: tzinfo) -> datetime:
    """The wall time `at` on `day` in `zone`, as an aware datetime.

    A time in a spring-forward gap is moved forward by the gap, as the API does with
    recurrences: `tz.resolve_imaginary` works for zoneinfo and dateutil zones alike.
    """
    wall = datetime.combine(day, at, tzinfo=zone)
    try:
        found = tz.resolve_imaginary(wall)
    except OverflowError:  # a wall time whose instant is before year 1 or after 9999
        raise UsageError(f"{day} {at} in this zone is out of range") from None
    moved = _MOVED.get()
    if moved is not None and found.replace(tzinfo=None) != wall.replace(tzinfo=None):
        moved.add(found)
    return found


def _absolute(text: str, local_now: datetime, zone: tzinfo) -> datetime:
    """ISO 8601, or a month by name with its day, either way round, then a year of four
    digits and a clock time, each optional (`dec 24`, `24 December 2027 18:00`, `dec 24
    9`); a day given without a time is at `DEFAULT_TIME`, and one without a year is the
    next still ahead (Feb 29 the next leap year's).

    dateutil read much else, silently wrong (audits, 2026-12-07): `5` as the 5th of this
    month, `1230` as the year 1230, `dec 24 9` as 2009 (then rolled to 2010), `feb 29` not
    at all in a year without one; an offset of +25:00 failed later as an unexpected
    ValueError. So the month's form is read here, strictly, and the offset must be one
    an instant can have."""
    value = text.strip()
    unreadable = UsageError(f"cannot read the time {text!r}: give {DUE_FORMS}")
    try:
        found = datetime.fromisoformat(value)
    except ValueError:
        return _month_and_day(value, text, local_now, zone, unreadable)
    if not re.search(r"[T ]\d", value):  # a date alone (2026-12-24, 20261224, 2026-W52)
        found = datetime.combine(found.date(), DEFAULT_TIME, found.tzinfo)
    if found.tzinfo is None:
        return _on(found.date(), found.time(), zone)
    try:
        found.isoformat()  # a UTC offset of a day or more cannot be written
    except ValueError:
        raise unreadable from None
    return found


def _month_and_day(
    value: str, text: str, local_now: datetime, zone: tzinfo, unreadable: UsageError
) -> datetime:
    matched = _MONTH_AND_DAY.fullmatch(value)
    if matched is None:
        raise unreadable
    month = 1 + _MONTHS.split("|").index((matched["month"] or matched["month_after"])[:3].lower())
    day = int(matched["day"] or matched["day_before"])
    at = _clock(matched["clock"], text) if matched["clock"] else DEFAULT_TIME
    years = [int(matched["year"])] if matched["year"] else range(local_now.year, local_now.year + 9)
    for year in years:
        try:
            found = _on(date(year, month, day), at, zone)
        except ValueError:  # no such day that year (Feb 29), or none at all (Apr 31)
            continue
        if matched["year"] or found > local_now:
            return found
    raise unreadable


_MONTHS = "jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec"
_MONTH_AND_DAY = re.compile(
    rf"(?:(?P<month>(?:{_MONTHS})[a-z]*)\.?\s+(?P<day>\d{{1,2}})"
    rf"|(?P<day_before>\d{{1,2}})\s+(?P<month_after>(?:{_MONTHS})[a-z]*)\.?)"
    r"(?:,?\s+(?P<year>\d{4}))?(?:,?\s+(?:at\s+)?(?P<clock>[0-9:]+\s*(?:[ap]m?)?))?",
    re.IGNORECASE,
)
"""A month's name and a day, either way round, then a year (four digits) and a clock
time, each optional: nothing else (`_absolute`)."""


def local_zone(name: str | None) -> tuple[tzinfo, str | None]:
    """The zone to read times in, and its IANA name when there is one (a series needs it).

    `name` (--tz) first, then the system's: TZ, the /etc/localtime link, /etc/timezone;
    without a name, dateutil's view of the C library's local time (DST-aware) and None.
    A TZ that names no IANA zone (a POSIX rule, `CET-1CEST,M3.5.0,M10.5.0/3`) is what
    the C library reads times in: /etc/localtime, tried next, read them an hour off.
    """
    if name is not None:
        try:
            return ZoneInfo(name), name
        except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: `Europe`, a folder
            message = f"unknown time zone {name!r}: give an IANA name such as Europe/Berlin"
            raise UsageError(message) from None
    env = _tz_name(os.environ.get("TZ", ""))
    if env:
        try:
            return ZoneInfo(env), env
        except (ZoneInfoNotFoundError, ValueError, OSError):
            return tz.tzlocal(), None
    for candidate in _system_zone_names():
        try:
            return ZoneInfo(candidate), candidate
        except (ZoneInfoNotFoundError, ValueError, OSError):
            continue
    return tz.tzlocal(), None


def _tz_name(value: str) -> str:
    """TZ as a zone name: `:Europe/Berlin` and a path into a zoneinfo folder name one."""
    value = value.removeprefix(":")
    return value.split("zoneinfo/", 1)[1] if "zoneinfo/" in value else value


def _system_zone_names() -> list[str]:
    names = []
    link = Path("/etc/localtime")
    if link.is_symlink():
        target = str(link.resolve())
        if "zoneinfo/" in target:
            names.append(target.split("zoneinfo/", 1)[1])
    with contextlib.suppress(OSError):
        names.append(Path("/etc/timezone").read_text().strip())
    return [n for n in names if n]
