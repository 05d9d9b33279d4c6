"""The days a calendar export's VTIMEZONEs cover: bounded in span and within the years
icalendar can compute transitions for."""

from datetime import date

import pytest

from duetide.services.calendar_export import LAST_TIMEZONE_DAY, TIMEZONE_YEARS, timezone_window


@pytest.mark.parametrize(
    "starts, window",
    [
        ([date(2026, 3, 1)], (date(2026, 2, 28), date(2036, 3, 1))),
        ([date(2024, 2, 29)], (date(2024, 2, 28), date(2034, 2, 28))),
        ([date(2026, 3, 1), date(2030, 1, 1)], (date(2026, 2, 28), date(2040, 1, 1))),
        ([date(1900, 1, 1), date(8999, 1, 1)], (date(1899, 12, 31), date(1999, 12, 31))),
        ([date(9994, 6, 1)], (date(9994, 5, 31), LAST_TIMEZONE_DAY)),
        ([date(9999, 12, 31)], (LAST_TIMEZONE_DAY, LAST_TIMEZONE_DAY)),
    ],
)
def test_the_window_starts_before_the_first_series_and_is_bounded(starts, window):
    assert timezone_window(starts) == window
    first, last = window
    assert first <= last <= LAST_TIMEZONE_DAY and last.year - first.year <= TIMEZONE_YEARS
