"""Calendar export (`/calendar.ics`, the feed URL) through the tasks function.

The output is read back with icalendar and its recurrences expanded by
recurring-ical-events, an implementation independent of duetide's: within a window,
the occurrences a calendar app would show are the ones duetide's own forecast
(`GET /series/{id}/occurrences`) lists from the open occurrence on.
"""

from __future__ import annotations

import itertools
import logging
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import recurring_ical_events
from icalendar import Calendar

from duetide import events
from duetide.rules import ical_recurrence
from duetide.services import calendar_export
from duetide.services import series as series_rules
from duetide.storage import db
from duetide.storage.models import Outbox
from duetide.web.http import loggable_path
from tests.integration.conftest import function_client

WINDOW = timedelta(days=150)


@pytest.fixture(autouse=True)
def unlimited_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests here export a calendar more often than a user may (60 reads each): the read
    limit has its own tests (test_limits.py)."""
    monkeypatch.setenv("DUETIDE_READ_RATE_PER_MINUTE", "0")


class Bus:
    """Delivers the outbox's task.completed events to the recurrence function."""

    def __init__(self) -> None:
        self.recurrence = function_client("recurrence")
        self.delivered: set[str] = set()

    def flush(self) -> None:
        from sqlmodel import col, select

        with db.session_scope() as session:
            rows = session.exec(
                select(Outbox)
                .where(Outbox.type == events.TASK_COMPLETED)
                .order_by(col(Outbox.created_at))
            ).all()
            pending = [(row.id, row.data) for row in rows if row.id not in self.delivered]
        for event_id, data in pending:
            event = events.build(
                event_id=event_id, type=events.TASK_COMPLETED, source=events.SOURCE_TASKS,
                subject=data["task_id"], data=data,
            )  # fmt: skip
            headers, body = events.to_http(event)
            assert self.recurrence.post("/", headers=headers, data=body).status_code == 200
            self.delivered.add(event_id)


