"""Specification of duetide.rules.recurrence.

Three layers: the RFC 5545 section 3.8.5.3 examples as a table, named rules, and hypothesis
properties checked against plain python-dateutil iteration from DTSTART (the oracle).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from functools import cache
from itertools import pairwise
from zoneinfo import ZoneInfo

import pytest
from dateutil.rrule import rrule, rrulestr
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from duetide.rules import recurrence
from duetide.rules.recurrence import (
    Next,
    Policy,
    RecurrenceError,
    SeriesRule,
    WorkLimitExceeded,
    friendly_to_rrule,
    parse,
)

NEW_YORK = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")  # DST moves the clock by 30 minutes
ZONES = ("Europe/Berlin", "America/New_York", "Australia/Lord_Howe")


def at(text: str, zone: ZoneInfo = NEW_YORK) -> datetime:
    """'1997-09-02 09:00' as an aware local time."""
    return datetime.fromisoformat(text).replace(tzinfo=zone)


def walls(times: list[datetime]) -> list[str]:
    return [t.strftime("%Y-%m-%d %H:%M") for t in times]


def isos(times: list[datetime]) -> list[str]:
    return [t.isoformat() for t in times]


def md(year_month: str, *days: int, time: str = "09:00") -> list[str]:
    return [f"{year_month}-{day:02d} {time}" for day in days]


def span(first: str, last: str, step: int = 1, time: str = "09:00") -> list[str]:
    day, end, out = date.fromisoformat(first), date.fromisoformat(last), []
    while day <= end:
        out.append(f"{day} {time}")
        day += timedelta(days=step)
    return out


def hm(day: str, *times: str) -> list[str]:
    return [f"{day} {time}" for time in times]


# --- RFC 5545 section 3.8.5.3 -----------------------------------------------------------------

TWENTY_MINUTES = [f"{h:02d}:{m:02d}" for h in range(9, 17) for m in (0, 20, 40)]

# (DTSTART in America/New_York, RRULE, expected local times, whether the list is complete)
RFC_EXAMPLES = [
    ("1997-09-02 09:00", "FREQ=DAILY;COUNT=10", span("1997-09-02", "1997-09-11"), True),
    (
        "1997-09-02 09:00",
        "FREQ=DAILY;UNTIL=19971224T000000Z",
        span("1997-09-02", "1997-12-23"),
        True,
    ),
    ("1997-09-02 09:00", "FREQ=DAILY;INTERVAL=2", span("1997-09-02", "1997-12-31", 2), False),
    (
        "1997-09-02 09:00",
        "FREQ=DAILY;INTERVAL=10;COUNT=5",
        md("1997-09", 2, 12, 22) + md("1997-10", 2, 12),
        True,
    ),
    (
        "1998-01-01 09:00",
        "FREQ=YEARLY;UNTIL=20000131T140000Z;BYMONTH=1;BYDAY=SU,MO,TU,WE,TH,FR,SA",
        span("1998-01-01", "1998-01-31")
        + span("1999-01-01", "1999-01-31")
        + span("2000-01-01", "2000-01-31"),
        True,
    ),
    (
        "1998-01-01 09:00",
        "FREQ=DAILY;UNTIL=20000131T140000Z;BYMONTH=1",
        span("1998-01-01", "1998-01-31")
        + span("1999-01-01", "1999-01-31")
        + span("2000-01-01", "2000-01-31"),
        True,
    ),
    ("1997-09-02 09:00", "FREQ=WEEKLY;COUNT=10", span("1997-09-02", "1997-11-04", 7), True),
    (
        "1997-09-02 09:00",
        "FREQ=WEEKLY;UNTIL=19971224T000000Z",
        span("1997-09-02", "1997-12-23", 7),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=WEEKLY;INTERVAL=2;WKST=SU",
        span("1997-09-02", "1998-02-17", 14),
        False,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=WEEKLY;UNTIL=19971007T000000Z;WKST=SU;BYDAY=TU,TH",
        md("1997-09", 2, 4, 9, 11, 16, 18, 23, 25, 30) + md("1997-10", 2),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=WEEKLY;COUNT=10;WKST=SU;BYDAY=TU,TH",
        md("1997-09", 2, 4, 9, 11, 16, 18, 23, 25, 30) + md("1997-10", 2),
        True,
    ),
    (
        "1997-09-01 09:00",
        "FREQ=WEEKLY;INTERVAL=2;UNTIL=19971224T000000Z;WKST=SU;BYDAY=MO,WE,FR",
        md("1997-09", 1, 3, 5, 15, 17, 19, 29)
        + md("1997-10", 1, 3, 13, 15, 17, 27, 29, 31)
        + md("1997-11", 10, 12, 14, 24, 26, 28)
        + md("1997-12", 8, 10, 12, 22),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=8;WKST=SU;BYDAY=TU,TH",
        md("1997-09", 2, 4, 16, 18, 30) + md("1997-10", 2, 14, 16),
        True,
    ),
    (
        "1997-09-05 09:00",
        "FREQ=MONTHLY;COUNT=10;BYDAY=1FR",
        md("1997-09", 5)
        + md("1997-10", 3)
        + md("1997-11", 7)
        + md("1997-12", 5)
        + md("1998-01", 2)
        + md("1998-02", 6)
        + md("1998-03", 6)
        + md("1998-04", 3)
        + md("1998-05", 1)
        + md("1998-06", 5),
        True,
    ),
    (
        "1997-09-05 09:00",
        "FREQ=MONTHLY;UNTIL=19971224T000000Z;BYDAY=1FR",
        md("1997-09", 5) + md("1997-10", 3) + md("1997-11", 7) + md("1997-12", 5),
        True,
    ),
    (
        "1997-09-07 09:00",
        "FREQ=MONTHLY;INTERVAL=2;COUNT=10;BYDAY=1SU,-1SU",
        md("1997-09", 7, 28)
        + md("1997-11", 2, 30)
        + md("1998-01", 4, 25)
        + md("1998-03", 1, 29)
        + md("1998-05", 3, 31),
        True,
    ),
    (
        "1997-09-22 09:00",
        "FREQ=MONTHLY;COUNT=6;BYDAY=-2MO",
        md("1997-09", 22)
        + md("1997-10", 20)
        + md("1997-11", 17)
        + md("1997-12", 22)
        + md("1998-01", 19)
        + md("1998-02", 16),
        True,
    ),
    (
        "1997-09-28 09:00",
        "FREQ=MONTHLY;BYMONTHDAY=-3",
        md("1997-09", 28)
        + md("1997-10", 29)
        + md("1997-11", 28)
        + md("1997-12", 29)
        + md("1998-01", 29)
        + md("1998-02", 26),
        False,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=MONTHLY;COUNT=10;BYMONTHDAY=2,15",
        md("1997-09", 2, 15)
        + md("1997-10", 2, 15)
        + md("1997-11", 2, 15)
        + md("1997-12", 2, 15)
        + md("1998-01", 2, 15),
        True,
    ),
    (
        "1997-09-30 09:00",
        "FREQ=MONTHLY;COUNT=10;BYMONTHDAY=1,-1",
        md("1997-09", 30)
        + md("1997-10", 1, 31)
        + md("1997-11", 1, 30)
        + md("1997-12", 1, 31)
        + md("1998-01", 1, 31)
        + md("1998-02", 1),
        True,
    ),
    (
        "1997-09-10 09:00",
        "FREQ=MONTHLY;INTERVAL=18;COUNT=10;BYMONTHDAY=10,11,12,13,14,15",
        md("1997-09", 10, 11, 12, 13, 14, 15) + md("1999-03", 10, 11, 12, 13),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=MONTHLY;INTERVAL=2;BYDAY=TU",
        md("1997-09", 2, 9, 16, 23, 30)
        + md("1997-11", 4, 11, 18, 25)
        + md("1998-01", 6, 13, 20, 27)
        + md("1998-03", 3, 10, 17, 24, 31),
        False,
    ),
    (
        "1997-06-10 09:00",
        "FREQ=YEARLY;COUNT=10;BYMONTH=6,7",
        [
            line
            for year in range(1997, 2002)
            for line in md(f"{year}-06", 10) + md(f"{year}-07", 10)
        ],
        True,
    ),
    (
        "1997-03-10 09:00",
        "FREQ=YEARLY;INTERVAL=2;COUNT=10;BYMONTH=1,2,3",
        md("1997-03", 10)
        + [
            line
            for year in (1999, 2001, 2003)
            for month in (1, 2, 3)
            for line in md(f"{year}-{month:02d}", 10)
        ],
        True,
    ),
    (
        "1997-01-01 09:00",
        "FREQ=YEARLY;INTERVAL=3;COUNT=10;BYYEARDAY=1,100,200",
        md("1997-01", 1)
        + md("1997-04", 10)
        + md("1997-07", 19)
        + md("2000-01", 1)
        + md("2000-04", 9)
        + md("2000-07", 18)
        + md("2003-01", 1)
        + md("2003-04", 10)
        + md("2003-07", 19)
        + md("2006-01", 1),
        True,
    ),
    (
        "1997-05-19 09:00",
        "FREQ=YEARLY;BYDAY=20MO",
        md("1997-05", 19) + md("1998-05", 18) + md("1999-05", 17),
        False,
    ),
    (
        "1997-05-12 09:00",
        "FREQ=YEARLY;BYWEEKNO=20;BYDAY=MO",
        md("1997-05", 12) + md("1998-05", 11) + md("1999-05", 17),
        False,
    ),
    (
        "1997-03-13 09:00",
        "FREQ=YEARLY;BYMONTH=3;BYDAY=TH",
        md("1997-03", 13, 20, 27) + md("1998-03", 5, 12, 19, 26) + md("1999-03", 4, 11, 18, 25),
        False,
    ),
    (
        "1997-06-05 09:00",
        "FREQ=YEARLY;BYDAY=TH;BYMONTH=6,7,8",
        md("1997-06", 5, 12, 19, 26)
        + md("1997-07", 3, 10, 17, 24, 31)
        + md("1997-08", 7, 14, 21, 28)
        + md("1998-06", 4, 11, 18, 25)
        + md("1998-07", 2, 9, 16, 23, 30)
        + md("1998-08", 6, 13, 20, 27)
        + md("1999-06", 3, 10, 17, 24)
        + md("1999-07", 1, 8, 15, 22, 29)
        + md("1999-08", 5, 12, 19, 26),
        False,
    ),
    # The RFC starts this one on 1997-09-02 and removes that day with EXDATE; without EXDATE
    # we start on the first Friday the 13th instead (DTSTART always counts as an occurrence).
    (
        "1998-02-13 09:00",
        "FREQ=MONTHLY;BYDAY=FR;BYMONTHDAY=13",
        md("1998-02", 13)
        + md("1998-03", 13)
        + md("1998-11", 13)
        + md("1999-08", 13)
        + md("2000-10", 13),
        False,
    ),
    (
        "1997-09-13 09:00",
        "FREQ=MONTHLY;BYDAY=SA;BYMONTHDAY=7,8,9,10,11,12,13",
        md("1997-09", 13)
        + md("1997-10", 11)
        + md("1997-11", 8)
        + md("1997-12", 13)
        + md("1998-01", 10)
        + md("1998-02", 7)
        + md("1998-03", 7)
        + md("1998-04", 11)
        + md("1998-05", 9)
        + md("1998-06", 13),
        False,
    ),
    (
        "1996-11-05 09:00",
        "FREQ=YEARLY;INTERVAL=4;BYMONTH=11;BYDAY=TU;BYMONTHDAY=2,3,4,5,6,7,8",
        md("1996-11", 5) + md("2000-11", 7) + md("2004-11", 2),
        False,
    ),
    (
        "1997-09-04 09:00",
        "FREQ=MONTHLY;COUNT=3;BYDAY=TU,WE,TH;BYSETPOS=3",
        md("1997-09", 4) + md("1997-10", 7) + md("1997-11", 6),
        True,
    ),
    (
        "1997-09-29 09:00",
        "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-2",
        md("1997-09", 29)
        + md("1997-10", 30)
        + md("1997-11", 27)
        + md("1997-12", 30)
        + md("1998-01", 29)
        + md("1998-02", 26)
        + md("1998-03", 30),
        False,
    ),
    # The RFC's prose lists 09:00, 12:00 and 15:00, but its UNTIL (17:00Z) is 13:00 in New
    # York: the normative reading, which dateutil also gives, ends at 12:00.
    (
        "1997-09-02 09:00",
        "FREQ=HOURLY;INTERVAL=3;UNTIL=19970902T170000Z",
        hm("1997-09-02", "09:00", "12:00"),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=MINUTELY;INTERVAL=15;COUNT=6",
        hm("1997-09-02", "09:00", "09:15", "09:30", "09:45", "10:00", "10:15"),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=MINUTELY;INTERVAL=90;COUNT=4",
        hm("1997-09-02", "09:00", "10:30", "12:00", "13:30"),
        True,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=DAILY;BYHOUR=9,10,11,12,13,14,15,16;BYMINUTE=0,20,40",
        hm("1997-09-02", *TWENTY_MINUTES) + hm("1997-09-03", *TWENTY_MINUTES),
        False,
    ),
    (
        "1997-09-02 09:00",
        "FREQ=MINUTELY;INTERVAL=20;BYHOUR=9,10,11,12,13,14,15,16",
        hm("1997-09-02", *TWENTY_MINUTES) + hm("1997-09-03", *TWENTY_MINUTES),
        False,
    ),
    (
        "1997-08-05 09:00",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=MO",
        md("1997-08", 5, 10, 19, 24),
        True,
    ),
    (
        "1997-08-05 09:00",
        "FREQ=WEEKLY;INTERVAL=2;COUNT=4;BYDAY=TU,SU;WKST=SU",
        md("1997-08", 5, 17, 19, 31),
        True,
    ),
    (
        "2007-01-15 09:00",
        "FREQ=MONTHLY;BYMONTHDAY=15,30;COUNT=5",
        md("2007-01", 15, 30) + md("2007-02", 15) + md("2007-03", 15, 30),
        True,
    ),
]


@pytest.mark.parametrize(
    ("start", "rule", "expected", "complete"), RFC_EXAMPLES, ids=[e[1] for e in RFC_EXAMPLES]
)
def test_rfc5545_examples(start: str, rule: str, expected: list[str], complete: bool) -> None:
    series = parse(rule, "America/New_York", at(start))
    got = series.forecast(len(expected) + 3 if complete else len(expected))
    assert walls(got) == expected
    assert all(t.tzinfo == NEW_YORK for t in got)
    for index, (previous, following) in enumerate(pairwise(got)):
        assert series.next(previous, index) == Next(following, index + 1)
    if complete:
        assert series.next(got[-1], len(got) - 1) is None


def test_rfc5545_offsets_follow_the_new_york_dst_change() -> None:
    got = parse("FREQ=WEEKLY;COUNT=10", "America/New_York", at("1997-09-02 09:00")).forecast(10)
    assert [t.utcoffset() for t in got] == [timedelta(hours=-4)] * 8 + [timedelta(hours=-5)] * 2


# --- wall clock, gaps and folds ---------------------------------------------------------------


def test_daily_0900_stays_0900_across_dst() -> None:
    got = parse("FREQ=DAILY", "Europe/Berlin", at("2026-03-27 09:00", BERLIN)).forecast(4)
    assert walls(got) == span("2026-03-27", "2026-03-30")
    assert [t.utcoffset() for t in got] == [timedelta(hours=h) for h in (1, 1, 2, 2)]
    autumn = parse("FREQ=DAILY", "Europe/Berlin", at("2026-10-24 09:00", BERLIN)).forecast(3)
    assert [t.astimezone(UTC).hour for t in autumn] == [7, 8, 8]  # CEST ends on 2026-10-25


def test_spring_forward_gap_shifts_forward() -> None:
    series = parse("FREQ=DAILY", "America/New_York", at("2026-03-07 02:30"))
    got = series.forecast(3)
    # 2026-03-08 02:30 does not exist in New York: read with the offset before the gap (-05:00)
    assert isos(got) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:30:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]
    assert series.next(got[1], 1) == Next(got[2], 2)


def test_spring_forward_gap_of_thirty_minutes_on_lord_howe() -> None:
    got = parse("FREQ=DAILY", "Australia/Lord_Howe", at("2026-10-03 02:15", LORD_HOWE)).forecast(3)
    assert isos(got) == [
        "2026-10-03T02:15:00+10:30",
        "2026-10-04T02:45:00+11:00",
        "2026-10-05T02:15:00+11:00",
    ]


def test_fall_back_ambiguous_time_takes_the_first() -> None:
    got = parse("FREQ=DAILY", "America/New_York", at("2026-10-31 01:30")).forecast(3)
    assert isos(got) == [
        "2026-10-31T01:30:00-04:00",
        "2026-11-01T01:30:00-04:00",
        "2026-11-02T01:30:00-05:00",
    ]


def test_hourly_rule_across_spring_forward_drops_the_duplicate_instant() -> None:
    got = parse("FREQ=HOURLY;COUNT=4", "America/New_York", at("2026-03-08 00:00")).forecast(5)
    # 02:00 becomes 03:00 EDT; the rule's own 03:00 is the same instant and is ignored
    assert isos(got) == [
        "2026-03-08T00:00:00-05:00",
        "2026-03-08T01:00:00-05:00",
        "2026-03-08T03:00:00-04:00",
        "2026-03-08T04:00:00-04:00",
    ]


def test_hourly_interval_keeps_its_alignment_after_a_gap_shifted_occurrence() -> None:
    series = parse("FREQ=HOURLY;INTERVAL=2", "America/New_York", at("2026-03-08 00:30"))
    shifted = at("2026-03-08 03:30")  # the rule's 02:30, moved by the gap
    assert series.next(shifted, 1) == Next(at("2026-03-08 04:30"), 2)


def test_times_are_whole_instants_whatever_zone_previous_is_given_in() -> None:
    series = parse("FREQ=DAILY", "Europe/Berlin", at("2026-01-01 09:00", BERLIN))
    answer = series.next(datetime(2026, 1, 5, 8, 0, tzinfo=UTC), 4)
    assert answer == Next(at("2026-01-06 09:00", BERLIN), 5)
    assert answer.scheduled_at.tzinfo == BERLIN


# --- month ends -------------------------------------------------------------------------------


def test_monthly_on_31st_skips_short_months_by_default() -> None:
    got = parse("FREQ=MONTHLY", "Europe/Berlin", at("2026-01-31 09:00", BERLIN)).forecast(4)
    assert walls(got) == md("2026-01", 31) + md("2026-03", 31) + md("2026-05", 31) + md(
        "2026-07", 31
    )


def test_monthly_on_31st_clamps_to_last_day() -> None:
    series = parse(
        "FREQ=MONTHLY", "Europe/Berlin", at("2026-01-31 09:00", BERLIN), Policy(month_end="clamp")
    )
    got = series.forecast(5)
    assert walls(got) == md("2026-01", 31) + md("2026-02", 28) + md("2026-03", 31) + md(
        "2026-04", 30
    ) + md("2026-05", 31)
    assert series.next(got[1], 1) == Next(got[2], 2)


def test_explicit_bymonthday_30_clamps_in_february_of_a_leap_year() -> None:
    policy = Policy(month_end="clamp")
    got = parse(
        "FREQ=MONTHLY;BYMONTHDAY=30", "Europe/Berlin", at("2028-01-30 18:00", BERLIN), policy
    ).forecast(3)
    assert walls(got) == md("2028-01", 30, time="18:00") + md("2028-02", 29, time="18:00") + md(
        "2028-03", 30, time="18:00"
    )


def test_clamp_keeps_every_time_of_day_on_the_last_day() -> None:
    policy = Policy(month_end="clamp")
    got = parse(
        "FREQ=MONTHLY;BYHOUR=9,17", "Europe/Berlin", at("2026-01-31 09:00", BERLIN), policy
    ).forecast(4)
    assert walls(got) == hm("2026-01-31", "09:00", "17:00") + hm("2026-02-28", "09:00", "17:00")


def test_yearly_feb_29_clamps_to_feb_28() -> None:
    policy = Policy(month_end="clamp")
    got = parse("FREQ=YEARLY", "America/New_York", at("2024-02-29 09:00"), policy).forecast(5)
    assert walls(got) == md("2024-02", 29) + md("2025-02", 28) + md("2026-02", 28) + md(
        "2027-02", 28
    ) + md("2028-02", 29)


def test_yearly_feb_29_skips_to_leap_years_by_default() -> None:
    got = parse("FREQ=YEARLY", "America/New_York", at("2024-02-29 09:00")).forecast(3)
    assert walls(got) == md("2024-02", 29) + md("2028-02", 29) + md("2032-02", 29)


def test_clamp_does_not_apply_to_yearly_rules_over_several_months() -> None:
    rule = "FREQ=YEARLY;BYMONTH=2,4;BYMONTHDAY=30"
    clamp = parse(rule, "Europe/Berlin", at("2026-04-30 09:00", BERLIN), Policy(month_end="clamp"))
    skip = parse(rule, "Europe/Berlin", at("2026-04-30 09:00", BERLIN))
    assert clamp.forecast(3) == skip.forecast(3)
    assert walls(clamp.forecast(3)) == md("2026-04", 30) + md("2027-04", 30) + md("2028-04", 30)


# --- DTSTART, UNTIL and COUNT -----------------------------------------------------------------


def test_dtstart_counts_as_the_first_occurrence_even_off_the_rule() -> None:
    series = parse(
        "FREQ=WEEKLY;BYDAY=MO;COUNT=3", "Europe/Berlin", at("2026-01-07 09:00", BERLIN)
    )  # Wednesday
    assert walls(series.forecast(5)) == md("2026-01", 7, 12, 19)


def test_weekly_bysetpos_counts_the_whole_first_week() -> None:
    # RFC 5545: BYSETPOS picks within the whole week; dateutil alone would start the first
    # week at DTSTART's day and pick Thursday 2026-01-08.
    series = parse(
        "FREQ=WEEKLY;BYDAY=MO,TH;BYSETPOS=1", "Europe/Berlin", at("2026-01-07 09:00", BERLIN)
    )
    assert walls(series.forecast(3)) == md("2026-01", 7, 12, 19)


def test_until_date_includes_that_local_day() -> None:
    series = parse("FREQ=DAILY;UNTIL=20260105", "America/New_York", at("2026-01-01 23:30"))
    got = series.forecast(10)
    assert walls(got) == span("2026-01-01", "2026-01-05", time="23:30")
    assert series.next(got[-1], len(got) - 1) is None


@pytest.mark.parametrize("zone", ["Pacific/Kiritimati", "UTC", "America/New_York"])
@pytest.mark.parametrize("until", ["99991231", "99991231T235959"])
def test_an_until_on_the_last_day_there_is_runs_to_it(zone: str, until: str) -> None:
    """Its end (the next day, or the time behind UTC) is past the last instant Python
    has: it was refused as `not a valid date` (an audit, 2026-12-07)."""
    tz = ZoneInfo(zone)
    series = parse(f"FREQ=YEARLY;UNTIL={until}", zone, at("9997-12-31 12:00", tz))
    assert walls(series.forecast(10)) == ["9997-12-31 12:00", "9998-12-31 12:00",
                                          "9999-12-31 12:00"]  # fmt: skip


def test_until_floating_time_is_read_in_the_series_zone() -> None:
    got = parse(
        "FREQ=DAILY;UNTIL=20260103T090000", "America/New_York", at("2026-01-01 09:00")
    ).forecast(10)
    assert walls(got) == span("2026-01-01", "2026-01-03")


def test_until_in_utc_is_compared_as_an_instant() -> None:
    included = parse(
        "FREQ=DAILY;UNTIL=20260103T140000Z", "America/New_York", at("2026-01-01 09:00")
    )
    excluded = parse(
        "FREQ=DAILY;UNTIL=20260103T135959Z", "America/New_York", at("2026-01-01 09:00")
    )
    assert len(included.forecast(10)) == 3
    assert len(excluded.forecast(10)) == 2


def test_count_ends_the_series_for_next() -> None:
    series = parse("FREQ=DAILY;COUNT=3", "Europe/Berlin", at("2026-01-01 09:00", BERLIN))
    assert series.next(at("2026-01-02 09:00", BERLIN), 1) == Next(at("2026-01-03 09:00", BERLIN), 2)
    assert series.next(at("2026-01-03 09:00", BERLIN), 2) is None


def test_count_and_until_together_rejected() -> None:
    with pytest.raises(RecurrenceError, match="COUNT and UNTIL"):
        parse(
            "FREQ=DAILY;COUNT=5;UNTIL=20270101T000000Z",
            "Europe/Berlin",
            at("2026-01-01 09:00", BERLIN),
        )


# --- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "zone", "message"),
    [
        ("FREQ=SECONDLY", "Europe/Berlin", "SECONDLY"),
        ("FREQ=FORTNIGHTLY", "Europe/Berlin", "FREQ must be"),
        ("BYDAY=MO", "Europe/Berlin", "FREQ is required"),
        ("FREQ=DAILY;FREQ=WEEKLY", "Europe/Berlin", "twice"),
        ("FREQ=DAILY;EXDATE=20260101", "Europe/Berlin", "cannot read"),
        ("FREQ=DAILY;COUNT", "Europe/Berlin", "cannot read"),
        ("FREQ=DAILY;COUNT=0", "Europe/Berlin", "COUNT"),
        ("FREQ=DAILY;COUNT=10001", "Europe/Berlin", "COUNT"),
        ("FREQ=DAILY;INTERVAL=-1", "Europe/Berlin", "INTERVAL"),
        ("FREQ=DAILY;BYHOUR=24", "Europe/Berlin", "BYHOUR"),
        ("FREQ=MONTHLY;BYMONTHDAY=0", "Europe/Berlin", "BYMONTHDAY"),
        ("FREQ=WEEKLY;BYDAY=XX", "Europe/Berlin", "BYDAY"),
        ("FREQ=WEEKLY;BYDAY=1MO", "Europe/Berlin", "number"),
        ("FREQ=MONTHLY;BYWEEKNO=3", "Europe/Berlin", "BYWEEKNO"),
        ("FREQ=DAILY;BYYEARDAY=3", "Europe/Berlin", "BYYEARDAY"),
        ("FREQ=WEEKLY;BYMONTHDAY=3", "Europe/Berlin", "BYMONTHDAY"),
        ("FREQ=MONTHLY;BYSETPOS=1", "Europe/Berlin", "BYSETPOS needs"),
        ("FREQ=DAILY;BYSETPOS=2", "Europe/Berlin", "BYSETPOS needs"),
        ("FREQ=DAILY;BYHOUR=9;BYSETPOS=2", "Europe/Berlin", "BYSETPOS points"),
        ("FREQ=MINUTELY;BYSECOND=0,30", "Europe/Berlin", "BYSECOND"),
        (
            "FREQ=YEARLY;BYDAY=MO,TU,WE,TH,FR,SA,SU;BYHOUR=0,1,2,3,4,5,6,7,8,9;BYMINUTE=0,30,45",
            "UTC",
            "limit",
        ),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", "Europe/Berlin", "no occurrence"),
        ("FREQ=MINUTELY;BYMONTH=4;BYMONTHDAY=31", "Europe/Berlin", "no occurrence"),
        ("FREQ=DAILY;INTERVAL=7;BYDAY=TU", "Europe/Berlin", "no occurrence"),
        ("FREQ=MONTHLY;INTERVAL=12;BYMONTHDAY=31;BYMONTH=2,4", "Europe/Berlin", "no occurrence"),
        ("FREQ=HOURLY;INTERVAL=6;BYHOUR=3", "Europe/Berlin", "no occurrence"),
        ("FREQ=DAILY;UNTIL=20251231T000000Z", "Europe/Berlin", "before the first"),
        ("FREQ=DAILY;UNTIL=2026-12-31", "Europe/Berlin", "UNTIL must look like"),
        ("FREQ=DAILY;UNTIL=20261331", "Europe/Berlin", "not a valid date"),
        ("DTSTART:20260101T090000Z\nRRULE:FREQ=DAILY", "Europe/Berlin", "DTSTART"),
        ("FREQ=DAILY;DTSTART=20260101T090000Z", "Europe/Berlin", "DTSTART"),
        ("RRULE:FREQ=DAILY\nEXDATE:20260102T090000Z", "Europe/Berlin", "one RRULE value"),
        ("", "Europe/Berlin", "one RRULE value"),
        ("FREQ=DAILY", "Europe/Atlantis", "unknown time zone"),
        ("FREQ=DAILY", "", "unknown time zone"),
        ("FREQ=DAILY", "../../etc/passwd", "unknown time zone"),
        # Files of the host's zone folder that are no IANA zone: the host's own zone
        # (replicas on other hosts computed other times) and leap-second clocks.
        ("FREQ=DAILY", "localtime", "unknown time zone"),
        ("FREQ=DAILY", "right/UTC", "unknown time zone"),
        ("FREQ=DAILY", "posix/Europe/Berlin", "unknown time zone"),
    ],
)
def test_invalid_input_is_rejected_with_a_reason(rule: str, zone: str, message: str) -> None:
    with pytest.raises(RecurrenceError, match=message):
        parse(rule, zone, datetime(2026, 1, 5, 9, 0, tzinfo=UTC))  # a Monday


def test_naive_dtstart_rejected() -> None:
    with pytest.raises(RecurrenceError, match="dtstart"):
        parse("FREQ=DAILY", "Europe/Berlin", datetime(2026, 1, 1, 9, 0))


def test_recurrence_error_is_a_value_error() -> None:
    assert issubclass(RecurrenceError, ValueError)


def test_rule_parts_are_case_insensitive_and_may_carry_spaces() -> None:
    series = parse("freq=daily; count = 2", "Europe/Berlin", at("2026-01-05 09:00", BERLIN))
    assert walls(series.forecast(3)) == md("2026-01", 5, 6)


def test_rrule_prefix_is_stripped_and_the_rest_kept_verbatim() -> None:
    series = parse(
        "  RRULE:freq=weekly;byday=mo  ", "Europe/Berlin", at("2026-01-05 09:00", BERLIN)
    )
    assert series.rrule == "freq=weekly;byday=mo"
    assert walls(series.forecast(2)) == md("2026-01", 5, 12)


def test_series_rebuilt_from_stored_fields_equals_the_parsed_one() -> None:
    parsed = parse(
        "FREQ=MONTHLY", "Europe/Berlin", at("2026-01-31 09:00", BERLIN), Policy(month_end="clamp")
    )
    rebuilt = SeriesRule(parsed.rrule, parsed.timezone, parsed.dtstart, parsed.policy)
    assert rebuilt == parsed
    assert rebuilt.forecast(6) == parsed.forecast(6)


def test_bad_policy_values_rejected() -> None:
    with pytest.raises(RecurrenceError, match="month_end"):
        Policy(month_end="backward")  # type: ignore[arg-type]


def test_forecast_count_is_bounded() -> None:
    series = parse("FREQ=DAILY", "Europe/Berlin", at("2026-01-01 09:00", BERLIN))
    assert series.forecast(0) == []
    with pytest.raises(RecurrenceError):
        series.forecast(10_001)


# --- re-anchoring -----------------------------------------------------------------------------


def test_next_does_not_iterate_from_dtstart(monkeypatch: pytest.MonkeyPatch) -> None:
    start = at("2016-01-01 00:00", BERLIN)
    series = parse("FREQ=MINUTELY;INTERVAL=15", "Europe/Berlin", start)
    starts: list[datetime] = []
    produced: list[datetime] = []

    class CountingRule(rrule):
        def __init__(self, *args: object, **kwargs: object) -> None:
            starts.append(kwargs["dtstart"])  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

        def __iter__(self) -> Iterator[datetime]:
            for item in super().__iter__():
                produced.append(item)
                yield item

    monkeypatch.setattr(recurrence, "rrule", CountingRule)
    previous = at("2026-05-17 13:45", BERLIN)
    assert series.next(previous, 345_000) == Next(at("2026-05-17 14:00", BERLIN), 345_001)
    assert starts == [datetime(2026, 5, 17, 13, 45)]  # anchored at the previous occurrence
    assert len(produced) == 2  # the anchor itself and the answer


def test_next_of_a_gap_shifted_minutely_occurrence_continues_the_series() -> None:
    series = parse("FREQ=MINUTELY;INTERVAL=20", "America/New_York", at("2026-03-08 01:20"))
    got = series.forecast(8)
    assert walls(got) == hm(
        "2026-03-08", "01:20", "01:40", "03:00", "03:20", "03:40", "04:00", "04:20", "04:40"
    )
    for index in range(7):
        assert series.next(got[index], index) == Next(got[index + 1], index + 1)


# --- completion mode --------------------------------------------------------------------------

SCHEDULE = Policy()
COMPLETION = Policy(mode="completion")


def test_completion_mode_next_date_depends_on_the_local_completion_date() -> None:
    series = parse(
        "FREQ=DAILY;INTERVAL=2", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION
    )
    before_midnight = series.next(
        at("2026-01-01 09:00", BERLIN), 0, completed_at=at("2026-01-03 23:30", BERLIN)
    )
    after_midnight = series.next(
        at("2026-01-01 09:00", BERLIN), 0, completed_at=at("2026-01-04 00:30", BERLIN)
    )
    assert before_midnight == Next(at("2026-01-05 09:00", BERLIN), 1)
    assert after_midnight == Next(at("2026-01-06 09:00", BERLIN), 1)


def test_completion_mode_uses_the_series_zone_not_the_completion_offset() -> None:
    series = parse("FREQ=DAILY", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION)
    completed = datetime(2026, 1, 3, 23, 30, tzinfo=UTC)  # already 2026-01-04 00:30 in Berlin
    assert series.next(at("2026-01-01 09:00", BERLIN), 0, completed_at=completed) == Next(
        at("2026-01-05 09:00", BERLIN), 1
    )


def test_completion_mode_hourly_adds_the_interval_to_the_completion() -> None:
    series = parse(
        "FREQ=HOURLY;INTERVAL=3", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION
    )
    answer = series.next(
        at("2026-01-01 09:00", BERLIN), 0, completed_at=at("2026-01-01 10:17:42.5", BERLIN)
    )
    assert answer == Next(at("2026-01-01 13:17:42", BERLIN), 1)


def test_completion_mode_early_completion_never_repeats_the_previous_occurrence() -> None:
    series = parse("FREQ=DAILY", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION)
    previous = at("2026-01-05 09:00", BERLIN)
    answer = series.next(previous, 3, completed_at=at("2026-01-04 08:00", BERLIN))
    assert answer == Next(at("2026-01-06 09:00", BERLIN), 4)


@pytest.mark.parametrize(
    ("month_end", "expected"), [("clamp", "2026-02-28 09:00"), ("skip", "2026-03-31 09:00")]
)
def test_completion_mode_month_end(month_end: str, expected: str) -> None:
    policy = Policy(mode="completion", month_end=month_end)  # type: ignore[arg-type]
    series = parse("FREQ=MONTHLY", "Europe/Berlin", at("2025-12-31 09:00", BERLIN), policy)
    answer = series.next(
        at("2025-12-31 09:00", BERLIN), 0, completed_at=at("2026-01-31 20:00", BERLIN)
    )
    assert answer == Next(at(expected, BERLIN), 1)


def test_completion_mode_respects_count_and_until() -> None:
    counted = parse(
        "FREQ=DAILY;COUNT=2", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION
    )
    assert (
        counted.next(at("2026-01-02 09:00", BERLIN), 1, completed_at=at("2026-01-02 10:00", BERLIN))
        is None
    )
    until = parse(
        "FREQ=DAILY;UNTIL=20260110", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), COMPLETION
    )
    assert (
        until.next(at("2026-01-01 09:00", BERLIN), 0, completed_at=at("2026-01-10 08:00", BERLIN))
        is None
    )


def test_completion_mode_rejects_byxxx_and_needs_completed_at() -> None:
    with pytest.raises(RecurrenceError, match="completion mode"):
        parse(
            "FREQ=WEEKLY;BYDAY=MO,WE", "Europe/Berlin", at("2026-01-05 09:00", BERLIN), COMPLETION
        )
    series = parse("FREQ=WEEKLY", "Europe/Berlin", at("2026-01-05 09:00", BERLIN), COMPLETION)
    with pytest.raises(RecurrenceError, match="completed_at"):
        series.next(at("2026-01-05 09:00", BERLIN), 0)


# --- catch-up ---------------------------------------------------------------------------------


def test_catch_up_next_future_lists_missed_and_returns_a_future_occurrence() -> None:
    series = parse(
        "FREQ=DAILY",
        "Europe/Berlin",
        at("2026-01-01 09:00", BERLIN),
        Policy(catch_up="next_future"),
    )
    answer = series.next(at("2026-01-01 09:00", BERLIN), 0, now=at("2026-01-04 12:00", BERLIN))
    assert answer == Next(
        at("2026-01-05 09:00", BERLIN),
        4,
        (
            at("2026-01-02 09:00", BERLIN),
            at("2026-01-03 09:00", BERLIN),
            at("2026-01-04 09:00", BERLIN),
        ),
    )


def test_catch_up_next_in_series_ignores_now() -> None:
    series = parse("FREQ=DAILY", "Europe/Berlin", at("2026-01-01 09:00", BERLIN))
    answer = series.next(at("2026-01-01 09:00", BERLIN), 0, now=at("2026-03-01 12:00", BERLIN))
    assert answer == Next(at("2026-01-02 09:00", BERLIN), 1)


def test_catch_up_when_the_series_ended_in_the_past_returns_none() -> None:
    policy = Policy(catch_up="next_future")
    series = parse("FREQ=DAILY;COUNT=3", "Europe/Berlin", at("2026-01-01 09:00", BERLIN), policy)
    assert (
        series.next(at("2026-01-01 09:00", BERLIN), 0, now=at("2026-02-01 00:00", BERLIN)) is None
    )


# --- friendly spec ----------------------------------------------------------------------------


def test_friendly_spec_example() -> None:
    spec = {"frequency": "weekly", "interval": 2, "weekdays": ["MO", "WE"], "count": 10}
    assert friendly_to_rrule(spec) == "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;COUNT=10"


def test_friendly_spec_all_fields() -> None:
    spec = {
        "frequency": "MONTHLY",
        "interval": 1,
        "months": [1],
        "month_days": [1, 15],
        "set_positions": [-1],
        "week_start": "su",
        "until": "2027-01-01T01:00:00+01:00",
    }
    expected = "FREQ=MONTHLY;BYMONTH=1;BYMONTHDAY=1,15;BYSETPOS=-1;WKST=SU;UNTIL=20270101T000000Z"
    assert friendly_to_rrule(spec) == expected


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("2027-01-01", "20270101"),
        ("2027-01-01T09:00:00", "20270101T090000"),
        (date(2027, 1, 1), "20270101"),
    ],
)
def test_friendly_until_forms(until: object, expected: str) -> None:
    assert (
        friendly_to_rrule({"frequency": "daily", "until": until}) == f"FREQ=DAILY;UNTIL={expected}"
    )


@pytest.mark.parametrize(
    "spec",
    [
        {"frequency": "fortnightly"},
        {"frequency": "secondly"},
        {"interval": 2},
        {"frequency": "daily", "interval": 0},
        {"frequency": "daily", "interval": True},
        {"frequency": "daily", "interval": "2"},
        {"frequency": "weekly", "weekdays": ["MO", "XX"]},
        {"frequency": "weekly", "weekdays": []},
        {"frequency": "weekly", "weekdays": "MO;COUNT=2"},
        {"frequency": "monthly", "month_days": [32]},
        {"frequency": "daily", "count": 3, "until": "2027-01-01"},
        {"frequency": "daily", "until": "next tuesday"},
        {"frequency": "daily", "colour": "blue"},
        ["frequency", "daily"],
    ],
)
def test_friendly_spec_rejects_bad_values(spec: object) -> None:
    with pytest.raises(RecurrenceError):
        friendly_to_rrule(spec)  # type: ignore[arg-type]


# --- properties against plain dateutil --------------------------------------------------------


@cache
def transitions(zone_name: str) -> tuple[datetime, ...]:
    """UTC instants in 2026-2027 where the zone's offset changes (spring forward and fall back)."""
    zone, found = ZoneInfo(zone_name), []
    instant = datetime(2026, 1, 1, tzinfo=UTC)
    while instant.year < 2028:
        following = instant + timedelta(minutes=30)
        if instant.astimezone(zone).utcoffset() != following.astimezone(zone).utcoffset():
            found.append(following)
        instant = following
    return tuple(found)


