"""The engine against an independent day-by-day expander (issue 10, item 14).

dateutil is no oracle where it departs from RFC 5545 (a BYDAY list mixing plain and
numbered weekdays, ordinals past a period's end), so these properties compare with
``reference()``: a brute-force walk over calendar days that reads RFC 5545 3.3.10
literally, simple enough to be obviously right. Re-basing is checked against the series
it came from: the same rule re-based on any occurrence, with that occurrence's nominal
time, continues exactly as the original.
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, timedelta
from typing import Literal, TypedDict
from zoneinfo import ZoneInfo

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from duetide.rules.recurrence import Policy, RecurrenceError, SeriesRule, parse
from tests.unit.test_recurrence import series_cases

WEEKDAYS = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
NEW_YORK = ZoneInfo("America/New_York")


class Rule(TypedDict):
    """A MONTHLY/YEARLY rule as parts; BYDAY entries are (ordinal or None, weekday 0-6)."""

    FREQ: Literal["MONTHLY", "YEARLY"]
    INTERVAL: int
    BYMONTH: set[int]
    BYMONTHDAY: set[int]
    BYDAY: list[tuple[int | None, int]]
    BYSETPOS: set[int]


# --- reference expander -----------------------------------------------------------------------


def nth_in(day: date, first: date, last: date) -> tuple[int, int]:
    """Which of its weekday ``day`` is in ``first``..``last``, counted from either end."""
    return (day - first).days // 7 + 1, -((last - day).days // 7 + 1)


def day_matches(rule: Rule, day: date) -> bool:
    months, monthdays, byday = rule["BYMONTH"], rule["BYMONTHDAY"], rule["BYDAY"]
    if months and day.month not in months:
        return False
    length = calendar.monthrange(day.year, day.month)[1]
    if monthdays and day.day not in monthdays and day.day - length - 1 not in monthdays:
        return False
    if not byday:
        return True
    if rule["FREQ"] == "MONTHLY" or months:
        first, last = day.replace(day=1), day.replace(day=length)
    else:
        first, last = date(day.year, 1, 1), date(day.year, 12, 31)
    for n, weekday in byday:
        if day.weekday() == weekday and (n is None or n in nth_in(day, first, last)):
            return True  # a set: any one entry is enough (RFC 5545 3.3.10)
    return False


def reference(rule: Rule, start: date, end: date) -> list[date]:
    """Days of a MONTHLY/YEARLY rule from ``start`` (DTSTART first) to ``end``, day by day."""
    freq, interval = rule["FREQ"], rule["INTERVAL"]
    rule = rule.copy()
    if not rule["BYMONTHDAY"] and not rule["BYDAY"]:  # RFC 5545: derived from DTSTART
        rule["BYMONTHDAY"] = {start.day}
        if freq == "YEARLY" and not rule["BYMONTH"]:
            rule["BYMONTH"] = {start.month}
    periods: dict[tuple[int, ...], list[date]] = {}
    day = date(start.year, 1 if freq == "YEARLY" else start.month, 1)
    last = date(end.year, 12, 31)  # whole periods, so BYSETPOS sees each one entire
    while day <= last:
        key = (day.year,) if freq == "YEARLY" else (day.year, day.month)
        steps = day.year - start.year
        if freq == "MONTHLY":
            steps = steps * 12 + day.month - start.month
        if steps % interval == 0 and day_matches(rule, day):
            periods.setdefault(key, []).append(day)
        day += timedelta(days=1)
    found = [start]
    for days in periods.values():
        if rule["BYSETPOS"]:
            days = sorted(
                {
                    days[p - 1 if p > 0 else p]
                    for p in rule["BYSETPOS"]
                    if -len(days) <= (p - 1 if p > 0 else p) < len(days)
                }
            )
        found += [d for d in days if start < d <= end]
    return found


def text(rule: Rule) -> str:
    parts = [f"FREQ={rule['FREQ']}"]
    if rule["INTERVAL"] > 1:
        parts.append(f"INTERVAL={rule['INTERVAL']}")
    if rule["BYMONTH"]:
        parts.append("BYMONTH=" + ",".join(map(str, sorted(rule["BYMONTH"]))))
    if rule["BYMONTHDAY"]:
        parts.append("BYMONTHDAY=" + ",".join(map(str, sorted(rule["BYMONTHDAY"]))))
    if rule["BYDAY"]:
        parts.append(
            "BYDAY=" + ",".join(f"{'' if n is None else n}{WEEKDAYS[w]}" for n, w in rule["BYDAY"])
        )
    if rule["BYSETPOS"]:
        parts.append("BYSETPOS=" + ",".join(map(str, sorted(rule["BYSETPOS"]))))
    return ";".join(parts)


@st.composite
def rules(draw: st.DrawFn, wide_ordinals: bool = False) -> Rule:
    """MONTHLY/YEARLY rules with BYDAY lists mixing plain and numbered weekdays."""
    freq: Literal["MONTHLY", "YEARLY"] = draw(st.sampled_from(["MONTHLY", "YEARLY"]))
    months = draw(st.sets(st.integers(1, 12), max_size=3))
    yearly_scope = freq == "YEARLY" and not months
    if wide_ordinals:
        ordinal = st.integers(-60, 60).filter(bool)
    else:
        ordinal = (
            st.integers(-53, 53).filter(bool) if yearly_scope else st.integers(-5, 5).filter(bool)
        )
    entry = st.tuples(st.one_of(st.none(), ordinal), st.integers(0, 6))
    byday = draw(st.lists(entry, min_size=1, max_size=4, unique=True))
    return {
        "FREQ": freq,
        "INTERVAL": draw(st.integers(1, 3)),
        "BYMONTH": months,
        "BYMONTHDAY": draw(st.sets(st.sampled_from([1, 7, 13, 29, 31, -1, -7]), max_size=2)),
        "BYDAY": byday,
        "BYSETPOS": draw(st.sets(st.sampled_from([1, 2, -1, -2]), max_size=2)),
    }


def engine_days(series: SeriesRule, end: date) -> list[date]:
    found = series.preview(2000)
    days = [at.date() for at in found.occurrences if at.date() <= end]
    assert not found.truncated or len(days) < len(found.occurrences)
    return days


START_DAYS = st.dates(date(2024, 1, 1), date(2027, 12, 31))


# 150 (0.1 s each: the suite's slowest test at 300); each CI run draws other examples.
@settings(max_examples=150, deadline=None)
@given(rule=rules(), start=START_DAYS)
def test_mixed_byday_lists_are_sets(rule: Rule, start: date) -> None:
    end = start + timedelta(days=3 * 366)
    try:
        series = parse(
            text(rule), "UTC", datetime.combine(start, datetime.min.time(), UTC).replace(hour=9)
        )
    except RecurrenceError as refused:
        assume(False) if ("no occurrence" in str(refused) or "too sparse" in str(refused)) else None
        raise
    expected = reference(rule, start, end)
    if len(expected) == 1:  # nothing in the window: the rule must at least recur later
        return
    assert engine_days(series, end) == expected, (text(rule), start)


@settings(max_examples=200, deadline=None)
@given(rule=rules(wide_ordinals=True), start=START_DAYS)
def test_ordinals_past_the_period_are_refused_and_the_rest_expand(rule: Rule, start: date) -> None:
    scope = 5 if rule["FREQ"] == "MONTHLY" or rule["BYMONTH"] else 53
    never = [n for n, _ in rule["BYDAY"] if n is not None and abs(n) > scope]
    dtstart = datetime.combine(start, datetime.min.time(), UTC).replace(hour=9)
    if never:
        with pytest.raises(RecurrenceError, match="never matches"):
            parse(text(rule), "UTC", dtstart)
        return
    try:
        series = parse(text(rule), "UTC", dtstart)
    except RecurrenceError as refused:
        assert "no occurrence" in str(refused) or "too sparse" in str(refused)
        return
    end = start + timedelta(days=3 * 366)
    expected = reference(rule, start, end)
    if len(expected) > 1:
        assert engine_days(series, end) == expected, (text(rule), start)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("FREQ=MONTHLY;BYDAY=MO,TU,-1MO", ["01-06", "01-07", "01-13", "01-14", "01-20", "01-21"]),
        ("FREQ=MONTHLY;BYDAY=SU,1FR", ["01-06", "01-12", "01-19", "01-26", "02-02", "02-07"]),
        ("FREQ=MONTHLY;BYDAY=5MO", ["01-06", "03-31", "06-30", "09-29", "12-29", "03-30"]),
    ],
)
def test_issue_byday_examples(rule: str, expected: list[str]) -> None:
    series = parse(rule, "UTC", datetime(2025, 1, 6, 9, 0, tzinfo=UTC))
    assert [f"{at:%m-%d}" for at in series.forecast(6)] == expected


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MONTHLY;BYDAY=10SA",
        "FREQ=MONTHLY;BYDAY=8MO",
        "FREQ=YEARLY;BYMONTH=12;BYDAY=53WE",
        "FREQ=MONTHLY;BYDAY=-6FR",
    ],
)
def test_ordinals_that_never_match_are_refused_not_crashing(rule: str) -> None:
    with pytest.raises(RecurrenceError, match="never matches"):
        parse(rule, "UTC", datetime(2025, 1, 6, 9, 0, tzinfo=UTC))


def test_yearly_53rd_weekday_sometimes_matches() -> None:
    series = parse("FREQ=YEARLY;BYDAY=53WE", "UTC", datetime(2025, 1, 6, 9, 0, tzinfo=UTC))
    assert [f"{at:%Y-%m-%d}" for at in series.forecast(3)][1:] == ["2025-12-31", "2031-12-31"]


# --- re-basing keeps the nominal pattern ------------------------------------------------------


def rebased(series: SeriesRule, at: datetime, index: int, rule: str | None = None) -> SeriesRule:
    """What series.update does: the rule anchored on an occurrence, with its nominal time."""
    return SeriesRule(
        rule or series.rrule, series.timezone, at, series.policy, series.nominal_of(at, index)
    )


def test_clamped_monthly_rebased_on_feb_28_keeps_the_31st() -> None:
    clamp = Policy(month_end="clamp")
    series = parse(
        "FREQ=MONTHLY",
        "Europe/Berlin",
        datetime(2026, 1, 31, 9, tzinfo=ZoneInfo("Europe/Berlin")),
        clamp,
    )
    feb = series.forecast(2)[1]
    assert f"{feb:%m-%d}" == "02-28"
    assert series.nominal_of(feb, 1) == "2026-02-31T09:00:00"
    again = parse("FREQ=MONTHLY", "Europe/Berlin", feb, clamp, series.nominal_of(feb, 1))
    assert [f"{at:%m-%d}" for at in again.forecast(4)] == ["02-28", "03-31", "04-30", "05-31"]


def test_daily_0230_rebased_on_the_gap_shifted_0330_keeps_0230() -> None:
    series = parse("FREQ=DAILY", "America/New_York", datetime(2026, 3, 6, 2, 30, tzinfo=NEW_YORK))
    gap_day = series.forecast(3)[2]
    assert f"{gap_day:%m-%d %H:%M}" == "03-08 03:30"
    assert series.nominal_of(gap_day, 2) == "2026-03-08T02:30:00"
    again = parse(
        "FREQ=DAILY", "America/New_York", gap_day, Policy(), series.nominal_of(gap_day, 2)
    )
    assert [f"{at:%m-%d %H:%M}" for at in again.forecast(3)] == [
        "03-08 03:30",
        "03-09 02:30",
        "03-10 02:30",
    ]


def test_nominal_that_does_not_name_dtstart_is_refused() -> None:
    with pytest.raises(RecurrenceError, match="does not name DTSTART"):
        parse(
            "FREQ=DAILY",
            "UTC",
            datetime(2026, 3, 6, 9, tzinfo=UTC),
            Policy(),
            "2026-03-06T10:00:00",
        )
    with pytest.raises(RecurrenceError, match="YYYY-MM-DD"):
        parse(
            "FREQ=DAILY",
            "UTC",
            datetime(2026, 3, 6, 9, tzinfo=UTC),
            Policy(),
            "2026-02-32T09:00:00",
        )


def test_unadjusted_occurrences_have_no_nominal() -> None:
    series = parse("FREQ=MONTHLY", "UTC", datetime(2026, 1, 15, 9, tzinfo=UTC))
    assert series.nominal_of(series.forecast(3)[2], 2) is None


@settings(max_examples=300, deadline=None)
@given(case=series_cases(), data=st.data(), clamp=st.booleans())
def test_rebasing_on_any_occurrence_continues_the_series(
    case: tuple[str, str, datetime], data: st.DataObject, clamp: bool
) -> None:
    rule, zone_name, start = case
    policy = Policy(month_end="clamp" if clamp else "skip")
    try:
        series = parse(rule, zone_name, start, policy)
    except RecurrenceError as refused:
        assume("no occurrence" not in str(refused) and "too sparse" not in str(refused))
        raise
    got = series.forecast(30)
    index = data.draw(st.integers(0, len(got) - 1))
    count = next((int(p[6:]) for p in rule.split(";") if p.startswith("COUNT=")), None)
    tail_rule = rule if count is None else rule.replace(f"COUNT={count}", f"COUNT={count - index}")
    again = rebased(series, got[index], index, tail_rule)
    assert [at.isoformat() for at in again.forecast(30 - index)] == [
        at.isoformat() for at in got[index:]
    ]