def recurring(client, headers, due: str, timezone: str = "Europe/Berlin", **rule: Any) -> dict:
    body = {"title": "r", "due_at": due, "recurrence": {"timezone": timezone, **rule}}
    response = client.post("/tasks", json=body, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def open_occurrence(client, headers, series_id: str) -> dict[str, Any]:
    (task,) = client.get(f"/tasks?series_id={series_id}&status=open", headers=headers).json["items"]
    return task


def calendar_of(client, headers) -> Calendar:
    response = client.get("/calendar.ics", headers=headers)
    assert response.status_code == 200, response.data
    assert response.headers["Content-Type"] == "text/calendar; charset=utf-8"
    return Calendar.from_ical(response.data)


def expanded(calendar: Calendar, uid: str, start: datetime, end: datetime) -> list[datetime]:
    """The occurrences of `uid` a calendar app shows between `start` and `end`, in UTC
    (a wall time in a DST gap compares unequal to any other zone's, PEP 495)."""
    found = recurring_ical_events.of(calendar, components=["VTODO"]).between(start, end)
    shown = (todo.decoded("dtstart") for todo in found if str(todo["UID"]) == uid)
    return sorted(at.astimezone(UTC) for at in shown)


def forecast(client, headers, series_id: str, start: datetime, end: datetime) -> list[datetime]:
    response = client.get(f"/series/{series_id}/occurrences?count=400", headers=headers)
    assert response.status_code == 200, response.json
    items = [datetime.fromisoformat(at) for at in response.json["items"]]
    return [at.astimezone(UTC) for at in items if start <= at < end]


RULES = [
    pytest.param({"rrule": "FREQ=DAILY"}, "2026-03-25T09:00:00+01:00", id="daily-dst-spring"),
    pytest.param(
        {"rrule": "FREQ=WEEKLY;BYDAY=MO,FR"}, "2026-10-19T08:30:00+02:00", id="weekly-dst-autumn"
    ),
    pytest.param(
        {"rrule": "FREQ=MONTHLY;BYMONTHDAY=15,31"},
        "2026-01-15T18:00:00+01:00",
        id="monthly-bymonthday-skip",
    ),
    pytest.param(
        {"rrule": "FREQ=DAILY;INTERVAL=2;COUNT=6"}, "2026-03-26T07:00:00+01:00", id="count"
    ),
    pytest.param(
        {"rrule": " freq = monthly ; bymonthday = -1 ; count = 4 "},
        "2026-01-31T07:00:00+01:00",
        id="lowercase-last-day-count",
    ),
    pytest.param(
        {"rrule": "FREQ=WEEKLY;UNTIL=20260420T070000Z"}, "2026-03-02T09:00:00+01:00", id="until"
    ),
    pytest.param(
        {"rrule": "FREQ=WEEKLY;UNTIL=20260413"}, "2026-03-02T09:00:00+01:00", id="until-date"
    ),
    pytest.param(
        {"rrule": "FREQ=MONTHLY", "month_end": "clamp"},
        "2026-01-31T09:00:00+01:00",
        id="monthly-clamp-rdate",
    ),
    pytest.param(
        {"rrule": "FREQ=DAILY"},
        "2026-03-07T02:30:00-05:00",
        "America/New_York",
        id="daily-0230-new-york-gap",
    ),
    # A first due day the rule does not give (a Thursday, the rule's days Mondays): RFC
    # 5545 leaves such a set undefined; dateutil-based readers show the DTSTART first.
    pytest.param({"rrule": "FREQ=WEEKLY;BYDAY=MO"}, "2027-02-04T09:00:00+01:00", id="off-rule"),
]


@pytest.mark.parametrize(("rule", "due", "zone"), [(*p.values, "Europe/Berlin")[:3] for p in RULES])
def test_occurrences_in_a_calendar_app_are_duetides_forecast(client, alice, env, rule, due, zone):
    bus = Bus()
    series_id = recurring(client, alice, due, zone, **rule)["series_id"]
    for _ in range(3):  # the export starts at the open occurrence, wherever that is
        task = open_occurrence(client, alice, series_id)
        start = datetime.fromisoformat(task["due_at"])
        calendar = calendar_of(client, alice)
        uid = f"series-{series_id}@duetide"
        shown = expanded(calendar, uid, start - timedelta(days=40), start + WINDOW)
        assert shown, calendar.to_ical().decode()
        assert shown == forecast(client, alice, series_id, start, start + WINDOW)
        assert shown[0] == start
        client.post(f"/tasks/{task['id']}/complete", headers=alice)
        bus.flush()


def test_an_overdue_series_that_skips_to_the_future_shows_no_occurrence_it_will_skip(
    client, alice, env
):
    """Daily, `next_future`, its open occurrence five days overdue: completing it records
    the days between as missed and makes tomorrow's, but exported from the open one a
    calendar app listed each of those days as a to-do. Now the series starts at the one
    completing makes, and the overdue occurrence is a to-do of its own."""
    now = datetime.now(UTC)
    # an hour off the day: the export is as of now rounded down to AS_OF_STEP
    due = (now - timedelta(days=5, hours=1)).replace(microsecond=0)
    task = recurring(client, alice, due.isoformat(), rrule="FREQ=DAILY", catch_up="next_future")
    series_id = task["series_id"]
    calendar = calendar_of(client, alice)
    shown = expanded(calendar, f"series-{series_id}@duetide", due - timedelta(days=1), now + WINDOW)
    coming = forecast(client, alice, series_id, due, now + WINDOW)
    assert coming[0] == due and coming[1] > now  # the open one, then no day before now
    assert shown == coming[1:]
    (alone,) = [
        todo for todo in calendar.walk("VTODO") if str(todo["UID"]) == f"{task['id']}@duetide"
    ]
    assert alone.decoded("due").astimezone(UTC) == due
    assert "recurrence-id" not in alone
    client.post(f"/tasks/{task['id']}/complete", headers=alice)
    Bus().flush()
    assert (
        open_occurrence(client, alice, series_id)["due_at"]
        == client.get(f"/series/{series_id}/occurrences?count=1", headers=alice).json["items"][0]
    )
    assert datetime.fromisoformat(open_occurrence(client, alice, series_id)["due_at"]) == shown[0]


def test_the_etag_of_an_overdue_series_that_skips_to_the_future_follows_the_time(
    client, alice, env
):
    """Its rendering depends on the time (which occurrences it skips), so a poll must not
    get a 304 for an export made as of another time step: an hour for a daily series (a
    5-minute step re-rendered each poll of a calendar that changed once a day), 5
    minutes for one every few minutes; without such a series the time is no part of it."""
    now = datetime.now(UTC)
    due = (now - timedelta(days=2)).isoformat()
    recurring(client, alice, due, rrule="FREQ=DAILY")  # next_in_series: shows every day

    def etag(at: datetime) -> str:
        with db.session_scope(read_only=True) as session:
            return calendar_export.snapshot(session, "alice", at).etag

    hour = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    assert etag(hour) == etag(hour + timedelta(minutes=5)) == etag(hour + timedelta(days=3))
    recurring(client, alice, due, rrule="FREQ=DAILY", catch_up="next_future")
    assert etag(hour) == etag(hour + timedelta(minutes=55)) != etag(hour + timedelta(hours=1))
    recurring(client, alice, due, rrule="FREQ=DAILY;BYHOUR=8,12,18", catch_up="next_future")
    assert etag(hour) == etag(hour + timedelta(minutes=4)) != etag(hour + timedelta(minutes=5))


def test_an_overdue_series_whose_catch_up_ends_or_runs_out_shows_its_occurrence_alone(
    client, alice, env
):
    """Cut short, the catch-up's last occurrence (still past) started the recurrence,
    and a calendar app listed thousands of past to-dos; one that ends among the skipped
    ones cost its work without it being counted against the export's budget."""
    now = datetime.now(UTC)
    long_ago = (now - timedelta(days=60)).replace(microsecond=0)
    until = (long_ago + timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ")
    ran_out = recurring(client, alice, long_ago.isoformat(), rrule="FREQ=MINUTELY",
                        catch_up="next_future")  # fmt: skip
    ended = recurring(client, alice, long_ago.isoformat(), rrule=f"FREQ=MINUTELY;UNTIL={until}",
                      catch_up="next_future")  # fmt: skip
    todos = calendar_of(client, alice).walk("VTODO")
    assert sorted(str(t["UID"]) for t in todos) == sorted(
        f"{task['id']}@duetide" for task in (ran_out, ended)
    )
    assert not any("rrule" in todo for todo in todos)
    plan = ical_recurrence.export(
        series_rules.rule_of(series_row(ended["series_id"])), long_ago, 0, now
    )
    assert plan.alone and plan.work > 0  # charged to the export's budget all the same


def series_row(series_id: str):
    from duetide.storage.models import Series

    with db.session_scope(read_only=True) as session:
        found = session.get(Series, series_id)
        session.expunge(found)
        return found


def test_an_hourly_completion_series_across_a_dst_change_is_shown_as_duetide_steps_it(
    client, alice, env
):
    """Every 5 hours after completion is 5 elapsed hours; exported with a zoned DTSTART a
    reader steps wall-clock hours, an hour off after the night clocks go forward."""
    due = "2027-03-27T22:00:00+01:00"  # Europe/Berlin goes to summer time at 02:00 next
    series_id = recurring(client, alice, due, rrule="FREQ=HOURLY;INTERVAL=5", mode="completion")[
        "series_id"
    ]
    start = datetime.fromisoformat(due)
    shown = expanded(
        calendar_of(client, alice), f"series-{series_id}@duetide", start, start + timedelta(days=2)
    )
    coming = forecast(client, alice, series_id, start, start + timedelta(days=2))
    assert len(shown) > 5 and shown == coming
    assert all(b - a == timedelta(hours=5) for a, b in itertools.pairwise(shown))


def test_a_skipped_occurrence_is_not_shown(client, alice, env):
    series_id = recurring(client, alice, "2026-03-27T09:00:00+01:00", rrule="FREQ=DAILY")[
        "series_id"
    ]
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
    skipped = datetime.fromisoformat("2026-03-27T09:00:00+01:00")
    calendar = calendar_of(client, alice)
    shown = expanded(
        calendar, f"series-{series_id}@duetide", skipped - timedelta(days=5), skipped + WINDOW
    )
    assert skipped not in shown
    following = datetime.fromisoformat(open_occurrence(client, alice, series_id)["due_at"])
    assert shown[0] == following == skipped + timedelta(days=1)
    assert shown == forecast(client, alice, series_id, following, skipped + WINDOW)


def test_a_series_near_year_9999_is_exported(client, alice, env):
    """icalendar's VTIMEZONE overflowed `datetime` ten years after an occurrence in 9994."""
    series_id = recurring(
        client, alice, "8999-06-01T09:00:00+02:00", rrule="FREQ=YEARLY;INTERVAL=995"
    )["series_id"]
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
    assert open_occurrence(client, alice, series_id)["due_at"].startswith("9994-06-01")
    todos = calendar_of(client, alice).walk("VTODO")
    assert {todo.decoded("dtstart").year for todo in todos} == {9994}


def test_timezones_cover_a_bounded_window_whatever_the_series_span(client, alice, env):
    recurring(client, alice, "1900-06-01T09:00:00+01:00", rrule="FREQ=YEARLY")
    recurring(client, alice, "8999-06-01T09:00:00+02:00", rrule="FREQ=YEARLY")
    (zone,) = calendar_of(client, alice).walk("VTIMEZONE")
    years = {o.decoded("dtstart").year for o in zone.subcomponents}
    assert min(years) <= 1900 and max(years) <= 1900 + calendar_export.TIMEZONE_YEARS


def test_timezones_cover_an_occurrence_moved_before_the_series_start(client, alice, env):
    """The window began the day before the master's DTSTART: an occurrence moved a week
    earlier, into summer time, fell before the zone's first onset, which readers that go
    by the VTIMEZONE (dateutil's tzical, Outlook) took for winter time, an hour off."""
    task = recurring(client, alice, "2027-11-01T09:00:00+01:00", rrule="FREQ=WEEKLY")
    moved = client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2027-10-25T09:00:00+02:00"}, headers=alice
    )
    assert moved.status_code == 200, moved.json
    (zone,) = calendar_of(client, alice).walk("VTIMEZONE")
    onsets = [o.decoded("dtstart") for o in zone.subcomponents]
    assert min(onsets) <= datetime(2027, 10, 25, 9)  # a rule in force at the moved time


ZONES = [
    "Europe/Berlin", "America/New_York", "Asia/Tokyo", "Australia/Sydney", "Europe/London",
    "America/Los_Angeles", "Asia/Kolkata", "America/Sao_Paulo", "Africa/Cairo",
    "Pacific/Auckland", "America/Chicago", "Asia/Singapore",
]  # fmt: skip


def test_series_in_more_zones_than_the_limit_show_their_occurrence_alone(client, alice, env):
    """Each zone costs a VTIMEZONE (about 11 ms): the first MAX_CALENDAR_ZONES zones, by
    the soonest due, get recurring VTODOs; a series in a further zone is its open task."""
    assert len(ZONES) == calendar_export.MAX_CALENDAR_ZONES + 2
    made = [
        recurring(client, alice, f"2030-01-{day:02d}T09:00:00Z", zone, rrule="FREQ=WEEKLY")
        for day, zone in enumerate(ZONES, start=1)
    ]
    also_berlin = recurring(
        client, alice, "2030-02-01T09:00:00Z", "Europe/Berlin", rrule="FREQ=DAILY"
    )

    calendar = calendar_of(client, alice)

    written = {str(zone["TZID"]) for zone in calendar.walk("VTIMEZONE")}
    assert written == set(ZONES[: calendar_export.MAX_CALENDAR_ZONES])
    recurring_uids = {str(todo["UID"]) for todo in calendar.walk("VTODO") if "RRULE" in todo}
    assert recurring_uids == {
        f"series-{task['series_id']}@duetide"
        for task in [*made[: calendar_export.MAX_CALENDAR_ZONES], also_berlin]  # a zone it has
    }
    alone = {str(todo["UID"]): todo for todo in calendar.walk("VTODO")}
    for task in made[calendar_export.MAX_CALENDAR_ZONES :]:
        todo = alone[f"{task['id']}@duetide"]
        assert todo.decoded("due") == datetime.fromisoformat(task["due_at"]).astimezone(UTC)


HEAVY_CLAMP = "FREQ=MONTHLY;BYMONTHDAY=31;BYHOUR=" + ",".join(map(str, range(24)))


def test_series_past_the_exports_work_budget_show_their_occurrence_alone(
    client, alice, env, monkeypatch
):
    """Each series cost a bounded step of its rule, but nothing bounded their sum: 500
    series of a clamped rule of many times a day took 14 s to export."""
    made = [
        recurring(client, alice, f"2030-01-31T{hour:02d}:00:00+01:00", rrule=HEAVY_CLAMP,
                  month_end="clamp")
        for hour in range(4)
    ]  # fmt: skip

    def rdated() -> set[str]:
        todos = calendar_of(client, alice).walk("VTODO")
        return {str(todo["UID"]) for todo in todos if "RDATE" in todo}

    every_series = {f"series-{task['series_id']}@duetide" for task in made}
    assert rdated() == every_series  # ordinary use is within the budget

    # Room for one series' worst case: the first (soonest due) is written, and what it
    # cost leaves less than a series may need, so the others show their task alone.
    monkeypatch.setattr(calendar_export, "RECURRENCE_WORK", ical_recurrence.SERIES_WORK + 1)
    assert rdated() == {f"series-{made[0]['series_id']}@duetide"}
    alone = {str(todo["UID"]) for todo in calendar_of(client, alice).walk("VTODO")}
    assert {f"{task['id']}@duetide" for task in made[1:]} <= alone


def categories(todo: Any) -> list[str]:
    return sorted(str(c) for c in todo["CATEGORIES"].cats)


def test_tasks_are_vtodos_with_their_fields_and_reminders(client, alice, env):
    body = {
        "title": "Pay rent",
        "description": "by transfer",
        "due_at": "2026-05-01T10:00:00Z",
        "priority": "high",
        "tags": ["home", "money"],
        "reminders": [{"before_due": "PT1H"}, {"at": "2026-04-30T18:00:00Z"}],
    }
    task = client.post("/tasks", json=body, headers=alice).json
    done = client.post("/tasks", json={"title": "done already"}, headers=alice).json
    client.post(f"/tasks/{done['id']}/complete", headers=alice)
    series = recurring(client, alice, "2026-05-04T09:00:00+02:00", rrule="FREQ=WEEKLY")
    client.patch(
        f"/series/{series['series_id']}", json={"tags": ["gym"], "priority": "low"}, headers=alice
    )

    calendar = calendar_of(client, alice)
    assert str(calendar["PRODID"]) == calendar_export.PRODID and str(calendar["VERSION"]) == "2.0"
    assert [str(tz["TZID"]) for tz in calendar.walk("VTIMEZONE")] == ["Europe/Berlin"]
    todos = {str(t["UID"]): t for t in calendar.walk("VTODO") if "RECURRENCE-ID" not in t}
    assert set(todos) == {f"{task['id']}@duetide", f"series-{series['series_id']}@duetide"}
    todo = todos[f"{task['id']}@duetide"]
    assert str(todo["SUMMARY"]) == "Pay rent" and str(todo["DESCRIPTION"]) == "by transfer"
    assert todo.decoded("due") == datetime.fromisoformat("2026-05-01T10:00:00+00:00")
    assert str(todo["STATUS"]) == "NEEDS-ACTION" and todo.decoded("priority") == 3
    assert categories(todo) == ["home", "money"]
    triggers = sorted(
        (str(a["TRIGGER"].params.get("RELATED", "")), a.decoded("trigger"))
        for a in todo.walk("VALARM")
    )  # fmt: skip
    assert triggers == [
        ("", datetime.fromisoformat("2026-04-30T18:00:00+00:00")),
        ("END", timedelta(hours=-1)),
    ]
    master = todos[f"series-{series['series_id']}@duetide"]
    assert master.decoded("priority") == 9 and categories(master) == ["gym"]
    assert str(master["DTSTART"].params["TZID"]) == "Europe/Berlin"


def test_the_etag_answers_a_poll_with_304_until_something_changes(client, alice, env):
    body = {"title": "a", "due_at": "2026-05-01T10:00:00Z", "reminders": [{"before_due": "PT1H"}]}
    task = client.post("/tasks", json=body, headers=alice).json
    series = recurring(client, alice, "2026-05-04T09:00:00+02:00", rrule="FREQ=WEEKLY")
    first = client.get("/calendar.ics", headers=alice)
    cache_control = first.headers["Cache-Control"]
    assert "max-age" in cache_control and "private" in cache_control
    etag, seen = first.headers["ETag"], {first.headers["ETag"]}
    changes = [
        lambda: client.post("/tasks", json={"title": "b"}, headers=alice),
        lambda: client.post(f"/reminders/{task['reminders'][0]['id']}/dismiss", headers=alice),
        lambda: client.patch(
            f"/series/{series['series_id']}", json={"title": "renamed"}, headers=alice
        ),
        lambda: client.post(f"/tasks/{task['id']}/complete", headers=alice),
    ]
    for change in changes:
        unchanged = client.get("/calendar.ics", headers={**alice, "If-None-Match": etag})
        assert unchanged.status_code == 304 and unchanged.data == b""
        assert unchanged.headers["ETag"] == etag
        weakened = {**alice, "If-None-Match": f"W/{etag}"}  # as a compressing proxy sends it
        assert client.get("/calendar.ics", headers=weakened).status_code == 304
        assert change().status_code in (200, 201)
        changed = client.get("/calendar.ics", headers={**alice, "If-None-Match": etag})
        assert changed.status_code == 200 and changed.headers["ETag"] not in seen
        assert changed.data == client.get("/calendar.ics", headers=alice).data
        etag = changed.headers["ETag"]
        seen.add(etag)


def test_the_export_is_capped(client, alice, env, monkeypatch):
    monkeypatch.setattr(calendar_export, "MAX_EXPORTED_TASKS", 3)
    for day in (4, 1, 3, 2):
        due = f"2026-05-0{day}T10:00:00Z"
        client.post("/tasks", json={"title": f"t{day}", "due_at": due}, headers=alice)
    client.post("/tasks", json={"title": "no due"}, headers=alice)
    response = client.get("/calendar.ics", headers=alice)
    assert response.headers["Duetide-Truncated"] == "3"
    todos = Calendar.from_ical(response.data).walk("VTODO")
    assert [str(t["SUMMARY"]) for t in todos] == ["t1", "t2", "t3"]


def test_the_calendar_needs_a_token(client, env):
    response = client.get("/calendar.ics")
    assert response.status_code == 401 and response.json["error"]["code"] == "unauthorized"


def feed_path(url: str) -> str:
    return url[url.index("/calendar/") :]


def test_the_feed_url_works_without_a_header_and_rotates(client, alice, bob, env, caplog):
    client.post(
        "/tasks", json={"title": "alice's", "due_at": "2026-05-01T10:00:00Z"}, headers=alice
    )
    client.post("/tasks", json={"title": "bob's", "due_at": "2026-05-01T10:00:00Z"}, headers=bob)
    made = client.post("/calendar/feed-token", headers=alice)
    assert made.status_code == 201, made.json
    assert made.headers["Location"] == made.json["url"]
    old = feed_path(made.json["url"])
    assert made.json["url"].startswith("http://localhost/calendar/") and old.endswith(".ics")
    bobs = feed_path(client.post("/calendar/feed-token", headers=bob).json["url"])

    with caplog.at_level(logging.DEBUG):
        response = client.get(old)
    assert response.status_code == 200
    assert response.data == client.get("/calendar.ics", headers=alice).data
    assert [str(t["SUMMARY"]) for t in Calendar.from_ical(response.data).walk("VTODO")] == [
        "alice's"
    ]
    token = old.removeprefix("/calendar/").removesuffix(".ics")
    logged = [str(vars(record)) for record in caplog.records]
    assert any("/calendar/{feed_token}" in line for line in logged)
    assert not any(token in line for line in logged)

    new = feed_path(client.post("/calendar/feed-token", headers=alice).json["url"])
    assert new != old
    gone = client.get(old)
    assert gone.status_code == 404 and gone.json["error"]["code"] == "not_found"
    assert token not in gone.get_data(as_text=True)
    assert client.get(new).status_code == 200
    bob_sees = Calendar.from_ical(client.get(bobs).data).walk("VTODO")
    assert [str(t["SUMMARY"]) for t in bob_sees] == ["bob's"]

    assert client.delete("/calendar/feed-token", headers=alice).status_code == 204
    assert client.get(new).status_code == 404
    assert client.get(bobs).status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/calendar/" + "A" * 43 + ".ics",  # well-formed, never issued
        "/calendar/short.ics",
        "/calendar/" + "%C3%A9" * 43 + ".ics",
        "/calendar/" + "A" * 5000 + ".ics",
    ],
)
def test_a_bad_feed_token_is_404_in_the_error_shape(client, env, path):
    response = client.get(path)
    assert response.status_code == 404
    assert set(response.json) == {"error"} and response.json["error"]["code"] == "not_found"


