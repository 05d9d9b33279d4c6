"""Crafted input that once made the functions answer 500 (issue 10, item 11), posted
through the real functions-framework app on SQLite and PostgreSQL: each is a 4xx in
the JSON error shape, changes nothing, and logs nothing of the token."""

from __future__ import annotations

import base64
import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest

from duetide.config import get_settings
from duetide.events import signing
from tests.integration.conftest import function_client
from tests.integration.test_limits import refused, rows

SECRET = "integration-test-secret-of-enough-length"  # the `env` fixture's


def cursor(sort: str, value: Any, order: str = "asc") -> str:
    raw = json.dumps({"s": sort, "o": order, "v": value, "id": "x"}).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "sort, value",
    [
        pytest.param("due_at", "0001-01-01T00:00:00+14:00", id="before-year-1-in-utc"),
        pytest.param("created_at", "9999-12-31T23:00:00-14:00", id="after-year-9999-in-utc"),
        pytest.param("due_at", "0001-01-01T00:00:00+00:00", id="year-1"),
        pytest.param("priority", 2**70, id="priority-2**70"),
        pytest.param("priority", -(2**70), id="priority--2**70"),
        pytest.param("priority", 2**31, id="priority-2**31"),
        pytest.param("title", "a\ud800", id="lone-surrogate-title"),
        pytest.param("title", "a\x00", id="nul-title"),
        pytest.param("title", "x" * 501, id="title-longer-than-a-title"),
    ],
)
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_a_cursor_out_of_range_is_400(client, alice, sort, value, order):
    client.post("/tasks", json={"title": "t", "due_at": "2031-01-01T00:00:00Z"}, headers=alice)
    url = f"/tasks?sort={sort}&order={order}&cursor={cursor(sort, value, order)}"
    refused(client.get(url, headers=alice), 400, "bad_request")


def test_a_cursor_with_a_lone_surrogate_id_is_400(client, alice):
    raw = json.dumps({"s": "created_at", "o": "desc", "v": None, "id": "\ud800"}).encode()
    forged = base64.urlsafe_b64encode(raw).decode()
    refused(client.get(f"/tasks?cursor={forged}", headers=alice), 400, "bad_request")


def test_cursors_at_the_edges_of_what_is_stored_still_page(client, alice):
    for due in ("1900-01-01T00:00:00Z", "8999-12-31T23:59:59+14:00"):
        client.post("/tasks", json={"title": "t", "due_at": due}, headers=alice)
    first = client.get("/tasks?sort=due_at&limit=1", headers=alice).json
    second = client.get(f"/tasks?sort=due_at&limit=1&cursor={first['next_cursor']}", headers=alice)
    assert second.status_code == 200, second.json
    assert [t["due_at"][:4] for t in first["items"] + second.json["items"]] == ["1900", "8999"]


def test_a_cursor_at_an_occurrence_in_9999_still_pages(client, alice):
    """A series goes on past 8999 (what a client may give): its occurrence's cursor was a 400."""
    recurrence = {"rrule": "FREQ=YEARLY;INTERVAL=1000", "timezone": "UTC"}
    task = {"title": "s", "due_at": "8999-06-01T09:00:00Z", "recurrence": recurrence}
    series_id = client.post("/tasks", json=task, headers=alice).json["series_id"]
    assert client.post(f"/series/{series_id}/skip", headers=alice).status_code == 200
    client.post("/tasks", json={"title": "t", "due_at": "2030-01-01T00:00:00Z"}, headers=alice)
    seen, url = [], "/tasks?sort=due_at&order=desc&limit=1"
    while url:
        page = client.get(url, headers=alice)
        assert page.status_code == 200, page.json
        seen += [t["due_at"][:4] for t in page.json["items"]]
        following = page.json["next_cursor"]
        url = f"/tasks?sort=due_at&order=desc&limit=1&cursor={following}" if following else ""
    assert seen == ["9999", "2030"]


def structured_event(event_id: str) -> bytes:
    event = {
        "specversion": "1.0", "id": event_id, "source": "/test",
        "type": "dev.duetide.task.create.v1", "data": {"task": {"title": "t"}},
    }  # fmt: skip
    # json.dumps escapes the surrogate as \ud800: the exact bytes a client can send.
    return json.dumps(event).encode()


