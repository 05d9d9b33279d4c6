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
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import MAXYEAR, UTC, date, datetime, time, timedelta
from itertools import chain, islice
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, WEEKLY, YEARLY, rrule, weekday

MAX_COUNT = 10_000
"""Upper bound for COUNT and for ``forecast(count)``."""
MAX_PER_PERIOD = 10_000
"""Upper bound for the instances one FREQ period may expand to (days x times of day)."""
SEARCH_YEARS = 400
"""A rule must produce an occurrence within this many years after DTSTART (one Gregorian cycle)."""

_FREQS = {"YEARLY": YEARLY, "MONTHLY": MONTHLY, "WEEKLY": WEEKLY, "DAILY": DAILY}
_FREQS |= {"HOURLY": HOURLY, "MINUTELY": MINUTELY}
_FREQ_NAMES = {value: name for name, value in _FREQS.items()}
_WEEKDAYS = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
_WEEKDAY_RE = re.compile(r"([+-]?)([0-9]{1,2})?(MO|TU|WE|TH|FR|SA|SU)")
_INT_RE = re.compile(r"[+-]?[0-9]{1,7}")
_UNTIL_RE = re.compile(r"[0-9]{8}(T[0-9]{6}Z?)?")
_LAST_WALL = datetime(MAXYEAR, 12, 31, 23, 59, 59)


class RecurrenceError(ValueError):
    """A rule, zone or policy a client sent that cannot be used; the message names the problem."""


@dataclass(frozen=True)
class Policy:
    """How a series moves on: by its schedule or from each completion, and at month ends."""

    mode: Literal["schedule", "completion"] = "schedule"
    month_end: Literal["skip", "clamp"] = "skip"
    catch_up: Literal["next_in_series", "next_future"] = "next_in_series"

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