def test_feed_tokens_need_a_bearer_token(client, env):
    assert client.post("/calendar/feed-token").status_code == 401
    assert client.delete("/calendar/feed-token").status_code == 401


def test_logged_paths_hide_feed_tokens():
    assert loggable_path("/calendar/abc-DEF_1.ics") == "/calendar/{feed_token}"
    assert loggable_path("//calendar/abc.ics/x") == "//calendar/{feed_token}"
    # a token anywhere after it: `/calendar/%2e%2e/<token>.ics` kept it (an audit, 2026-12-07)
    assert loggable_path("/calendar/%2e%2e/secret.ics") == "/calendar/{feed_token}"
    assert loggable_path("/calendar/feed-token") == "/calendar/feed-token"
    assert loggable_path("/calendar.ics") == "/calendar.ics"
    assert loggable_path("/calendar//abc.ics") == "/calendar//{feed_token}"
    assert loggable_path("/CALENDAR/abc.ics") == "/CALENDAR/{feed_token}"


@pytest.mark.parametrize(
    "path", ["/calendar//{}.ics", "/calendar/{}.ics//", "/Calendar/{}.ics", "/calendar///{}"]
)
def test_a_feed_token_in_a_path_that_routes_nowhere_is_not_logged(client, alice, caplog, path):
    url = client.post("/calendar/feed-token", headers=alice).json["url"]
    token = feed_path(url).removeprefix("/calendar/").removesuffix(".ics")
    with caplog.at_level(logging.DEBUG):
        response = client.get(path.format(token))
    assert response.status_code in (200, 404), response.get_data(as_text=True)
    assert token not in response.get_data(as_text=True)
    assert not any(token in str(vars(record)) for record in caplog.records)