@pytest.mark.parametrize(
    "field, value",
    [("id", "\ud800"), ("source", "/\udfff"), ("type", "x\ud83d"), ("subject", "\ud800")],
)
def test_a_lone_surrogate_in_a_structured_command_is_400(client, alice, field, value):
    event = json.loads(structured_event("c-1"))
    event[field] = value
    before = rows()
    response = client.post(
        "/commands",
        data=json.dumps(event).encode(),
        headers={**alice, "Content-Type": "application/cloudevents+json"},
    )
    refused(response, 400, "invalid_cloudevent")
    assert rows() == before


@pytest.mark.parametrize("function", ["recurrence", "notify", "activity"])
def test_a_lone_surrogate_in_a_structured_event_is_400_at_every_sink(env, function):
    event = {
        "specversion": "1.0", "id": "\ud800", "source": "/test",
        "type": "dev.duetide.task.completed.v1", "data": {"task_id": "\udc00"},
    }  # fmt: skip
    sink = function_client(function)
    response = sink.post(
        "/", data=json.dumps(event), headers={"Content-Type": "application/cloudevents+json"}
    )
    refused(response, 400, "invalid_cloudevent")


def test_a_lone_surrogate_in_event_data_is_400(client, alice):
    event = json.loads(structured_event("c-2"))
    event["data"] = {"task": {"title": "a\ud800"}}
    response = client.post(
        "/commands",
        data=json.dumps(event).encode(),
        headers={**alice, "Content-Type": "application/cloudevents+json"},
    )
    refused(response, 400, "invalid_cloudevent")


def signed(sub: Any) -> str:
    now = datetime.now(UTC)
    claims = {"sub": sub, "iat": now, "exp": now + timedelta(hours=1)}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "sub",
    [
        pytest.param("a\x00b", id="nul"),
        pytest.param("a\ud800", id="lone-surrogate"),
        pytest.param("x" * 256, id="256-chars"),
        pytest.param("", id="empty"),
        pytest.param(7, id="number"),
        pytest.param("a\x1fb", id="control"),
    ],
)
@pytest.mark.parametrize(
    "method, path", [("GET", "/tasks"), ("POST", "/tasks"), ("GET", "/preferences")]
)
def test_a_validly_signed_token_with_an_unusable_sub_is_401(client, method, path, sub, caplog):
    token = signed(sub)
    before = rows()
    with caplog.at_level(logging.DEBUG):
        response = client.open(
            path, method=method, json={"title": "t"}, headers={"Authorization": f"Bearer {token}"}
        )
    refused(response, 401, "unauthorized")
    assert rows() == before
    logged = caplog.text + json.dumps([r.__dict__ for r in caplog.records], default=str)
    assert token not in logged and token.split(".")[1] not in logged


def test_a_command_with_a_token_with_an_unusable_sub_is_401(client):
    token = signed("a\x00b")
    response = client.post(
        "/commands",
        data=structured_event("c-3"),
        headers={
            "Content-Type": "application/cloudevents+json",
            "Authorization": f"Bearer {token}",
        },
    )
    refused(response, 401, "unauthorized")


@pytest.mark.parametrize("user", ["a\x07b", "u" * 256, ""])
def test_a_signed_command_for_an_unusable_user_is_400(client, user):
    event = json.loads(structured_event("c-4"))
    key = get_settings().command_keys()["local"][0]
    content = signing.signed_content(
        event_id="c-4", source="/test", type=event["type"], user=user, system="local",
        data=event["data"],
    )  # fmt: skip
    event |= {"duetideuser": user, "duetidesystem": "local"}
    event["duetidesig"] = signing.signature(key, content)
    response = client.post(
        "/commands",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/cloudevents+json"},
    )
    refused(response, 400, "invalid_cloudevent")


def test_a_sub_of_255_printable_characters_is_a_user(client):
    token = signed("u" * 255)
    response = client.get("/tasks", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.json


def test_a_token_over_8_kb_is_401(client):
    token = signed("alice" + " " * 9000)
    refused(client.get("/tasks", headers={"Authorization": f"Bearer {token}"}), 401, "unauthorized")


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"title": "t", "tags": ["\\ud800"]}', "tags.0"),
        ('{"title": "t", "description": "a\\udfffb"}', "description"),
        ('{"title": "t", "\\ud800": 1}', None),
    ],
)
def test_a_lone_surrogate_in_a_json_body_is_422(client, alice, body, field):
    before = rows()
    response = client.post(
        "/tasks", data=body.encode(), headers={**alice, "Content-Type": "application/json"}
    )
    refused(response, 422, "validation_failed", field)
    assert rows() == before


HUGE = "9" * 5000  # past Python's 4,300-digit limit for int(str): json.loads raises ValueError


