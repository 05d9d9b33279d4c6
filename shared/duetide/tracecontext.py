"""W3C Trace Context: the `traceparent` a request or event brings, and the span it runs in.

One trace follows a change from the API call through the outbox and Kafka into the
functions that react to it: the HTTP `traceparent` header starts it (or a new trace
starts), the CloudEvents distributed-tracing extension (`traceparent`) carries it on
every event, and each function continues it. The current span lives in a context
variable, so the JSON logs (`logs`) stamp every line with it and the outbox records it
with each event, without passing it through every call.

Parsing follows the W3C Trace Context recommendation (section 3.2 and the processing
model, 4.3): anything else is ignored and a new trace starts. `tracestate` is not
carried: duetide adds no vendor state of its own.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

HEADER = "traceparent"
"""The HTTP request header and the CloudEvents extension attribute, named alike."""
RESPONSE_HEADER = "traceresponse"
"""Trace Context Level 2's response header: the trace and span that served the request."""

# version "-" trace-id "-" parent-id "-" trace-flags, lowercase hex only (3.2.2). A
# version above 00 may append fields after a "-" (3.2.4); 00 may not.
_FIELDS = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
SAMPLED = "01"
NOT_SAMPLED = "00"


@dataclass(frozen=True)
class Span:
    """The span this process runs in: its trace, its own id, and the span it continues."""

    trace_id: str
    span_id: str
    flags: str = SAMPLED
    parent_id: str | None = None

    @property
    def traceparent(self) -> str:
        """The header value for what this span causes (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"


@dataclass(frozen=True)
class Parent:
    """A valid incoming `traceparent`: the caller's trace and span."""

    trace_id: str
    span_id: str
    flags: str


def parse(value: object) -> Parent | None:
    """The `traceparent` value as the spec reads it, or None if it is not valid.

    Invalid: not text, not lowercase hex in the 2-32-16-2 layout, version ff, a version
    00 value with anything after the flags, a later version whose extra part does not
    start with "-", an all-zero trace id or parent id.
    """
    if not isinstance(value, str) or len(value) < 55 or len(value) > 512:
        return None
    match = _FIELDS.match(value)
    if match is None:
        return None
    version, trace_id, span_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    rest = value[55:]
    if version == "00" and rest:
        return None
    if rest and not rest.startswith("-"):
        return None
    if version != "00":
        # A later version's flags may hold bits this version does not define; only
        # the sampled bit is carried on (4.3, "Versioning of traceparent").
        flags = "01" if int(flags, 16) & 1 else "00"
    return Parent(trace_id, span_id, flags)


def _random_hex(n_bytes: int) -> str:
    """Random, not secret (W3C Trace Context asks ids to be unique, not unguessable):
    Python's generator, as OpenTelemetry's id generator has it, rather than a system
    call per id, each of which let go of the GIL in every request of a busy process."""
    while True:  # all zeros is invalid; at 2**-64 odds, loop rather than argue
        value = random.getrandbits(n_bytes * 8)
        if value:
            return f"{value:0{n_bytes * 2}x}"


def start(parent: Parent | None = None) -> Span:
    """A new span: in `parent`'s trace when there is one, else in a new trace."""
    if parent is None:
        return Span(trace_id=_random_hex(16), span_id=_random_hex(8))
    return Span(parent.trace_id, _random_hex(8), parent.flags, parent.span_id)


_current: ContextVar[Span | None] = ContextVar("duetide_span", default=None)


def current() -> Span | None:
    """The span the work under way belongs to; None outside a request or event."""
    return _current.get()


def current_traceparent() -> str | None:
    span = _current.get()
    return None if span is None else span.traceparent


@contextmanager
def bound(span: Span) -> Iterator[Span]:
    """Run the block in `span`; the span before it comes back after."""
    token = _current.set(span)
    try:
        yield span
    finally:
        _current.reset(token)


def continue_from(value: object) -> Span | None:
    """Inside a `bound` block: continue the trace `value` names, if it is valid.

    For what is known only once the request is read: an event's `traceparent`
    extension. The current span is replaced by a child of `value`'s, so the block's
    later log lines and events carry that trace; an invalid value changes nothing.
    """
    parent = parse(value)
    if parent is None:
        return None
    span = start(parent)
    _current.set(span)
    return span
