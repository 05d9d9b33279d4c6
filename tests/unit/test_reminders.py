"""The pure reminder rules."""

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from duetide.rules.reminders import fire_time, is_missed, moved_with_due

DUE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_absolute_reminder_fires_at_its_time_whatever_the_due():
    at = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
    assert fire_time(at, None, DUE) == at
    assert fire_time(at, None, None) == at


def test_relative_reminder_fires_ahead_of_due():
    assert fire_time(None, 900, DUE) == datetime(2026, 12, 1, 8, 45, tzinfo=UTC)


@example(zone="Europe/Berlin", due=datetime(2027, 3, 28, 1, 30, tzinfo=UTC), before_s=86_400)
@given(
    zone=st.sampled_from(["Europe/Berlin", "America/New_York", "Australia/Lord_Howe",
                          "America/Santiago", "Pacific/Apia", "UTC"]),
    due=st.datetimes(datetime(2000, 1, 1), datetime(2040, 1, 1), timezones=st.just(UTC)),
    before_s=st.integers(0, 14 * 86_400),
)  # fmt: skip
def test_a_relative_reminder_is_its_offset_ahead_in_elapsed_time_in_any_zone(
    zone: str, due: datetime, before_s: int
) -> None:
    """A due time in a zone (as the recurrence function's occurrences have it) was
    subtracted on that zone's wall clock: across a clock change a reminder fired an hour
    early, or after its due time (an audit, 2026-12-07)."""
    local = due.astimezone(ZoneInfo(zone))
    fired = fire_time(None, before_s, local)
    assert fired is not None
    # in UTC: two times of one zone object subtract on its wall clock, as the bug did
    assert local.astimezone(UTC) - fired.astimezone(UTC) == timedelta(seconds=before_s)
    assert fired.tzinfo == local.tzinfo  # shown in the due time's zone


def test_relative_reminder_without_due_never_fires():
    assert fire_time(None, 900, None) is None


def test_late_within_grace_is_sent_beyond_it_is_missed():
    grace = timedelta(hours=1)
    assert not is_missed(DUE, DUE + grace, grace)
    assert is_missed(DUE, DUE + grace + timedelta(seconds=1), grace)
    assert not is_missed(DUE, DUE - timedelta(minutes=5), grace)


NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
H = timedelta(hours=1)
FOLLOWS = DUE - timedelta(seconds=900)  # a 15-minute reminder of DUE, not snoozed
SNOOZED = NOW + 2 * H


@pytest.mark.parametrize(
    ("state", "fire_at", "new_due", "rearm", "expected"),
    [
        # the new time is ahead: set for it, and armed again whatever happened before
        ("pending", FOLLOWS, DUE + H, True, (FOLLOWS + H, "pending")),
        ("fired", FOLLOWS, DUE + H, True, (FOLLOWS + H, "pending")),
        ("missed", FOLLOWS, DUE + H, True, (FOLLOWS + H, "pending")),
        ("pending", SNOOZED, DUE + 3 * H, True, (FOLLOWS + 3 * H, "pending")),
        ("fired", FOLLOWS, DUE + H, False, None),  # a done task's: not armed again
        ("pending", FOLLOWS, DUE + H, False, (FOLLOWS + H, "pending")),
        # the new time has passed: a pending one following the due takes it (fires now)
        ("pending", FOLLOWS, NOW, True, (NOW - timedelta(seconds=900), "pending")),
        ("pending", SNOOZED, NOW, True, None),  # a snooze in progress is kept
        ("fired", FOLLOWS, NOW, True, None),  # reminded already: not again
        # no due time: a pending one waits, one that fired stays so
        ("pending", FOLLOWS, None, True, (None, "pending")),
        ("fired", FOLLOWS, None, True, None),
        ("dismissed", FOLLOWS, DUE + H, True, None),
    ],
)
def test_a_relative_reminder_follows_its_due_time(state, fire_at, new_due, rearm, expected):
    moved = moved_with_due(state, fire_at, 900, DUE, new_due, NOW, rearm=rearm)
    assert moved == expected


def test_an_absolute_reminder_does_not_follow_the_due_time():
    """A snoozed `at` reminder was set back to its `at` on a due change: it fired at once."""
    assert moved_with_due("pending", SNOOZED, None, DUE, DUE + H, NOW) is None
    assert moved_with_due("fired", NOW - H, None, DUE, DUE + H, NOW) is None
