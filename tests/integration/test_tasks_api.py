"""The tasks HTTP API, through the real functions-framework app, on SQLite and PostgreSQL."""

from __future__ import annotations

from typing import Any

import pytest
from sqlmodel import col, select

from duetide import events
from duetide.storage import db
from duetide.storage.models import Outbox, Task

RENT = {"title": "Pay rent", "tags": ["home"], "due_at": "2026-12-01T09:00:00+01:00"}


def create(client: Any, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    response = client.post("/tasks", json={"title": "t", **fields}, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def outbox_types() -> list[str]:
    with db.session_scope() as session:
        rows = session.exec(select(Outbox).order_by(col(Outbox.created_at))).all()
        return [row.type for row in rows]


def test_create_returns_task_in_api_shape_and_records_event(client, alice):
    task = create(client, alice, **RENT, priority="high", description="by transfer")
    assert task["title"] == "Pay rent"
    assert task["status"] == "open"
    assert task["priority"] == "high"
    assert task["tags"] == ["home"]
    assert task["due_at"] == "2026-12-01T08:00:00+00:00"
    assert task["completed_at"] is None
    assert task["series_id"] is None
    assert outbox_types() == [events.TASK_CREATED]


def test_owner_in_body_is_ignored(client, alice, bob):
    task = create(client, alice, owner="bob", id="chosen-by-client")
    assert task["id"] != "chosen-by-client"
    assert client.get(f"/tasks/{task['id']}", headers=bob).status_code == 404
    assert client.get(f"/tasks/{task['id']}", headers=alice).status_code == 200


def test_another_users_task_is_not_found_for_every_verb(client, alice, bob):
    task_id = create(client, alice)["id"]
    attempts = [
        client.get(f"/tasks/{task_id}", headers=bob),
        client.patch(f"/tasks/{task_id}", json={"title": "x"}, headers=bob),
        client.post(f"/tasks/{task_id}/complete", headers=bob),
        client.post(f"/tasks/{task_id}/reopen", headers=bob),
        client.post(
            f"/tasks/{task_id}/reminders", json={"at": "2030-01-01T00:00:00Z"}, headers=bob
        ),
        client.delete(f"/tasks/{task_id}", headers=bob),
    ]
    assert [r.status_code for r in attempts] == [404] * len(attempts)
    assert all(r.json["error"]["code"] == "not_found" for r in attempts)
    assert client.get(f"/tasks/{task_id}", headers=alice).json["title"] == "t"
    assert client.get("/tasks", headers=bob).json["items"] == []


def test_update_changes_only_given_fields(client, alice):
    task = create(client, alice, **RENT)
    response = client.patch(
        f"/tasks/{task['id']}", json={"priority": "urgent", "tags": ["a", "b"]}, headers=alice
    )
    assert response.status_code == 200
    assert response.json["priority"] == "urgent"
    assert response.json["tags"] == ["a", "b"]
    assert response.json["title"] == "Pay rent"
    cleared = client.patch(f"/tasks/{task['id']}", json={"due_at": None}, headers=alice)
    assert cleared.json["due_at"] is None


def test_a_patch_that_changes_nothing_emits_nothing_and_keeps_the_etag(client, alice):
    """`PATCH {}` emitted a task.updated with no changes and bumped updated_at."""
    task = create(client, alice, **RENT)
    before = client.get(f"/tasks/{task['id']}", headers=alice)
    for same in ({}, {"title": task["title"], "tags": task["tags"]},
                 {"due_at": task["due_at"].replace("Z", "+00:00")}):  # fmt: skip
        answer = client.patch(f"/tasks/{task['id']}", json=same, headers=alice)
        assert answer.status_code == 200, answer.json
        assert answer.json["updated_at"] == task["updated_at"]
        assert answer.headers["ETag"] == before.headers["ETag"]
    assert events.TASK_UPDATED not in outbox_types()


def test_complete_twice_changes_nothing_and_reopen_reopens(client, alice):
    task_id = create(client, alice)["id"]
    first = client.post(f"/tasks/{task_id}/complete", headers=alice).json
    second = client.post(f"/tasks/{task_id}/complete", headers=alice).json
    assert first["status"] == second["status"] == "done"
    assert first["completed_at"] == second["completed_at"]
    assert outbox_types().count(events.TASK_COMPLETED) == 1
    reopened = client.post(f"/tasks/{task_id}/reopen", headers=alice).json
    assert reopened["status"] == "open" and reopened["completed_at"] is None


def test_delete_removes_task_and_reports_it(client, alice):
    task_id = create(client, alice, reminders=[{"at": "2030-01-01T00:00:00Z"}])["id"]
    response = client.delete(f"/tasks/{task_id}", headers=alice)
    assert response.status_code == 204 and response.data == b""
    assert client.get(f"/tasks/{task_id}", headers=alice).status_code == 404
    assert outbox_types()[-1] == events.TASK_DELETED


def test_filters(client, alice):
    create(client, alice, title="Buy milk", tags=["shop"], priority="low")
    create(client, alice, title="Pay rent", tags=["home"], due_at="2026-12-01T09:00:00Z")
    done = create(client, alice, title="Call mum", description="about the milk order")
    client.post(f"/tasks/{done['id']}/complete", headers=alice)

    def titles(query: str) -> list[str]:
        response = client.get(f"/tasks?{query}", headers=alice)
        assert response.status_code == 200, response.json
        return sorted(t["title"] for t in response.json["items"])

    assert titles("tag=shop") == ["Buy milk"]
    assert titles("status=done") == ["Call mum"]
    assert titles("priority=low") == ["Buy milk"]
    assert titles("q=MILK") == ["Buy milk", "Call mum"]
    assert titles("due_before=2026-12-02T00:00:00Z") == ["Pay rent"]
    assert titles("due_after=2026-12-02T00:00:00Z") == []
    assert titles("q=%25") == []  # a LIKE wildcard is searched literally


def test_a_search_ignores_case_beyond_ascii(client, alice):
    """SQLite's own lower() folds A-Z alone: `épée` did not find "Épée" on the local stack."""
    create(client, alice, title="Épée lesson")
    create(client, alice, title="Straße fegen", description="ΣΟΦΙΑ")

    def titles(q: str) -> list[str]:
        response = client.get("/tasks", query_string={"q": q}, headers=alice)
        assert response.status_code == 200, response.json
        return sorted(t["title"] for t in response.json["items"])

    assert titles("épée") == titles("ÉPÉE") == ["Épée lesson"]
    assert titles("STRASSE") == []  # folded case by case, not casefolded (ß is not ss)
    assert titles("STRAẞE") == titles("straße") == ["Straße fegen"]
    assert titles("σοφια") == ["Straße fegen"]


@pytest.mark.parametrize(
    ("sort", "order"),
    [("title", "asc"), ("title", "desc"), ("due_at", "asc"), ("due_at", "desc"),
     ("priority", "desc"), ("created_at", "asc")],
)  # fmt: skip
def test_cursor_pages_cover_every_task_once_in_order(client, alice, sort, order):
    priorities = ["none", "low", "medium", "high", "urgent"]
    for i in range(11):
        due = None if i % 3 == 0 else f"2026-12-{1 + i % 4:02d}T09:00:00Z"
        create(client, alice, title=f"task {i % 5}", due_at=due, priority=priorities[i % 5])
    everything = client.get(f"/tasks?sort={sort}&order={order}&limit=200", headers=alice).json
    seen, cursor = [], None
    while True:
        query = f"sort={sort}&order={order}&limit=4" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/tasks?{query}", headers=alice).json
        seen += [t["id"] for t in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [t["id"] for t in everything["items"]]
    assert len(set(seen)) == 11
    if sort == "due_at":  # tasks without a due date come last in both orders, by id
        dues = [t["due_at"] for t in everything["items"]]
        assert dues[-4:] == [None] * 4 and dues[:-4] == sorted(dues[:-4], reverse=order == "desc")
        undated = [t["id"] for t in everything["items"][-4:]]
        assert undated == sorted(undated, reverse=order == "desc")


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"data": "{not json", "content_type": "application/json"}, 400, "bad_request"),
        ({"data": "title=x", "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"json": {"title": ""}}, 422, "validation_failed"),
        ({"json": {"title": "x", "priority": "asap"}}, 422, "validation_failed"),
        ({"json": {"title": "x", "due_at": "2026-12-01T09:00:00"}}, 422, "validation_failed"),
        ({"json": {"title": "x", "colour": "red"}}, 422, "validation_failed"),
        ({"json": {"title": "x", "reminders": [{"before_due": "PT5M"}]}}, 422, "validation_failed"),
        ({"json": {"title": "x", "recurrence": {"rrule": "FREQ=DAILY"}}}, 422, "validation_failed"),
        ({"json": ["a list"]}, 422, "validation_failed"),
        ({"data": "x" * 2_000_000, "content_type": "application/json"}, 413, "payload_too_large"),
    ],
)
def test_bad_input_gets_json_error_and_changes_nothing(client, alice, request_kwargs, status, code):
    response = client.post("/tasks", headers=alice, **request_kwargs)
    assert response.status_code == status
    assert response.json["error"]["code"] == code
    assert response.json["error"]["message"]
    with db.session_scope() as session:
        assert session.exec(select(Task)).all() == []
    assert outbox_types() == []


def test_bad_query_parameters_are_422(client, alice):
    for query in ("limit=0", "limit=10000", "sort=colour", "status=maybe", "due_before=tomorrow"):
        response = client.get(f"/tasks?{query}", headers=alice)
        assert response.status_code == 422, query
    response = client.get("/tasks?cursor=garbage", headers=alice)
    assert response.status_code == 400
    assert response.json["error"]["code"] == "bad_request"


def test_auth_is_required(client, env):
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
        response = client.get("/tasks", headers=headers)
        assert response.status_code == 401
        assert response.json["error"]["code"] == "unauthorized"


def test_unknown_route_and_method(client, alice):
    assert client.get("/nope", headers=alice).status_code == 404
    response = client.put("/tasks", headers=alice)
    assert response.status_code == 405
    assert "POST" in response.headers["Allow"]
    assert client.get("/healthz").json == {"status": "ok"}


def test_reminders_can_be_added_and_are_capped(client, alice):
    task = create(client, alice, due_at="2030-01-01T09:00:00Z")
    response = client.post(
        f"/tasks/{task['id']}/reminders", json={"before_due": "PT15M"}, headers=alice
    )
    assert response.status_code == 201
    assert response.json["fire_at"] == "2030-01-01T08:45:00+00:00"
    for _ in range(9):
        client.post(
            f"/tasks/{task['id']}/reminders", json={"at": "2030-01-01T08:00:00Z"}, headers=alice
        )
    over = client.post(
        f"/tasks/{task['id']}/reminders", json={"at": "2030-01-01T08:00:00Z"}, headers=alice
    )
    assert over.status_code == 422
    assert len(client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"]) == 10


def test_moving_due_moves_relative_reminders(client, alice):
    task = create(client, alice, due_at="2030-01-01T09:00:00Z", reminders=[{"before_due": "PT1H"}])
    moved = client.patch(
        f"/tasks/{task['id']}", json={"due_at": "2030-01-02T09:00:00Z"}, headers=alice
    )
    assert moved.json["reminders"][0]["fire_at"] == "2030-01-02T08:00:00+00:00"


def test_a_pattern_refusal_says_what_is_wanted_not_the_regex(client, alice):
    """pydantic's message showed the user the pattern: "String should match pattern
    '[^ \\t\\n\\r\\f\\v]'" for a blank title or tag."""
    refusals = [
        ("/tasks", "post", {"title": "   "}, "title", "must not be blank"),
        ("/tasks", "post", {"title": "t", "tags": [" "]}, "tags.0", "must not be blank"),
        ("/preferences", "patch", {"quiet_hours": {"start": "25:00", "end": "07:00"}},
         "quiet_hours.start", "must be a time of day as HH:MM, from 00:00 to 23:59"),
    ]  # fmt: skip
    for path, method, body, field, words in refusals:
        response = getattr(client, method)(path, json=body, headers=alice)
        assert response.status_code == 422, response.json
        assert response.json["error"]["details"] == [{"field": field, "message": words}]


def test_text_in_either_unicode_form_is_one_tag_and_found_in_the_other(client, alice):
    """`café` typed as é on one device and as e with a combining accent on another (macOS
    often gives that): two tags on one task, and a filter or search in one form missed
    the other (an audit, 2026-12-07). Stored, and compared, in NFC."""
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    made = client.post("/tasks", json={"title": f"{nfd} run", "tags": [nfc, nfd]}, headers=alice)
    assert made.status_code == 201, made.json
    assert made.json["tags"] == [nfc] and made.json["title"] == f"{nfc} run"
    for query in ({"tag": nfc}, {"tag": nfd}, {"q": nfc}, {"q": nfd}):
        found = client.get("/tasks", query_string=query, headers=alice)
        assert [task["id"] for task in found.json["items"]] == [made.json["id"]], query