@st.composite
def local_starts(draw: st.DrawFn, zone_name: str) -> datetime:
    """DTSTART: anywhere in 2000-2035 with month ends favoured, or shortly before a DST change."""
    zone = ZoneInfo(zone_name)
    if draw(st.booleans()):
        change = draw(st.sampled_from(transitions(zone_name)))
        start = change - timedelta(minutes=draw(st.integers(0, 36 * 60)))
        return start.astimezone(zone)
    year, month = draw(st.integers(2000, 2035)), draw(st.integers(1, 12))
    day = draw(st.one_of(st.integers(1, 28), st.integers(29, 31)))
    assume(
        day <= [31, 29 if year % 4 == 0 else 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1]
    )
    hour, minute = draw(st.integers(0, 23)), draw(st.sampled_from([0, 15, 30, 45, 7]))
    return datetime(year, month, day, hour, minute, tzinfo=zone).astimezone(UTC).astimezone(zone)


@st.composite
def weekdays(draw: st.DrawFn, ordinals: bool) -> str:
    days = draw(
        st.lists(
            st.sampled_from(["MO", "TU", "WE", "TH", "FR", "SA", "SU"]),
            min_size=1,
            max_size=3,
            unique=True,
        )
    )
    if ordinals:
        days = [draw(st.sampled_from(["", "1", "2", "-1", "+3"])) + day for day in days]
    return ",".join(days)


