"""Recurring series: RFC 5545 RRULE expansion on wall-clock time, plus duetide's policies.

Pure core: values in, values out. No database and no clock (``now`` is an argument), so the
recurrence function, the tasks API (``GET /series/{id}/occurrences``) and the property tests
all compute the same occurrences.

Semantics, in one place (each rule is repeated where it is implemented):

- Wall clock. python-dateutil expands the rule on naive local times of the series' zone and
  the zone is attached afterwards, so 09:00 stays 09:00 across DST. A local time that does not
  exist (spring-forward gap) is read with the offset in force before the gap, i.e. it moves
  forward by the size of the gap (02:30 -> 03:30 in New York); an ambiguous one (fall back)
  is the first of the two (RFC 5545 3.3.5; zoneinfo's ``fold=0``).
- DTSTART is occurrence 0 even when the rule would not produce it (RFC 5545 3.8.5.3: "The
  DTSTART property value always counts as the first occurrence"; dateutil drops it).
- Instants are distinct and strictly increasing: an instance that lands on (or, after a gap
  shift, before) an earlier instant is ignored ("Duplicate instances are ignored", RFC 5545
  3.8.5.3); only HOURLY/MINUTELY rules or several BYHOUR values around a gap can do that. COUNT
  counts the distinct instants, i.e. what is materialised.
- UNTIL is an inclusive instant. RFC 5545 3.3.10 wants UTC (``...Z``) when DTSTART has a zone;
  we also accept a floating local time (read in the series' zone) and a date (inclusive: up to
  the end of that local day).
- ``month_end="skip"`` is RFC 5545 (a missing day is skipped). ``"clamp"`` is RFC 7529
  SKIP=BACKWARD, but only for MONTHLY rules, and YEARLY rules in one month, whose day of month
  is a single 29..31 (from DTSTART or one BYMONTHDAY) with no BYDAY/BYSETPOS/BYYEARDAY/BYWEEKNO;
  other rules expand as with "skip".
- ``next()`` re-anchors dateutil at the previous occurrence instead of iterating from DTSTART
  (see ``_Expansion.anchor``); the property tests check it against plain iteration.
- BYDAY is a set (RFC 5545 3.3.10): ``MO,TU,-1MO`` is every Monday and Tuesday, where
  dateutil would want both "a Monday" and "the last Monday" (``_byday_as_set``). A numbered
  weekday counts within the month (MONTHLY, YEARLY with BYMONTH) or year; one past what a
  month (5) or year (53) can hold never matches and is refused.
- Cost is bounded by counted work, not time (``rrule_meter``): ``parse()`` refuses a rule
  too sparse for its FREQ (fewer than ``DENSITY_OCCURRENCES`` occurrences within their
  share of work), a forecast stops at ``forecast_budget(count)`` and says it was truncated,
  and ``next()`` raises ``WorkLimitExceeded`` past ``MAX_WORK``. HOURLY, MINUTELY,
  BYWEEKNO and BYYEARDAY are supported within these bounds.
- A series re-based on an adjusted occurrence (clamped, or moved by a gap) keeps the
  occurrence's nominal wall time as its pattern (``SeriesRule.nominal``).
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import MAXYEAR, UTC, date, datetime, time, timedelta
from itertools import islice
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, WEEKLY, YEARLY, rrule, weekday

from duetide.rules import rrule_meter, zones
from duetide.rules.rrule_meter import INSTANCE_WORK, Meter, WorkExhausted
from duetide.vocabulary import CatchUp, Mode, MonthEnd

MAX_COUNT = 10_000
"""Upper bound for COUNT and for ``forecast(count)``."""
MAX_PER_PERIOD = 10_000
"""Upper bound for the instances one FREQ period may expand to (days x times of day)."""
SEARCH_YEARS = 400
"""A rule must produce an occurrence within this many years after DTSTART (one Gregorian cycle)."""

# Work budgets, in the units of ``rrule_meter`` (about 0.1 microsecond of CPU each).
OCCURRENCE_WORK = 20_000
"""What one occurrence may cost on average: the density a rule must have to be accepted."""
DENSITY_OCCURRENCES = 10
"""``parse()`` wants this many occurrences after DTSTART (or the rule's end) within
``DENSITY_OCCURRENCES * OCCURRENCE_WORK``; a sparser rule is refused as too sparse."""
NEXT_WORK = 10 * OCCURRENCE_WORK
"""Ten times the average gap an accepted rule may have: what one step usually needs at
most (and the budget of ``nominal_of``'s anchoring). ``next()`` may spend ``MAX_WORK``:
admission sees the first occurrences only, and a rule aligned to the calendar can have
its widest gap later (``FREQ=MINUTELY;INTERVAL=7;BYMONTH=2;BYMONTHDAY=13,29;BYDAY=SA,SU;
BYMINUTE=0`` from 2020: three dense Februaries, then five years to the next weekend
13th), so a series would stop at a step its rule was accepted for."""
FORECAST_BASE_WORK = 200_000
"""What any forecast may spend, whatever its count (the first period can be large)."""
MAX_WORK = 2_000_000
"""Ceiling of any one computation (forecast, catch-up): at most about a quarter second."""
DIAGNOSIS_WORK = 1_500_000
"""Budget for telling "no occurrence at all" from "too sparse" when a rule is refused."""

Freq = Literal[0, 1, 2, 3, 4, 5]
"""A dateutil frequency, YEARLY (0) to MINUTELY (5); SECONDLY is not supported."""
_FREQS: dict[str, Freq] = {"YEARLY": YEARLY, "MONTHLY": MONTHLY, "WEEKLY": WEEKLY, "DAILY": DAILY}
_FREQS |= {"HOURLY": HOURLY, "MINUTELY": MINUTELY}
_FREQ_NAMES = {value: name for name, value in _FREQS.items()}
FREQUENCIES: tuple[str, ...] = tuple(_FREQS)
"""The FREQ values a rule may have, coarsest first (the README and the document list them)."""
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_WEEKDAY_RE = re.compile(r"([+-]?)([0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_INT_RE = re.compile(r"[+-]?[0-9]{1,7}")
_UNTIL_RE = re.compile(r"[0-9]{8}(T[0-9]{6}Z?)?")
_NOMINAL_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})")
_LAST_WALL = datetime(MAXYEAR, 12, 31, 23, 59, 59)
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)


class RecurrenceError(ValueError):
    """A rule, zone or policy a client sent that cannot be used; the message names the problem."""


class WorkLimitExceeded(RecurrenceError):
    """A computation on an accepted rule ran out of its work budget (see ``rrule_meter``)."""


@dataclass(frozen=True)
class Policy:
    """How a series moves on: by its schedule or from each completion, and at month ends."""

    mode: Mode = "schedule"
    month_end: MonthEnd = "skip"
    catch_up: CatchUp = "next_in_series"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("mode", ("schedule", "completion")),
            ("month_end", ("skip", "clamp")),
            ("catch_up", ("next_in_series", "next_future")),
        ):
            if getattr(self, name) not in allowed:
                raise RecurrenceError(f"{name} must be one of {', '.join(allowed)}")


@dataclass(frozen=True)
class Next:
    """The occurrence to materialise next."""

    scheduled_at: datetime
    index: int
    missed: tuple[datetime, ...] = ()
    caught_up: bool = True
    """False when a catch-up ran out of budget among the missed occurrences: this is the
    last one it reached, already past (see ``SeriesRule.next``)."""


@dataclass(frozen=True)
class Forecast:
    """Up to ``count`` occurrences (from DTSTART for ``preview``, after a given occurrence for
    ``preview_after``), and whether the work budget cut them short.

    ``truncated`` is True only when the budget ran out before ``count`` occurrences were
    found: the series may well go on. A series that ends (COUNT/UNTIL) is not truncated.
    """

    occurrences: tuple[datetime, ...]
    truncated: bool
    work: int
    budget: int


def forecast_budget(count: int) -> int:
    """The work a forecast of ``count`` occurrences may spend: proportional, with a ceiling."""
    return min(MAX_WORK, FORECAST_BASE_WORK + count * OCCURRENCE_WORK)


@dataclass(frozen=True)
class SeriesRule:
    """A validated series: rule text (kept verbatim), IANA zone, first occurrence and policy.

    Constructing one checks the rule's structure (``RecurrenceError``), cheaply, so a row
    loaded from the database can be rebuilt with ``SeriesRule(...)``; ``parse()`` is the entry
    point for input and also refuses rules too sparse to expand within budget.

    ``nominal`` is the local wall time occurrence 0 stands for when DTSTART is an adjusted
    instant (``YYYY-MM-DDTHH:MM:SS``; the day may be past the month's end, e.g. 2026-02-31
    for a clamped Feb 28, and the time may not exist, e.g. 02:30 in a spring-forward gap).
    The defaults a rule takes from DTSTART (time of day, day of month) come from it, so a
    series re-based on an adjusted occurrence keeps its pattern (see ``nominal_of``).
    """

    rrule: str
    timezone: str
    dtstart: datetime
    policy: Policy = Policy()
    nominal: str | None = None
    _expansion: _Expansion = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_expansion", _compile(self))

    @property
    def until(self) -> datetime | None:
        """UNTIL as the inclusive instant it stands for (a floating time or a date read in
        the series' zone, see ``_normalise_until``), or None."""
        return self._expansion.until

    @property
    def clamp_day(self) -> int | None:
        """The day 29..31 a ``month_end="clamp"`` rule stands for, or None when no month
        end is clamped; RFC 5545's RRULE cannot say "the 31st, or the month's last day"."""
        return self._expansion.clamp_day

    @property
    def steps_elapsed_time(self) -> bool:
        """Whether each occurrence is a fixed elapsed time after the one before (completion
        mode, hourly or minutely: ``completion_step``), not a wall-clock time in the zone:
        across a DST change the two differ by the change."""
        return self.policy.mode == "completion" and self._expansion.parts.freq in (
            HOURLY,
            MINUTELY,
        )

    def forecast(self, count: int) -> list[datetime]:
        """The first ``count`` occurrences from DTSTART, aware in the series' zone.

        Exactly what materialisation yields in schedule mode (in completion mode it is the plan
        the completions start from). Raises ``WorkLimitExceeded`` where ``preview`` would be
        truncated.
        """
        found = self.preview(count)
        if found.truncated:
            raise WorkLimitExceeded(_budget_message(len(found.occurrences), count, found.budget))
        return list(found.occurrences)

    def preview(self, count: int) -> Forecast:
        """Like ``forecast``, but within ``forecast_budget(count)``: what was found by then."""
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise RecurrenceError(f"count must be an integer from 0 to {MAX_COUNT}")
        exp, work = self._expansion, Meter(forecast_budget(count))
        found = [exp.start][:count]
        try:
            rest = exp.numbered(exp.walk(exp.start_wall, exp.start, work), 0)
            for _, at in islice(rest, max(0, count - 1)):
                found.append(at)
            truncated = False
        except WorkExhausted:
            truncated = True
        occurrences = tuple(at.astimezone(exp.zone) for at in found)
        return Forecast(occurrences, truncated, work.used, work.budget)

    def preview_after(
        self,
        previous_at: datetime,
        previous_index: int,
        count: int,
        completed_at: datetime,
        now: datetime,
    ) -> Forecast:
        """Up to ``count`` occurrences that will follow occurrence ``previous_index`` (at
        ``previous_at``) if it is completed at ``completed_at`` and each later one on its own
        time: what ``next()`` would materialise, step after step. Schedule mode follows the
        rule; completion mode steps from ``completed_at``, then from each result; with
        ``catch_up="next_future"`` those at or before ``now`` are left out (they would be
        recorded missed). Within ``forecast_budget(count)``, like ``preview``.
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise RecurrenceError(f"count must be an integer from 0 to {MAX_COUNT}")
        exp, work = self._expansion, Meter(forecast_budget(count))
        previous = _instant(previous_at, "previous_at")
        if isinstance(previous_index, bool) or not isinstance(previous_index, int):
            raise RecurrenceError("previous_index must be an integer")
        if previous_index < 0 or previous < exp.start:
            raise RecurrenceError("previous_at/previous_index do not name an occurrence")
        skip_until = _instant(now, "now") if self.policy.catch_up == "next_future" else None
        found: list[datetime] = []
        try:
            if self.policy.mode == "completion":
                completed = _instant(completed_at, "completed_at")
                instants = exp.metered_completion(completed, previous, work)
            else:
                instants = exp.after(previous, work)
            if count:
                for _, at in exp.numbered(instants, previous_index):
                    if skip_until is None or at > skip_until:
                        found.append(at)
                        if len(found) == count:
                            break
            truncated = False
        except WorkExhausted:
            truncated = True
        occurrences = tuple(at.astimezone(exp.zone) for at in found)
        return Forecast(occurrences, truncated, work.used, work.budget)

    def next(
        self,
        previous_at: datetime,
        previous_index: int,
        completed_at: datetime | None = None,
        now: datetime | None = None,
        work: Meter | None = None,
    ) -> Next | None:
        """The occurrence after ``previous_at`` (occurrence number ``previous_index``).

        None when the series has ended (COUNT/UNTIL). ``previous_at`` must be the scheduled
        time of that occurrence (not an edited due date). Schedule mode follows the rule;
        completion mode steps from ``completed_at`` (see ``_Expansion.after_completion``) and
        never returns a time at or before ``previous_at``. With ``catch_up="next_future"``
        occurrences at or before ``now`` are skipped, counted, and listed in ``missed``; if the
        series ends among them the answer is None. A catch-up that runs out of budget among
        them (a minutely series idle for a month) answers the last one it reached, past
        and with ``caught_up`` false: the series goes on from there (the next completion
        catches up further) instead of stopping at an error.

        Budget: ``work``, by default ``MAX_WORK`` (see ``NEXT_WORK``); ``WorkLimitExceeded``
        past it.
        """
        exp = self._expansion
        previous = _instant(previous_at, "previous_at")
        if isinstance(previous_index, bool) or not isinstance(previous_index, int):
            raise RecurrenceError("previous_index must be an integer")
        if previous_index < 0 or previous < exp.start:
            raise RecurrenceError("previous_at/previous_index do not name an occurrence")
        skip_until = None
        if now is not None and self.policy.catch_up == "next_future":
            skip_until = _instant(now, "now")
        work = work if work is not None else Meter(MAX_WORK)
        try:
            if self.policy.mode == "completion":
                if completed_at is None:
                    raise RecurrenceError("a completion-mode series needs completed_at")
                instants = exp.after_completion(_instant(completed_at, "completed_at"), previous)
            else:
                instants = exp.after(previous, work)
            return _first_due(exp.numbered(instants, previous_index), skip_until, exp.zone)
        except WorkExhausted:
            raise WorkLimitExceeded(
                f"the occurrence after {previous_at.isoformat()} was not found within "
                f"{work.budget:,} units of expansion work; the rule is too sparse to go on"
            ) from None

    def nominal_of(self, at: datetime, index: int, work: Meter | None = None) -> str | None:
        """The nominal wall time of occurrence ``index`` at ``at``, where it was adjusted.

        None when the occurrence is at its nominal wall time. Adjusted ones: moved forward
        by a spring-forward gap (02:30 -> 03:30 gives ``...T02:30:00``) or clamped to a
        month's last day (the 31st of February gives ``...-02-31T...``). A re-based rule
        given this as ``nominal`` continues the pattern rather than the adjusted instant.
        Within ``work`` (a fresh ``NEXT_WORK`` if not given), whose ``used`` then says
        what it cost.
        """
        exp = self._expansion
        instant = _instant(at, "at")
        if instant == exp.start:
            return self.nominal
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise RecurrenceError("index must be a non-negative integer")
        try:
            wall = exp.anchor(instant, work if work is not None else Meter(NEXT_WORK))
        except WorkExhausted:
            wall = _wall(instant, exp.zone).replace(microsecond=0)
        day, last = wall.day, calendar.monthrange(wall.year, wall.month)[1]
        if exp.clamp_day and wall.day == last < exp.clamp_day:
            day = exp.clamp_day
        if day == wall.day and wall == _wall(instant, exp.zone).replace(microsecond=0):
            return None
        return f"{wall:%Y-%m}-{day:02d}T{wall:%H:%M:%S}"


def parse(
    rrule: str,
    timezone: str,
    dtstart: datetime,
    policy: Policy = Policy(),
    nominal: str | None = None,
) -> SeriesRule:
    """Validate client input into a ``SeriesRule``; raises ``RecurrenceError`` with the reason.

    Accepts the RRULE value with or without an ``RRULE:`` prefix (the prefix is dropped; the
    rest is kept verbatim). Rejects: an unparsable rule or unknown part, DTSTART (or any other
    property) inside the text, an unknown IANA zone, a naive ``dtstart``, COUNT with UNTIL
    (RFC 5545 3.3.10), FREQ=SECONDLY or several BYSECOND values (nothing finer than a minute),
    COUNT above ``MAX_COUNT``, more than ``MAX_PER_PERIOD`` instances per period, a BYDAY
    ordinal that can never match (10SA in a month), UNTIL before DTSTART, BYxxx parts in
    completion mode, a rule with no occurrence after DTSTART within ``SEARCH_YEARS`` years
    (February 30, BYSETPOS past the set, ...), and a rule too sparse for its FREQ: fewer than
    ``DENSITY_OCCURRENCES`` occurrences after DTSTART (unless it ends sooner) within
    ``DENSITY_OCCURRENCES * OCCURRENCE_WORK`` units of work (Feb 29 on a Monday with
    FREQ=MINUTELY walks ten thousand days per occurrence; with FREQ=YEARLY it is accepted).
    """
    if not isinstance(rrule, str):
        raise RecurrenceError("rrule must be a string such as FREQ=WEEKLY;BYDAY=MO")
    if not zones.is_iana(timezone):  # a stored rule is read by `ZoneInfo` alone
        raise _unknown_zone(timezone)
    rule = SeriesRule(_rule_body(rrule), timezone, dtstart, policy, nominal)
    rule._expansion.check_density()
    return rule


def _budget_message(found: int, count: int, budget: int) -> str:
    return (
        f"only {found} of {count} occurrences were found within the work budget "
        f"({budget:,} units); ask for fewer"
    )


def friendly_to_rrule(spec: Mapping[str, Any]) -> str:
    """Build RRULE text from a form-like spec, validated like ``parse()``.

    ``{"frequency": "weekly", "interval": 2, "weekdays": ["MO", "WE"], "count": 10}`` gives
    ``FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;COUNT=10``. Other keys: ``months``, ``month_days``,
    ``set_positions``, ``week_start`` and ``until`` (RFC 3339 date-time, written as UTC, or a
    date, or a datetime/date object).
    """
    if not isinstance(spec, Mapping):
        raise RecurrenceError("the recurrence spec must be an object")
    unknown = sorted(set(spec) - {"frequency", "until", *_FRIENDLY_PARTS})
    if unknown:
        raise RecurrenceError(f"unknown recurrence field(s): {', '.join(map(str, unknown))}")
    frequency = spec.get("frequency")
    if not isinstance(frequency, str) or frequency.upper() not in _FREQS:
        raise RecurrenceError(f"frequency must be one of {', '.join(_FREQS).lower()}")
    items = [f"FREQ={frequency.upper()}"]
    for key, (part, kind) in _FRIENDLY_PARTS.items():
        value = spec.get(key)
        text = None if value is None else _friendly_list(key, value, kind)
        if text is not None and not (key == "interval" and text == "1"):
            items.append(f"{part}={text}")
    if spec.get("until") is not None:
        items.append(f"UNTIL={_friendly_until(spec['until'])}")
    text = ";".join(items)
    _parse_rrule(text)
    return text


# --- rule text -> parts ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Parts:
    """The rule's parts as values; an empty tuple means the part is absent."""

    freq: Freq
    interval: int = 1
    count: int | None = None
    until: str | None = None
    wkst: int = 0  # RFC 5545 3.3.10 default MO; never dateutil's calendar.firstweekday()
    bysecond: tuple[int, ...] = ()
    byminute: tuple[int, ...] = ()
    byhour: tuple[int, ...] = ()
    byday: tuple[weekday, ...] = ()
    bymonthday: tuple[int, ...] = ()
    byyearday: tuple[int, ...] = ()
    byweekno: tuple[int, ...] = ()
    bymonth: tuple[int, ...] = ()
    bysetpos: tuple[int, ...] = ()

    @property
    def date_filters(self) -> bool:
        return bool(
            self.bymonth or self.bymonthday or self.byyearday or self.byweekno or self.byday
        )


def _rule_body(text: str) -> str:
    """The RRULE value without an ``RRULE:`` prefix; one rule only, never DTSTART."""
    body = text.strip()
    if body[:6].upper() == "RRULE:":
        body = body[6:].strip()
    if "DTSTART" in body.upper():
        raise RecurrenceError("DTSTART does not belong in the rule: the first due time is DTSTART")
    if not body or any(char in body for char in ":\r\n"):
        raise RecurrenceError("expected one RRULE value such as FREQ=WEEKLY;BYDAY=MO")
    return body


def _parse_rrule(text: str) -> _Parts:
    """Parse and check RRULE value text (RFC 5545 3.3.10 grammar, case-insensitive)."""
    values: dict[str, Any] = {}
    for item in filter(None, _rule_body(text).upper().split(";")):
        name, _, value = (text.strip() for text in item.partition("="))
        if name not in _PARSERS or not value:
            raise RecurrenceError(f"cannot read RRULE part {item!r}")
        attribute, read = _PARSERS[name]
        if attribute in values:
            raise RecurrenceError(f"{name} is given twice")
        values[attribute] = read(name, value)
    if "freq" not in values:
        raise RecurrenceError("FREQ is required, e.g. FREQ=DAILY")
    parts = _Parts(**values)
    _check_combination(parts)
    return parts


def _read_freq(name: str, value: str) -> Freq:
    if value == "SECONDLY":
        raise RecurrenceError("FREQ=SECONDLY is not supported; the finest frequency is MINUTELY")
    if value not in _FREQS:
        raise RecurrenceError(f"FREQ must be one of {', '.join(_FREQS)}")
    return _FREQS[value]


def _read_int(low: int, high: int) -> Callable[[str, str], int]:
    def read(name: str, value: str) -> int:
        if not re.fullmatch(r"[0-9]{1,7}", value) or not low <= int(value) <= high:
            raise RecurrenceError(f"{name} must be an integer from {low} to {high}")
        return int(value)

    return read


def _read_ints(low: int, high: int, signed: bool) -> Callable[[str, str], tuple[int, ...]]:
    """Comma-separated integers in low..high (or -high..-low when ``signed``)."""

    def read(name: str, value: str) -> tuple[int, ...]:
        numbers = set()
        for item in value.split(","):
            number = int(item) if _INT_RE.fullmatch(item) else None
            if number is None or not (low <= abs(number) <= high and (signed or number >= 0)):
                span = f"{low}..{high} or -{high}..-{low}" if signed else f"{low}..{high}"
                raise RecurrenceError(f"{name} takes integers in {span}, got {value}")
            numbers.add(number)
        return tuple(sorted(numbers))

    return read


def _read_weekdays(name: str, value: str) -> tuple[weekday, ...]:
    days = []
    for item in value.split(","):
        match = _WEEKDAY_RE.fullmatch(item)
        ordinal = int(match.group(2)) if match and match.group(2) else None
        if not match or ordinal == 0:  # past 53 (or 5 in a month): _check_combination
            raise RecurrenceError(f"{name} takes weekdays like MO, 1FR or -1SU, got {item}")
        n = None if ordinal is None else (-ordinal if match.group(1) == "-" else ordinal)
        days.append(weekday(_WEEKDAYS.index(match.group(3)), n))
    return tuple(dict.fromkeys(days))


def _read_wkst(name: str, value: str) -> int:
    if value not in _WEEKDAYS:
        raise RecurrenceError(f"WKST must be one of {', '.join(_WEEKDAYS)}")
    return _WEEKDAYS.index(value)


def _read_until(name: str, value: str) -> str:
    if not _UNTIL_RE.fullmatch(value):
        raise RecurrenceError("UNTIL must look like 20271231T235959Z, 20271231T235959 or 20271231")
    return value


_PARSERS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "FREQ": ("freq", _read_freq),
    "INTERVAL": ("interval", _read_int(1, 1_000_000)),
    "COUNT": ("count", _read_int(1, MAX_COUNT)),
    "UNTIL": ("until", _read_until),
    "WKST": ("wkst", _read_wkst),
    "BYSECOND": ("bysecond", _read_ints(0, 59, signed=False)),  # 60 (leap second): no datetime
    "BYMINUTE": ("byminute", _read_ints(0, 59, signed=False)),
    "BYHOUR": ("byhour", _read_ints(0, 23, signed=False)),
    "BYDAY": ("byday", _read_weekdays),
    "BYMONTHDAY": ("bymonthday", _read_ints(1, 31, signed=True)),
    "BYYEARDAY": ("byyearday", _read_ints(1, 366, signed=True)),
    "BYWEEKNO": ("byweekno", _read_ints(1, 53, signed=True)),
    "BYMONTH": ("bymonth", _read_ints(1, 12, signed=False)),
    "BYSETPOS": ("bysetpos", _read_ints(1, 366, signed=True)),
}


def _check_combination(p: _Parts) -> None:
    """Constraints between parts (RFC 5545 3.3.10), plus nothing finer than a minute."""
    freq = _FREQ_NAMES[p.freq]
    if p.count is not None and p.until is not None:
        raise RecurrenceError("COUNT and UNTIL must not be used together (RFC 5545 3.3.10)")
    if p.byweekno and p.freq != YEARLY:
        raise RecurrenceError("BYWEEKNO is only valid with FREQ=YEARLY")
    if p.byyearday and p.freq in (MONTHLY, WEEKLY, DAILY):
        raise RecurrenceError(f"BYYEARDAY is not valid with FREQ={freq}")
    if p.bymonthday and p.freq == WEEKLY:
        raise RecurrenceError("BYMONTHDAY is not valid with FREQ=WEEKLY")
    if any(day.n for day in p.byday) and (p.freq not in (MONTHLY, YEARLY) or p.byweekno):
        raise RecurrenceError("BYDAY with a number (like 1MO) needs FREQ=MONTHLY or FREQ=YEARLY")
    scope = _ordinal_scope(p)
    for day in p.byday:
        if day.n and abs(day.n) > scope:
            where = "a month" if scope == 5 else "a year"
            raise RecurrenceError(
                f"BYDAY={_weekday_text(day)} never matches: {where} has at most {scope} "
                f"{_WEEKDAYS[day.weekday]} (a number counts within the "
                f"{'month' if scope == 5 else 'year'} with FREQ={freq}"
                f"{';BYMONTH' if p.bymonth and p.freq == YEARLY else ''})"
            )
    if p.bysetpos and not (p.date_filters or p.byhour or p.byminute or p.bysecond):
        raise RecurrenceError("BYSETPOS needs another BYxxx rule part")
    if len(p.bysecond) > 1:
        raise RecurrenceError("BYSECOND takes one value: occurrences are at least a minute apart")


def _ordinal_scope(p: _Parts) -> int:
    """How many of one weekday the period a BYDAY ordinal counts in can hold (RFC 5545 3.3.10).

    MONTHLY, and YEARLY with BYMONTH, count within the month (at most 5); YEARLY otherwise
    within the year (at most 53).
    """
    return 5 if p.freq == MONTHLY or (p.freq == YEARLY and p.bymonth) else 53


def _weekday_text(day: weekday) -> str:
    return f"{day.n or ''}{_WEEKDAYS[day.weekday]}"


def _byday_as_set(p: _Parts) -> _Parts:
    """BYDAY as the set RFC 5545 3.3.10 means when plain and numbered weekdays are mixed.

    dateutil keeps plain weekdays (MO) and numbered ones (-1MO) as two filters that must both
    match, so ``BYDAY=MO,TU,-1MO`` gave only last Mondays and ``BYDAY=SU,1FR`` nothing. A
    plain weekday in a MONTHLY/YEARLY rule is every numbered one of its period (1MO..5MO in a
    month, 1MO..53MO in a year; dateutil drops positions a period lacks), so writing it out
    leaves one filter: the union.
    """
    numbered = [day for day in p.byday if day.n]
    plain = [day for day in p.byday if not day.n]
    if not numbered or not plain:
        return p
    scope = _ordinal_scope(p)
    every = [weekday(day.weekday, n) for day in plain for n in range(1, scope + 1)]
    return replace(p, byday=tuple(dict.fromkeys([*every, *numbered])))


# --- compiling: explicit defaults, policies, validation -------------------------------------


def _compile(rule: SeriesRule) -> _Expansion:
    if not isinstance(rule.policy, Policy):
        raise RecurrenceError("policy must be a Policy")
    zone = _zone(rule.timezone)
    start = _instant(rule.dtstart, "dtstart")
    parts = _parse_rrule(rule.rrule)
    by_parts = (
        parts.date_filters or parts.bysetpos or parts.byhour or parts.byminute or parts.bysecond
    )
    if rule.policy.mode == "completion" and by_parts:
        raise RecurrenceError("completion mode takes FREQ, INTERVAL, COUNT, UNTIL only (no BYxxx)")
    start_wall, nominal_day = _start_wall(start, zone, rule.nominal)
    until = None if parts.until is None else _normalise_until(parts.until, zone)
    if until is not None and until < start:
        raise RecurrenceError(f"UNTIL={parts.until} is before the first occurrence")
    parts = _byday_as_set(parts)
    explicit = _explicit_defaults(parts, start_wall, nominal_day)
    clamped = _clamp_month_end(explicit) if rule.policy.month_end == "clamp" else explicit
    clamp_day = explicit.bymonthday[0] if clamped is not explicit else None
    if clamp_day is None and nominal_day != start_wall.day:  # "Feb 31" only means a clamp
        explicit = clamped = _explicit_defaults(parts, start_wall, start_wall.day)
    _check_size(explicit)
    until_wall = None if until is None else _wall_plus_day(until, zone)
    return _Expansion(
        zone, start, start_wall, clamped, until, until_wall, rule.policy.month_end, clamp_day
    )


def _start_wall(start: datetime, zone: ZoneInfo, nominal: str | None) -> tuple[datetime, int]:
    """DTSTART's wall time for expansion, and the day of month its defaults take.

    Without ``nominal`` both come from the instant. With it, the wall time is the nominal one
    (02:30 in a gap, whose instant is 03:30) on its date, the day capped at the month's end,
    and the day of month is the nominal day (31 for a clamped Feb 28). The nominal must name
    DTSTART: the same instant, or for a day past the month's end, its last day.
    """
    try:
        actual = _wall(start, zone).replace(microsecond=0)
    except OverflowError:
        raise RecurrenceError(f"the first occurrence is past year 9999 in {zone.key}") from None
    if nominal is None:
        return actual, actual.day
    match = _NOMINAL_RE.fullmatch(nominal) if isinstance(nominal, str) else None
    try:
        if match is None:
            raise ValueError(nominal)
        year, month, day, hour, minute, second = map(int, match.groups())
        last = calendar.monthrange(year, month)[1]
        wall = datetime(year, month, min(day, last), hour, minute, second)
        if day > 31 or (day > last and day < 29):
            raise ValueError(nominal)
    except ValueError:
        raise RecurrenceError(f"nominal start {nominal!r} is not YYYY-MM-DDTHH:MM:SS") from None
    if _to_instant(wall, zone) != start.replace(microsecond=0):
        raise RecurrenceError(f"nominal start {nominal} does not name DTSTART")
    return wall, day


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    # OSError: with the tzdata package installed, a name too long for a file name.
    except (ZoneInfoNotFoundError, ValueError, TypeError, OSError) as exc:
        raise _unknown_zone(name) from exc


def _unknown_zone(name: object) -> RecurrenceError:
    return RecurrenceError(f"unknown time zone {name!r}; use an IANA name like Europe/Berlin")


def _normalise_until(value: str, zone: ZoneInfo) -> datetime:
    """UNTIL as an inclusive UTC instant.

    RFC 5545 3.3.10 requires UTC when DTSTART has a zone; a floating local time is read in the
    series' zone (gap/fold as for occurrences), and a date includes that whole local day.
    """
    try:
        if value.endswith("Z"):
            return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        day = len(value) == 8
        wall = datetime.strptime(value, "%Y%m%d" if day else "%Y%m%dT%H%M%S")
    except ValueError as exc:
        raise RecurrenceError(f"UNTIL={value} is not a valid date or date-time") from exc
    try:
        if day:
            return _to_instant(wall + timedelta(days=1), zone) - timedelta(microseconds=1)
        return _to_instant(wall, zone)
    except OverflowError:  # its end is past the last instant there is (the day after
        return _LAST_INSTANT  # 9999-12-31, or late that day behind UTC): none is later


def _explicit_defaults(p: _Parts, start: datetime, day: int) -> _Parts:
    """Write out what dateutil derives from DTSTART, so the rule can start anywhere.

    Mirrors ``dateutil.rrule.rrule.__init__``: times of day finer than FREQ come from DTSTART;
    without BYWEEKNO/BYYEARDAY/BYMONTHDAY/BYDAY a YEARLY rule takes DTSTART's month (unless
    BYMONTH) and day, MONTHLY its day, WEEKLY its weekday (RFC 5545 3.3.10, last paragraph).
    ``day`` is DTSTART's nominal day of month (see ``SeriesRule.nominal``).
    """
    changes: dict[str, Any] = {}
    if p.freq < HOURLY and not p.byhour:
        changes["byhour"] = (start.hour,)
    if p.freq < MINUTELY and not p.byminute:
        changes["byminute"] = (start.minute,)
    if not p.bysecond:
        changes["bysecond"] = (start.second,)
    if not (p.byweekno or p.byyearday or p.bymonthday or p.byday):
        if p.freq == YEARLY:
            changes["bymonth"] = p.bymonth or (start.month,)
            changes["bymonthday"] = (day,)
        elif p.freq == MONTHLY:
            changes["bymonthday"] = (day,)
        elif p.freq == WEEKLY:
            changes["byday"] = (weekday(start.weekday()),)
    return replace(p, **changes)


def _times_per_day(p: _Parts) -> int:
    """Instances per day (or per hour/minute for HOURLY/MINUTELY) from BYHOUR/BYMINUTE/BYSECOND."""
    count = len(p.bysecond)
    if p.freq < MINUTELY:
        count *= len(p.byminute)
    if p.freq < HOURLY:
        count *= len(p.byhour)
    return count


def _check_size(p: _Parts) -> None:
    """Refuse absurd expansions: dateutil materialises a whole period for BYSETPOS."""
    per_period = {YEARLY: 366, MONTHLY: 31, WEEKLY: 7}.get(p.freq, 1) * _times_per_day(p)
    if per_period > MAX_PER_PERIOD:
        raise RecurrenceError(
            f"the rule expands to up to {per_period} instances per "
            f"{_FREQ_NAMES[p.freq].lower()} period (limit {MAX_PER_PERIOD}); use a finer FREQ"
        )
    if p.bysetpos and all(abs(pos) > per_period for pos in p.bysetpos):
        raise RecurrenceError("BYSETPOS points past every instance of a period: no occurrence")


def _clamp_month_end(p: _Parts) -> _Parts:
    """RFC 7529 SKIP=BACKWARD for a day 29..31: the last day of a month that lacks it.

    Rewrites BYMONTHDAY=D as BYMONTHDAY=28..D;BYSETPOS=-T..-1 (the last existing day of the
    month, with its T times of day), so it stays inside the month. Only for MONTHLY, and YEARLY
    with one month (BYSETPOS counts over the whole year), with one positive day and none of
    BYDAY/BYSETPOS/BYYEARDAY/BYWEEKNO; other rules are left as RFC 5545 "skip".
    """
    one_month = p.freq == MONTHLY or (p.freq == YEARLY and len(p.bymonth) == 1)
    others = p.byday or p.bysetpos or p.byyearday or p.byweekno
    if not one_month or others or len(p.bymonthday) != 1 or not 29 <= p.bymonthday[0] <= 31:
        return p
    times = _times_per_day(p)
    return replace(
        p, bymonthday=tuple(range(28, p.bymonthday[0] + 1)), bysetpos=tuple(range(-times, 0))
    )


# --- expansion ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Expansion:
    """A compiled series. Instants are UTC internally (same-zone datetimes compare by wall
    clock and ignore ``fold``); walls are naive local times in ``zone``."""

    zone: ZoneInfo
    start: datetime
    start_wall: datetime
    parts: _Parts
    until: datetime | None
    until_wall: datetime | None
    month_end: str
    clamp_day: int | None = None  # the day 29..31 a clamped rule stands for

    def rule(self, anchor: datetime, work: Meter, until: datetime | None = None) -> rrule:
        """dateutil's rule started at wall time ``anchor``; all parts explicit, COUNT ours.

        Its iteration charges ``work`` (``rrule_meter``) and stops when that is spent.

        dateutil 2.9 builds the first WEEKLY period from DTSTART's day onwards rather than the
        whole week, which changes what BYSETPOS picks in that week (and would make restarting
        mid-week wrong); such rules start at the week's first day (WKST), as dateutil already
        does for months and years. Earlier instances are then dropped by instant.
        """
        p = self.parts
        if p.freq == WEEKLY and p.bysetpos:
            anchor = datetime.combine(_week_start(anchor.date(), p.wkst), time())
        expansion = rrule(
            p.freq,
            dtstart=anchor,
            interval=p.interval,
            wkst=p.wkst,
            until=until,
            bysetpos=p.bysetpos or None,
            bymonth=p.bymonth or None,
            bymonthday=p.bymonthday or None,
            byyearday=p.byyearday or None,
            byweekno=p.byweekno or None,
            byweekday=p.byday or None,
            byhour=p.byhour or None,
            byminute=p.byminute or None,
            bysecond=p.bysecond or None,
            cache=False,
        )
        return rrule_meter.meter(expansion, work)

    def walk(self, anchor: datetime, after: datetime, work: Meter) -> Iterator[datetime]:
        """Distinct instants after ``after``, expanding from wall time ``anchor``; UNTIL applied.

        Raises ``WorkExhausted`` when ``work`` is spent, ``_Unreachable`` when dateutil finds
        BYHOUR/BYMINUTE unreachable from ``anchor`` with this INTERVAL.
        """
        try:
            walls = _iterate(self.rule(anchor, work, until=self.until_wall))
        except ValueError as exc:
            raise _Unreachable(str(exc)) from exc
        last = after
        for wall in walls:
            work.charge(INSTANCE_WORK)
            try:
                at = _to_instant(wall, self.zone)
            except OverflowError:  # past year 9999 in UTC
                return
            if at <= last:
                continue  # before `after`, or a duplicate instant (RFC 5545 3.8.5.3)
            if self.until is not None and at > self.until:
                return
            last = at
            yield at

    def numbered(
        self, instants: Iterator[datetime], previous: int
    ) -> Iterator[tuple[int, datetime]]:
        """Number occurrences after occurrence ``previous``, ending at COUNT and UNTIL.

        COUNT is checked before asking for the next instant: expanding past the last one
        could walk a sparse rule's empty periods for nothing.
        """
        index = previous
        while self.parts.count is None or index + 1 < self.parts.count:
            at = next(instants, None)
            if at is None or (self.until is not None and at > self.until):
                return
            index += 1
            yield index, at

    def after(self, previous: datetime, work: Meter) -> Iterator[datetime]:
        """Schedule mode: occurrences after ``previous``, never iterating from DTSTART."""
        try:
            yield from self.walk(self.anchor(previous, work), previous, work)
        except _Unreachable as exc:
            raise RecurrenceError("previous_at is not an occurrence of this series") from exc

    def anchor(self, previous: datetime, work: Meter) -> datetime:
        """The wall time that produced occurrence ``previous``: where dateutil restarts.

        Restarting dateutil at an occurrence with the DTSTART-derived parts made explicit gives
        the same later occurrences as iterating from DTSTART: every FREQ period is stepped by
        INTERVAL from the anchor's period, which is one of DTSTART's. The one ambiguity is an
        instant a spring-forward gap shifted onto (02:30 -> 03:30): its wall time was the
        nonexistent one if that is an occurrence, and restarting at 03:30 could change the
        INTERVAL alignment of an HOURLY/MINUTELY rule or miss later gap times.
        """
        if previous == self.start:
            return self.start_wall
        source = self.gap_source(previous)
        if source is not None and self.is_occurrence(source, work):
            return source
        return _wall(previous, self.zone).replace(microsecond=0)

    def gap_source(self, at: datetime) -> datetime | None:
        """The nonexistent wall time that RFC 5545 3.3.5 shifts onto instant ``at``, if any."""
        offset_before = (at - timedelta(days=1)).astimezone(self.zone).utcoffset() or timedelta()
        candidate = (at + offset_before).replace(tzinfo=None)
        if candidate == _wall(at, self.zone) or _to_instant(candidate, self.zone) != at:
            return None
        return candidate

    def is_occurrence(self, wall: datetime, work: Meter) -> bool:
        """Whether the rule expanded from DTSTART yields ``wall``, without iterating from there."""
        if wall < self.rule_start or not self.aligned(wall):
            return False
        try:
            candidates = _iterate(self.rule(wall, work, until=wall))
        except ValueError:  # dateutil: BYHOUR/BYMINUTE unreachable from this wall time
            return False
        for candidate in candidates:
            work.charge(INSTANCE_WORK)
            if candidate >= wall:
                return candidate == wall
        return False

    @property
    def rule_start(self) -> datetime:
        """The first wall time dateutil considers (see ``rule`` for WEEKLY with BYSETPOS)."""
        if self.parts.freq == WEEKLY and self.parts.bysetpos:
            return datetime.combine(_week_start(self.start_wall.date(), self.parts.wkst), time())
        return self.start_wall

    def aligned(self, wall: datetime) -> bool:
        """Whether ``wall`` lies in a FREQ period that INTERVAL steps reach from DTSTART's."""
        steps = _period_number(self.parts, wall) - _period_number(self.parts, self.start_wall)
        return steps % self.parts.interval == 0

    def after_completion(self, completed: datetime, previous: datetime) -> Iterator[datetime]:
        """Completion mode: INTERVAL after each completion, then after each result.

        FREQ DAILY and coarser: the completion's local date plus INTERVAL days/weeks/months/
        years, at DTSTART's wall-clock time (a missing month day follows ``month_end``: "skip"
        moves on by INTERVAL until the day exists, "clamp" takes the month's last day). HOURLY
        and MINUTELY: the completion instant plus INTERVAL hours/minutes. A result at or before
        ``previous`` (completed early) is stepped past it, so nothing is materialised twice.
        """
        at = self._first_step_after(completed, previous)
        while at is not None:
            yield at
            at = self.completion_step(at)

    def metered_completion(
        self, completed: datetime, previous: datetime, work: Meter
    ) -> Iterator[datetime]:
        """``after_completion`` charging ``work`` for every step, the ones stepped past
        ``previous`` included (a forecast may start far from its first result)."""
        at = self._first_step_after(completed, previous, work)
        while at is not None:
            work.charge(INSTANCE_WORK)
            yield at
            at = self.completion_step(at)

    def _first_step_after(
        self, completed: datetime, previous: datetime, work: Meter | None = None
    ) -> datetime | None:
        """The first completion step after ``previous``. Steps of a fixed length (HOURLY,
        MINUTELY, and DAILY and WEEKLY in local days) jump to just before it at once:
        stepped one at a time, an occurrence due decades after its early completion cost a
        step per minute between them (7.5 s for 2046, 38 s for 2126), in a request. MONTHLY
        and YEARLY step (at most about 100,000 months to year 9999, a quarter second)."""
        at = self.completion_step(completed.replace(microsecond=0))
        if at is not None and at <= previous:
            at = self._jump_toward(at, previous)
        while at is not None and at <= previous:
            if work is not None:
                work.charge(INSTANCE_WORK)
            at = self.completion_step(at)
        return at

    def _jump_toward(self, at: datetime, previous: datetime) -> datetime:
        """A step of ``at``'s sequence at or before ``previous``, a few steps short of it."""
        p = self.parts
        if p.freq in (HOURLY, MINUTELY):
            step = (
                timedelta(hours=p.interval) if p.freq == HOURLY else timedelta(minutes=p.interval)
            )
            return at + step * ((previous - at) // step)
        if p.freq not in (DAILY, WEEKLY):
            return at
        days = p.interval * (7 if p.freq == WEEKLY else 1)
        start = at.astimezone(self.zone).date()
        # Two days short of `previous` in UTC: its local date cannot pass year 9999.
        target = (previous - timedelta(days=2)).astimezone(self.zone).date()
        steps = max(0, (target - start).days // days - 1)
        if not steps:
            return at
        day = start + timedelta(days=steps * days)
        return _to_instant(datetime.combine(day, self.start_wall.time()), self.zone)

    def completion_step(self, at: datetime) -> datetime | None:
        p = self.parts
        try:
            if p.freq in (HOURLY, MINUTELY):
                unit = "hours" if p.freq == HOURLY else "minutes"
                return at + timedelta(**{unit: p.interval})
            day = _add_period(at.astimezone(self.zone).date(), p.freq, p.interval, self.month_end)
            if day is None:
                return None
            return _to_instant(datetime.combine(day, self.start_wall.time()), self.zone)
        except OverflowError:
            return None

    def check_density(self) -> None:
        """Refuse a rule without occurrences, or too sparse to expand within budget.

        Admission for ``parse()``: the rule must yield occurrences in
        ``DENSITY_OCCURRENCES`` FREQ periods after DTSTART's, or end (COUNT, UNTIL), within
        ``DENSITY_OCCURRENCES * OCCURRENCE_WORK`` units, so a later step usually fits
        ``NEXT_WORK`` (ten average gaps) and ``MAX_WORK`` unless the calendar spaces the
        periods unevenly (a series that cannot step is paused:
        ``services.series.materialise_next``). Periods, not occurrences:
        the gaps a step walks are between periods, and a rule with many occurrences in
        one (BYHOUR, BYSETPOS) passed on DTSTART's day alone, then stopped its series at
        the first gap (``FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO`` with twelve hours
        and eleven BYSETPOS values: 28 years of days to its next Monday, an audit,
        2026-12-07). A refused rule is diagnosed to say whether it has no occurrence at all.
        """
        if self.parts.count == 1:
            return
        work = Meter(DENSITY_OCCURRENCES * OCCURRENCE_WORK)
        found = 0
        periods = {_period_number(self.parts, self.start_wall)}
        try:
            for _, at in self.numbered(self.walk(self.start_wall, self.start, work), 0):
                found += 1
                wall = at.astimezone(self.zone).replace(tzinfo=None)
                periods.add(_period_number(self.parts, wall))
                if len(periods) > DENSITY_OCCURRENCES:
                    return
            ended = True  # by COUNT or UNTIL (or year 9999) before that many
        except (WorkExhausted, _Unreachable):
            ended = False
        if ended and found:
            return
        recurs = self.recurs()
        if recurs is False:
            raise RecurrenceError(
                f"the rule has no occurrence after the first one within {SEARCH_YEARS} years"
            )
        if ended:
            return
        freq = _FREQ_NAMES[self.parts.freq]
        raise RecurrenceError(
            f"the rule is too sparse for FREQ={freq}: {len(periods) - 1} of the "
            f"{DENSITY_OCCURRENCES} {_STEP_NAMES[self.parts.freq]}s with an occurrence it "
            f"needs after the first were found within {work.budget:,} units of expansion "
            f"work (FREQ={freq} steps through every "
            f"{_STEP_NAMES[self.parts.freq]} in between); use a coarser FREQ, "
            "e.g. FREQ=YEARLY with the same BYxxx parts"
        )

    def recurs(self) -> bool | None:
        """Whether the rule has an occurrence after DTSTART within ``SEARCH_YEARS`` years;
        None when ``DIAGNOSIS_WORK`` did not suffice to tell.

        dateutil keeps iterating empty periods until year 9999, past UNTIL, so the search runs
        on DTSTART moved by whole 400-year Gregorian cycles (same dates and weekdays, same
        periods) to near year 9999, where dateutil stops by itself. A cheap YEARLY scan of the
        day filters goes first. UNTIL and COUNT are ignored: this is about the pattern.
        """
        work = Meter(DIAGNOSIS_WORK)
        cycles = max(0, (MAXYEAR - SEARCH_YEARS - self.start_wall.year) // 400)
        probe = self.start_wall.replace(year=self.start_wall.year + 400 * cycles)
        end = _LAST_WALL if probe.year + SEARCH_YEARS > MAXYEAR else _add_years(probe, SEARCH_YEARS)
        try:
            if self.parts.freq >= WEEKLY and not _days_exist(self.parts, probe.year, end, work):
                return False
            walls = _iterate(self.rule(probe, work, until=end))
            return any(wall > probe for wall in walls)
        except ValueError:  # dateutil: BYHOUR/BYMINUTE never reached with this INTERVAL
            return False
        except WorkExhausted:
            return None


class _Unreachable(Exception):
    """dateutil refused the rule from this anchor: BYHOUR/BYMINUTE cannot be reached."""


_STEP_NAMES = {
    YEARLY: "year",
    MONTHLY: "month",
    WEEKLY: "week",
    DAILY: "day",
    HOURLY: "hour (every day when days are filtered)",
    MINUTELY: "minute (every day when days are filtered)",
}


def _first_due(
    candidates: Iterator[tuple[int, datetime]], now: datetime | None, zone: ZoneInfo
) -> Next | None:
    """The first candidate after ``now`` (any, when ``now`` is None), with the ones skipped;
    the last one skipped if the budget runs out first (see ``SeriesRule.next``)."""
    missed: list[tuple[int, datetime]] = []
    try:
        for index, at in candidates:
            if now is None or at > now:
                return Next(
                    at.astimezone(zone), index, tuple(m.astimezone(zone) for _, m in missed)
                )
            missed.append((index, at))
    except WorkExhausted:
        if not missed:
            raise
        *passed, (index, at) = missed
        return Next(at.astimezone(zone), index, tuple(m.astimezone(zone) for _, m in passed), False)
    return None


def _days_exist(p: _Parts, year: int, end: datetime, work: Meter) -> bool:
    """Whether any day from Jan 1 of ``year`` to ``end`` passes the rule's day filters.

    A YEARLY scan is a few thousand steps even to year 9999, while a DAILY or MINUTELY rule
    that never matches is scanned day by day. Only for FREQ without BYDAY ordinals.
    """
    if not p.date_filters:
        return True
    probe = rrule(
        YEARLY,
        dtstart=datetime(year, 1, 1),
        until=end,
        bymonth=p.bymonth or None,
        bymonthday=p.bymonthday or None,
        byyearday=p.byyearday or None,
        byweekday=p.byday or None,
        cache=False,
    )
    return any(True for _ in _iterate(rrule_meter.meter(probe, work)))


def _iterate(rule: rrule) -> Iterator[datetime]:
    """dateutil's iteration, ending quietly at year 9999 where some frequencies raise."""
    walls = iter(rule)
    while True:
        try:
            yield next(walls)
        except (StopIteration, ValueError, OverflowError):
            return


def _add_period(day: date, freq: int, interval: int, month_end: str) -> date | None:
    """``day`` plus INTERVAL FREQ units, with ``month_end`` for a day the month lacks."""
    if freq == DAILY:
        return day + timedelta(days=interval)
    if freq == WEEKLY:
        return day + timedelta(weeks=interval)
    months = interval if freq == MONTHLY else 12 * interval
    for step in range(1, 401):
        year, month = divmod(day.year * 12 + day.month - 1 + step * months, 12)
        if year > MAXYEAR:
            return None
        last = calendar.monthrange(year, month + 1)[1]
        if day.day <= last:
            return date(year, month + 1, day.day)
        if month_end == "clamp":
            return date(year, month + 1, last)
    return None


def _period_number(p: _Parts, wall: datetime) -> int:
    """The FREQ period holding ``wall`` on a fixed scale (WEEKLY weeks start at WKST)."""
    if p.freq == YEARLY:
        return wall.year
    if p.freq == MONTHLY:
        return wall.year * 12 + wall.month
    if p.freq == WEEKLY:
        return _week_start(wall.date(), p.wkst).toordinal() // 7
    days = wall.toordinal()
    if p.freq == DAILY:
        return days
    hours = days * 24 + wall.hour
    return hours if p.freq == HOURLY else hours * 60 + wall.minute


def _week_start(day: date, wkst: int) -> date:
    return day - timedelta(days=(day.weekday() - wkst) % 7)


def _add_years(wall: datetime, years: int) -> datetime:
    try:
        return wall.replace(year=wall.year + years)
    except ValueError:  # February 29
        return wall.replace(year=wall.year + years, day=28)


# --- time zone helpers ----------------------------------------------------------------------


def _instant(value: datetime, name: str) -> datetime:
    """An aware datetime as UTC; naive ones are refused (their zone would be a guess)."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise RecurrenceError(f"{name} must be a datetime with a time zone or UTC offset")
    try:
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise RecurrenceError(f"{name} is out of range") from exc


def _to_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """A local wall time as a UTC instant (RFC 5545 3.3.5).

    ``fold=0`` is the first of two ambiguous times, and for a nonexistent time it applies the
    offset before the gap, which moves the time forward by the gap (02:30 -> 03:30).
    """
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def _wall(at: datetime, zone: ZoneInfo) -> datetime:
    return at.astimezone(zone).replace(tzinfo=None, fold=0)


def _wall_plus_day(at: datetime, zone: ZoneInfo) -> datetime:
    """A wall-time bound for dateutil that lets every instant up to ``at`` through.

    Wall order and instant order differ by at most an offset change, so a day of slack is
    enough; the exact UNTIL check is on instants.
    """
    try:
        wall = _wall(at, zone)
    except OverflowError:  # an UNTIL late in 9999 UTC is past year 9999 in a zone ahead of it
        return _LAST_WALL
    return _LAST_WALL if wall >= _LAST_WALL - timedelta(days=1) else wall + timedelta(days=1)


# --- friendly spec --------------------------------------------------------------------------

_FRIENDLY_PARTS: dict[str, tuple[str, type]] = {
    "interval": ("INTERVAL", int),
    "months": ("BYMONTH", int),
    "month_days": ("BYMONTHDAY", int),
    "weekdays": ("BYDAY", str),
    "set_positions": ("BYSETPOS", int),
    "week_start": ("WKST", str),
    "count": ("COUNT", int),
}


def _friendly_list(key: str, value: Any, kind: type) -> str:
    """One value or a list as RRULE list text; text items are single tokens like MO or -1FR."""
    items = list(value) if isinstance(value, list | tuple) else [value]
    words = [str(item).strip().upper() for item in items]
    wrong = [item for item in items if isinstance(item, bool) or not isinstance(item, kind)]
    if not items or wrong or not all(re.fullmatch(r"[+-]?[0-9A-Z]+", word) for word in words):
        expected = (
            "an integer or a list of integers" if kind is int else "a word or a list of words"
        )
        raise RecurrenceError(f"{key} must be {expected}")
    return ",".join(words)


def _friendly_until(value: Any) -> str:
    """RFC 3339 text or a datetime/date as UNTIL: aware -> UTC, naive -> floating, date -> date."""
    if isinstance(value, str):
        try:
            if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", value.strip()):
                value = date.fromisoformat(value.strip())
            else:
                value = datetime.fromisoformat(value.strip())
        except ValueError as exc:
            raise RecurrenceError("until must be an RFC 3339 date-time or a date") from exc
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            return f"{value:%Y%m%dT%H%M%S}"
        return f"{_instant(value, 'until'):%Y%m%dT%H%M%S}Z"
    if isinstance(value, date):
        return f"{value:%Y%m%d}"
    raise RecurrenceError("until must be an RFC 3339 date-time or a date")
