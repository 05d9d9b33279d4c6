"""recurrence, sweep and notify as sinks: real CloudEvents (binary and structured) in,
state and outbox rows out, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

import pytest
from cloudevents.conversion import to_structured
from sqlmodel import func, select

from duetide import events
from duetide.logs import JsonFormatter
from duetide.storage import db
from duetide.storage.models import Notification, Outbox, ProcessedEvent, Reminder, Task, utcnow
from tests.integration.conftest import function_client
from tests.support import json_of


def binary(event_type: str, data: Any, event_id: str | None = None, source: str = "/test"):
    event = events.build(
        event_id=event_id or str(uuid.uuid4()), type=event_type, source=source,
        subject="s", data=data,
    )  # fmt: skip
    return events.to_http(event)


def post(client, event_type: str, data: Any, **kwargs: Any):
    headers, body = binary(event_type, data, **kwargs)
    return client.post("/", headers=headers, data=body)


def completed_event(client, alice, task_id: str) -> dict[str, Any]:
    """The task.completed data the tasks function wrote to its outbox for `task_id`."""
    with db.session_scope() as session:
        row = session.exec(
            select(Outbox).where(Outbox.type == events.TASK_COMPLETED, Outbox.key == task_id)
        ).one()
        return row.data


def count(model: Any, *where: Any) -> int:
    with db.session_scope() as session:
        return session.exec(select(func.count()).select_from(model).where(*where)).one()


@pytest.fixture
def recurrence(env):
    return function_client("recurrence")


@pytest.fixture
def daily(client, alice) -> dict[str, Any]:
    response = client.post(
        "/tasks",
        json={
            "title": "Water plants",
            "due_at": "2026-03-28T09:00:00+01:00",
            "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"},
            "reminders": [{"before_due": "PT10M"}],
        },
        headers=alice,
    )
    assert response.status_code == 201, response.json
    return response.json


def test_completed_occurrence_materialises_exactly_one_next(client, alice, recurrence, daily):
    client.post(f"/tasks/{daily['id']}/complete", headers=alice)
    data = completed_event(client, alice, daily["id"])
    event_id = str(uuid.uuid4())
    answers = [post(recurrence, events.TASK_COMPLETED, data, event_id=event_id) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert [a.json["status"] for a in answers] == ["processed", "duplicate", "duplicate"]
    # The same fact under a new event id (a re-published outbox row) changes nothing either.
    assert post(recurrence, events.TASK_COMPLETED, data).json["status"] == "processed"
    page = client.get(f"/tasks?series_id={daily['series_id']}&status=open", headers=alice).json
    assert len(page["items"]) == 1
    following = page["items"][0]
    # 09:00 Berlin stays 09:00 across the DST change of 2026-03-29.
    assert following["due_at"] == "2026-03-29T09:00:00+02:00"
    assert following["reminders"][0]["before_due"] == "PT10M"
    assert following["reminders"][0]["fire_at"] == "2026-03-29T08:50:00+02:00"  # its zone


def test_complete_reopen_complete_yields_one_successor(client, alice, recurrence, daily):
    task_id = daily["id"]
    client.post(f"/tasks/{task_id}/complete", headers=alice)
    first = completed_event(client, alice, task_id)
    client.post(f"/tasks/{task_id}/reopen", headers=alice)
    # The completion arrives after the reopen: stale, a 2xx no-op.
    assert post(recurrence, events.TASK_COMPLETED, first).json["status"] == "processed"
    assert count(Task, Task.series_id == daily["series_id"]) == 1
    client.post(f"/tasks/{task_id}/complete", headers=alice)
    with db.session_scope() as session:
        rows = session.exec(select(Outbox).where(Outbox.type == events.TASK_COMPLETED)).all()
    for row in rows:
        post(recurrence, events.TASK_COMPLETED, row.data)
    assert count(Task, Task.series_id == daily["series_id"]) == 2


def test_series_ends_after_count(client, alice, recurrence):
    task = client.post(
        "/tasks",
        json={"title": "x", "due_at": "2026-01-01T09:00:00Z",
              "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=2"}},
        headers=alice,
    ).json  # fmt: skip
    current = task
    for _ in range(3):
        client.post(f"/tasks/{current['id']}/complete", headers=alice)
        post(recurrence, events.TASK_COMPLETED, completed_event(client, alice, current["id"]))
        page = client.get(f"/tasks?series_id={task['series_id']}&status=open", headers=alice).json
        if not page["items"]:
            break
        current = page["items"][0]
    assert count(Task, Task.series_id == task["series_id"]) == 2
    series = client.get(f"/series/{task['series_id']}", headers=alice).json
    assert series["status"] == "ended"


def test_forecast_shows_next_occurrences_in_series_zone(client, alice, daily, bob):
    response = client.get(f"/series/{daily['series_id']}/occurrences?count=3", headers=alice)
    assert response.json["items"] == [
        "2026-03-28T09:00:00+01:00",
        "2026-03-29T09:00:00+02:00",
        "2026-03-30T09:00:00+02:00",
    ]
    assert client.get(f"/series/{daily['series_id']}", headers=bob).status_code == 404


def test_event_for_another_owners_series_changes_nothing(client, alice, recurrence, daily):
    client.post(f"/tasks/{daily['id']}/complete", headers=alice)
    forged = {**completed_event(client, alice, daily["id"]), "owner": "mallory"}
    assert post(recurrence, events.TASK_COMPLETED, forged).status_code == 200
    assert count(Task, Task.series_id == daily["series_id"]) == 1


def test_other_event_types_are_acknowledged_and_ignored(recurrence):
    response = post(recurrence, events.TASK_CREATED, {"anything": 1})
    assert response.status_code == 200
    assert response.json["status"] == "ignored"
    long = post(recurrence, "x" * 100_000, {"anything": 1})  # the answer echoed it whole
    assert long.json["status"] == "ignored" and len(long.json["reason"]) < 300


def test_a_duetide_type_newer_than_the_function_is_retried_not_ignored():
    """A newer release's producer rolled out before this consumer (or this one rolled
    back): notify before `reminder.due.batch` answered a batch "ignored", and its
    reminders, fired by the sweep, were never sent (an audit, 2026-12-07). A 503 is
    retried by the KafkaSource until a revision that takes it answers."""
    notify = function_client("notify")
    newer = post(notify, f"{events.PREFIX}reminder.due.batch.v2", {"reminders": []})
    assert newer.status_code == 503, newer.json
    assert (
        newer.json["error"]["code"] == "unavailable" and "newer" in newer.json["error"]["message"]
    )
    known_elsewhere = post(notify, events.TASK_CREATED, {"anything": 1})  # another's type
    assert known_elsewhere.status_code == 200 and known_elsewhere.json["status"] == "ignored"


MALFORMED = [
    # (headers, body, status, code)
    ({"ce-type": "t", "ce-source": "s", "ce-specversion": "1.0",
      "content-type": "application/json"}, b"{}", 400, "invalid_cloudevent"),
    ({"ce-id": "1", "ce-source": "s", "ce-specversion": "1.0",
      "content-type": "application/json"}, b"{}", 400, "invalid_cloudevent"),
    ({"ce-id": "1", "ce-type": "t", "ce-source": "s",
      "content-type": "application/json"}, b"{}", 400, "invalid_cloudevent"),
    ({"ce-id": "1", "ce-type": events.TASK_COMPLETED, "ce-source": "s", "ce-specversion": "1.0",
      "content-type": "application/json"}, b"{not json", 400, "invalid_cloudevent"),
    ({"ce-id": "1", "ce-type": "t", "ce-source": "s", "ce-specversion": "0.3",
      "content-type": "application/json"}, b"{}", 400, "invalid_cloudevent"),
    ({"ce-id": "1", "ce-type": "t", "ce-source": "s", "ce-specversion": "1.0",
      "content-type": "application/xml"}, b"<a/>", 415, "unsupported_media_type"),
    ({"content-type": "application/cloudevents+json"}, b"{bad", 400, "invalid_cloudevent"),
    ({"content-type": "application/cloudevents+json"},
     b'{"specversion": "1.0", "type": "t", "source": "s"}', 400, "invalid_cloudevent"),
    ({"content-type": "application/json"}, b"{}", 400, "invalid_cloudevent"),
    ({"content-type": "text/plain"}, b"hello", 415, "unsupported_media_type"),
    ({"ce-id": "1", "ce-type": "t", "ce-source": "s", "ce-specversion": "1.0",
      "content-type": "application/json"}, b"[" * 2_000_000, 413, "payload_too_large"),
]  # fmt: skip


@pytest.mark.parametrize("name", ["recurrence", "sweep", "notify"])
@pytest.mark.parametrize(("headers", "body", "status", "code"), MALFORMED)
def test_malformed_cloudevents_get_4xx_json_and_write_nothing(
    env, name, headers, body, status, code
):
    response = function_client(name).post("/", headers=headers, data=body)
    assert response.status_code == status, response.json
    assert json_of(response)["error"]["code"] == code
    assert count(ProcessedEvent) == 0 and count(Task) == 0


@pytest.mark.parametrize(
    ("name", "event_type"),
    [("recurrence", events.TASK_COMPLETED), ("notify", events.REMINDER_DUE)],
)
def test_event_with_invalid_data_for_its_type_is_400(env, name, event_type):
    response = post(function_client(name), event_type, {"task_id": 5})
    assert response.status_code == 400
    assert event_type in response.json["error"]["message"]
    assert count(ProcessedEvent) == 0


@pytest.mark.parametrize("name", ["recurrence", "sweep", "notify"])
def test_sinks_answer_405_to_other_methods_and_200_to_health(env, name):
    sink = function_client(name)
    assert sink.get("/").status_code == 405
    assert json_of(sink.put("/", data=b"{}"))["error"]["code"] == "method_not_allowed"
    assert sink.get("/healthz").status_code == 200


def test_structured_mode_is_accepted(client, alice, recurrence, daily):
    client.post(f"/tasks/{daily['id']}/complete", headers=alice)
    event = events.build(
        event_id="structured-1", type=events.TASK_COMPLETED, source="/test", subject="s",
        data=completed_event(client, alice, daily["id"]),
    )  # fmt: skip
    headers, body = to_structured(event, data_marshaller=lambda d: d)
    response = recurrence.post("/", headers=headers, data=body)
    assert response.status_code == 200 and response.json["status"] == "processed"
    assert count(Task, Task.series_id == daily["series_id"]) == 2


def ping(sweep_client) -> Any:
    return post(sweep_client, events.PING, {"sweep": True}, source="/ping")


def test_sweep_claims_due_reminders_once_and_never_early(client, alice, env):
    sweep = function_client("sweep")
    now = utcnow()

    def task_reminded_at(title: str, at: Any) -> dict[str, Any]:
        body = {"title": title, "reminders": [{"at": at.isoformat()}]}
        return client.post("/tasks", json=body, headers=alice).json

    due = task_reminded_at("due", now - timedelta(seconds=5))
    later = task_reminded_at("later", now + timedelta(hours=1))
    stale = task_reminded_at("stale", now - timedelta(days=2))
    done = task_reminded_at("done", now - timedelta(seconds=5))
    client.post(f"/tasks/{done['id']}/complete", headers=alice)
    assert ping(sweep).status_code == 200
    assert ping(sweep).status_code == 200
    states = {}
    with db.session_scope() as session:
        for reminder in session.exec(select(Reminder)).all():
            states[reminder.task_id] = reminder.state
        types = [r.type for r in session.exec(select(Outbox).where(Outbox.key == due["id"])).all()]
    assert states == {
        due["id"]: "fired",
        later["id"]: "pending",
        stale["id"]: "missed",
        done["id"]: "dismissed",
    }  # fmt: skip (done first: never sent)
    assert types.count(events.REMINDER_DUE) == 1
    assert count(Outbox, Outbox.type == events.REMINDER_MISSED) == 1


def due_reminder_event(client, alice, title: str = "secret title") -> dict[str, Any]:
    """A reminder due now, claimed by a real sweep: the reminder.due data it wrote."""
    at = (utcnow() - timedelta(seconds=1)).isoformat()
    task = client.post("/tasks", json={"title": title, "reminders": [{"at": at}]}, headers=alice)
    assert ping(function_client("sweep")).status_code == 200
    with db.session_scope() as session:
        row = session.exec(
            select(Outbox).where(Outbox.type == events.REMINDER_DUE, Outbox.key == task.json["id"])
        ).one()
        return row.data


def test_notify_delivers_once_per_firing_and_lists_it(client, alice, bob, env, caplog):
    notify = function_client("notify")
    data = due_reminder_event(client, alice)
    with caplog.at_level("INFO", logger="duetide.channels.log"):
        assert post(notify, events.REMINDER_DUE, data).json["status"] == "processed"
        # The same firing redelivered under another event id: still one notification,
        # and answered as the duplicate it is (not counted as a delivery, nor as late).
        assert post(notify, events.REMINDER_DUE, data).json["status"] == "duplicate"
    formatter = JsonFormatter("notify")
    lines = [json.loads(formatter.format(r)) for r in caplog.records]
    delivered = [line for line in lines if line["logger"] == "duetide.channels.log"]
    assert len(delivered) == 1
    assert delivered[0]["event"] == "notification.delivered"  # a field, not text in a message
    assert delivered[0]["reminder_id"] == data["reminder_id"]
    assert not [line for line in lines if "secret title" in json.dumps(line)]
    assert count(Notification) == 1
    listed = client.get("/notifications", headers=alice).json["items"]
    assert [(n["task_id"], n["channel"]) for n in listed] == [(data["task_id"], "log")]
    assert client.get("/notifications", headers=bob).json["items"] == []


def test_notify_skips_dismissed_snoozed_forged_and_completed_firings(client, alice, env):
    notify = function_client("notify")
    dismissed = due_reminder_event(client, alice, "a")
    client.post(f"/reminders/{dismissed['reminder_id']}/dismiss", headers=alice)
    snoozed = due_reminder_event(client, alice, "b")
    client.post(f"/reminders/{snoozed['reminder_id']}/snooze", json={"for": "PT1H"}, headers=alice)
    forged = {**due_reminder_event(client, alice, "c"), "owner": "mallory"}
    # Completed after the sweep claimed the firing: it was delivered all the same.
    completed = due_reminder_event(client, alice, "d")
    answer = client.post(f"/tasks/{completed['task_id']}/complete", headers=alice)
    assert answer.status_code == 200, answer.json
    for data in (dismissed, snoozed, forged, completed):
        assert post(notify, events.REMINDER_DUE, data).json["status"] == "obsolete"
    assert count(Notification) == 0
