"""The series API and its policies, through the tasks and recurrence functions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import text
from sqlmodel import SQLModel, col, select

from duetide import events
from duetide.storage import db
from duetide.storage.models import Outbox
from tests.integration.conftest import auth_headers, function_client
from tests.support import json_of


class Bus:
    """Stands in for Kafka + the KafkaSource: delivers the outbox's task.completed events."""

    def __init__(self) -> None:
        self.recurrence = function_client("recurrence")

    def completed_events(self) -> list[tuple[str, dict[str, Any]]]:
        with db.session_scope() as session:
            rows = session.exec(
                select(Outbox)
                .where(Outbox.type == events.TASK_COMPLETED)
                .order_by(col(Outbox.created_at))
            ).all()
            return [(row.id, row.data) for row in rows]

    def deliver(self, event_id: str, data: dict[str, Any]) -> None:
        event = events.build(
            event_id=event_id, type=events.TASK_COMPLETED, source=events.SOURCE_TASKS,
            subject=data["task_id"], data=data,
        )  # fmt: skip
        headers, body = events.to_http(event)
        response = self.recurrence.post("/", headers=headers, data=body)
        assert response.status_code == 200, response.json

    def flush(self) -> None:
        for event_id, data in self.completed_events():
            self.deliver(event_id, data)


@pytest.fixture
def bus(env) -> Bus:
    return Bus()


def recurring(client, headers, **recurrence: Any) -> dict[str, Any]:
    due = recurrence.pop("due_at", "2026-01-05T09:00:00+01:00")
    response = client.post(
        "/tasks",
        json={
            "title": "r",
            "due_at": due,
            "recurrence": {"timezone": "Europe/Berlin", **recurrence},
        },
        headers=headers,
    )
    assert response.status_code == 201, response.json
    return response.json


def open_occurrences(client, headers, series_id: str) -> list[dict[str, Any]]:
    url = f"/tasks?series_id={series_id}&status=open"
    return client.get(url, headers=headers).json["items"]


def history_entries(client, headers, series_id: str, limit: int = 50) -> list[dict]:
    """Every entry, page by page as a client follows `next_cursor`."""
    entries: list[dict] = []
    cursor = ""
    while True:
        page = client.get(f"/series/{series_id}/history?limit={limit}{cursor}", headers=headers)
        assert page.status_code == 200, page.json
        entries += page.json["items"]
        if page.json["next_cursor"] is None:
            return entries
        cursor = f"&cursor={page.json['next_cursor']}"


def history(client, headers, series_id: str) -> list[tuple[int, str, str]]:
    entries = history_entries(client, headers, series_id)
    return [(e["index"], e["scheduled_at"], e["outcome"]) for e in entries]


def complete_open(client, headers, bus: Bus, series_id: str) -> None:
    (task,) = open_occurrences(client, headers, series_id)
    client.post(f"/tasks/{task['id']}/complete", headers=headers)
    bus.flush()


def test_friendly_input_is_shown_back_as_rrule(client, alice):
    task = recurring(client, alice, frequency="weekly", interval=2, weekdays=["MO", "WE"], count=10)
    shown = client.get(f"/series/{task['series_id']}", headers=alice).json
    assert shown["rrule"] == "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE;COUNT=10"
    assert shown["status"] == "active" and shown["timezone"] == "Europe/Berlin"
    listed = client.get("/series", headers=alice).json["items"]
    assert [s["id"] for s in listed] == [task["series_id"]]


