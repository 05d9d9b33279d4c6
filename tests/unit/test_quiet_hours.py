"""Quiet hours in the user's zone (across midnight and DST) and snoozing."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from duetide.rules.quiet_hours import MAX_SNOOZE, defer_for_quiet_hours, is_quiet, snooze_until

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
NIGHT = (time(22, 0), time(7, 0))


def berlin(y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=BERLIN, fold=fold)


def new_york(y: int, mo: int, d: int, h: int = 0, mi: int = 0, *, fold: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=NEW_YORK, fold=fold)


def utc(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0) -> datetime:
    return datetime(y, mo, d, h, mi, s, tzinfo=UTC)


# --- plain days -------------------------------------------------------------------------


def test_outside_quiet_hours_the_time_is_unchanged():
    fire_at = berlin(2026, 6, 10, 12, 0)
    assert defer_for_quiet_hours(fire_at, "Europe/Berlin", *NIGHT) is fire_at


def test_a_same_day_window_defers_to_its_end_as_utc():
    result = defer_for_quiet_hours(berlin(2026, 6, 10, 13, 20), "Europe/Berlin", time(13), time(14))
    assert result == utc(2026, 6, 10, 12, 0)
    assert result.tzinfo is UTC


def test_late_evening_in_a_window_across_midnight_waits_for_the_next_morning():
    result = defer_for_quiet_hours(berlin(2026, 6, 10, 23, 30), "Europe/Berlin", *NIGHT)
    assert result == berlin(2026, 6, 11, 7, 0)


def test_early_morning_in_a_window_across_midnight_waits_for_the_same_morning():
    result = defer_for_quiet_hours(berlin(2026, 6, 11, 2, 0), "Europe/Berlin", *NIGHT)
    assert result == berlin(2026, 6, 11, 7, 0)


@pytest.mark.parametrize(
    ("wall", "deferred"),
    [
        (time(21, 59, 59, 999999), False),
        (time(22, 0), True),  # start is inside
        (time(0, 0), True),
        (time(6, 59, 59, 999999), True),
        (time(7, 0), False),  # end is outside
    ],
)
def test_start_is_inclusive_and_end_exclusive(wall: time, deferred: bool):
    fire_at = datetime.combine(datetime(2026, 6, 11).date(), wall, tzinfo=BERLIN)
    result = defer_for_quiet_hours(fire_at, "Europe/Berlin", *NIGHT)
    assert (result != fire_at) is deferred


def test_the_zone_of_fire_at_does_not_matter_only_the_users_zone():
    # 21:30 UTC is 23:30 in Berlin in summer (quiet) and 17:30 in New York (not quiet).
    fire_at = utc(2026, 6, 10, 21, 30)
    assert defer_for_quiet_hours(fire_at, "Europe/Berlin", *NIGHT) == berlin(2026, 6, 11, 7)
    assert defer_for_quiet_hours(fire_at, "America/New_York", *NIGHT) is fire_at


def test_equal_start_and_end_means_no_quiet_hours():
    fire_at = berlin(2026, 6, 10, 3, 0)
    assert defer_for_quiet_hours(fire_at, "Europe/Berlin", time(3), time(3)) is fire_at


# --- DST --------------------------------------------------------------------------------
# Berlin: 2026-03-29 02:00 CET -> 03:00 CEST; 2026-10-25 03:00 CEST -> 02:00 CET.
# New York: 2026-03-08 02:00 EST -> 03:00 EDT; 2026-11-01 02:00 EDT -> 01:00 EST.


def test_night_across_spring_forward_ends_at_seven_summer_time():
    result = defer_for_quiet_hours(berlin(2026, 3, 28, 23, 0), "Europe/Berlin", *NIGHT)
    assert result == utc(2026, 3, 29, 5, 0)  # 07:00 CEST


def test_night_across_fall_back_ends_at_seven_winter_time():
    result = defer_for_quiet_hours(new_york(2026, 10, 31, 23, 0), "America/New_York", *NIGHT)
    assert result == utc(2026, 11, 1, 12, 0)  # 07:00 EST


@pytest.mark.parametrize(
    ("zone", "fire_at", "expected"),
    [
        # 02:30 does not exist: read with the offset before the gap, i.e. 03:30 summer time.
        ("Europe/Berlin", berlin(2026, 3, 28, 23, 0), utc(2026, 3, 29, 1, 30)),
        ("Europe/Berlin", berlin(2026, 3, 29, 1, 59), utc(2026, 3, 29, 1, 30)),
        ("America/New_York", new_york(2026, 3, 8, 1, 0), utc(2026, 3, 8, 7, 30)),
    ],
)
def test_an_end_inside_the_spring_forward_gap_moves_forward_by_the_gap(zone, fire_at, expected):
    assert defer_for_quiet_hours(fire_at, zone, time(22), time(2, 30)) == expected


def test_an_ambiguous_end_is_the_first_of_the_two():
    result = defer_for_quiet_hours(
        berlin(2026, 10, 24, 23, 0), "Europe/Berlin", time(22), time(2, 30)
    )
    assert result == utc(2026, 10, 25, 0, 30)  # 02:30 CEST, the first 02:30


def test_in_the_repeated_hour_the_end_is_the_second_of_the_two():
    # 02:15 CET (second pass) is quiet by the wall clock; 02:30 CEST is already behind it.
    fire_at = berlin(2026, 10, 25, 2, 15, fold=1)
    result = defer_for_quiet_hours(fire_at, "Europe/Berlin", time(22), time(2, 30))
    assert result == utc(2026, 10, 25, 1, 30)  # 02:30 CET


def test_the_first_pass_of_the_repeated_hour_after_the_end_is_not_quiet():
    fire_at = berlin(2026, 10, 25, 2, 45)  # 02:45 CEST
    assert defer_for_quiet_hours(fire_at, "Europe/Berlin", time(22), time(2, 30)) is fire_at


def test_new_york_fall_back_repeated_hour_in_a_window_ending_inside_it():
    window = (time(0, 0), time(1, 30))
    first = new_york(2026, 11, 1, 0, 30)  # EDT
    second_pass = new_york(2026, 11, 1, 1, 10, fold=1)  # EST
    assert defer_for_quiet_hours(first, "America/New_York", *window) == utc(2026, 11, 1, 5, 30)
    assert defer_for_quiet_hours(second_pass, "America/New_York", *window) == utc(
        2026, 11, 1, 6, 30
    )


def test_a_gap_that_pushes_the_end_into_the_next_window_defers_to_the_next_end():
    # Quiet 03:00-02:30: on the spring-forward night 02:30-03:00 does not exist at all.
    fire_at = berlin(2026, 3, 29, 1, 30)
    result = defer_for_quiet_hours(fire_at, "Europe/Berlin", time(3), time(2, 30))
    assert result == berlin(2026, 3, 30, 2, 30)


# --- validation -------------------------------------------------------------------------


def test_a_naive_fire_time_is_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        defer_for_quiet_hours(datetime(2026, 6, 10, 23), "Europe/Berlin", *NIGHT)


def test_an_unknown_zone_is_refused():
    with pytest.raises(ValueError, match="unknown time zone"):
        defer_for_quiet_hours(utc(2026, 6, 10), "Mars/Olympus_Mons", *NIGHT)


def test_quiet_hours_with_a_zone_attached_are_refused():
    with pytest.raises(ValueError, match="wall-clock"):
        defer_for_quiet_hours(utc(2026, 6, 10), "Europe/Berlin", time(22, tzinfo=UTC), time(7))


# --- property ---------------------------------------------------------------------------

ZONES = ["Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Pacific/Apia", "UTC"]
# Transitions worth being near: Berlin and New York both ways, Lord Howe's 30-minute
# shift, and Samoa skipping 2011-12-30 entirely.
NEAR = [
    utc(2026, 3, 29, 1),
    utc(2026, 10, 25, 1),
    utc(2026, 3, 8, 7),
    utc(2026, 11, 1, 6),
    utc(2026, 4, 4, 15),
    utc(2026, 10, 3, 15),
    utc(2011, 12, 30, 10),
]
fire_times = st.one_of(
    st.datetimes(datetime(2025, 1, 1), datetime(2027, 12, 31)).map(lambda d: d.replace(tzinfo=UTC)),
    st.builds(
        lambda base, minutes: base + timedelta(minutes=minutes),
        st.sampled_from(NEAR),
        st.integers(-36 * 60, 36 * 60),
    ),
)
walls = st.one_of(
    st.builds(time, st.integers(0, 23), st.sampled_from([0, 15, 30, 45])),
    st.times(),
)


@settings(max_examples=800, deadline=None)
@given(fire_at=fire_times, zone=st.sampled_from(ZONES), start=walls, end=walls)
def test_the_result_is_never_early_and_never_quiet(fire_at, zone, start, end):
    result = defer_for_quiet_hours(fire_at, zone, start, end)
    assert result >= fire_at
    assert not is_quiet(result, zone, start, end)
    assert result - fire_at <= timedelta(days=2)
    if not is_quiet(fire_at, zone, start, end):
        assert result is fire_at


# --- snooze -----------------------------------------------------------------------------

NOW = utc(2026, 6, 10, 12, 0)


def test_snooze_for_a_duration_is_elapsed_time_not_wall_clock():
    # One hour after 01:30 CET on the spring-forward night is 03:30 CEST.
    now = berlin(2026, 3, 29, 1, 30)
    assert snooze_until(now, timedelta(hours=1), None) == berlin(2026, 3, 29, 3, 30)
    assert snooze_until(now, timedelta(days=1), None) - now.astimezone(UTC) == timedelta(days=1)


def test_snooze_until_a_time_returns_it_in_utc():
    result = snooze_until(NOW, None, berlin(2026, 6, 11, 9, 0))
    assert result == utc(2026, 6, 11, 7, 0)
    assert result.tzinfo is UTC


def test_snooze_accepts_exactly_the_maximum():
    assert snooze_until(NOW, MAX_SNOOZE, None) == NOW + timedelta(days=30)
    assert snooze_until(NOW, None, NOW + MAX_SNOOZE) == NOW + timedelta(days=30)


@pytest.mark.parametrize(
    ("for_", "until", "message"),
    [
        (None, None, "exactly one"),
        (timedelta(hours=1), NOW + timedelta(hours=1), "exactly one"),
        (timedelta(0), None, "positive"),
        (timedelta(minutes=-5), None, "positive"),
        (MAX_SNOOZE + timedelta(seconds=1), None, "at most 30 days"),
        (None, NOW, "future"),
        (None, NOW - timedelta(minutes=1), "future"),
        (None, NOW + MAX_SNOOZE + timedelta(seconds=1), "at most 30 days"),
        (None, datetime(2026, 6, 11, 9, 0), "timezone-aware"),
    ],
)
def test_invalid_snoozes_are_refused_with_a_reason(for_, until, message):
    with pytest.raises(ValueError, match=message):
        snooze_until(NOW, for_, until)


def test_snooze_needs_an_aware_now():
    with pytest.raises(ValueError, match="timezone-aware"):
        snooze_until(datetime(2026, 6, 10, 12), timedelta(hours=1), None)
