"""Work budgets of the recurrence engine (issue 10, item 2).

Assertions are on the work counter (``rrule_meter.Meter``), never on time: the counter is
what bounds CPU, and it is deterministic.
"""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import DAILY, MINUTELY, YEARLY, rrule
from hypothesis import example, given, settings
from hypothesis import strategies as st

from duetide.rules import recurrence, rrule_meter
from duetide.rules.recurrence import (
    DENSITY_OCCURRENCES,
    MAX_WORK,
    OCCURRENCE_WORK,
    Policy,
    RecurrenceError,
    SeriesRule,
    WorkLimitExceeded,
    forecast_budget,
    parse,
)
from duetide.rules.rrule_meter import PERIOD_WORK, STEP_WORK, Meter, WorkExhausted

ISSUE_RULE = "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR=0;BYMINUTE=0"
BERLIN = ZoneInfo("Europe/Berlin")
START = datetime(2026, 1, 5, 9, 0, tzinfo=BERLIN)  # a Monday


# --- the meter sees dateutil's work -----------------------------------------------------------


def test_meter_charges_every_period_dateutil_expands() -> None:
    work = Meter(10**9)
    walls = rrule_meter.meter(rrule(DAILY, dtstart=datetime(2026, 1, 1), cache=False), work)
    taken = [wall for _, wall in zip(range(10), walls, strict=False)]
    assert len(taken) == 10
    assert work.used == 10 * PERIOD_WORK[DAILY]


def test_meter_charges_empty_periods_too() -> None:
    """Feb 29 with FREQ=YEARLY: four periods per leap year, each charged though empty."""
    work = Meter(10**9)
    rule = rrule(YEARLY, dtstart=datetime(2027, 3, 1), bymonth=2, bymonthday=29, cache=False)
    assert next(iter(rrule_meter.meter(rule, work))) == datetime(2028, 2, 29)
    assert work.used == 2 * PERIOD_WORK[YEARLY]  # 2027 (empty) and 2028


def test_meter_charges_bysetpos_periods_per_position() -> None:
    """dateutil lists a period's days again for each BYSETPOS value: each is charged."""
    work = Meter(10**9)
    rule = rrule(YEARLY, dtstart=datetime(2026, 1, 1), byweekday=range(7), bysetpos=(1, -1))
    assert next(iter(rrule_meter.meter(rule, work))) == datetime(2026, 1, 1)
    assert work.used == 3 * PERIOD_WORK[YEARLY]


def test_meter_charges_minutely_steps_towards_byhour() -> None:
    work = Meter(10**9)
    rule = rrule(MINUTELY, dtstart=datetime(2026, 1, 1, 3, 59), byhour=3, cache=False)
    walls = iter(rrule_meter.meter(rule, work))
    assert next(walls) == datetime(2026, 1, 1, 3, 59)
    assert next(walls) == datetime(2026, 1, 2, 3, 0)  # 23 hours of minutes stepped over
    steps = (work.used - 2 * PERIOD_WORK[MINUTELY]) // STEP_WORK
    assert steps >= 23 * 60


def test_meter_stops_dateutil_when_spent_and_never_overcharges() -> None:
    work = Meter(1000)
    rule = rrule(MINUTELY, dtstart=datetime(2026, 1, 1), bymonth=2, bymonthday=30, cache=False)
    with pytest.raises(WorkExhausted):
        next(iter(rrule_meter.meter(rule, work)))
    assert 1000 - PERIOD_WORK[MINUTELY] < work.used <= 1000


def test_metered_expansion_equals_plain_dateutil() -> None:
    kwargs: dict[str, Any] = {"byhour": (9, 17), "byminute": (0, 30), "byweekday": (0, 2)}
    plain = rrule(MINUTELY, dtstart=datetime(2026, 1, 1), interval=15, **kwargs)
    metered = rrule_meter.meter(
        rrule(MINUTELY, dtstart=datetime(2026, 1, 1), interval=15, cache=False, **kwargs),
        Meter(10**9),
    )
    assert list(zip(range(200), metered, strict=False)) == list(
        zip(range(200), plain, strict=False)
    )