@pytest.mark.parametrize(
    ("recurrence", "fragment"),
    [
        ({"rrule": "FREQ=FORTNIGHTLY"}, "FREQ"),
        ({"rrule": "FREQ=DAILY;COUNT=3;UNTIL=20270101T000000Z"}, "COUNT"),
        ({"rrule": "FREQ=DAILY", "timezone": "Mars/Olympus"}, "Mars/Olympus"),
        ({"rrule": "FREQ=MONTHLY;BYMONTH=2;BYMONTHDAY=30"}, "occurrence"),
        ({"rrule": "FREQ=DAILY;COUNT=1000000"}, "COUNT"),
        ({"frequency": "weekly", "weekdays": ["XX"]}, "XX"),
    ],
)
def test_invalid_rules_are_422_naming_the_problem(client, alice, recurrence, fragment):
    body = {"title": "x", "due_at": "2026-01-05T09:00:00Z", "recurrence": recurrence}
    response = client.post("/tasks", json=body, headers=alice)
    assert response.status_code == 422, response.json
    assert fragment in response.json["error"]["message"]
    assert client.get("/tasks", headers=alice).json["items"] == []


def test_monthly_31st_clamp_through_the_system(client, alice, bus):
    task = recurring(
        client, alice, rrule="FREQ=MONTHLY", month_end="clamp", due_at="2026-01-31T09:00:00+01:00"
    )
    dues = [task["due_at"]]
    for _ in range(3):
        complete_open(client, alice, bus, task["series_id"])
        dues.append(open_occurrences(client, alice, task["series_id"])[0]["due_at"])
    assert dues == [
        "2026-01-31T09:00:00+01:00",
        "2026-02-28T09:00:00+01:00",
        "2026-03-31T09:00:00+02:00",
        "2026-04-30T09:00:00+02:00",
    ]


def test_pause_holds_the_series_and_resume_continues_it(client, alice, bus):
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    assert client.post(f"/series/{series_id}/pause", headers=alice).json["status"] == "paused"
    complete_open(client, alice, bus, series_id)
    assert open_occurrences(client, alice, series_id) == []
    resumed = client.post(f"/series/{series_id}/resume", headers=alice)
    assert resumed.json["status"] == "active"
    (following,) = open_occurrences(client, alice, series_id)
    assert following["due_at"] == "2026-01-06T09:00:00+01:00"
    bus.flush()  # the completion event again, now that the series is active: no copy
    assert len(open_occurrences(client, alice, series_id)) == 1


def test_skip_replaces_the_open_occurrence_and_is_recorded(client, alice, bus):
    series_id = recurring(client, alice, rrule="FREQ=WEEKLY")["series_id"]
    response = client.post(f"/series/{series_id}/skip", headers=alice)
    assert response.status_code == 200
    (following,) = open_occurrences(client, alice, series_id)
    assert following["due_at"] == "2026-01-12T09:00:00+01:00"
    complete_open(client, alice, bus, series_id)
    assert history(client, alice, series_id) == [
        (0, "2026-01-05T09:00:00+01:00", "skipped"),
        (1, "2026-01-12T09:00:00+01:00", "completed"),
        (2, "2026-01-19T09:00:00+01:00", "open"),
    ]


def test_deleting_the_open_occurrence_skips_it_and_says_so(client, alice, bus):
    first = recurring(client, alice, rrule="FREQ=WEEKLY")
    series_id = first["series_id"]
    response = client.delete(f"/tasks/{first['id']}", headers=alice)
    assert response.status_code == 200, response.json
    assert response.json["deleted"] == first["id"] and response.json["outcome"] == "skipped"
    assert response.json["series"]["status"] == "active"
    following = response.json["open_occurrence"]
    assert following["due_at"] == "2026-01-12T09:00:00+01:00"
    assert [t["id"] for t in open_occurrences(client, alice, series_id)] == [following["id"]]
    assert history(client, alice, series_id) == [
        (0, "2026-01-05T09:00:00+01:00", "skipped"),
        (1, "2026-01-12T09:00:00+01:00", "open"),
    ]
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200


def test_deleting_the_last_occurrence_ends_the_series(client, alice, bus):
    first = recurring(client, alice, rrule="FREQ=DAILY;COUNT=1")
    response = client.delete(f"/tasks/{first['id']}", headers=alice)
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "skipped" and response.json["open_occurrence"] is None
    assert response.json["series"]["status"] == "ended"


