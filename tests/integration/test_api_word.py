"""The API keeps the README's word (issue 14): through the real tasks function, on SQLite
and PostgreSQL, each promise a new user found broken is checked where a client sees it.
"""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from typing import Any

import pytest
from flask.testing import FlaskClient

from duetide_tools.local.broker import free_loopback_port
from tests.integration.conftest import _reset_caches, function_client
from tests.integration.test_series_api import Bus, bus, complete_open

__all__ = ["bus"]  # the fixture, imported for these tests

# --- every error is {"error": {"code", "message", "details"}} ------------------------------


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error of `response`, in the one shape: exactly code, message and details."""
    assert response.status_code == status, response.data
    assert response.mimetype == "application/json"
    error = response.get_json()["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code
    assert isinstance(error["details"], list)
    return error


def test_a_401_has_empty_details(client: FlaskClient) -> None:
    assert error_of(client.get("/tasks"), 401, "unauthorized")["details"] == []


def test_a_404_has_empty_details(client: FlaskClient, alice: dict[str, str]) -> None:
    assert error_of(client.get("/nowhere", headers=alice), 404, "not_found")["details"] == []
    missing = client.get("/tasks/no-such-task", headers=alice)
    assert error_of(missing, 404, "not_found")["details"] == []


def test_a_404_the_framework_answers_before_our_router_has_empty_details(
    client: FlaskClient,
) -> None:
    """functions-framework answers /favicon.ico and /robots.txt itself."""
    for path in ("/favicon.ico", "/robots.txt"):
        assert error_of(client.get(path), 404, "not_found")["details"] == []


def test_a_405_has_empty_details(client: FlaskClient, alice: dict[str, str]) -> None:
    response = client.put("/tasks", json={}, headers=alice)
    assert error_of(response, 405, "method_not_allowed")["details"] == []
    assert response.headers["Allow"] == "GET, HEAD, POST"


def test_a_400_and_a_415_have_empty_details(client: FlaskClient, alice: dict[str, str]) -> None:
    bad = client.post("/tasks", data=b"{", content_type="application/json", headers=alice)
    assert error_of(bad, 400, "bad_request")["details"] == []
    text = client.post("/tasks", data=b"title", content_type="text/plain", headers=alice)
    assert error_of(text, 415, "unsupported_media_type")["details"] == []


def test_a_422_names_each_field_in_details(client: FlaskClient, alice: dict[str, str]) -> None:
    response = client.post("/tasks", json={"title": "", "priority": "top"}, headers=alice)
    details = error_of(response, 422, "validation_failed")["details"]
    assert sorted(d["field"] for d in details) == ["priority", "title"]
    assert all(set(d) == {"field", "message"} for d in details)


def test_a_413_has_empty_details(
    env: str, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUETIDE_MAX_BODY_BYTES", "1024")
    _reset_caches()
    client = function_client("tasks")
    response = client.post("/tasks", json={"title": "x" * 2000}, headers=alice)
    assert error_of(response, 413, "payload_too_large")["details"] == []


def test_a_429_has_empty_details(
    env: str, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUETIDE_WRITE_RATE_PER_MINUTE", "1")
    _reset_caches()
    client = function_client("tasks")
    assert client.post("/tasks", json={"title": "a"}, headers=alice).status_code == 201
    response = client.post("/tasks", json={"title": "b"}, headers=alice)
    assert error_of(response, 429, "rate_limited")["details"] == []
    assert int(response.headers["Retry-After"]) >= 1


def test_a_503_has_empty_details(
    env: str, alice: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No database listens at the address: the request is a 503 "retry", in the shape."""
    port = free_loopback_port()
    monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
    _reset_caches()
    response = function_client("tasks").get("/tasks", headers=alice)
    assert error_of(response, 503, "unavailable")["details"] == []
    assert response.headers["Retry-After"] == "1"


def test_an_event_sink_error_has_empty_details(env: str) -> None:
    sink = function_client("recurrence")
    assert error_of(sink.get("/"), 405, "method_not_allowed")["details"] == []
    not_an_event = sink.post("/", json={"a": 1})
    assert error_of(not_an_event, 400, "invalid_cloudevent")["details"] == []


# --- a 204 has no body and no Content-Type ---------------------------------------------------


