"""OpenTelemetry export, when configured: a span per request and event, and the numbers
operators watch (outbox backlog, reminder lateness, deliveries by channel and outcome,
events handled).

Off unless OTEL_EXPORTER_OTLP_ENDPOINT is set and the `otel` extra is installed; then
spans and metrics go over OTLP/HTTP to that endpoint (the SDK's own OTEL_* variables
apply: headers, sampler, service name, export interval). Off, every function here is a
cheap no-op and nothing of OpenTelemetry is imported: a cold start pays for every
module loaded (tests/unit/test_startup_imports.py). On, the SDK is imported by the first
span, not at start.

The spans take the ids of `tracecontext`: the span id a log line carries is the id of the
exported span, and its parent is the caller's (an HTTP `traceparent` header, an event's
`traceparent` extension).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from duetide import tracecontext

log = logging.getLogger("duetide.telemetry")

ENDPOINT_VARIABLE = "OTEL_EXPORTER_OTLP_ENDPOINT"


class SpanNotes:
    """What the handler learns about its span while it runs: a name, attributes, status."""

    def __init__(self, name: str, kind: str):
        self.name = name
        self.kind = kind
        self.attributes: dict[str, str | int | float | bool] = {}
        self.error = False

    def status(self, code: int) -> None:
        self.attributes["http.response.status_code"] = code
        self.error = code >= 500

    def note(self, name: str | None = None, kind: str | None = None, **attributes: Any) -> None:
        if name is not None:
            self.name = name
        if kind is not None:
            self.kind = kind
        self.attributes.update({k: v for k, v in attributes.items() if v is not None})


_notes: ContextVar[SpanNotes | None] = ContextVar("duetide_span_notes", default=None)


class _Export:
    """The SDK's tracer and instruments; built once per process, on first use."""

    def __init__(self, function: str) -> None:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import OTELResourceDetector, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.id_generator import IdGenerator

        class OurIds(IdGenerator):
            """The SDK asks for ids; it gets those `tracecontext` chose and logged."""

            def generate_span_id(self) -> int:
                span = tracecontext.current()
                return int(span.span_id, 16) if span else int(os.urandom(8).hex(), 16) or 1

            def generate_trace_id(self) -> int:
                span = tracecontext.current()
                return int(span.trace_id, 16) if span else int(os.urandom(16).hex(), 16) or 1

        # Defaults under what OTEL_RESOURCE_ATTRIBUTES and OTEL_SERVICE_NAME say: given to
        # Resource.create, they overrode the environment (an audit, 2026-12-07).
        given = OTELResourceDetector().detect().attributes
        defaults = {
            "service.namespace": "duetide",
            "service.name": f"duetide-{function}",
            "faas.name": function,
        }
        resource = Resource.create({k: v for k, v in defaults.items() if k not in given})
        self._trace = trace
        self.provider = TracerProvider(resource=resource, id_generator=OurIds())
        if _exporting("OTEL_TRACES_EXPORTER"):
            self.provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self.tracer = self.provider.get_tracer("duetide")
        readers = (
            [PeriodicExportingMetricReader(OTLPMetricExporter())]
            if _exporting("OTEL_METRICS_EXPORTER")
            else []
        )
        self.meters = MeterProvider(resource=resource, metric_readers=readers)
        meter = self.meters.get_meter("duetide")
        self.deliveries = meter.create_counter(
            "duetide.notifications", unit="{delivery}", description="delivery attempts"
        )
        self.events = meter.create_counter(
            "duetide.events", unit="{event}", description="CloudEvents handled, by type and status"
        )
        self.lateness = meter.create_histogram(
            "duetide.reminder.lateness", unit="s", description="handled after the firing time"
        )
        self.backlog = meter.create_gauge(
            "duetide.outbox.pending", unit="{event}", description="outbox rows not yet sent"
        )
        self.backlog_age = meter.create_gauge(
            "duetide.outbox.oldest_pending_age", unit="s", description="age of the oldest"
        )
        self.dead_letters = meter.create_gauge(
            "duetide.deadletters", unit="{event}", description="records on the dead-letter topic"
        )

    def record_span(self, notes: SpanNotes, start_ns: int, end_ns: int) -> None:
        from opentelemetry.trace import (
            NonRecordingSpan,
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            set_span_in_context,
        )

        span = tracecontext.current()
        if span is None:
            return
        context = None
        if span.parent_id is not None:
            parent = SpanContext(
                int(span.trace_id, 16),
                int(span.parent_id, 16),
                is_remote=True,
                trace_flags=TraceFlags(int(span.flags, 16)),
            )
            context = set_span_in_context(NonRecordingSpan(parent))
        kind = SpanKind.CONSUMER if notes.kind == "consumer" else SpanKind.SERVER
        exported = self.tracer.start_span(
            notes.name, context=context, kind=kind, attributes=notes.attributes, start_time=start_ns
        )
        if notes.error:
            exported.set_status(Status(StatusCode.ERROR))
        exported.end(end_time=end_ns)

    def samples(self, trace_id: str) -> bool:
        """The configured sampler's decision for a new trace (by its id, as the ratio
        samplers decide, so the span's export at the end agrees)."""
        from opentelemetry.sdk.trace.sampling import Decision

        decided = self.provider.sampler.should_sample(None, int(trace_id, 16), "request")
        return decided.decision == Decision.RECORD_AND_SAMPLE

    def flush(self, timeout_ms: int = 5000) -> None:
        self.provider.force_flush(timeout_ms)
        self.meters.force_flush(timeout_ms)


