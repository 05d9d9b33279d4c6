"""What `duetide task add` makes of --due, --every and --remind: read at a fixed "now"."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from duetide_tools.client import every, when
from duetide_tools.client.errors import UsageError

BERLIN = ZoneInfo("Europe/Berlin")
# Wednesday 2 December 2026, 13:00 in Berlin (12:00 UTC).
NOW = datetime(2026, 12, 2, 13, 0, 0, 987654, tzinfo=BERLIN)
FRACTION = timedelta(microseconds=987654)


def local(
    year: int, month: int, day: int, hour: int, minute: int, zone: ZoneInfo = BERLIN
) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=zone)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tomorrow 09:00", local(2026, 12, 3, 9, 0)),
        ("Tomorrow", local(2026, 12, 3, 9, 0)),
        ("today 18:30", local(2026, 12, 2, 18, 30)),
        ("today 6pm", local(2026, 12, 2, 18, 0)),
        ("tomorrow at 7:05", local(2026, 12, 3, 7, 5)),
        ("tomorrow 7", local(2026, 12, 3, 7, 0)),
        ("tomorrow 9p", local(2026, 12, 3, 21, 0)),
        ("fri", local(2026, 12, 4, 9, 0)),
        ("monday 08:15", local(2026, 12, 7, 8, 15)),
        # Today is a Wednesday: its 18:00 is still ahead, its 09:00 is not.
        ("wed 18:00", local(2026, 12, 2, 18, 0)),
        ("wednesday", local(2026, 12, 9, 9, 0)),
        ("in 2h", NOW - FRACTION + timedelta(hours=2)),  # whole seconds
        ("in 90 minutes", NOW - FRACTION + timedelta(minutes=90)),
        ("in 3 days", NOW - FRACTION + timedelta(days=3)),
        ("2026-12-24", local(2026, 12, 24, 9, 0)),
        ("2026-12-24T18:00", local(2026, 12, 24, 18, 0)),
        ("2026-12-24 18:00", local(2026, 12, 24, 18, 0)),
        # An offset in the text wins over the zone.
        ("2026-12-24T18:00:00+00:00", datetime.fromisoformat("2026-12-24T18:00:00+00:00")),
        ("2026-12-24T18:00-05:00", datetime.fromisoformat("2026-12-24T18:00-05:00")),
        ("dec 31 23:00", local(2026, 12, 31, 23, 0)),
        ("Dec. 24 18:00", local(2026, 12, 24, 18, 0)),
        ("24 December 2027", local(2027, 12, 24, 9, 0)),
        # A date with no year that has passed is next year's, not this year's past one.
        ("jan 5", local(2027, 1, 5, 9, 0)),
        # A number after the day is its hour, as after `tomorrow`: dateutil read `9` as
        # the year 2009, rolled to 2010 (an audit, 2026-12-07).
        ("dec 24 9", local(2026, 12, 24, 9, 0)),
        ("24 dec 18", local(2026, 12, 24, 18, 0)),
        ("dec 24, 2027 9pm", local(2027, 12, 24, 21, 0)),
        # Feb 29 is the next leap year's: it was refused (dateutil's default year has
        # none) or, in a leap year, this year's even when past.
        ("feb 29", local(2028, 2, 29, 9, 0)),
        # Today's date at a time already past is next year's, as a weekday's is next week's.
        ("dec 2", local(2027, 12, 2, 9, 0)),
        # A date alone is at 09:00 in every ISO form, the week dates too.
        ("20261224", local(2026, 12, 24, 9, 0)),
        ("2026-W53-4", local(2026, 12, 31, 9, 0)),
        # The spring-forward gap moves forward by the gap, as the API's recurrences do.
        ("2027-03-28 02:30", local(2027, 3, 28, 3, 30)),
        # Summer time: the same wall time, another offset.
        ("2027-07-01 09:00", datetime.fromisoformat("2027-07-01T09:00:00+02:00")),
    ],
)
def test_due_reads_the_friendly_forms_in_the_zone(text: str, expected: datetime) -> None:
    found = when.due(text, NOW, BERLIN)
    assert found == expected
    assert found.utcoffset() == expected.utcoffset()


def test_due_reads_in_the_given_zone_not_the_offset_of_now() -> None:
    tokyo = ZoneInfo("Asia/Tokyo")
    assert when.due("tomorrow 09:00", NOW, tokyo) == local(2026, 12, 3, 9, 0, zone=tokyo)


@pytest.mark.parametrize(
    "text",
    [
        "someday", "tomorrow 25:00", "tomorrow noonish", "in 2 fortnights", "in", "fri 9x",
        # dateutil read these silently, as days in the past or the year 1230, and an
        # offset of a day or more failed later as an unexpected ValueError (exit 1).
        "5", "-1", "1230", "june", "2026-12-01T09:00+25:00", "dec 24 18:00 +25:00",
        "dec 24 99", "apr 31", "dec 24 and more",
    ],
)  # fmt: skip
def test_due_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        when.due(text, NOW, BERLIN)


@pytest.mark.parametrize(
    ("text", "iso"),
    [
        ("15m", "PT15M"),
        ("15 min", "PT15M"),
        ("1h30m", "PT1H30M"),
        ("2 hours", "PT2H"),
        ("1d", "P1D"),
        ("1w", "P7D"),
        ("1d 2h", "P1DT2H"),
        ("0m", "PT0S"),
        ("PT15M", "PT15M"),
        ("pt1h", "PT1H"),
        ("P1DT30M", "P1DT30M"),
    ],
)
def test_durations_become_the_api_offsets(text: str, iso: str) -> None:
    value = when.duration(text)
    assert when.iso_duration(value) == iso
    assert when.duration(when.short(value)) == value


@pytest.mark.parametrize(
    "text",
    [
        "15", "15x", "m15", "-5m", "P", "PT", "1h 2x", "99999w",
        "P99999999999999W", "PT1" + "0" * 5000 + "S",  # were an OverflowError, a ValueError
        "P999999999W",  # nine digits of weeks: an OverflowError before the ten-year check
    ],
)  # fmt: skip
def test_durations_refuse_what_they_cannot_read(text: str) -> None:
    with pytest.raises(UsageError):
        when.duration(text)


@pytest.mark.parametrize(
    ("text", "zone"),
    [("0001-01-01T00:00", "Europe/Berlin"), ("9999-12-31T23:00", "America/New_York")],
)
def test_a_wall_time_out_of_range_in_its_zone_is_a_usage_error(text: str, zone: str) -> None:
    with pytest.raises(UsageError, match="out of range"):
        when.due(text, NOW, ZoneInfo(zone))


@pytest.mark.parametrize("name", ["Europe", "America/", "Mars/Olympus"])
def test_a_zone_that_is_a_folder_or_unknown_is_a_usage_error(name: str) -> None:
    with pytest.raises(UsageError, match="unknown time zone"):
        when.local_zone(name)


@pytest.mark.parametrize(
    ("text", "friendly"),
    [
        ("daily", {"frequency": "daily"}),
        ("weekly", {"frequency": "weekly"}),
        ("monthly", {"frequency": "monthly"}),
        ("day", {"frequency": "daily"}),
        ("2 days", {"frequency": "daily", "interval": 2}),
        ("every 2 days", {"frequency": "daily", "interval": 2}),
        ("3 weeks", {"frequency": "weekly", "interval": 3}),
        ("other week", {"frequency": "weekly", "interval": 2}),
        ("fortnightly", {"frequency": "weekly", "interval": 2}),
        ("weekday", {"frequency": "weekly", "weekdays": ["MO", "TU", "WE", "TH", "FR"]}),
        ("every weekday", {"frequency": "weekly", "weekdays": ["MO", "TU", "WE", "TH", "FR"]}),
        ("weekends", {"frequency": "weekly", "weekdays": ["SA", "SU"]}),
        ("mon,wed", {"frequency": "weekly", "weekdays": ["MO", "WE"]}),
        ("Friday and Monday", {"frequency": "weekly", "weekdays": ["MO", "FR"]}),
        (
            "every 2 weeks on mon,wed",
            {"frequency": "weekly", "interval": 2, "weekdays": ["MO", "WE"]},
        ),
        ("week on tuesdays", {"frequency": "weekly", "weekdays": ["TU"]}),
        ("month on the 15th", {"frequency": "monthly", "month_days": [15]}),
        ("month on the 1st and 15th", {"frequency": "monthly", "month_days": [1, 15]}),
        ("month on the last day", {"frequency": "monthly", "month_days": [-1]}),
        ("3 months", {"frequency": "monthly", "interval": 3}),
        ("year", {"frequency": "yearly"}),
    ],
)
def test_every_becomes_the_friendly_form(text: str, friendly: dict[str, object]) -> None:
    assert every.recurrence(text, "Europe/Berlin") == {**friendly, "timezone": "Europe/Berlin"}


def test_an_rrule_is_passed_on_for_the_server_to_check() -> None:
    assert every.recurrence("FREQ=MONTHLY;BYMONTHDAY=-1", "UTC") == {
        "rrule": "FREQ=MONTHLY;BYMONTHDAY=-1",
        "timezone": "UTC",
    }


@pytest.mark.parametrize(
    "text",
    ["fortnight-ish", "sometimes", "0 days", "2 days on mon", "week on the 15th", "month on fri",
     "month on the 32nd", "2"],
)  # fmt: skip
def test_every_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(UsageError, match="--every"):
        every.recurrence(text, "UTC")


def test_the_zone_is_the_given_one_or_the_systems_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    assert when.local_zone("Europe/Berlin") == (BERLIN, "Europe/Berlin")
    with pytest.raises(UsageError, match="unknown time zone"):
        when.local_zone("Mars/Olympus")
    monkeypatch.setenv("TZ", "America/New_York")
    assert when.local_zone(None) == (ZoneInfo("America/New_York"), "America/New_York")
    monkeypatch.setenv("TZ", ":/usr/share/zoneinfo/Asia/Tokyo")
    assert when.local_zone(None) == (ZoneInfo("Asia/Tokyo"), "Asia/Tokyo")


def test_a_posix_tz_is_read_as_the_c_library_reads_it_not_as_etc_localtime(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`TZ=CET-1CEST,...` names no IANA zone, and /etc/localtime (here UTC) was taken
    instead: 09:00 was read an hour off."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    time.tzset()
    try:
        zone, name = when.local_zone(None)
        assert name is None
        winter = datetime(2027, 1, 4, 9, 0, tzinfo=zone)
        summer = datetime(2027, 7, 5, 9, 0, tzinfo=zone)
        assert (winter.utcoffset(), summer.utcoffset()) == (timedelta(hours=1), timedelta(hours=2))
    finally:
        monkeypatch.undo()
        time.tzset()


def test_tables_align_wide_and_combining_text_by_the_columns_it_takes() -> None:
    """Padded by characters, a tag `家` (two columns) pushed every column after it one
    cell right, and an escaped control (`\\x1b` shown as four characters) one left (an
    audit, 2026-12-07)."""
    from duetide_tools.client.tables import table

    rows = [{"a": "家家", "b": "x"}, {"a": "ab", "b": "y"}, {"a": "e\u0301e", "b": "z"}]
    rows.append({"a": "\x1b[31m", "b": "w"})
    lines = table(rows, [("A", lambda r: r["a"]), ("B", lambda r: r["b"])]).splitlines()
    wide = {"家": 2, "\u0301": 0}
    starts = [sum(wide.get(c, 1) for c in line[:-1]) for line in lines[1:]]
    assert len(set(starts)) == 1, lines  # the second column starts at one terminal column
    assert "\x1b" not in "".join(lines)


def test_a_series_start_in_a_spring_forward_gap_is_refused_not_moved() -> None:
    """A series' first occurrence is its start: 02:30 on the night the clocks skip it,
    moved to 03:30 as a one-off is, made every occurrence 03:30 (an audit, 2026-12-07)."""
    with pytest.raises(UsageError, match="the clocks skip on 2027-03-28"):
        when.due_as_written("2027-03-28 02:30", NOW, BERLIN)
    assert when.due("2027-03-28 02:30", NOW, BERLIN) == local(2027, 3, 28, 3, 30)
    assert when.due_as_written("2027-03-28 03:30", NOW, BERLIN) == local(2027, 3, 28, 3, 30)
    assert when.due_as_written("tomorrow 9", NOW, BERLIN) == local(2026, 12, 3, 9, 0)