def joined(numbers: set[int]) -> str:
    return ",".join(map(str, sorted(numbers)))


@st.composite
def series_cases(draw: st.DrawFn) -> tuple[str, str, datetime]:
    """(RRULE, zone, DTSTART) over every FREQ, INTERVAL>1, BYxxx mixes, WKST, COUNT or UTC UNTIL."""
    zone_name = draw(st.sampled_from(ZONES))
    start = draw(local_starts(zone_name))
    freq = draw(st.sampled_from(["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"]))
    parts = [f"FREQ={freq}"]
    interval = draw(
        st.sampled_from([1, 7, 15, 20, 45, 90]) if freq == "MINUTELY" else st.integers(1, 4)
    )
    if interval > 1:
        parts.append(f"INTERVAL={interval}")
    if freq in ("YEARLY", "MONTHLY") and draw(st.booleans()):
        parts.append(f"BYMONTH={joined(draw(st.sets(st.integers(1, 12), min_size=1, max_size=4)))}")
    if freq in ("YEARLY", "MONTHLY", "DAILY") and draw(st.booleans()):
        days = draw(
            st.sets(st.sampled_from([1, 2, 13, 15, 28, 29, 30, 31, -1, -2]), min_size=1, max_size=3)
        )
        parts.append(f"BYMONTHDAY={joined(days)}")
    yearly_shape = (
        draw(st.sampled_from(["plain", "weekno", "yearday"])) if freq == "YEARLY" else "plain"
    )
    if yearly_shape == "weekno":
        parts.append(f"BYWEEKNO={draw(st.sampled_from(['1', '20', '-1', '52,53', '1,27']))}")
    if yearly_shape == "yearday":
        parts.append(f"BYYEARDAY={draw(st.sampled_from(['1', '100,200', '-1', '60', '366']))}")
    if draw(st.booleans()):
        ordinals = freq in ("MONTHLY", "YEARLY") and yearly_shape != "weekno"
        parts.append(f"BYDAY={draw(weekdays(ordinals))}")
    if freq in ("DAILY", "WEEKLY", "MONTHLY") and draw(st.integers(0, 3)) == 0:
        parts.append(f"BYHOUR={joined(draw(st.sets(st.integers(0, 23), min_size=1, max_size=3)))}")
    if freq == "HOURLY" and draw(st.integers(0, 3)) == 0:
        minutes = draw(st.sets(st.sampled_from([0, 15, 30, 45]), min_size=1, max_size=2))
        parts.append(f"BYMINUTE={joined(minutes)}")
    has_by = any(part.startswith("BY") for part in parts)
    setpos = has_by and draw(st.integers(0, 3)) == 0
    if setpos:
        parts.append(f"BYSETPOS={draw(st.sampled_from(['1', '-1', '2', '1,-1', '3']))}")
    if freq == "WEEKLY" or draw(st.integers(0, 4)) == 0:
        parts.append(f"WKST={draw(st.sampled_from(['MO', 'SU', 'WE']))}")
    end = draw(st.sampled_from(["none", "count", "until"]))
    if end == "count":
        parts.append(f"COUNT={draw(st.integers(1, 25))}")
    elif end == "until":
        unit = {"HOURLY": timedelta(hours=1), "MINUTELY": timedelta(minutes=15)}.get(
            freq, timedelta(days=7)
        )
        until = start.astimezone(UTC) + unit * draw(st.integers(0, 120))  # (arithmetic drops fold)
        parts.append(f"UNTIL={until.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    return ";".join(parts), zone_name, start


def build(case: tuple[str, str, datetime], policy: Policy = SCHEDULE) -> SeriesRule:
    rule, zone_name, start = case
    try:
        return parse(rule, zone_name, start, policy)
    except RecurrenceError as error:
        assume("no occurrence" not in str(error) and "too sparse" not in str(error))
        raise


def mixed_byday(rule: str) -> bool:
    """BYDAY mixing plain and numbered weekdays, where dateutil reads the list as "all must
    match" instead of RFC 5545's set; tests/unit/test_recurrence_reference.py covers those."""
    days = next((p[6:].split(",") for p in rule.split(";") if p.startswith("BYDAY=")), [])
    numbered = [day[:-2] not in ("", "+") for day in days]
    return any(numbered) and not all(numbered)


def oracle(rule: str, start: datetime, limit: int) -> list[datetime]:
    """Plain dateutil iteration from DTSTART, as UTC instants, with RFC 5545's DTSTART-first and
    duplicates-ignored rules; COUNT counts the distinct instants."""
    assert not mixed_byday(rule), "dateutil is no oracle for a mixed BYDAY list"
    parts = rule.split(";")
    counts = [int(part[6:]) for part in parts if part.startswith("COUNT=")]
    text = ";".join(part for part in parts if not part.startswith("COUNT="))
    limit = min([limit, *counts])
    out = [start.astimezone(UTC)]
    for local in rrulestr(text, dtstart=start):  # aware DTSTART: wall times with the zone attached
        if len(out) >= limit:
            break
        instant = local.astimezone(UTC)  # fold=0: a nonexistent time moves forward
        if instant > out[-1]:
            out.append(instant)
    return out[:limit]


def week_aligned(case: tuple[str, str, datetime]) -> tuple[str, str, datetime]:
    """WEEKLY+BYSETPOS starts on WKST so dateutil's partial first week is the whole week."""
    rule, zone_name, start = case
    if "FREQ=WEEKLY" not in rule or "BYSETPOS" not in rule:
        return case
    wkst = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"].index(rule.split("WKST=")[1][:2])
    local = start.replace(tzinfo=None) - timedelta(days=(start.weekday() - wkst) % 7)
    return (
        rule,
        zone_name,
        local.replace(tzinfo=start.tzinfo).astimezone(UTC).astimezone(start.tzinfo),
    )


N = 40


@settings(max_examples=400, deadline=None)
@given(case=series_cases())
def test_forecast_matches_plain_dateutil_iteration(case: tuple[str, str, datetime]) -> None:
    assume(not mixed_byday(case[0]))
    case = week_aligned(case)
    series = build(case)
    got = series.forecast(N)
    instants = [t.astimezone(UTC) for t in got]
    assert instants == oracle(case[0], case[2], N)
    assert all(a < b for a, b in pairwise(instants))  # increasing, distinct
    assert all(t.tzinfo == ZoneInfo(case[1]) for t in got)
    assert isos(series.forecast(N)) == isos(got)  # deterministic
    assert isos(build(case).forecast(N)) == isos(got)


@settings(max_examples=300, deadline=None)
@given(case=series_cases())
def test_next_from_each_occurrence_reproduces_the_forecast(case: tuple[str, str, datetime]) -> None:
    series = build(case)
    got = series.forecast(N)
    for index, (previous, following) in enumerate(pairwise(got)):
        given_as = previous.astimezone(UTC) if index % 2 else previous
        answer = series.next(given_as, index)
        assert answer is not None
        assert (answer.scheduled_at.isoformat(), answer.index, answer.missed) == (
            following.isoformat(),
            index + 1,
            (),
        )
    if len(got) < N:  # ended by COUNT or UNTIL
        assert series.next(got[-1], len(got) - 1) is None


@settings(max_examples=150, deadline=None)
@given(case=series_cases())
def test_count_and_until_are_respected(case: tuple[str, str, datetime]) -> None:
    series = build(case)
    got = series.forecast(N)
    rule = case[0]
    if "COUNT=" in rule:
        assert len(got) <= int(rule.split("COUNT=")[1].split(";")[0])
    if "UNTIL=" in rule:
        until = datetime.strptime(rule.split("UNTIL=")[1][:16], "%Y%m%dT%H%M%SZ").replace(
            tzinfo=UTC
        )
        assert all(t <= until for t in got)


LAST_DAY = {2: 28, 4: 30, 6: 30, 9: 30, 11: 30}


def last_day(year: int, month: int) -> int:
    return (
        29
        if month == 2 and year % 4 == 0 and (year % 100 or year % 400 == 0)
        else LAST_DAY.get(month, 31)
    )


@settings(max_examples=150, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    year=st.integers(2000, 2030),
    month=st.integers(1, 12),
    day=st.integers(29, 31),
    hour=st.integers(5, 22),
    interval=st.integers(1, 5),
    explicit=st.booleans(),
)
def test_monthly_clamp_stays_in_the_month_and_lands_on_the_last_day(
    zone_name: str, year: int, month: int, day: int, hour: int, interval: int, explicit: bool
) -> None:
    assume(day <= last_day(year, month))
    rule = f"FREQ=MONTHLY;INTERVAL={interval}" + (f";BYMONTHDAY={day}" if explicit else "")
    start = datetime(year, month, day, hour, 0, tzinfo=ZoneInfo(zone_name))
    series = parse(rule, zone_name, start, Policy(month_end="clamp"))
    got = series.forecast(30)
    for n, occurrence in enumerate(got):
        y, m = divmod(year * 12 + month - 1 + n * interval, 12)
        assert (occurrence.year, occurrence.month) == (y, m + 1)  # never leaves its month
        assert occurrence.day == min(day, last_day(y, m + 1))
        assert (occurrence.hour, occurrence.minute) == (hour, 0)
    for index in range(len(got) - 1):
        assert series.next(got[index], index) == Next(got[index + 1], index + 1)
    skipped = parse(rule, zone_name, start).forecast(30)
    assert all(t.day == day for t in skipped)


@settings(max_examples=60, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    year=st.sampled_from([2000, 2004, 2024, 2096]),
    interval=st.integers(1, 3),
)
def test_yearly_feb_29_policies(zone_name: str, year: int, interval: int) -> None:
    start = datetime(year, 2, 29, 9, 0, tzinfo=ZoneInfo(zone_name))
    rule = f"FREQ=YEARLY;INTERVAL={interval}"
    clamp = parse(rule, zone_name, start, Policy(month_end="clamp")).forecast(12)
    assert [(t.year, t.month, t.day) for t in clamp] == [
        (year + n * interval, 2, last_day(year + n * interval, 2)) for n in range(12)
    ]
    skip = parse(rule, zone_name, start).forecast(6)
    assert all((t.month, t.day) == (2, 29) for t in skip)


@settings(max_examples=150, deadline=None)
@given(
    zone_name=st.sampled_from(ZONES),
    freq=st.sampled_from(["DAILY", "WEEKLY"]),
    interval=st.integers(1, 3),
    days_later=st.integers(0, 900),
    minute_of_day=st.one_of(st.integers(0, 1439), st.integers(23 * 60, 1439), st.integers(0, 59)),
)
def test_completion_mode_steps_from_the_local_completion_date(
    zone_name: str, freq: str, interval: int, days_later: int, minute_of_day: int
) -> None:
    zone = ZoneInfo(zone_name)
    start = datetime(2026, 1, 1, 9, 0, tzinfo=zone)
    series = parse(f"FREQ={freq};INTERVAL={interval}", zone_name, start, COMPLETION)
    local_day = date(2026, 1, 1) + timedelta(days=days_later)
    completed = datetime(local_day.year, local_day.month, local_day.day, tzinfo=zone) + timedelta(
        minutes=minute_of_day
    )
    completed = completed.astimezone(UTC).astimezone(zone)
    answer = series.next(start, 0, completed_at=completed)
    step = timedelta(days=interval * (7 if freq == "WEEKLY" else 1))
    expected = completed.date() + step
    assert answer == Next(
        datetime(expected.year, expected.month, expected.day, 9, 0, tzinfo=zone), 1
    )
    assert answer.scheduled_at.hour == 9


@settings(max_examples=150, deadline=None)
@given(case=series_cases(), data=st.data())
def test_catch_up_next_future_skips_past_occurrences_and_lists_them(
    case: tuple[str, str, datetime], data: st.DataObject
) -> None:
    series = build(case, Policy(catch_up="next_future"))
    got = series.forecast(N)
    previous = data.draw(st.integers(0, len(got) - 1))
    # UTC: datetimes sharing a zone compare by wall clock, not by instant
    now = got[previous].astimezone(UTC) + timedelta(
        minutes=data.draw(st.integers(0, 60 * 24 * 400))
    )
    try:
        answer = series.next(got[previous], previous, now=now)
    except WorkLimitExceeded:
        # Catching up is bounded work: only a rule with thousands of missed occurrences
        # in between (minutely for months) may run out, never an ordinary one.
        gap = (got[-1] - got[0]) / max(1, len(got) - 1)
        assert len(got) == N and (now - got[previous]) / gap > 1_000
        return
    first = next((i for i in range(previous + 1, len(got)) if got[i] > now), None)
    assume(first is not None or len(got) < N)  # else the answer lies beyond the forecast
    if first is None:
        assert answer is None
        return
    assert answer is not None
    assert isos([answer.scheduled_at]) == isos([got[first]])
    assert answer.index == first
    assert isos(list(answer.missed)) == isos(got[previous + 1 : first])
    assert all(t <= now for t in answer.missed)


def test_the_readme_lists_exactly_the_frequencies_the_validator_accepts():
    """The README's rrule row, the friendly `frequency` words and the parser agree."""
    import re
    import typing
    from pathlib import Path

    from duetide.rules.recurrence import FREQUENCIES
    from duetide.services.schemas import RecurrenceIn

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| `rrule` |"))
    meaning = row.split("|")[3]  # the cell after the example
    listed = re.findall(r"\b(YEARLY|MONTHLY|WEEKLY|DAILY|HOURLY|MINUTELY|SECONDLY)\b", meaning)
    assert tuple(listed) == FREQUENCIES
    friendly = RecurrenceIn.model_fields["frequency"].annotation
    words = {w for arg in typing.get_args(friendly) for w in typing.get_args(arg)}
    assert words == {f.lower() for f in FREQUENCIES}
