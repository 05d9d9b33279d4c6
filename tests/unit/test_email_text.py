"""The email channel's text: the due time as the reader's clock shows it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from duetide.channels.email import due_text


def utc(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("due_at", "zone", "shown"),
    [
        (utc(2026, 12, 8, 9), "Europe/Berlin", "Tue 08 Dec 2026, 10:00 CET (Europe/Berlin)"),
        (utc(2026, 7, 8, 9), "Europe/Berlin", "Wed 08 Jul 2026, 11:00 CEST (Europe/Berlin)"),
        (utc(2026, 12, 8, 23, 30), "Asia/Tokyo", "Wed 09 Dec 2026, 08:30 JST (Asia/Tokyo)"),
        (utc(2026, 12, 8, 9), "UTC", "Tue 08 Dec 2026, 09:00 UTC (UTC)"),
        (utc(2026, 12, 8, 9), "Not/AZone", "Tue 08 Dec 2026, 09:00 UTC (UTC)"),
        (None, "Europe/Berlin", "no due time"),
    ],
)  # fmt: skip
def test_the_due_time_is_shown_in_the_readers_zone(
    due_at: datetime | None, zone: str, shown: str
) -> None:
    assert due_text(due_at, zone) == shown