def test_deleting_a_completed_occurrence_before_its_event_keeps_the_series_going(
    client, alice, bus
):
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    client.post(f"/tasks/{first['id']}/complete", headers=alice)
    response = client.delete(f"/tasks/{first['id']}", headers=alice)
    assert response.status_code == 200, response.json
    assert response.json["outcome"] == "deleted"
    assert response.json["open_occurrence"]["due_at"] == "2026-01-06T09:00:00+01:00"
    bus.flush()  # the completion arrives after the delete: nothing more
    assert history(client, alice, series_id) == [(1, "2026-01-06T09:00:00+01:00", "open")]
    complete_open(client, alice, bus, series_id)  # an earlier one deleted: just removed
    done = client.get(f"/tasks?series_id={series_id}&status=done", headers=alice).json["items"]
    response = client.delete(f"/tasks/{done[0]['id']}", headers=alice)
    assert response.json["outcome"] == "deleted"
    assert response.json["open_occurrence"]["due_at"] == "2026-01-07T09:00:00+01:00"


def test_a_completion_arriving_after_its_successor_was_skipped_brings_nothing_back(
    client, alice, bus
):
    """Found by the state machine: complete, pause, resume (puts the successor in place),
    delete the successor (skips it), then the completion event: still one open one."""
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    client.post(f"/tasks/{first['id']}/complete", headers=alice)
    for action in ("pause", "resume"):
        assert client.post(f"/series/{series_id}/{action}", headers=alice).status_code == 200
    [successor] = open_occurrences(client, alice, series_id)
    assert client.delete(f"/tasks/{successor['id']}", headers=alice).json["outcome"] == "skipped"
    bus.flush()
    assert history(client, alice, series_id) == [
        (0, "2026-01-05T09:00:00+01:00", "completed"),
        (1, "2026-01-06T09:00:00+01:00", "skipped"),
        (2, "2026-01-07T09:00:00+01:00", "open"),
    ]


def test_deleting_in_a_paused_or_ended_series(client, alice, bus):
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    client.post(f"/series/{series_id}/pause", headers=alice)
    refused = client.delete(f"/tasks/{first['id']}", headers=alice)
    assert refused.status_code == 409
    assert f"DELETE /series/{series_id}" in refused.json["error"]["message"]
    assert [t["id"] for t in open_occurrences(client, alice, series_id)] == [first["id"]]
    assert client.delete(f"/series/{series_id}", headers=alice).status_code == 204
    response = client.delete(f"/tasks/{first['id']}", headers=alice)
    assert response.status_code == 200 and response.json["outcome"] == "deleted"
    assert response.json["open_occurrence"] is None
    assert history(client, alice, series_id) == []


def test_next_future_catch_up_records_missed_occurrences(client, alice, bus):
    series_id = recurring(
        client, alice, rrule="FREQ=DAILY", catch_up="next_future", due_at="2020-01-01T09:00:00Z"
    )["series_id"]
    complete_open(client, alice, bus, series_id)
    (following,) = open_occurrences(client, alice, series_id)
    # The ones passed are one run, however many: one row, one entry.
    completed, missed, current = history_entries(client, alice, series_id)
    assert (completed["outcome"], missed["outcome"], current["outcome"]) == (
        "completed", "missed", "open"
    )  # fmt: skip
    assert missed["index"] == 1 and missed["count"] > 2000
    assert current["index"] == missed["index"] + missed["count"]
    assert datetime.fromisoformat(missed["scheduled_at"]) == datetime(2020, 1, 2, 9, tzinfo=UTC)
    last = datetime.fromisoformat(missed["last_scheduled_at"])
    assert last + timedelta(days=1) == datetime.fromisoformat(current["scheduled_at"])
    assert completed["count"] == current["count"] == 1 and completed["last_scheduled_at"] is None
    series = client.get(f"/series/{series_id}", headers=alice).json
    assert series["last_scheduled_at"] == following["due_at"]