LONG_YEARDAYS = ",".join(str(day) for day in [*range(1, 100), *range(-9, 0), *range(100, 140)])


@pytest.mark.parametrize(
    "text",
    [
        f"FREQ=YEARLY;BYYEARDAY={LONG_YEARDAYS}",
        f"FREQ=YEARLY;BYSETPOS=1,-1;BYDAY=MO,FR;BYYEARDAY={LONG_YEARDAYS}",
        "FREQ=MONTHLY;BYMONTHDAY=1,-1,15,-15,28;BYMONTH=1,2,3,6,12",
        "FREQ=DAILY;BYHOUR=0,6,12,18;BYMINUTE=0,15,30,45;BYSECOND=0,30",
        "FREQ=HOURLY;INTERVAL=7;BYDAY=TH,MO;BYHOUR=3,19,16,9;BYMINUTE="
        + ",".join(map(str, range(0, 60, 2))),
    ],
)
def test_metered_lists_answer_as_dateutils_own(text: str) -> None:
    """The meter swaps the lists dateutil searches for ones that answer `in` from a set
    (a 145-day BYYEARDAY made each day's test 5-6 times what it was charged: 0.5 s for a
    rule refused within its budget, an audit, 2026-12-07); the expansion is the same."""
    from dateutil.rrule import rrulestr

    start = datetime(2026, 1, 5, 9, 0)
    plain = rrulestr(text, dtstart=start, cache=False)
    unmetered = rrulestr(text, dtstart=start, cache=False)
    assert isinstance(unmetered, rrule)
    metered = rrule_meter.meter(unmetered, Meter(10**9))
    assert list(zip(range(300), metered, strict=False)) == list(
        zip(range(300), plain, strict=False)
    )


# --- the issue's rule -------------------------------------------------------------------------


def test_issue_rule_is_refused_as_too_sparse_with_the_reason() -> None:
    with pytest.raises(RecurrenceError, match="too sparse for FREQ=MINUTELY") as refused:
        parse(ISSUE_RULE, "Europe/Berlin", START)
    assert "coarser FREQ" in str(refused.value)


def test_same_pattern_with_yearly_freq_is_accepted() -> None:
    rule = parse(ISSUE_RULE.replace("MINUTELY", "YEARLY"), "Europe/Berlin", START)
    assert [at.date().isoformat() for at in rule.forecast(4)][1:] == [
        "2044-02-29",
        "2072-02-29",
        "2112-02-29",
    ]


def test_stored_issue_rule_forecast_is_bounded_by_the_work_budget() -> None:
    """A row stored before admission checked density: 500 asked, the budget holds."""
    legacy = SeriesRule(ISSUE_RULE, "Europe/Berlin", START)
    found = legacy.preview(500)
    assert found.truncated
    assert found.budget == forecast_budget(500) == MAX_WORK
    assert found.work <= found.budget
    assert 1 < len(found.occurrences) < 10  # a few of the 2044, 2072, ... Mondays, correct
    assert all(at.month == 2 and at.day == 29 and at.weekday() == 0 for at in found.occurrences[1:])
    with pytest.raises(WorkLimitExceeded, match="work budget"):
        legacy.forecast(500)


def test_stored_issue_rule_next_is_bounded_by_its_budget() -> None:
    legacy = SeriesRule(ISSUE_RULE, "Europe/Berlin", START)
    found = legacy.next(START, 0)  # 2044-02-29, a Monday: years of minutes, within MAX_WORK
    assert found is not None and (found.scheduled_at.month, found.scheduled_at.day) == (2, 29)
    assert found.scheduled_at.weekday() == 0 and found.scheduled_at.year == 2044
    never = SeriesRule("FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=30", "Europe/Berlin", START)
    with pytest.raises(WorkLimitExceeded, match=f"{MAX_WORK:,} units"):
        never.next(START, 0)


