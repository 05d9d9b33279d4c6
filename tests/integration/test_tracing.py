"""One trace from the API call through the outbox and Kafka into the functions that react
to it (W3C Trace Context; the CloudEvents `traceparent` extension), and JSON log lines
whose `event`, ids and `trace_id` are top-level fields.

Real parts: the functions' apps over WSGI, the database over a real connection, the
embedded broker over the Kafka protocol, and the record handed on as a KafkaSource
delivers it (binary mode, `duetide_tools.local.eventing.record_to_event`).
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from cloudevents.conversion import to_binary
from sqlmodel import select

from duetide import events, tracecontext
from duetide.logs import JsonFormatter
from duetide.storage import db, outbox
from duetide.storage.models import Outbox, utcnow
from duetide_tools.local.broker import ensure_topics
from duetide_tools.local.eventing import record_to_event
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import function_client, use_broker
from tests.integration.test_outbox import consume
from tests.support import json_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
CALLER = f"00-{TRACE}-{CALLER_SPAN}-01"


class Lines:
    """The `duetide` loggers' lines as the functions write them, parsed back from JSON."""

    def __init__(self) -> None:
        self.stream = io.StringIO()

    def all(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines()]

    def of_trace(self, trace_id: str) -> list[dict[str, Any]]:
        return [line for line in self.all() if line.get("trace_id") == trace_id]


@pytest.fixture
def logged(env: str) -> Iterator[Lines]:
    lines = Lines()
    handler = logging.StreamHandler(lines.stream)
    handler.setFormatter(JsonFormatter("test"))
    logger = logging.getLogger("duetide")
    before = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)


@pytest.fixture
def topics(broker, unique_topic, monkeypatch, env) -> dict[str, str]:
    names = {"tasks": unique_topic("tasks"), "reminders": unique_topic("reminders")}
    ensure_topics(broker.bootstrap_servers, [TopicSpec(n, partitions=1) for n in names.values()])
    monkeypatch.setenv("DUETIDE_TOPIC_TASK_EVENTS", names["tasks"])
    monkeypatch.setenv("DUETIDE_TOPIC_REMINDERS", names["reminders"])
    return names


def rows(event_type: str, key: str | None = None) -> list[Outbox]:
    with db.session_scope(read_only=True) as session:
        query = select(Outbox).where(Outbox.type == event_type)
        if key is not None:
            query = query.where(Outbox.key == key)
        return list(session.exec(query).all())


def served(response: Any) -> tracecontext.Parent:
    """The span that answered, from its `traceresponse` header."""
    parent = tracecontext.parse(response.headers.get(tracecontext.RESPONSE_HEADER))
    assert parent is not None, dict(response.headers)
    return parent


def test_a_callers_trace_follows_the_change_through_kafka_into_recurrence(
    client, alice, broker, topics, monkeypatch, logged
):
    use_broker(monkeypatch, broker.bootstrap_servers)
    recurrence = function_client("recurrence")
    daily = {"title": "Water plants", "due_at": "2026-03-28T09:00:00+01:00",
             "recurrence": {"rrule": "FREQ=DAILY"}}  # fmt: skip
    task = client.post("/tasks", json=daily, headers=alice).json
    completed = client.post(
        f"/tasks/{task['id']}/complete", headers={**alice, "traceparent": CALLER}
    )
    assert completed.status_code == 200
    api_span = served(completed)
    assert api_span.trace_id == TRACE and api_span.span_id != CALLER_SPAN

    # The outbox row stores the API span's traceparent; the Kafka record carries it.
    [row] = rows(events.TASK_COMPLETED, task["id"])
    assert row.traceparent == f"00-{TRACE}-{api_span.span_id}-01"
    records = consume(broker.bootstrap_servers, topics["tasks"], expected=2)
    [record] = [r for r in records if dict(r.headers)["ce_type"] == events.TASK_COMPLETED.encode()]
    assert dict(record.headers)["ce_traceparent"] == row.traceparent.encode()

    # Delivered as the KafkaSource would: binary mode, the extension as ce-traceparent.
    headers, body = to_binary(record_to_event(record, "duetide-recurrence"), lambda data: data)
    assert headers["ce-traceparent"] == row.traceparent
    answer = recurrence.post("/", headers=headers, data=body)
    assert json_of(answer)["status"] == "processed"
    consumer_span = served(answer)
    assert consumer_span.trace_id == TRACE

    # Its log lines carry the trace, the event and the ids as top-level fields.
    lines = logged.of_trace(TRACE)
    requests = [
        (line["path"], line["span_id"]) for line in lines if line["event"] == "http.request"
    ]
    assert requests == [
        (f"/tasks/{task['id']}/complete", api_span.span_id),
        ("/", consumer_span.span_id),
    ]
    by_event = {line["event"]: line for line in lines}
    handled = by_event["event.handled"]
    assert handled["type"] == events.TASK_COMPLETED and handled["event_id"] == row.id
    assert handled["span_id"] == consumer_span.span_id
    made = by_event["occurrence.materialised"]
    assert made["series_id"] == task["series_id"] and made["span_id"] == consumer_span.span_id

    # The next occurrence's task.created goes on in the same trace, from recurrence's span.
    [following] = rows(events.TASK_CREATED, made["task_id"])
    assert following.traceparent == f"00-{TRACE}-{consumer_span.span_id}-01"
    assert all("Water plants" not in json.dumps(line) for line in logged.all())