def test_a_catch_up_past_its_budget_goes_on_from_as_far_as_it_got(client, alice, bus):
    """Years of a minutely series missed are more than one catch-up walks: the series
    does not stop at an error, it puts the last occurrence reached in place (overdue)
    and the next completion catches up further."""
    series_id = recurring(
        client, alice, rrule="FREQ=MINUTELY", catch_up="next_future", due_at="2020-01-01T09:00:00Z"
    )["series_id"]
    reached = []
    for _ in range(2):
        complete_open(client, alice, bus, series_id)
        (current,) = open_occurrences(client, alice, series_id)
        reached.append(datetime.fromisoformat(current["due_at"]))
    assert reached[0] < reached[1] < datetime.now(UTC)
    entries = history_entries(client, alice, series_id)
    assert [e["outcome"] for e in entries] == ["completed", "missed", "completed", "missed", "open"]
    for run, after in ((entries[1], entries[2]), (entries[3], entries[4])):
        assert run["count"] > 10_000 and after["index"] == run["index"] + run["count"]


@pytest.mark.parametrize(
    ("zone", "until"),
    [("Europe/Berlin", "99991231T235959Z"), ("Pacific/Kiritimati", "99991231T120000Z")],
)
def test_an_until_late_in_9999_utc_is_a_rule_in_a_zone_ahead_of_utc(client, alice, zone, until):
    """In the zone that UNTIL is past year 9999: it ends nothing, it was a 500."""
    rule = f"FREQ=DAILY;UNTIL={until}"
    series_id = recurring(client, alice, rrule=rule, timezone=zone)["series_id"]
    forecast = client.get(f"/series/{series_id}/occurrences?count=2", headers=alice)
    assert forecast.status_code == 200 and len(forecast.json["items"]) == 2
    patched = client.patch(
        f"/series/{series_id}",
        json={"recurrence": {"rrule": rule, "timezone": zone}},
        headers=alice,
    )
    assert patched.status_code == 200, patched.json


def test_a_new_zone_in_which_the_latest_occurrence_is_past_9999_is_a_422(client, alice):
    first = recurring(
        client, alice, rrule="FREQ=YEARLY;INTERVAL=1000", timezone="Pacific/Honolulu",
        due_at="8999-12-31T10:00:00-10:00",
    )  # fmt: skip
    series_id = first["series_id"]
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
    (latest,) = open_occurrences(client, alice, series_id)
    assert latest["due_at"].startswith("9999-12-31")
    change = {"recurrence": {"rrule": "FREQ=DAILY", "timezone": "Pacific/Kiritimati"}}
    refused = client.patch(f"/series/{series_id}", json=change, headers=alice)
    assert refused.status_code == 422, refused.json
    assert client.get(f"/series/{series_id}", headers=alice).json["timezone"] == "Pacific/Honolulu"


@pytest.mark.parametrize("then", ["complete", "skip", "delete"])
def test_reopening_an_occurrence_from_before_a_rule_change_keeps_the_series_going(
    client, alice, bus, then
):
    """Found by probing: complete the first, change the rule ("this and future": the new
    rule starts at the second), reopen the first (which withdraws the second), then
    complete, skip or delete it: the series ended, with no open occurrence. What follows
    it is the changed rule's first occurrence, as when the rule changed."""
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    complete_open(client, alice, bus, series_id)
    (second,) = open_occurrences(client, alice, series_id)
    change = {"recurrence": {"rrule": "FREQ=WEEKLY", "timezone": "Europe/Berlin"}}
    assert client.patch(f"/series/{series_id}", json=change, headers=alice).status_code == 200
    assert client.post(f"/tasks/{first['id']}/reopen", headers=alice).status_code == 200
    if then == "complete":
        complete_open(client, alice, bus, series_id)
    elif then == "skip":
        assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
    else:
        assert client.delete(f"/tasks/{first['id']}", headers=alice).status_code == 200
    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "active"
    (current,) = open_occurrences(client, alice, series_id)
    assert current["due_at"] == second["due_at"]
    complete_open(client, alice, bus, series_id)
    (following,) = open_occurrences(client, alice, series_id)
    assert following["due_at"] == "2026-01-13T09:00:00+01:00"  # weekly from the second
    assert [index for index, _, _ in history(client, alice, series_id)] == [0, 1, 2]