def test_deleting_a_task_is_204_without_body_or_content_type(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    task = client.post("/tasks", json={"title": "gone"}, headers=alice).get_json()
    response = client.delete(f"/tasks/{task['id']}", headers=alice)
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers
    assert client.get(f"/tasks/{task['id']}", headers=alice).status_code == 404


def test_ending_a_series_is_204_without_body_or_content_type(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    daily = {"title": "r", "due_at": "2030-01-01T09:00:00Z", "recurrence": {"rrule": "FREQ=DAILY"}}
    series_id = client.post("/tasks", json=daily, headers=alice).get_json()["series_id"]
    response = client.delete(f"/series/{series_id}", headers=alice)
    assert response.status_code == 204
    assert response.data == b""
    assert "Content-Type" not in response.headers


# --- a 201 says where the new thing is ----------------------------------------------------


def test_creating_a_task_answers_its_location(client: FlaskClient, alice: dict[str, str]) -> None:
    response = client.post("/tasks", json={"title": "here"}, headers=alice)
    assert response.status_code == 201
    assert response.headers["Location"] == f"/tasks/{response.get_json()['id']}"
    assert client.get(response.headers["Location"], headers=alice).get_json() == response.get_json()


def test_adding_a_reminder_answers_its_location(client: FlaskClient, alice: dict[str, str]) -> None:
    task = client.post("/tasks", json={"title": "t"}, headers=alice).get_json()
    response = client.post(
        f"/tasks/{task['id']}/reminders", json={"at": "2030-01-01T09:00:00Z"}, headers=alice
    )
    assert response.status_code == 201
    assert response.headers["Location"] == f"/reminders/{response.get_json()['id']}"
    read = client.get(response.headers["Location"], headers=alice)
    assert read.status_code == 200 and read.get_json() == response.get_json()


def test_a_reminder_of_another_user_is_not_found(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    task = client.post("/tasks", json={"title": "t"}, headers=alice).get_json()
    created = client.post(
        f"/tasks/{task['id']}/reminders", json={"at": "2030-01-01T09:00:00Z"}, headers=alice
    )
    error_of(client.get(created.headers["Location"], headers=bob), 404, "not_found")


def test_a_create_command_answers_the_new_tasks_location(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    headers = {
        **alice, "ce-specversion": "1.0", "ce-id": "loc-1", "ce-source": "/test",
        "ce-type": "dev.duetide.task.create.v1",
    }  # fmt: skip
    response = client.post("/commands", json={"task": {"title": "by command"}}, headers=headers)
    assert response.status_code == 201
    task = response.get_json()["task"]
    assert response.headers["Location"] == f"/tasks/{task['id']}"
    assert (
        client.get(response.headers["Location"], headers=alice).get_json()["title"] == "by command"
    )


# --- durations come back as sent, in their readable form -------------------------------------


@pytest.mark.parametrize(
    ("sent", "shown"),
    [("PT15M", "PT15M"), ("P1D", "P1D"), ("PT1H30M", "PT1H30M"), ("PT90M", "PT1H30M")],
)
def test_a_reminder_before_due_comes_back_readable(
    client: FlaskClient, alice: dict[str, str], sent: str, shown: str
) -> None:
    created = client.post(
        "/tasks",
        json={"title": "t", "due_at": "2030-01-02T09:00:00Z", "reminders": [{"before_due": sent}]},
        headers=alice,
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["reminders"][0]["before_due"] == shown
    read = client.get(f"/tasks/{created.get_json()['id']}", headers=alice).get_json()
    assert read["reminders"][0]["before_due"] == shown


def test_preference_durations_come_back_as_sent(client: FlaskClient, alice: dict[str, str]) -> None:
    sent = {"default_reminders": ["PT15M", "P1D", "PT1H30M"], "grace": "PT30M"}
    changed = client.patch("/preferences", json=sent, headers=alice)
    assert changed.status_code == 200, changed.get_json()
    shown = client.get("/preferences", headers=alice).get_json()
    for answer in (changed.get_json(), shown):
        assert answer["default_reminders"] == ["PT15M", "PT1H30M", "P1D"]  # soonest first
        assert answer["grace"] == "PT30M"


# --- one object, one zone -------------------------------------------------------------------

KOLKATA = {"rrule": "FREQ=DAILY", "timezone": "Asia/Kolkata"}  # +05:30 all year


def times_of(value: Any, key: str = "") -> list[tuple[str, str]]:
    """Every (field, RFC 3339 text) in a JSON answer, nested objects included."""
    if isinstance(value, dict):
        return [found for k, v in value.items() for found in times_of(v, k)]
    if isinstance(value, list):
        return [found for item in value for found in times_of(item, key)]
    is_time = isinstance(value, str) and len(value) >= 25 and value[10:11] == "T"
    return [(key, value)] if is_time else []


def offsets(answer: Any) -> set[str]:
    return {text[-6:] for _, text in times_of(answer)}


def test_an_occurrence_shows_every_time_in_its_series_zone(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    created = client.post(
        "/tasks",
        json={
            "title": "chai", "due_at": "2030-01-01T09:00:00+05:30", "recurrence": KOLKATA,
            "reminders": [{"before_due": "PT15M"}, {"at": "2029-12-31T12:00:00Z"}],
        },
        headers=alice,
    )  # fmt: skip
    assert created.status_code == 201
    task = created.get_json()
    done = client.post(f"/tasks/{task['id']}/complete", headers=alice).get_json()
    fields = {field for field, _ in times_of(done)}
    assert fields >= {"due_at", "completed_at", "created_at", "updated_at", "fire_at", "at"}
    assert offsets(done) == {"+05:30"}, times_of(done)
    reminder_id = task["reminders"][0]["id"]
    for answer in (
        client.get(f"/tasks/{task['id']}", headers=alice),
        client.get(f"/tasks?series_id={task['series_id']}", headers=alice),
        client.get(f"/series/{task['series_id']}", headers=alice),
        client.get(f"/series/{task['series_id']}/history", headers=alice),
        client.get(f"/reminders/{reminder_id}", headers=alice),
        client.post(f"/reminders/{reminder_id}/dismiss", headers=alice),
    ):
        assert answer.status_code == 200, answer.get_json()
        assert offsets(answer.get_json()) == {"+05:30"}, times_of(answer.get_json())


def test_upcoming_reminders_show_each_in_its_tasks_zone(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    reminder = [{"before_due": "PT15M"}]
    due = "2030-01-01T09:00:00Z"
    client.post(
        "/tasks", json={"title": "s", "due_at": due, "recurrence": KOLKATA, "reminders": reminder},
        headers=alice,
    )  # fmt: skip
    client.post("/tasks", json={"title": "o", "due_at": due, "reminders": reminder}, headers=alice)
    items = client.get("/reminders/upcoming", headers=alice).get_json()["items"]
    by_title = {item["title"]: offsets(item) for item in items}
    assert by_title == {"s": {"+05:30"}, "o": {"+00:00"}}


def test_anything_else_is_in_utc(client: FlaskClient, alice: dict[str, str]) -> None:
    created = client.post(
        "/tasks",
        json={"title": "one-off", "due_at": "2030-01-01T09:00:00+05:30",
              "reminders": [{"before_due": "PT15M"}]},
        headers=alice,
    )  # fmt: skip
    done = client.post(f"/tasks/{created.get_json()['id']}/complete", headers=alice).get_json()
    assert {f for f, _ in times_of(done)} >= {"due_at", "completed_at", "created_at", "fire_at"}
    assert offsets(done) == {"+00:00"}
    prefs = client.patch("/preferences", json={"timezone": "Asia/Kolkata"}, headers=alice)
    assert offsets(prefs.get_json()) == {"+00:00"}


# --- the README's FREQ list is the validator's ----------------------------------------------


@pytest.mark.parametrize("freq", ["YEARLY", "MONTHLY", "WEEKLY", "DAILY", "HOURLY", "MINUTELY"])
def test_every_freq_the_readme_lists_is_accepted(
    client: FlaskClient, alice: dict[str, str], freq: str
) -> None:
    created = client.post(
        "/tasks",
        json={
            "title": freq,
            "due_at": "2030-01-01T09:00:00Z",
            "recurrence": {"rrule": f"FREQ={freq}"},
        },
        headers=alice,
    )
    assert created.status_code == 201, created.get_json()
    series = client.get(f"/series/{created.get_json()['series_id']}", headers=alice).get_json()
    assert series["rrule"] == f"FREQ={freq}"


def test_secondly_is_refused_naming_the_finest_freq(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    refused = client.post(
        "/tasks",
        json={
            "title": "s",
            "due_at": "2030-01-01T09:00:00Z",
            "recurrence": {"rrule": "FREQ=SECONDLY"},
        },
        headers=alice,
    )
    error = error_of(refused, 422, "validation_failed")
    assert "finest frequency is MINUTELY" in error["message"]
    assert error["details"][0]["field"] == "recurrence"


# --- a batch of CloudEvents is a clear 415 --------------------------------------------------

BATCH = "application/cloudevents-batch+json"


def batch_of(*ids: str) -> list[dict[str, Any]]:
    return [
        {"specversion": "1.0", "id": i, "source": "/test", "type": "dev.duetide.task.create.v1",
         "data": {"task": {"title": f"batched {i}"}}}
        for i in ids
    ]  # fmt: skip


def test_a_batch_posted_to_commands_is_415_and_creates_nothing(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    response = client.post(
        "/commands", json=batch_of("b-1", "b-2"), headers={**alice, "Content-Type": BATCH}
    )
    error = error_of(response, 415, "unsupported_media_type")
    assert "batched CloudEvents" in error["message"] and "not supported" in error["message"]
    assert "application/cloudevents+json" in response.headers["Accept"]
    assert client.get("/tasks", headers=alice).get_json()["items"] == []


def test_a_batch_with_ce_headers_is_still_415(client: FlaskClient, alice: dict[str, str]) -> None:
    headers = {
        **alice, "Content-Type": BATCH, "ce-specversion": "1.0", "ce-id": "b-3",
        "ce-source": "/test", "ce-type": "dev.duetide.task.create.v1",
    }  # fmt: skip
    response = client.post("/commands", json=batch_of("b-3"), headers=headers)
    error_of(response, 415, "unsupported_media_type")


def test_an_event_sink_refuses_a_batch_with_415(env: str) -> None:
    sink = function_client("recurrence")
    response = sink.post("/", json=batch_of("b-4"), headers={"Content-Type": BATCH})
    error_of(response, 415, "unsupported_media_type")


# --- binary mode is documented; the content type decides the mode -----------------------------


def test_a_structured_command_is_read_from_its_body_whatever_ce_headers_come_with_it(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    """HTTP binding, section 3: application/cloudevents+json is structured mode."""
    event = {
        "specversion": "1.0", "id": "s-1", "source": "/test", "type": "dev.duetide.task.create.v1",
        "data": {"task": {"title": "from the body"}},
    }  # fmt: skip
    headers = {
        **alice, "Content-Type": "application/cloudevents+json",
        "ce-id": "from-a-header", "ce-duetideuser": "bob",
    }  # fmt: skip
    response = client.post("/commands", json=event, headers=headers)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["task"]["title"] == "from the body"
    again = client.post("/commands", json=event, headers={**headers, "ce-id": "other"})
    assert again.get_json()["status"] == "duplicate"  # deduplicated by the body's id


def test_a_binary_command_as_the_document_describes_it_is_processed(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    from duetide.web.openapi import document

    operation = document()["paths"]["/commands"]["post"]
    content = operation["requestBody"]["content"]
    assert set(content) == {"application/cloudevents+json", "application/json"}
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert {"ce-specversion", "ce-id", "ce-source", "ce-type"} <= set(headers)
    sent = {
        "ce-specversion": headers["ce-specversion"]["schema"]["examples"][0], "ce-id": "bin-1",
        "ce-source": "/test", "ce-type": headers["ce-type"]["schema"]["examples"][0],
    }  # fmt: skip
    assert sent["ce-type"] == "dev.duetide.task.create.v1"
    response = client.post(
        "/commands", json={"task": {"title": "binary"}}, headers={**alice, **sent}
    )
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["task"]["title"] == "binary"


# --- the forecast is what is still to come ------------------------------------------------------


def forecast_of(client: FlaskClient, headers: dict[str, str], series_id: str, count: int) -> Any:
    response = client.get(f"/series/{series_id}/occurrences?count={count}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def series_task(client: FlaskClient, headers: dict[str, str], due: str, **rule: Any) -> Any:
    response = client.post(
        "/tasks", json={"title": "r", "due_at": due, "recurrence": rule}, headers=headers
    )
    assert response.status_code == 201, response.get_json()
    return response.get_json()


def open_due(client: FlaskClient, headers: dict[str, str], series_id: str) -> str:
    page = client.get(f"/tasks?series_id={series_id}&status=open", headers=headers).get_json()
    (task,) = page["items"]
    return str(task["due_at"])


def test_the_forecast_starts_at_the_open_occurrence_not_the_series_start(
    client: FlaskClient, alice: dict[str, str], bus: Bus
) -> None:
    task = series_task(
        client, alice, "2030-01-05T09:00:00+01:00", rrule="FREQ=DAILY", timezone="Europe/Berlin"
    )
    series_id = task["series_id"]
    for _ in range(2):
        complete_open(client, alice, bus, series_id)
    assert open_due(client, alice, series_id) == "2030-01-07T09:00:00+01:00"
    assert forecast_of(client, alice, series_id, 3) == {
        "items": [
            "2030-01-07T09:00:00+01:00", "2030-01-08T09:00:00+01:00", "2030-01-09T09:00:00+01:00",
        ],
        "truncated": False,
    }  # fmt: skip


def test_a_completed_occurrence_awaiting_its_successor_forecasts_from_that_successor(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    task = series_task(client, alice, "2030-01-05T09:00:00Z", rrule="FREQ=DAILY")
    client.post(f"/tasks/{task['id']}/complete", headers=alice)  # the recurrence not yet run
    items = forecast_of(client, alice, task["series_id"], 2)["items"]
    assert items == ["2030-01-06T09:00:00+00:00", "2030-01-07T09:00:00+00:00"]


def test_completion_mode_forecasts_from_now_when_the_open_occurrence_is_overdue(
    client: FlaskClient, alice: dict[str, str], bus: Bus
) -> None:
    """Completed now, the next one is two days after today: 2020-01-08 will never happen."""
    task = series_task(
        client, alice, "2020-01-06T09:00:00Z", rrule="FREQ=DAILY;INTERVAL=2", mode="completion"
    )
    before = datetime.now(UTC)
    items = [
        datetime.fromisoformat(at)
        for at in forecast_of(client, alice, task["series_id"], 4)["items"]
    ]
    after = datetime.now(UTC)
    assert items[0] == datetime(2020, 1, 6, 9, tzinfo=UTC)  # the open one, as it stands
    expected = {
        datetime.combine(moment.date() + timedelta(days=2), time(9), tzinfo=UTC)
        for moment in (before, after)
    }
    assert items[1] in expected
    assert [b - a for a, b in pairwise(items[1:])] == [timedelta(days=2)] * 2
    complete_open(client, alice, bus, task["series_id"])
    if before.date() == datetime.now(UTC).date():
        assert datetime.fromisoformat(open_due(client, alice, task["series_id"])) == items[1]


def test_completion_mode_forecasts_from_the_open_occurrences_due_date(
    client: FlaskClient, alice: dict[str, str], bus: Bus
) -> None:
    task = series_task(
        client, alice, "2030-01-05T09:00:00Z", rrule="FREQ=DAILY;INTERVAL=3", mode="completion"
    )
    series_id = task["series_id"]
    moved = client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2030-01-06T09:00:00Z"}, headers=alice
    )
    assert moved.status_code == 200
    items = forecast_of(client, alice, series_id, 3)["items"]
    assert items == [
        "2030-01-06T09:00:00+00:00", "2030-01-09T09:00:00+00:00", "2030-01-12T09:00:00+00:00",
    ]  # fmt: skip


def test_next_future_leaves_out_what_would_be_missed(
    client: FlaskClient, alice: dict[str, str], bus: Bus
) -> None:
    task = series_task(
        client, alice, "2020-01-06T09:00:00Z", rrule="FREQ=DAILY", catch_up="next_future"
    )
    before = datetime.now(UTC)
    items = [
        datetime.fromisoformat(at)
        for at in forecast_of(client, alice, task["series_id"], 3)["items"]
    ]
    assert items[0] == datetime(2020, 1, 6, 9, tzinfo=UTC)
    assert before < items[1] <= before + timedelta(days=1)
    assert items[2] - items[1] == timedelta(days=1)
    complete_open(client, alice, bus, task["series_id"])
    if before.date() == datetime.now(UTC).date() and datetime.now(UTC) < items[1]:
        assert datetime.fromisoformat(open_due(client, alice, task["series_id"])) == items[1]


def test_next_in_series_lists_the_overdue_ones_that_will_come(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    task = series_task(client, alice, "2020-01-06T09:00:00Z", rrule="FREQ=DAILY;COUNT=3")
    assert forecast_of(client, alice, task["series_id"], 5)["items"] == [
        "2020-01-06T09:00:00+00:00", "2020-01-07T09:00:00+00:00", "2020-01-08T09:00:00+00:00",
    ]  # fmt: skip


def test_an_ended_series_has_nothing_to_come(client: FlaskClient, alice: dict[str, str]) -> None:
    task = series_task(client, alice, "2030-01-05T09:00:00Z", rrule="FREQ=DAILY")
    assert client.delete(f"/series/{task['series_id']}", headers=alice).status_code == 204
    assert forecast_of(client, alice, task["series_id"], 3) == {"items": [], "truncated": False}