def test_a_rule_with_many_occurrences_on_its_first_day_and_years_between_days_is_refused() -> None:
    """Eleven occurrences on DTSTART's day passed admission; the next day was 28 years of
    days later, past MAX_WORK at their BYSETPOS weight, and the series stopped there."""
    hours = ",".join(map(str, range(12)))
    positions = ",".join(map(str, range(1, 12)))
    rule = f"FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO;BYHOUR={hours};BYSETPOS={positions}"
    with pytest.raises(RecurrenceError, match="too sparse for FREQ=DAILY") as refused:
        parse(rule, "UTC", datetime(2016, 2, 29, tzinfo=UTC))
    assert "0 of the 10 days with an occurrence" in str(refused.value)
    # Dense days with many occurrences each still pass, and go on past the first day.
    daily = parse(
        f"FREQ=DAILY;BYHOUR={hours};BYSETPOS=1,-1", "UTC", datetime(2016, 2, 29, tzinfo=UTC)
    )
    assert [at.isoformat() for at in daily.forecast(4)] == [
        "2016-02-29T00:00:00+00:00",
        "2016-02-29T11:00:00+00:00",
        "2016-03-01T00:00:00+00:00",
        "2016-03-01T11:00:00+00:00",
    ]


def test_a_step_wider_than_the_first_gaps_of_an_accepted_rule_is_found() -> None:
    """Admission sees the first occurrences (three Februaries with a weekend 13th or
    29th); the next after 2022-02-13 is five years on, more than NEXT_WORK's share."""
    rule = "FREQ=MINUTELY;INTERVAL=7;BYMONTH=2;BYMONTHDAY=13,29;BYDAY=SA,SU;BYMINUTE=0"
    series = parse(rule, "UTC", datetime(2020, 1, 1, tzinfo=UTC))
    first = series.preview(DENSITY_OCCURRENCES + 1).occurrences
    last = first[-1]
    assert last.year == 2022
    following = series.next(last, len(first) - 1)
    assert following is not None and following.scheduled_at.year == 2027
    assert following.scheduled_at.month == 2 and following.scheduled_at.weekday() in (5, 6)


def test_accepted_sparse_rule_forecast_stops_at_its_budget_with_correct_items() -> None:
    """Feb 29 on a Monday, FREQ=YEARLY: accepted; 500 of them need centuries of periods."""
    rule = parse("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", "Europe/Berlin", START)
    found = rule.preview(500)
    assert found.truncated and found.work <= found.budget == MAX_WORK
    assert 10 < len(found.occurrences) < 500
    assert all(at.month == 2 and at.day == 29 and at.weekday() == 0 for at in found.occurrences[1:])
    assert list(found.occurrences) == rule.forecast(len(found.occurrences))


def test_budget_is_proportional_to_the_count_asked() -> None:
    assert forecast_budget(1) < forecast_budget(10) < forecast_budget(100) <= MAX_WORK
    rule = parse("FREQ=DAILY", "Europe/Berlin", START)
    small, large = rule.preview(10), rule.preview(500)
    assert not small.truncated and not large.truncated
    assert small.work < large.work


def test_series_ending_early_is_not_truncated() -> None:
    found = parse("FREQ=DAILY;COUNT=3", "Europe/Berlin", START).preview(500)
    assert len(found.occurrences) == 3 and not found.truncated


def test_count_one_series_never_expands() -> None:
    legacy = SeriesRule(ISSUE_RULE + ";COUNT=1", "Europe/Berlin", START)
    found = legacy.preview(500)
    assert found.occurrences == (START,) and not found.truncated and found.work == 0
    assert legacy.next(START, 0) is None


