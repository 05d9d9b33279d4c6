"""`--every` phrases as the API's recurrence: its friendly form, or an RRULE passed on.

`2 days`, `daily`, `weekday`, `mon,wed`, `2 weeks on mon,wed`, `month on the 15th`,
`FREQ=MONTHLY;BYMONTHDAY=-1`. The server checks the rule (limits, sparse rules); this
only reads the words, and refuses what it cannot read rather than guess.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from duetide_tools.client.errors import UsageError

FORMS = (
    "daily, weekly, monthly, yearly, hourly, '2 days', '3 weeks', 'weekday', 'weekend', "
    "'mon,wed', '2 weeks on mon,wed', 'month on the 15th', 'month on the last day', "
    "or an RRULE such as FREQ=WEEKLY;BYDAY=MO"
)
_ADVERBS = {
    "hourly": "hourly", "daily": "daily", "weekly": "weekly", "monthly": "monthly",
    "yearly": "yearly", "annually": "yearly", "fortnightly": "weekly",
}  # fmt: skip
_UNITS = {
    "minute": "minutely", "hour": "hourly", "day": "daily", "week": "weekly",
    "fortnight": "weekly", "month": "monthly", "year": "yearly",
}  # fmt: skip
_DAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_GROUPS = {"weekday": _DAY_CODES[:5], "weekend": _DAY_CODES[5:]}
_EVERY = re.compile(
    r"(?:(?P<n>\d{1,4})\s+|other\s+)?(?P<unit>[a-z]+?)s?(?:\s+on\s+(?:the\s+)?(?P<on>.+))?"
)


def recurrence(text: str, timezone: str) -> dict[str, Any]:
    """The `recurrence` object of a task for `--every text`, in the IANA zone `timezone`."""
    value = " ".join(text.strip().split())
    if value.upper().startswith(("FREQ=", "RRULE:")):
        return {"rrule": value, "timezone": timezone}
    spec = _friendly(value.lower().removeprefix("every ").strip(), text)
    return {**spec, "timezone": timezone}


def _friendly(value: str, text: str) -> dict[str, Any]:
    if value in _ADVERBS:
        interval = 2 if value == "fortnightly" else None
        return _spec(_ADVERBS[value], interval)
    days = _weekdays(value)
    if days is not None:
        return {"frequency": "weekly", "weekdays": days}
    match = _EVERY.fullmatch(value)
    if match is None or match["unit"] not in _UNITS:
        raise UsageError(f"cannot read --every {text!r}: try {FORMS}")
    frequency = _UNITS[match["unit"]]
    interval = int(match["n"]) if match["n"] else 1
    if value.startswith("other "):
        interval = 2
    if match["unit"] == "fortnight":
        interval *= 2
    if interval < 1:
        raise UsageError(f"--every {text!r}: the interval must be 1 or more")
    spec = _spec(frequency, interval)
    on = match["on"]
    if on is None:
        return spec
    if frequency == "weekly":
        days = _weekdays(on)
        if days is None:
            raise UsageError(f"--every {text!r}: after 'on' give weekdays such as mon,wed")
        return {**spec, "weekdays": days}
    if frequency == "monthly":
        return {**spec, "month_days": _month_days(on, text)}
    raise UsageError(f"--every {text!r}: 'on' goes with weeks (weekdays) or months (days)")


def _spec(frequency: str, interval: int | None) -> dict[str, Any]:
    return {"frequency": frequency, **({"interval": interval} if interval not in (None, 1) else {})}


def _weekdays(value: str) -> list[str] | None:
    """`mon,wed`, `monday and friday`, `weekday(s)`, `weekend(s)`; None if not weekdays."""
    words = [w for w in re.split(r"\s*(?:,|\band\b|\s)\s*", value) if w]
    if not words:
        return None
    found: list[str] = []
    for word in words:
        word = word.rstrip("s") if word.rstrip("s") in _GROUPS else word
        if word in _GROUPS:
            found += _GROUPS[word]
            continue
        code = _day_code(word)
        if code is None:
            return None
        found.append(code)
    return [code for code in _DAY_CODES if code in found]


def _day_code(word: str) -> str | None:
    if word.upper() in _DAY_CODES:
        return word.upper()
    if len(word) >= 3:
        for code, name in zip(_DAY_CODES, _DAY_NAMES, strict=True):
            if name.startswith(word) or name + "s" == word:
                return code
    return None


def _month_days(value: str, text: str) -> list[int]:
    """`15th`, `1st and 15th`, `day 15`, `last day`."""
    days: list[int] = []
    for word in re.split(r"\s*(?:,|\band\b)\s*", value.removeprefix("day ").removeprefix("days ")):
        word = word.removeprefix("the ").strip()
        if word in ("last", "last day"):
            days.append(-1)
            continue
        match = re.fullmatch(r"(\d{1,2})(st|nd|rd|th)?", word)
        if match is None or not 1 <= int(match[1]) <= 31:
            raise UsageError(f"--every {text!r}: give days of the month such as 1st, 15th, last")
        days.append(int(match[1]))
    return days


def first_on_rule(spec: dict[str, Any], due: datetime) -> datetime | None:
    """The rule's own first occurrence after `due` when `due` is not one it gives, else
    None (also for a rule the server will refuse: it says why). RFC 5545 makes the first
    due time the series' first occurrence anyway: `--every weekend --due tomorrow` on a
    Monday is due that Tuesday, then on Saturdays and Sundays, which a user rarely means."""
    from dateutil.rrule import rrulestr

    from duetide.rules.recurrence import RecurrenceError, friendly_to_rrule

    zone = ZoneInfo(spec["timezone"])
    friendly = {k: v for k, v in spec.items() if k not in ("rrule", "timezone")}
    try:
        text = spec.get("rrule") or friendly_to_rrule(friendly)
        start = due.astimezone(zone).replace(tzinfo=None)
        rule = rrulestr(str(text).removeprefix("RRULE:"), dtstart=start)
        first = rule.after(start, inc=True)
    except (RecurrenceError, ValueError, TypeError):
        return None
    if first is None or first == start:
        return None
    return first.replace(tzinfo=zone)