def test_history_comes_a_page_at_a_time_in_order(client, alice, bus):
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    for action in ("complete", "skip", "complete", "skip", "complete"):
        if action == "skip":
            assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
        else:
            complete_open(client, alice, bus, series_id)
    paged = history_entries(client, alice, series_id, limit=2)
    assert [(e["index"], e["outcome"]) for e in paged] == [
        (0, "completed"), (1, "skipped"), (2, "completed"), (3, "skipped"), (4, "completed"),
        (5, "open"),
    ]  # fmt: skip
    assert paged == history_entries(client, alice, series_id, limit=200)
    for bad in ("limit=0", "limit=201", "cursor=x", "cursor=%C2%B2", "cursor=2"):
        refused = client.get(f"/series/{series_id}/history?{bad}", headers=alice)
        assert refused.status_code in (400, 422), bad


def test_a_history_page_after_an_earlier_occurrence_was_deleted_skips_nothing(client, alice, bus):
    """The cursor was an offset: deleting occurrence 0 after the first page moved
    every later entry up by one, and the second page began a row too far."""
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    for _ in range(4):
        complete_open(client, alice, bus, series_id)
    page = client.get(f"/series/{series_id}/history?limit=2", headers=alice).json
    assert [e["index"] for e in page["items"]] == [0, 1]
    assert client.delete(f"/tasks/{first['id']}", headers=alice).status_code == 200

    rest = f"/series/{series_id}/history?limit=2&cursor={page['next_cursor']}"
    assert [e["index"] for e in client.get(rest, headers=alice).json["items"]] == [2, 3]


def test_the_series_list_pages_in_creation_order_with_nothing_twice(client, alice):
    made = [recurring(client, alice, rrule="FREQ=DAILY")["series_id"] for _ in range(5)]
    seen: list[str] = []
    cursor = ""
    while True:
        page = client.get(f"/series?limit=2{cursor}", headers=alice)
        assert page.status_code == 200, page.json
        seen += [item["id"] for item in page.json["items"]]
        if page.json["next_cursor"] is None:
            break
        cursor = f"&cursor={page.json['next_cursor']}"
    assert seen == made


def test_patch_changes_the_rule_from_the_next_occurrence_on(client, alice, bus):
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    complete_open(client, alice, bus, series_id)  # open: Jan 6
    response = client.patch(
        f"/series/{series_id}",
        json={"recurrence": {"rrule": "FREQ=WEEKLY", "timezone": "Europe/Berlin"}, "title": "new"},
        headers=alice,
    )
    assert response.status_code == 200, response.json
    assert response.json["rrule"] == "FREQ=WEEKLY"
    (current,) = open_occurrences(client, alice, series_id)
    assert current["due_at"] == "2026-01-06T09:00:00+01:00"  # the open one stays
    forecast = client.get(f"/series/{series_id}/occurrences?count=2", headers=alice).json["items"]
    assert forecast == ["2026-01-06T09:00:00+01:00", "2026-01-13T09:00:00+01:00"]
    complete_open(client, alice, bus, series_id)
    (following,) = open_occurrences(client, alice, series_id)
    assert following["due_at"] == "2026-01-13T09:00:00+01:00"
    assert following["title"] == "new"
    assert [i for i, _, _ in history(client, alice, series_id)] == [0, 1, 2]


def test_end_keeps_history_and_stops_the_series(client, alice, bus):
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    assert client.delete(f"/series/{series_id}", headers=alice).status_code == 204
    complete_open(client, alice, bus, series_id)
    assert open_occurrences(client, alice, series_id) == []
    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "ended"
    assert history(client, alice, series_id)[0][2] == "completed"
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 409