@pytest.mark.parametrize(
    "given",
    [
        [CALLER.upper()],
        [f"ff-{TRACE}-{CALLER_SPAN}-01"],
        [f"00-{'0' * 32}-{CALLER_SPAN}-01"],
        [f"00-{TRACE}-{CALLER_SPAN}-01-more"],
        [CALLER, f"00-{TRACE}-{'1' * 16}-01"],  # more than one: invalid
    ],
)
def test_an_invalid_traceparent_is_ignored_and_a_new_trace_started(client, alice, logged, given):
    headers = [*alice.items(), *(("traceparent", value) for value in given)]
    response = client.post("/tasks", json={"title": "x"}, headers=headers)
    assert response.status_code == 201
    span = served(response)
    assert span.trace_id != TRACE
    [row] = rows(events.TASK_CREATED)
    assert row.traceparent == f"00-{span.trace_id}-{span.span_id}-01"
    assert [line["event"] for line in logged.of_trace(span.trace_id)] == ["http.request"]


def test_a_request_without_traceparent_starts_a_trace_of_its_own(client, alice, logged):
    first = served(client.post("/tasks", json={"title": "a"}, headers=alice))
    second = served(client.get("/tasks", headers=alice))
    assert first.trace_id != second.trace_id
    errors = client.get("/tasks/nope", headers=alice)  # an error answer names its trace too
    assert errors.status_code == 404
    assert served(errors).trace_id not in (first.trace_id, second.trace_id)


def test_the_sweeps_trace_goes_with_reminder_due_into_notify(client, alice, logged):
    at = (utcnow() - timedelta(seconds=1)).isoformat()
    task = client.post("/tasks", json={"title": "t", "reminders": [{"at": at}]}, headers=alice)
    ping = events.build(
        event_id=str(uuid.uuid4()), type=events.PING, source="/ping", subject="", data={}
    )
    ping["traceparent"] = CALLER
    headers, body = events.to_http(ping)
    assert function_client("sweep").post("/", headers=headers, data=body).status_code == 200
    [due] = rows(events.REMINDER_DUE, task.json["id"])
    assert due.traceparent is not None and due.traceparent.startswith(f"00-{TRACE}-")

    headers, body = events.to_http(outbox.to_cloudevent(due))
    answer = function_client("notify").post("/", headers=headers, data=body)
    assert json_of(answer)["status"] == "processed"
    notify_span = served(answer)
    by_event = {line["event"]: line for line in logged.of_trace(TRACE)}
    assert by_event["sweep.claimed"]["fired"] == 1
    delivered = by_event["notification.delivered"]
    assert delivered["span_id"] == notify_span.span_id
    assert delivered["reminder_id"] == due.data["reminder_id"]
    attempted = by_event["notification.attempted"]
    assert (attempted["channel"], attempted["outcome"]) == ("log", "delivered")


def test_a_command_with_a_traceparent_extension_continues_that_trace(client, alice, logged):
    command = events.build(
        event_id="order-1", type=events.CMD_TASK_CREATE, source="/crm", subject="",
        data={"task": {"title": "Call back"}},
    )  # fmt: skip
    command["traceparent"] = CALLER
    headers, body = events.to_http(command)
    answer = client.post("/commands", headers={**headers, **alice}, data=body)
    assert answer.status_code == 201, answer.json
    span = served(answer)
    assert span.trace_id == TRACE
    [row] = rows(events.TASK_CREATED)
    assert row.traceparent == f"00-{TRACE}-{span.span_id}-01"
    handled = next(line for line in logged.of_trace(TRACE) if line["event"] == "command.handled")
    assert (handled["event_id"], handled["status"]) == ("order-1", "processed")


def test_every_line_the_functions_write_is_json_with_a_top_level_event(client, alice, logged):
    task = client.post("/tasks", json={"title": "x"}, headers=alice).json
    client.post(f"/tasks/{task['id']}/complete", headers=alice)
    client.get("/tasks/unknown", headers=alice)
    lines = logged.all()
    assert lines and all(isinstance(line.get("event"), str) for line in lines)
    assert all(line["trace_id"] and line["span_id"] for line in lines)
    assert all("{" not in line["message"] for line in lines)  # no JSON inside the message