def test_impossible_rules_still_say_no_occurrence() -> None:
    for rule in ("FREQ=MINUTELY;BYMONTH=4;BYMONTHDAY=31", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30"):
        with pytest.raises(RecurrenceError, match="no occurrence"):
            parse(rule, "Europe/Berlin", START)


# --- property: random sparse rules ------------------------------------------------------------


@st.composite
def sparse_rules(draw: st.DrawFn) -> str:
    """Rules whose day filters are rare (Feb 29, a weekday on the 13th, day 31 of short months)
    at every FREQ, with narrow BYHOUR/BYMINUTE and large INTERVALs."""
    freq = draw(st.sampled_from(["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"]))
    parts = [f"FREQ={freq}"]
    interval = draw(st.sampled_from([1, 1, 2, 3, 7, 13, 400]))
    if interval > 1:
        parts.append(f"INTERVAL={interval}")
    months = draw(st.sets(st.sampled_from([2, 4, 6, 9, 11, 12]), min_size=0, max_size=2))
    if months:
        parts.append("BYMONTH=" + ",".join(map(str, sorted(months))))
    if freq != "WEEKLY" and draw(st.booleans()):
        days = draw(st.sets(st.sampled_from([13, 29, 30, 31, -1]), min_size=1, max_size=2))
        parts.append("BYMONTHDAY=" + ",".join(map(str, sorted(days))))
    if draw(st.booleans()):
        parts.append("BYDAY=" + draw(st.sampled_from(["MO", "FR", "SA,SU", "TU"])))
    if freq in ("DAILY", "WEEKLY", "MONTHLY", "YEARLY", "HOURLY") and draw(st.booleans()):
        # Several hours with as many BYSETPOS values: a period dense enough to pass for
        # a dense rule on DTSTART's day alone.
        hours = draw(st.sets(st.integers(0, 23), min_size=1, max_size=12))
        parts.append("BYHOUR=" + ",".join(map(str, sorted(hours))))
        if len(hours) > 1 and draw(st.booleans()):
            parts.append("BYSETPOS=" + ",".join(map(str, range(1, len(hours)))))
    if freq in ("HOURLY", "MINUTELY") and draw(st.booleans()):
        parts.append(f"BYMINUTE={draw(st.sampled_from([0, 59, 30]))}")
    return ";".join(parts)


@settings(max_examples=120, deadline=None)
@given(
    rule=sparse_rules(), day=st.integers(0, 3000), zone=st.sampled_from(["UTC", "Europe/Berlin"])
)
# Its eleventh occurrence, in 8941, is its last before the year 9999 (a CI run, 2026-12-07)
@example(rule="FREQ=DAILY;INTERVAL=400;BYMONTH=2,11;BYMONTHDAY=-1,29;BYDAY=TU", day=302, zone="UTC")
def test_every_sparse_rule_is_refused_or_expands_within_its_budget(
    rule: str, day: int, zone: str
) -> None:
    start = (datetime(2020, 1, 1, 0, 0, tzinfo=UTC) + timedelta(days=day)).astimezone(
        ZoneInfo(zone)
    )
    try:
        series = parse(rule, zone, start)
    except RecurrenceError as refused:
        assert any(
            reason in str(refused)
            for reason in ("too sparse", "no occurrence", "limit", "BYSETPOS")
        ), str(refused)
        return
    # Accepted: the admission promise holds for the first DENSITY_OCCURRENCES + 1 (DTSTART)...
    first = series.preview(DENSITY_OCCURRENCES + 1)
    assert not first.truncated
    assert first.work <= DENSITY_OCCURRENCES * OCCURRENCE_WORK + forecast_budget(0)
    # ...each next step from them fits NEXT_WORK, and a large forecast stays in its budget.
    for index, at in enumerate(first.occurrences):
        following = series.next(at, index)
        later = first.occurrences[index + 1 : index + 2]
        if following is None:  # the rule ends there, before the year 9999
            assert not later and len(series.preview(index + 2).occurrences) == index + 1
            continue
        assert (following.scheduled_at,) == later or not later
    found = series.preview(500)
    assert found.work <= found.budget <= MAX_WORK
    if len(found.occurrences) < 500 and not found.truncated:  # ended (year 9999 here)
        assert series.next(found.occurrences[-1], len(found.occurrences) - 1) is None


def test_next_catch_up_over_many_missed_occurrences_is_bounded() -> None:
    series = parse(
        "FREQ=MINUTELY", "UTC", datetime(2026, 1, 1, tzinfo=UTC), Policy(catch_up="next_future")
    )
    start = datetime(2026, 1, 1, tzinfo=UTC)
    answer = series.next(start, 0, now=start + timedelta(hours=2))
    assert answer is not None and len(answer.missed) == 120 and answer.caught_up
    # A year away is more than one catch-up may walk: it answers the last occurrence it
    # reached (past), the ones before it missed, and the next call goes on from there.
    now = start + timedelta(days=365)
    at, index, walked = start, 0, 0
    while True:
        step = series.next(at, index, now=now)
        assert step is not None and step.index == index + len(step.missed) + 1
        assert step.scheduled_at == at + timedelta(minutes=len(step.missed) + 1)
        walked += 1
        if step.caught_up:
            break
        assert step.scheduled_at <= now and len(step.missed) > 10_000  # real progress
        at, index = step.scheduled_at, step.index
    assert step.scheduled_at == now + timedelta(minutes=1) and 2 < walked < 60


@pytest.mark.parametrize(
    "text", ["FREQ=MINUTELY", "FREQ=HOURLY;INTERVAL=7", "FREQ=DAILY;INTERVAL=3", "FREQ=WEEKLY"]
)
def test_a_completion_long_before_its_due_time_steps_a_few_times_not_per_minute(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Completed in 2026, due in 8999: the next step is the first after the due time,
    found in a few steps (one per minute between them cost 45 CPU-minutes a request)."""
    steps = 0
    step = recurrence._Expansion.completion_step

    def counted(self: Any, at: datetime) -> datetime | None:
        nonlocal steps
        steps += 1
        return step(self, at)

    monkeypatch.setattr(recurrence._Expansion, "completion_step", counted)
    start = datetime(2026, 1, 31, 9, tzinfo=UTC)
    rule = SeriesRule(text, "Europe/Berlin", start, Policy(mode="completion"))
    due = datetime(8999, 12, 31, 9, tzinfo=UTC)
    completed = datetime(2026, 2, 1, 8, 0, 7, tzinfo=UTC)
    following = rule.next(due, 0, completed_at=completed, now=completed)
    assert following is not None and steps < 10
    assert due < following.scheduled_at <= due + timedelta(weeks=1)
    found = rule.preview_after(due, 0, 3, completed_at=completed, now=completed)
    assert found.occurrences[0] == following.scheduled_at and not found.truncated


def test_forecast_after_a_far_completion_is_bounded_not_stalled() -> None:
    """Completion mode, an occurrence due decades after its completion would be: the
    steps up to it are skipped at once, so the forecast finds what follows it (charged
    for each step it took, it stopped at its budget with nothing)."""
    rule = SeriesRule(
        "FREQ=MINUTELY", "UTC", datetime(2026, 1, 1, tzinfo=UTC), Policy(mode="completion")
    )
    due = datetime(2080, 1, 1, tzinfo=UTC)
    now = datetime(2026, 1, 1, 0, 5, tzinfo=UTC)
    found = rule.preview_after(due, 0, 10, completed_at=now, now=now)
    assert not found.truncated
    assert list(found.occurrences) == [due + timedelta(minutes=m) for m in range(1, 11)]
    assert found.work <= forecast_budget(10)


def test_forecast_after_an_occurrence_is_what_next_materialises() -> None:
    """Step by step, `next()` (each completed on its own time) gives the same occurrences."""
    cases = [
        ("FREQ=DAILY;INTERVAL=2;BYHOUR=9,17", Policy()),
        ("FREQ=DAILY;INTERVAL=2;BYHOUR=9,17", Policy(catch_up="next_future")),
        ("FREQ=DAILY;INTERVAL=2", Policy(mode="completion")),
        ("FREQ=HOURLY;INTERVAL=7", Policy(mode="completion", catch_up="next_future")),
    ]
    for text, policy in cases:
        rule = SeriesRule(text, "Europe/Berlin", START, policy)
        now = START + timedelta(days=5)
        found = rule.preview_after(START, 0, 6, completed_at=now, now=now)
        assert not found.truncated
        stepped, at, index, completed = [], START, 0, now
        for _ in range(6):
            following = rule.next(at, index, completed_at=completed, now=now)
            assert following is not None
            stepped.append(following.scheduled_at)
            at, index, completed = following.scheduled_at, following.index, following.scheduled_at
        assert list(found.occurrences) == stepped, (text, policy)


def test_recurrence_module_stays_pure() -> None:
    """No database or clock in the engine: the budget is work, never wall time."""
    source = "".join(inspect.getsource(m) for m in (recurrence, rrule_meter))
    for word in ("sqlmodel", "import time", "perf_counter", "datetime.now", "monotonic"):
        assert word not in source