def test_a_moved_open_occurrence_and_the_series_reminders(client, alice, env):
    task = client.post(
        "/tasks",
        json={
            "title": "water plants",
            "due_at": "2026-03-27T09:00:00+01:00",
            "recurrence": {"timezone": "Europe/Berlin", "rrule": "FREQ=DAILY"},
            "reminders": [{"before_due": "PT30M"}],
        },
        headers=alice,
    ).json
    series_id = task["series_id"]
    moved = client.patch(
        f"/tasks/{task['id']}",
        json={"due_at": "2026-03-27T11:00:00+01:00", "title": "water plants today"},
        headers=alice,
    )
    assert moved.status_code == 200, moved.json
    calendar = calendar_of(client, alice)
    scheduled = datetime.fromisoformat("2026-03-27T09:00:00+01:00")
    shown = expanded(calendar, f"series-{series_id}@duetide", scheduled, scheduled + WINDOW)
    planned = forecast(client, alice, series_id, scheduled, scheduled + WINDOW)
    assert shown[0] == datetime.fromisoformat("2026-03-27T11:00:00+01:00")
    assert shown[1:] == planned[1:]

    (master,) = [t for t in calendar.walk("VTODO") if "RECURRENCE-ID" not in t]
    (instance,) = [t for t in calendar.walk("VTODO") if "RECURRENCE-ID" in t]
    assert instance.decoded("recurrence-id") == scheduled
    assert str(master["SUMMARY"]) == "water plants"
    assert str(instance["SUMMARY"]) == "water plants today"
    for todo in (master, instance):
        (alarm,) = todo.walk("VALARM")
        assert alarm.decoded("trigger") == timedelta(minutes=-30)
        assert str(alarm["TRIGGER"].params["RELATED"]) == "END"


