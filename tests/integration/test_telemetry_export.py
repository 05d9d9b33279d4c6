"""OpenTelemetry export (the `otel` extra) to a fake collector on loopback that speaks
OTLP/HTTP: protobuf requests to /v1/traces and /v1/metrics, decoded with the protocol's
own message types. The spans carry the ids the logs and the events carry."""

from __future__ import annotations

import gzip
import os
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from kafka import KafkaProducer

from duetide import events, telemetry, tracecontext
from duetide.storage import outbox
from duetide.storage.models import utcnow
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import ensure_topics
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import function_client, use_broker
from tests.integration.test_tracing import CALLER, CALLER_SPAN, TRACE, rows, served
from tests.support import json_of, served_process

pytest.importorskip("opentelemetry.sdk")
trace_pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
metrics_pb = pytest.importorskip("opentelemetry.proto.collector.metrics.v1.metrics_service_pb2")


class Collector:
    """What the fake collector received, by path, decoded; `wait` for a condition on it."""

    def __init__(self) -> None:
        self.received: dict[str, list[Any]] = {"/v1/traces": [], "/v1/metrics": []}
        self.changed = threading.Condition()

    def add(self, path: str, message: Any) -> None:
        with self.changed:
            self.received[path].append(message)
            self.changed.notify_all()

    def wait(self, found: Any, timeout_s: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout_s
        with self.changed:
            while not (result := found()):
                remaining = deadline - time.monotonic()
                assert remaining > 0, "the collector did not receive it"
                self.changed.wait(remaining)
        return result

    def spans(self) -> list[Any]:
        return [
            span
            for request in self.received["/v1/traces"]
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        found = []
        for request in self.received["/v1/metrics"]:
            for resource in request.resource_metrics:
                for scope in resource.scope_metrics:
                    for metric in scope.metrics:
                        if metric.name != name:
                            continue
                        data = getattr(metric, metric.WhichOneof("data"))
                        for point in data.data_points:
                            labels = {a.key: _value(a.value) for a in point.attributes}
                            found.append((labels, point))
        return found


def _value(any_value: Any) -> Any:
    return getattr(any_value, any_value.WhichOneof("value"))


@pytest.fixture
def collector(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    received = Collector()
    messages = {
        "/v1/traces": (trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse),
        "/v1/metrics": (
            metrics_pb.ExportMetricsServiceRequest,
            metrics_pb.ExportMetricsServiceResponse,
        ),
    }

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path not in messages or "protobuf" not in self.headers["Content-Type"]:
                self.send_response(404)
                self.end_headers()
                return
            request, response = messages[self.path]
            received.add(self.path, request.FromString(body))
            answer = response().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # flushed by the test
    telemetry.shutdown()
    try:
        yield received
    finally:
        telemetry.shutdown()
        server.shutdown()
        server.server_close()


def test_a_request_exports_its_span_with_the_ids_it_logged_and_answered(client, alice, collector):
    assert client.get("/healthz").status_code == 200  # a probe's: not exported (below)
    response = client.post("/tasks", json={"title": "x"}, headers={**alice, "traceparent": CALLER})
    assert response.status_code == 201
    answered = served(response)
    telemetry.flush()
    [span] = collector.wait(lambda: [s for s in collector.spans() if s.trace_id.hex() == TRACE])
    assert span.span_id.hex() == answered.span_id
    assert span.parent_span_id.hex() == CALLER_SPAN
    assert span.name == "POST" and span.kind == span.SPAN_KIND_SERVER
    attributes = {a.key: _value(a.value) for a in span.attributes}
    assert attributes["http.response.status_code"] == 201
    [row] = rows(events.TASK_CREATED)  # the event names the exported span as its parent
    assert row.traceparent == f"00-{TRACE}-{span.span_id.hex()}-01"
    resource = {a.key: _value(a.value) for a in collector.received["/v1/traces"][0]
                .resource_spans[0].resource.attributes}  # fmt: skip
    assert resource["service.name"] == "duetide-tasks"
    assert [s.name for s in collector.spans()] == ["POST"]  # not the probe's GET


def test_deliveries_lateness_events_and_the_backlog_are_exported_as_metrics(
    client, alice, collector
):
    at = (utcnow() - timedelta(seconds=2)).isoformat()
    client.post("/tasks", json={"title": "t", "reminders": [{"at": at}]}, headers=alice)
    ping = events.build(event_id="p1", type=events.PING, source="/ping", subject="", data={})
    headers, body = events.to_http(ping)
    assert function_client("sweep").post("/", headers=headers, data=body).status_code == 200
    [due] = rows(events.REMINDER_DUE)
    headers, body = events.to_http(outbox.to_cloudevent(due))
    answer = function_client("notify").post("/", headers=headers, data=body)
    assert json_of(answer)["status"] == "processed"
    consumer = served(answer)
    stray = events.build(event_id="s1", type="x" * 300, source="/x", subject="", data={})
    headers, body = events.to_http(stray)  # the sender's text: not a metric label
    assert json_of(function_client("notify").post("/", headers=headers, data=body))["status"] == (
        "ignored"
    )
    telemetry.flush()

    deliveries = collector.wait(lambda: collector.points("duetide.notifications"))
    assert [(labels, p.as_int) for labels, p in deliveries] == [
        ({"channel": "log", "outcome": "delivered"}, 1)
    ]
    [(labels, lateness)] = collector.points("duetide.reminder.lateness")
    assert labels == {"status": "processed"} and lateness.count == 1 and lateness.sum >= 2
    handled = {(lb["type"], lb["status"]): p.as_int for lb, p in collector.points("duetide.events")}
    assert handled == {
        (events.PING, "processed"): 1,
        (events.REMINDER_DUE, "processed"): 1,
        ("other", "ignored"): 1,
    }
    # Nothing was published (no broker here): both events wait in the outbox.
    [(_, pending)] = collector.points("duetide.outbox.pending")
    assert pending.as_int == 2
    spans = collector.wait(
        lambda: [s for s in collector.spans() if s.span_id.hex() == consumer.span_id]
    )
    assert spans[0].name == f"process {events.REMINDER_DUE}"
    assert spans[0].kind == spans[0].SPAN_KIND_CONSUMER
    sweep_span = tracecontext.parse(due.traceparent)
    assert sweep_span is not None and spans[0].parent_span_id.hex() == sweep_span.span_id


def test_the_sweep_exports_how_many_dead_letters_the_topic_holds(
    collector, broker, unique_topic, monkeypatch
):
    topic = unique_topic("dead")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(topic)])
    monkeypatch.setenv("DUETIDE_TOPIC_DEAD_LETTERS", topic)
    use_broker(monkeypatch, broker.bootstrap_servers)
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
    for n in range(3):  # one batch each: what a dispatcher writes, one letter at a time
        producer.send(topic, f"letter {n}".encode()).get(timeout=10)
    producer.close()
    ping = events.build(event_id="p2", type=events.PING, source="/ping", subject="", data={})
    headers, body = events.to_http(ping)
    assert function_client("sweep").post("/", headers=headers, data=body).status_code == 200
    telemetry.flush()

    [(_, held)] = collector.wait(lambda: collector.points("duetide.deadletters"))
    assert held.as_int == 3


def test_a_function_told_to_stop_exports_what_it_holds_before_it_exits(
    collector: Collector, tmp_path: Path
) -> None:
    """uvicorn ends a graceful shutdown by raising SIGTERM again, which killed the process
    before the SDK's flush at exit: every scale-down lost the last spans (5 s of them)
    and up to a minute of metrics (an audit, 2026-12-07)."""
    settings = {**os.environ, "OTEL_BSP_SCHEDULE_DELAY": "600000"}  # nothing sent on a timer
    with served_process(tmp_path / "serve", settings) as (port, process):
        token = issue_local_token("alice")
        for n in range(3):
            answer = requests.post(
                f"http://127.0.0.1:{port}/tasks",
                json={"title": f"t{n}"},
                headers={"Authorization": f"Bearer {token}"},
                timeout=10,
            )
            assert answer.status_code == 201, answer.text
        assert collector.spans() == []  # held, as the SDK batches them
        process.terminate()
        process.wait(timeout=30)
    posts = [s for s in collector.spans() if s.name == "POST"]
    assert len(posts) == 3


def test_the_sdks_variables_for_the_resource_and_the_exporters_are_honoured(
    client, alice, collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`OTEL_RESOURCE_ATTRIBUTES` lost its `service.name` and `service.namespace` to
    duetide's defaults, and `OTEL_TRACES_EXPORTER=none` still exported (an audit,
    2026-12-07)."""
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.name=mine,service.namespace=prod")
    telemetry.shutdown()
    assert client.post("/tasks", json={"title": "x"}, headers=alice).status_code == 201
    telemetry.flush()
    collector.wait(lambda: collector.spans())
    resource = {a.key: _value(a.value) for a in collector.received["/v1/traces"][0]
                .resource_spans[0].resource.attributes}  # fmt: skip
    assert resource["service.name"] == "mine" and resource["service.namespace"] == "prod"
    assert resource["faas.name"] == "tasks"  # duetide's, where the environment says nothing

    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    telemetry.shutdown()
    before = len(collector.received["/v1/traces"])
    assert client.post("/tasks", json={"title": "y"}, headers=alice).status_code == 201
    telemetry.flush()
    assert len(collector.received["/v1/traces"]) == before


@pytest.mark.parametrize(("ratio", "flags"), [("0", "00"), ("1", "01")])
def test_a_new_traces_flags_are_the_samplers_decision(
    client, alice, collector, monkeypatch: pytest.MonkeyPatch, ratio: str, flags: str
) -> None:
    """The answer's `traceresponse` and the events a request causes said sampled whatever
    the sampler chose: with a ratio of 0 the tasks span was dropped and the activity
    function exported its own under that missing parent (an audit, 2026-12-07)."""
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", ratio)
    telemetry.shutdown()
    response = client.post("/tasks", json={"title": "x"}, headers=alice)
    assert response.status_code == 201
    assert response.headers["traceresponse"].endswith(f"-{flags}")
    [row] = rows(events.TASK_CREATED)
    assert row.traceparent is not None and row.traceparent.endswith(f"-{flags}")
    telemetry.flush()
    assert bool(collector.spans()) == (flags == "01")