def test_an_integer_past_the_digit_limit_in_a_json_body_is_400(client, alice):
    before = rows()
    body = f'{{"title": "t", "priority": {HUGE}}}'.encode()
    response = client.post(
        "/tasks", data=body, headers={**alice, "Content-Type": "application/json"}
    )
    refused(response, 400, "bad_request")
    assert rows() == before


def test_an_integer_past_the_digit_limit_in_a_binary_command_is_400(client, alice):
    before = rows()
    headers = {
        **alice, "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "c-huge",
        "ce-source": "/test", "ce-type": "dev.duetide.task.create.v1",
    }  # fmt: skip
    body = f'{{"task": {{"title": "t", "priority": {HUGE}}}}}'.encode()
    refused(client.post("/commands", data=body, headers=headers), 400, "invalid_cloudevent")
    assert rows() == before


@pytest.mark.parametrize("function", ["recurrence", "notify", "activity", "sweep"])
def test_an_integer_past_the_digit_limit_in_event_data_is_400_at_every_sink(env, function):
    headers = {
        "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "e-huge",
        "ce-source": "/test", "ce-type": "dev.duetide.task.completed.v1",
    }  # fmt: skip
    body = f'{{"task_id": {HUGE}}}'.encode()
    response = function_client(function).post("/", data=body, headers=headers)
    refused(response, 400, "invalid_cloudevent")


@pytest.mark.parametrize("path", ["/tasks//", "/tasks//x", "/tasks/x//reminders", "/healthz//"])
def test_a_doubled_slash_is_404_in_the_error_shape(client, alice, path):
    refused(client.get(path, headers=alice), 404, "not_found")


@pytest.mark.parametrize("coding", ["gzip", "deflate, gzip", "br"])
def test_a_body_in_a_content_coding_is_415_naming_what_is_taken(client, alice, coding):
    """Read as is, a gzip body was "not valid JSON" (400), and its size bound would not
    bound what it unpacks to. RFC 7694: 415 with Accept-Encoding."""
    body = gzip.compress(json.dumps({"title": "t"}).encode())
    headers = {**alice, "Content-Type": "application/json", "Content-Encoding": coding}
    before = rows()
    response = client.post("/tasks", data=body, headers=headers)
    refused(response, 415, "unsupported_media_type")
    assert response.headers["Accept-Encoding"] == "identity"
    assert rows() == before
    event = {
        "Content-Type": "application/json", "Content-Encoding": coding, "ce-specversion": "1.0",
        "ce-id": "e-gz", "ce-source": "/test", "ce-type": "dev.duetide.task.completed.v1",
    }  # fmt: skip
    at_sink = function_client("recurrence").post("/", data=body, headers=event)
    refused(at_sink, 415, "unsupported_media_type")


def test_an_identity_content_coding_is_the_body_as_is(client, alice):
    headers = {**alice, "Content-Encoding": "Identity"}
    assert client.post("/tasks", json={"title": "t"}, headers=headers).status_code == 201


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_number_that_is_not_finite_is_422_in_a_body(client, alice, constant):
    """json.loads reads these as floats; they are no JSON, and PostgreSQL's json refuses them."""
    before = rows()
    body = f'{{"title": "t", "reminders": [{{"at": {constant}}}]}}'.encode()
    headers = {**alice, "Content-Type": "application/json"}
    refused(
        client.post("/tasks", data=body, headers=headers), 422, "validation_failed", "reminders"
    )
    assert rows() == before


@pytest.mark.parametrize("structured", [False, True])
@pytest.mark.parametrize("function", ["recurrence", "notify", "activity", "sweep"])
def test_a_number_that_is_not_finite_in_event_data_is_400_at_every_sink(env, function, structured):
    data = '{"task_id": "t-1", "owner": "alice", "title": "x", "status": "open", "n": NaN}'
    if structured:
        headers = {"Content-Type": "application/cloudevents+json"}
        body = (
            '{"specversion": "1.0", "id": "e-nan", "source": "/test", '
            f'"type": "dev.duetide.task.updated.v1", "data": {data}}}'
        ).encode()
    else:
        headers = {
            "Content-Type": "application/json", "ce-specversion": "1.0", "ce-id": "e-nan",
            "ce-source": "/test", "ce-type": "dev.duetide.task.updated.v1",
        }  # fmt: skip
        body = data.encode()
    before = rows()
    response = function_client(function).post("/", data=body, headers=headers)
    refused(response, 400, "invalid_cloudevent")
    assert rows() == before