def test_reopen_withdraws_the_open_successor_and_refuses_history_edits(client, alice, bus):
    first = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = first["series_id"]
    complete_open(client, alice, bus, series_id)
    reopened = client.post(f"/tasks/{first['id']}/reopen", headers=alice)
    assert reopened.status_code == 200
    assert [t["id"] for t in open_occurrences(client, alice, series_id)] == [first["id"]]
    complete_open(client, alice, bus, series_id)  # completes the first again
    complete_open(client, alice, bus, series_id)  # and its successor
    refused = client.post(f"/tasks/{first['id']}/reopen", headers=alice)
    assert refused.status_code == 409
    assert len(open_occurrences(client, alice, series_id)) == 1


def test_series_of_another_user_is_not_found(client, alice, bob):
    series_id = recurring(client, alice, rrule="FREQ=DAILY")["series_id"]
    for method, path in [
        ("get", ""), ("patch", ""), ("delete", ""), ("get", "/occurrences"),
        ("get", "/history"), ("post", "/pause"), ("post", "/resume"), ("post", "/skip"),
    ]:  # fmt: skip
        kwargs = {"json": {"title": "x"}} if method == "patch" else {}
        response = getattr(client, method)(f"/series/{series_id}{path}", headers=bob, **kwargs)
        assert response.status_code == 404, (method, path)
    assert client.get("/series", headers=bob).json["items"] == []
    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "active"


class SeriesMachine(RuleBasedStateMachine):
    """Any interleaving of user actions and (duplicated, late) events keeps a series sane:
    at most one open occurrence, and a history that is strictly numbered and dated."""

    @initialize()
    def start(self) -> None:
        with db.session_scope() as session:
            for table in reversed(SQLModel.metadata.sorted_tables):
                session.execute(text(f"DELETE FROM {table.name}"))
        self.client = function_client("tasks")
        self.headers = auth_headers("alice")
        self.bus = Bus()
        self.series_id = recurring(self.client, self.headers, rrule="FREQ=DAILY;COUNT=30")[
            "series_id"
        ]

    def _open(self) -> list[dict[str, Any]]:
        return open_occurrences(self.client, self.headers, self.series_id)

    @rule()
    def complete(self) -> None:
        for task in self._open():
            self.client.post(f"/tasks/{task['id']}/complete", headers=self.headers)

    @rule()
    def deliver_all(self) -> None:
        self.bus.flush()

    @rule(pick=st.integers(0, 1000))
    def deliver_one_late_or_again(self, pick: int) -> None:
        seen = self.bus.completed_events()
        if seen:
            self.bus.deliver(*seen[pick % len(seen)])

    @rule(pick=st.integers(0, 1000))
    def reopen_one(self, pick: int) -> None:
        items = json_of(
            self.client.get(f"/tasks?series_id={self.series_id}&status=done", headers=self.headers)
        )["items"]
        if items:
            response = self.client.post(
                f"/tasks/{items[pick % len(items)]['id']}/reopen", headers=self.headers
            )
            assert response.status_code in (200, 409)

    @rule()
    def delete_open(self) -> None:
        for task in self._open():
            response = self.client.delete(f"/tasks/{task['id']}", headers=self.headers)
            assert response.status_code in (200, 409), response.json

    @rule(action=st.sampled_from(["skip", "pause", "resume"]))
    def series_action(self, action: str) -> None:
        response = self.client.post(f"/series/{self.series_id}/{action}", headers=self.headers)
        assert response.status_code in (200, 409), response.json

    @invariant()
    def at_most_one_open_occurrence(self) -> None:
        assert len(self._open()) <= 1

    @invariant()
    def history_is_consistent(self) -> None:
        entries = history(self.client, self.headers, self.series_id)
        indexes = [i for i, _, _ in entries]
        assert indexes == sorted(set(indexes)), entries
        times = [at for _, at, _ in entries]
        assert times == sorted(times), entries
        assert [o for _, _, o in entries].count("open") <= 1