def test_a_first_token_made_concurrently_replaces_rather_than_fails(env):
    """Two first tokens for one user at once: the later insert meets the earlier row
    (PostgreSQL blocks it on the key until that commits) and replaces it instead of
    failing. SQLite serialises writers at BEGIN, so only PostgreSQL can race here."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite writers queue at BEGIN: no race to lose")
    from concurrent.futures import ThreadPoolExecutor

    from sqlalchemy import text

    from duetide.services import calendar_feed
    from duetide.storage.models import CalendarFeed, utcnow

    def second() -> str:
        with db.session_scope() as session:
            token, _ = calendar_feed.issue(session, "carol", utcnow())
        return token

    # The pool outlives the first transaction: it commits, then the second goes on.
    with ThreadPoolExecutor(1) as pool, db.session_scope() as first:
        first.add(CalendarFeed(owner="carol", token_hash="0" * 64, created_at=utcnow()))
        first.flush()  # holds the key until it commits
        token = pool.submit(second)
        with db.session_scope(read_only=True) as watcher:
            waiting = text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND query LIKE 'INSERT INTO calendar_feed%'"
            )
            deadline = datetime.now(UTC) + timedelta(seconds=10)
            while not watcher.execute(waiting).scalar() and datetime.now(UTC) < deadline:
                pass  # the second insert is not blocked on the key yet
            assert watcher.execute(waiting).scalar(), "the second insert never waited"
    with db.session_scope(read_only=True) as session:
        assert calendar_feed.owner_of(session, token.result(timeout=10)) == "carol"


@pytest.mark.parametrize(
    ("due", "moved"),
    [
        ("2026-10-25T02:30:00+01:00", None),  # the second 02:30 of Berlin's fall-back night
        ("2026-10-24T02:30:00+02:00", "2026-10-25T02:40:00+01:00"),  # moved into it
    ],
)
def test_a_due_time_in_the_hour_a_fall_back_repeats_is_exported_at_its_instant(
    client, alice, due, moved
):
    """A TZID time in the repeated hour is read as its first instant (RFC 5545, 3.3.5):
    the second 02:30 was shown and alarmed an hour early (an audit, 2026-12-07)."""
    task = recurring(client, alice, due, rrule="FREQ=DAILY")
    if moved:
        moving = client.patch(f"/tasks/{task['id']}", json={"due_at": moved}, headers=alice)
        assert moving.status_code == 200, moving.json
    wanted = datetime.fromisoformat(moved or due).astimezone(UTC)
    (instance,) = [t for t in calendar_of(client, alice).walk("VTODO") if "RECURRENCE-ID" in t]
    assert instance.decoded("due").astimezone(UTC) == wanted
    assert instance.decoded("dtstart").astimezone(UTC) == wanted


def test_alarms_and_text_are_what_rfc_5545_allows(client, alice):
    """An absolute TRIGGER needs VALUE=DATE-TIME (its default type is a duration), and
    TEXT holds no control character but a tab: both went out as they were (an audit,
    2026-12-07); line separators other than CR and LF are line breaks, escaped."""
    title = "esc\x1b[31m bel\x07 vt\x0b del\x7f next\u2028line"
    body = {
        "title": title, "description": title, "tags": ["t\x1b"],
        "due_at": "2027-05-01T10:00:00Z", "reminders": [{"at": "2027-04-30T18:00:00Z"}],
    }  # fmt: skip
    assert client.post("/tasks", json=body, headers=alice).status_code == 201
    data = client.get("/calendar.ics", headers=alice).data
    lines = data.split(b"\r\n")
    assert [line for line in lines if line.startswith(b"TRIGGER")] == [
        b"TRIGGER;VALUE=DATE-TIME:20270430T180000Z"
    ]
    assert not [line for line in lines if re.search(rb"[\x00-\x08\x0a-\x1f\x7f]", line)]
    (todo,) = Calendar.from_ical(data).walk("VTODO")
    assert str(todo["summary"]) == "esc[31m bel vt\n del next\nline"
    (alarm,) = todo.walk("VALARM")
    assert alarm.decoded("trigger") == datetime(2027, 4, 30, 18, tzinfo=UTC)


def test_tokens_made_while_others_are_revoked_never_fail(env):
    """A first token met a concurrent one's row, and a revoke deleted that row before it
    was read again: a 500 (11-33 of 240 requests of 6 issues and 3 revokes a user at
    once over HTTP, an audit, 2026-12-07). Whatever the order, the user ends with the
    last committed issue's token or none."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite writers queue at BEGIN: no race to lose")
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from duetide.services import calendar_feed
    from duetide.storage.models import CalendarFeed, utcnow

    issued: dict[str, list[str]] = {}

    def act(owner: str, revoking: bool, start: threading.Barrier) -> None:
        start.wait(timeout=10)
        with db.session_scope() as session:
            if revoking:
                calendar_feed.revoke(session, owner)
            else:
                token, _ = calendar_feed.issue(session, owner, utcnow())
                issued.setdefault(owner, []).append(token)

    owners = [f"racer-{n}" for n in range(20)]
    with ThreadPoolExecutor(9) as pool:
        for owner in owners:
            start = threading.Barrier(9)
            roles = [False] * 6 + [True] * 3
            for done in [pool.submit(act, owner, revoking, start) for revoking in roles]:
                done.result(timeout=30)  # the old code raised in some of these
    with db.session_scope(read_only=True) as session:
        for owner in owners:
            feed = session.get(CalendarFeed, owner)
            mine = [t for t in issued[owner] if calendar_feed.owner_of(session, t) == owner]
            assert len(issued[owner]) == 6 and len(mine) == (0 if feed is None else 1)


