"""Times read back from the JSON aggregates, as each backend writes them."""

from datetime import UTC, datetime

from duetide.storage.aggregates import json_time

AT = datetime(2030, 1, 1, 3, 15, tzinfo=UTC)


def test_sqlite_text_is_utc_without_an_offset():
    assert json_time("2030-01-01 03:15:00.000000") == AT
    assert json_time("2030-01-01 03:15:00.000000").tzinfo is UTC


def test_postgresql_text_carries_the_sessions_offset():
    for text in (
        "2030-01-01T03:15:00+00:00",
        "2030-01-01T08:45:00+05:30",
        "2029-12-31T22:15:00-05:00",
    ):
        found = json_time(text)
        assert found == AT and found.tzinfo is UTC


def test_null_stays_null():
    assert json_time(None) is None