@dataclass(frozen=True)
class SeriesRule:
    """A validated series: rule text (kept verbatim), IANA zone, first occurrence and policy.

    Constructing one validates it (``RecurrenceError``), so a row loaded from the database can
    be rebuilt with ``SeriesRule(...)``; ``parse()`` is the friendlier entry point for input.
    """

    rrule: str
    timezone: str
    dtstart: datetime
    policy: Policy = Policy()
    _expansion: _Expansion = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_expansion", _compile(self))

    def forecast(self, count: int) -> list[datetime]:
        """The first ``count`` occurrences from DTSTART, aware in the series' zone.

        Exactly what materialisation yields in schedule mode (in completion mode it is the plan
        the completions start from).
        """
        if isinstance(count, bool) or not isinstance(count, int) or not 0 <= count <= MAX_COUNT:
            raise RecurrenceError(f"count must be an integer from 0 to {MAX_COUNT}")
        exp = self._expansion
        rest = exp.numbered(exp.walk(exp.start_wall, exp.start), 0)
        occurrences = islice(chain([(0, exp.start)], rest), count)
        return [at.astimezone(exp.zone) for _, at in occurrences]

    def next(
        self,
        previous_at: datetime,
        previous_index: int,
        completed_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Next | None:
        """The occurrence after ``previous_at`` (occurrence number ``previous_index``).

        None when the series has ended (COUNT/UNTIL). ``previous_at`` must be the scheduled
        time of that occurrence (not an edited due date). Schedule mode follows the rule;
        completion mode steps from ``completed_at`` (see ``_Expansion.after_completion``) and
        never returns a time at or before ``previous_at``. With ``catch_up="next_future"``
        occurrences at or before ``now`` are skipped, counted, and listed in ``missed``; if the
        series ends among them the answer is None.
        """
        exp = self._expansion
        previous = _instant(previous_at, "previous_at")
        if isinstance(previous_index, bool) or not isinstance(previous_index, int):
            raise RecurrenceError("previous_index must be an integer")
        if previous_index < 0 or previous < exp.start:
            raise RecurrenceError("previous_at/previous_index do not name an occurrence")
        if self.policy.mode == "completion":
            if completed_at is None:
                raise RecurrenceError("a completion-mode series needs completed_at")
            instants = exp.after_completion(_instant(completed_at, "completed_at"), previous)
        else:
            instants = exp.after(previous)
        skip_until = None
        if now is not None and self.policy.catch_up == "next_future":
            skip_until = _instant(now, "now")
        return _first_due(exp.numbered(instants, previous_index), skip_until, exp.zone)


def parse(rrule: str, timezone: str, dtstart: datetime, policy: Policy = Policy()) -> SeriesRule:
    """Validate client input into a ``SeriesRule``; raises ``RecurrenceError`` with the reason.

    Accepts the RRULE value with or without an ``RRULE:`` prefix (the prefix is dropped; the
    rest is kept verbatim). Rejects: an unparsable rule or unknown part, DTSTART (or any other
    property) inside the text, an unknown IANA zone, a naive ``dtstart``, COUNT with UNTIL
    (RFC 5545 3.3.10), FREQ=SECONDLY or several BYSECOND values (nothing finer than a minute),
    COUNT above ``MAX_COUNT``, more than ``MAX_PER_PERIOD`` instances per period, UNTIL before
    DTSTART, BYxxx parts in completion mode, and a rule with no occurrence after DTSTART within
    ``SEARCH_YEARS`` years (February 30, BYSETPOS past the set, ...).
    """
    if not isinstance(rrule, str):
        raise RecurrenceError("rrule must be a string such as FREQ=WEEKLY;BYDAY=MO")
    return SeriesRule(_rule_body(rrule), timezone, dtstart, policy)


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

    freq: int
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


def _read_freq(name: str, value: str) -> int:
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
        if not match or ordinal == 0 or (ordinal or 0) > 53:
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
    if p.bysetpos and not (p.date_filters or p.byhour or p.byminute or p.bysecond):
        raise RecurrenceError("BYSETPOS needs another BYxxx rule part")
    if len(p.bysecond) > 1:
        raise RecurrenceError("BYSECOND takes one value: occurrences are at least a minute apart")


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
    start_wall = _wall(start, zone).replace(microsecond=0)
    until = None if parts.until is None else _normalise_until(parts.until, zone)
    if until is not None and until < start:
        raise RecurrenceError(f"UNTIL={parts.until} is before the first occurrence")
    parts = _explicit_defaults(parts, start_wall)
    _check_size(parts)
    if rule.policy.month_end == "clamp":
        parts = _clamp_month_end(parts)
    until_wall = None if until is None else _wall_plus_day(until, zone)
    expansion = _Expansion(zone, start, start_wall, parts, until, until_wall, rule.policy.month_end)
    expansion.check_recurs()
    return expansion


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
        raise RecurrenceError(
            f"unknown time zone {name!r}; use an IANA name like Europe/Berlin"
        ) from exc


def _normalise_until(value: str, zone: ZoneInfo) -> datetime:
    """UNTIL as an inclusive UTC instant.

    RFC 5545 3.3.10 requires UTC when DTSTART has a zone; a floating local time is read in the
    series' zone (gap/fold as for occurrences), and a date includes that whole local day.
    """
    try:
        if len(value) == 8:
            next_day = datetime.strptime(value, "%Y%m%d") + timedelta(days=1)
            return _to_instant(next_day, zone) - timedelta(microseconds=1)
        if value.endswith("Z"):
            return datetime.strptime(value, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return _to_instant(datetime.strptime(value, "%Y%m%dT%H%M%S"), zone)
    except (ValueError, OverflowError) as exc:
        raise RecurrenceError(f"UNTIL={value} is not a valid date or date-time") from exc


def _explicit_defaults(p: _Parts, start: datetime) -> _Parts:
    """Write out what dateutil derives from DTSTART, so the rule can start anywhere.

    Mirrors ``dateutil.rrule.rrule.__init__``: times of day finer than FREQ come from DTSTART;
    without BYWEEKNO/BYYEARDAY/BYMONTHDAY/BYDAY a YEARLY rule takes DTSTART's month (unless
    BYMONTH) and day, MONTHLY its day, WEEKLY its weekday (RFC 5545 3.3.10, last paragraph).
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
            changes["bymonthday"] = (start.day,)
        elif p.freq == MONTHLY:
            changes["bymonthday"] = (start.day,)
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

    def rule(self, anchor: datetime, until: datetime | None = None) -> rrule:
        """dateutil's rule started at wall time ``anchor``; all parts explicit, COUNT ours.

        dateutil 2.9 builds the first WEEKLY period from DTSTART's day onwards rather than the
        whole week, which changes what BYSETPOS picks in that week (and would make restarting
        mid-week wrong); such rules start at the week's first day (WKST), as dateutil already
        does for months and years. Earlier instances are then dropped by instant.
        """
        p = self.parts
        if p.freq == WEEKLY and p.bysetpos:
            anchor = datetime.combine(_week_start(anchor.date(), p.wkst), time())
        return rrule(
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

    def walk(self, anchor: datetime, after: datetime) -> Iterator[datetime]:
        """Distinct instants after ``after``, expanding from wall time ``anchor``; UNTIL applied."""
        try:
            walls = _iterate(self.rule(anchor, until=self.until_wall))
        except ValueError as exc:  # dateutil: BYHOUR/BYMINUTE unreachable from this anchor
            raise RecurrenceError("previous_at is not an occurrence of this series") from exc
        last = after
        for wall in walls:
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
        """Number occurrences after occurrence ``previous``, ending at COUNT and UNTIL."""
        for index, at in enumerate(instants, start=previous + 1):
            if self.parts.count is not None and index >= self.parts.count:
                return
            if self.until is not None and at > self.until:
                return
            yield index, at

    def after(self, previous: datetime) -> Iterator[datetime]:
        """Schedule mode: occurrences after ``previous``, never iterating from DTSTART."""
        return self.walk(self.anchor(previous), previous)

    def anchor(self, previous: datetime) -> datetime:
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
        if source is not None and self.is_occurrence(source):
            return source
        return _wall(previous, self.zone).replace(microsecond=0)

    def gap_source(self, at: datetime) -> datetime | None:
        """The nonexistent wall time that RFC 5545 3.3.5 shifts onto instant ``at``, if any."""
        offset_before = (at - timedelta(days=1)).astimezone(self.zone).utcoffset() or timedelta()
        candidate = (at + offset_before).replace(tzinfo=None)
        if candidate == _wall(at, self.zone) or _to_instant(candidate, self.zone) != at:
            return None
        return candidate

    def is_occurrence(self, wall: datetime) -> bool:
        """Whether the rule expanded from DTSTART yields ``wall``, without iterating from there."""
        if wall < self.rule_start or not self.aligned(wall):
            return False
        return wall in _iterate(self.rule(wall, until=wall))

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
        at = self.completion_step(completed.replace(microsecond=0))
        while at is not None and at <= previous:
            at = self.completion_step(at)
        while at is not None:
            yield at
            at = self.completion_step(at)

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

    def check_recurs(self) -> None:
        """Reject a rule with no occurrence after DTSTART within ``SEARCH_YEARS`` years.

        dateutil keeps iterating empty periods until year 9999, past UNTIL (about a second for
        an impossible MINUTELY rule), so the search runs on DTSTART moved by whole 400-year
        Gregorian cycles (same dates and weekdays, same periods) to near year 9999, where
        dateutil stops by itself. A cheap YEARLY scan of the day filters goes first.
        """
        if self.parts.count == 1:
            return
        cycles = max(0, (MAXYEAR - SEARCH_YEARS - self.start_wall.year) // 400)
        probe = self.start_wall.replace(year=self.start_wall.year + 400 * cycles)
        end = _LAST_WALL if probe.year + SEARCH_YEARS > MAXYEAR else _add_years(probe, SEARCH_YEARS)
        try:
            found = self.parts.freq < WEEKLY or _days_exist(self.parts, probe.year, end)
            found = found and any(wall > probe for wall in _iterate(self.rule(probe, until=end)))
        except ValueError:  # dateutil: BYHOUR/BYMINUTE never reached with this INTERVAL
            found = False
        if not found:
            raise RecurrenceError(
                f"the rule has no occurrence after the first one within {SEARCH_YEARS} years"
            )


def _first_due(
    candidates: Iterator[tuple[int, datetime]], now: datetime | None, zone: ZoneInfo
) -> Next | None:
    """The first candidate after ``now`` (any, when ``now`` is None), with the ones skipped."""
    missed: list[datetime] = []
    for index, at in candidates:
        if now is None or at > now:
            return Next(at.astimezone(zone), index, tuple(m.astimezone(zone) for m in missed))
        missed.append(at)
    return None


def _days_exist(p: _Parts, year: int, end: datetime) -> bool:
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
    return any(True for _ in _iterate(probe))


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
    wall = _wall(at, zone)
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