@pytest.mark.parametrize(
    ("rule", "due", "moved_to"),
    [
        ("FREQ=WEEKLY", "2027-03-01T09:00:00+01:00", "2027-03-05T09:00:00+01:00"),
        ("FREQ=MONTHLY", "2027-01-31T09:00:00+01:00", "2027-02-03T09:00:00+01:00"),  # clamp
        ("FREQ=HOURLY;INTERVAL=5", "2027-03-01T09:00:00+01:00", "2027-03-01T11:30:00+01:00"),
    ],
)
def test_a_moved_completion_mode_occurrence_is_followed_as_it_would_be_done_when_due(
    client, alice, env, rule, due, moved_to
):
    """In completion mode the next occurrence follows from when the open one is done; the
    export planned from its schedule, so an occurrence moved to Friday was followed by
    Mondays a week apart where duetide makes Fridays (an audit, 2026-12-07)."""
    made = recurring(client, alice, due, rrule=rule, mode="completion", month_end="clamp")
    moved = client.patch(f"/tasks/{made['id']}", headers=alice, json={"due_at": moved_to})
    assert moved.status_code == 200, moved.json
    start, end = datetime(2027, 2, 1, tzinfo=UTC), datetime(2027, 6, 1, tzinfo=UTC)
    planned = forecast(client, alice, made["series_id"], start, end)[:4]
    calendar = calendar_of(client, alice)
    shown = expanded(calendar, f"series-{made['series_id']}@duetide", start, end)
    (apart,) = [
        todo.decoded("due").astimezone(UTC)
        for todo in calendar.walk("VTODO")
        if str(todo["UID"]) == f"{made['id']}@duetide"
    ]
    assert [apart, *shown][:4] == planned


def test_a_relative_alarm_is_written_in_elapsed_hours_not_calendar_days(client, alice):
    """A P1D reminder went out as `TRIGGER;RELATED=END:-P1D`, which RFC 5545 reads as a
    calendar day (23 or 25 hours across a clock change): duetide's day is 24 hours
    (an audit, 2026-12-07)."""
    body = {
        "title": "r",
        "due_at": "2027-03-27T03:30:00+01:00",
        "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"},
        "reminders": [{"before_due": "P1D"}, {"before_due": "PT1H30M"}],
    }
    assert client.post("/tasks", json=body, headers=alice).status_code == 201
    lines = client.get("/calendar.ics", headers=alice).data.split(b"\r\n")
    triggers = {line for line in lines if line.startswith(b"TRIGGER")}
    assert triggers == {b"TRIGGER;RELATED=END:-PT24H", b"TRIGGER;RELATED=END:-PT1H30M"}