_lock = threading.Lock()
_function = "duetide"
_export: _Export | None = None
_state = "unset"  # "unset" until the first use decides: "on" or "off"


def configure(function: str) -> None:
    """Name the function whose spans and metrics these are (start-up; imports nothing).
    The exporters, built on first use, name their resource after it."""
    global _function
    _function = function


def decided(span: tracecontext.Span) -> tracecontext.Span:
    """A new trace's span with the sampler's decision in its flags, which the answer's
    `traceresponse` and every event it causes carry: they said sampled whatever the
    sampler chose, so with a ratio below 1 the event functions exported spans whose
    parents were never exported (an audit, 2026-12-07). A continued trace keeps its
    caller's flags (the parent-based samplers follow them)."""
    export = _exporter()
    if export is None or span.parent_id is not None or export.samples(span.trace_id):
        return span
    return dataclasses.replace(span, flags=tracecontext.NOT_SAMPLED)


def _exporting(variable: str) -> bool:
    """OTLP, unless the SDK's variable says `none` (the one other value honoured: the
    OTLP exporters are the only ones duetide builds)."""
    return os.environ.get(variable, "otlp").strip().lower() != "none"


def enabled() -> bool:
    """Export is configured: the variable is set (the SDK may still be missing)."""
    return bool(os.environ.get(ENDPOINT_VARIABLE))


def _exporter() -> _Export | None:
    global _state, _export
    if _state == "off" or (_state == "unset" and not enabled()):
        return None
    if _state == "on":
        return _export
    with _lock:
        if _state == "unset":
            try:
                _export, _state = _Export(_function), "on"
            except ImportError:
                _state = "off"
                log.warning(
                    "otel.unavailable",
                    extra={"event": "otel.unavailable", "hint": "install duetide[otel]"},
                )
    return _export


@contextmanager
def request_span(method: str, exported: bool = True) -> Iterator[SpanNotes]:
    """Notes on the span of one request (`web.http.traced`), exported when it ends (not
    a health probe's: Knative's probes, every few seconds a pod, drowned the traces)."""
    notes = SpanNotes(method, "server")
    notes.attributes["http.request.method"] = method
    export = _exporter() if exported else None
    if export is None:
        yield notes
        return
    token = _notes.set(notes)
    start_ns = time.time_ns()
    try:
        yield notes
    finally:
        _notes.reset(token)
        try:
            export.record_span(notes, start_ns, time.time_ns())
        except Exception as exc:  # telemetry must never fail a request
            log.warning("otel.span_failed", extra={"event": "otel.span_failed", "error": repr(exc)})


def note(name: str | None = None, kind: str | None = None, **attributes: Any) -> None:
    """Name the current span or add attributes to it (a no-op when export is off)."""
    notes = _notes.get()
    if notes is not None:
        notes.note(name, kind, **attributes)


def count_delivery(channel: str, outcome: str) -> None:
    export = _exporter()
    if export is not None:
        export.deliveries.add(1, {"channel": channel, "outcome": outcome})


def count_event(event_type: str, status: str) -> None:
    export = _exporter()
    if export is not None:
        export.events.add(1, {"type": event_type, "status": status})


def record_lateness(seconds: float, status: str) -> None:
    export = _exporter()
    if export is not None:
        export.lateness.record(max(seconds, 0.0), {"status": status})


def record_backlog(pending: int, oldest_age_s: float) -> None:
    export = _exporter()
    if export is not None:
        export.backlog.set(pending)
        export.backlog_age.set(oldest_age_s)


def record_dead_letters(held: int) -> None:
    export = _exporter()
    if export is not None:
        export.dead_letters.set(held)


def flush(timeout_s: float = 5.0) -> None:
    """Export what is buffered now, waiting at most `timeout_s` for each of spans and
    metrics (tests; `duetide.web.serve` as it stops: the SDK's own flush at exit never
    runs there, the process ending by the signal uvicorn raises again)."""
    export = _state == "on" and _export
    if export:
        export.flush(round(timeout_s * 1000))


def shutdown() -> None:
    """Flush and stop the exporters; the next use decides afresh (tests, a changed env)."""
    global _state, _export
    with _lock:
        export, _export, _state = _export, None, "unset"
    if export is not None:
        export.provider.shutdown()
        export.meters.shutdown()
