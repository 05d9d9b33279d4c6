"""The pure reminder rules."""

from datetime import UTC, datetime, timedelta

from duetide.rules.reminders import fire_time, is_missed

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