def test_series_state_machine(env):
    machine = SeriesMachine.TestCase
    machine.settings = settings(
        max_examples=15,
        stateful_step_count=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    machine().runTest()


def test_the_users_default_reminders_reach_every_occurrence(client, alice, bus):
    """A recurring task created without a `reminders` field had the user's defaults on its
    first occurrence only: the series kept the request's (empty) list for the others."""
    client.patch("/preferences", json={"default_reminders": ["PT15M"]}, headers=alice)
    first = recurring(client, alice, rrule="FREQ=DAILY")
    assert [r["before_due"] for r in first["reminders"]] == ["PT15M"]
    client.post(f"/tasks/{first['id']}/complete", headers=alice)
    bus.flush()
    (second,) = open_occurrences(client, alice, first["series_id"])
    assert [r["before_due"] for r in second["reminders"]] == ["PT15M"]
    # what the defaults were when the series began: a later change is not taken back
    client.patch("/preferences", json={"default_reminders": []}, headers=alice)
    client.post(f"/tasks/{second['id']}/complete", headers=alice)
    bus.flush()
    (third,) = open_occurrences(client, alice, first["series_id"])
    assert [r["before_due"] for r in third["reminders"]] == ["PT15M"]


@pytest.mark.parametrize(
    ("zone", "due", "before", "fires"),
    [  # the next occurrence's due time falls on the day its zone's clocks change
        ("America/New_York", "2027-03-13T03:00:00-05:00", "PT30M", "2027-03-14T06:30:00+00:00"),
        ("Europe/Berlin", "2027-03-27T03:30:00+01:00", "P1D", "2027-03-27T01:30:00+00:00"),
        ("America/New_York", "2026-10-31T02:00:00-04:00", "PT1H", "2026-11-01T06:00:00+00:00"),
    ],
)
def test_an_occurrences_relative_reminder_is_its_offset_ahead_in_elapsed_time(
    client, alice, bus, zone, due, before, fires
):
    """The recurrence function's occurrences have their due time in the series' zone, and
    the offset was taken on its wall clock: across a spring-forward gap a PT30M reminder
    fired 30 minutes after the due time, a P1D one 23 hours ahead, across a fall-back
    90 minutes ahead for PT1H (an audit, 2026-12-07). README: a day is 24 hours."""
    made = client.post(
        "/tasks",
        json={
            "title": "r",
            "due_at": due,
            "recurrence": {"rrule": "FREQ=DAILY", "timezone": zone},
            "reminders": [{"before_due": before}],
        },
        headers=alice,
    )
    assert made.status_code == 201, made.json
    client.post(f"/tasks/{made.json['id']}/complete", headers=alice)
    bus.flush()
    (second,) = open_occurrences(client, alice, made.json["series_id"])
    (reminder,) = second["reminders"]
    assert datetime.fromisoformat(reminder["fire_at"]) == datetime.fromisoformat(fires), (
        second["due_at"],
        reminder,
    )


def test_a_new_rule_alone_keeps_the_series_zone_and_policies(client, alice, env):
    """`{"recurrence": {"rrule": ...}}` reset the zone to UTC and every policy to its
    default, with a 200: Berlin 09:00 became 08:00 UTC (10:00 in summer), completion
    mode became schedule mode."""
    task = recurring(client, alice, rrule="FREQ=MONTHLY", mode="completion",
                     month_end="clamp", catch_up="next_future")  # fmt: skip
    series_id = task["series_id"]
    changed = client.patch(
        f"/series/{series_id}", json={"recurrence": {"rrule": "FREQ=WEEKLY"}}, headers=alice
    )
    assert changed.status_code == 200, changed.json
    kept = {k: changed.json[k] for k in ("timezone", "mode", "month_end", "catch_up")}
    assert kept == {"timezone": "Europe/Berlin", "mode": "completion", "month_end": "clamp",
                    "catch_up": "next_future"}  # fmt: skip
    assert client.get(f"/series/{series_id}", headers=alice).json == changed.json
    # what is named is changed, and the rest still kept
    moved = client.patch(
        f"/series/{series_id}",
        json={"recurrence": {"rrule": "FREQ=DAILY", "timezone": "America/New_York"}},
        headers=alice,
    )
    assert (moved.json["timezone"], moved.json["mode"]) == ("America/New_York", "completion")


def test_friendly_fields_beside_an_rrule_are_refused_not_ignored(client, alice, env):
    """`{"rrule": "FREQ=DAILY", "count": 3}` was a 201 for a series that never ended."""
    for extra in ({"count": 3}, {"until": "2031-01-01"}, {"weekdays": ["MO"], "interval": 2}):
        recurrence = {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin", **extra}
        body = {"title": "r", "due_at": "2030-03-05T09:00:00+01:00", "recurrence": recurrence}
        refused = client.post("/tasks", json=body, headers=alice)
        assert refused.status_code == 422, (extra, refused.json)
        (detail,) = refused.json["error"]["details"]
        assert detail["field"] == "recurrence"
        assert all(f"`{name}`" in detail["message"] for name in extra), detail
    assert client.get("/series", headers=alice).json["items"] == []
    assert client.get("/tasks", headers=alice).json["items"] == []


def test_the_forecast_after_a_reopen_behind_a_rule_change_shows_what_comes(client, alice, bus):
    """Complete occurrence 0, change the rule (re-based at occurrence 1), reopen 0: the
    forecast showed occurrence 0 alone, while completing it made the changed rule's
    first occurrence and the series went on."""
    task = recurring(client, alice, rrule="FREQ=DAILY", due_at="2030-01-05T09:00:00+01:00")
    series_id = task["series_id"]
    client.post(f"/tasks/{task['id']}/complete", headers=alice)
    bus.flush()
    changed = {"recurrence": {"rrule": "FREQ=WEEKLY"}}
    assert client.patch(f"/series/{series_id}", json=changed, headers=alice).status_code == 200
    assert client.post(f"/tasks/{task['id']}/reopen", headers=alice).status_code == 200
    url = f"/series/{series_id}/occurrences?count=4"
    shown = client.get(url, headers=alice).json["items"]
    assert len(shown) == 4, shown
    made = []
    for _ in range(3):  # what completing each open occurrence materialises
        (open_one,) = open_occurrences(client, alice, series_id)
        made.append(open_one["due_at"])
        client.post(f"/tasks/{open_one['id']}/complete", headers=alice)
        bus.flush()
    (open_one,) = open_occurrences(client, alice, series_id)
    assert shown == [*made, open_one["due_at"]]


def test_a_stored_rule_that_cannot_go_on_pauses_its_series_and_a_new_rule_resumes_it(
    client, alice, bus
):
    """A rule stored before a stricter admission check, whose next occurrence is past the
    work budget: the completion's event was a 422, dead-lettered, and the series stayed
    active with no open occurrence, which nothing could skip (an audit, 2026-12-07)."""
    made = recurring(client, alice, rrule="FREQ=DAILY")
    series_id = made["series_id"]
    with db.session_scope() as session:  # as such a row was stored then
        session.execute(
            text("UPDATE series SET rrule = :rule WHERE id = :id"),
            {"rule": "FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=30", "id": series_id},
        )
    assert client.post(f"/tasks/{made['id']}/complete", headers=alice).status_code == 200
    bus.flush()  # each event answered 200: processed, not retried or dead-lettered

    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "paused"
    assert open_occurrences(client, alice, series_id) == []
    refused = client.post(f"/series/{series_id}/resume", headers=alice)
    assert refused.status_code == 422
    assert "cannot compute its next occurrence" in refused.json["error"]["message"]
    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "paused"

    changed = client.patch(
        f"/series/{series_id}", json={"recurrence": {"rrule": "FREQ=DAILY"}}, headers=alice
    )
    assert changed.status_code == 200, changed.json
    assert client.post(f"/series/{series_id}/resume", headers=alice).status_code == 200
    (following,) = open_occurrences(client, alice, series_id)
    assert following["due_at"] == "2026-01-06T09:00:00+01:00"
