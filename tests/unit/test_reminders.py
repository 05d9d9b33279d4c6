"""The pure reminder rules."""

from datetime import UTC, datetime, timedelta

import pytest

from duetide.rules.reminders import fire_time, is_missed, moved_with_due

DUE = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_absolute_reminder_fires_at_its_time_whatever_the_due():
    at = datetime(2026, 11, 30, 18, 0, tzinfo=UTC)
    assert fire_time(at, None, DUE) == at
    assert fire_time(at, None, None) == at


def test_relative_reminder_fires_ahead_of_due():
    assert fire_time(None, 900, DUE) == datetime(2026, 12, 1, 8, 45, tzinfo=UTC)


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
