"""The sink contract every CloudEvent entry point follows (README, "Design notes").

functions-framework's own CloudEvent path answers bad events with HTML or hands raw
bytes to the function, so the event functions are HTTP functions that decode here:
400 (JSON) for an unparsable or invalid event, 405 for non-POST, 413/415 for size and
media type, 2xx only after the commit, a 2xx no-op for duplicates, 503 for transient
trouble so Knative retries.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import pydantic
from cloudevents import exceptions as ce_errors
from cloudevents.http import from_http
from flask import Request, Response
from sqlmodel import Session

from duetide import events, telemetry, tracecontext
from duetide.config import get_settings
from duetide.errors import InvalidCloudEvent, MethodNotAllowed, Unavailable, UnsupportedMediaType
from duetide.logs import log_event
from duetide.storage.processed import EventKey, run_once
from duetide.web import auth
from duetide.web.http import (
    Handler,
    field_path,
    guarded,
    json_response,
    read_body,
    unstorable_at,
)

log = logging.getLogger("duetide.web.sink")

REQUIRED = ("id", "source", "type", "specversion")
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
"""The batched content mode (HTTP binding 3.3): a JSON array of events, not taken here."""
# (source, id) is stored to deduplicate (`processed_event`: 512 and 255 characters).
MAX_ATTRIBUTE_CHARS = {"id": 255, "source": 255}
MAX_ATTRIBUTES = 64
"""Context attributes and extensions of one event: the SDK sets each by copying all it
has, so its parse grows with their square: 80,000 in a structured event cost 9.5 s of
CPU before the 400, on `/commands` with no token (a review, 2026-12-07)."""


@dataclass(frozen=True)
class Incoming:
    """A decoded CloudEvent: its context attributes and its JSON data."""

    id: str
    source: str
    type: str
    subject: str = ""
    time: str = ""
    data: Any = None
    extensions: dict[str, Any] = field(default_factory=dict)
    received: dict[str, str] = field(default_factory=dict)
    """Binary mode: each attribute whose header was percent-decoded, as it came."""

    def as_received(self) -> Incoming:
        """The event with its attributes as their headers came, not percent-decoded. The
        HTTP binding says to decode them, but a dispatcher that maps Kafka headers to
        HTTP ones as they are (CloudEvents sdk-java's, Knative's) forwards a source such
        as `https://shop.example/caf%C3%A9` undecoded: its signer meant it as written."""
        got = self.received
        extensions = {k: got.get(k, v) for k, v in self.extensions.items()}
        return replace(
            self,
            id=got.get("id", self.id),
            source=got.get("source", self.source),
            type=got.get("type", self.type),
            subject=got.get("subject", self.subject),
            time=got.get("time", self.time),
            extensions=extensions,
            received={},
        )


def _is_json(mimetype: str) -> bool:
    return mimetype in ("", "application/json") or mimetype.endswith("+json")


def _unquoted(name: str, value: str) -> str:
    """Strictly: `unquote` makes U+FFFD of bytes that are not UTF-8, and `evt-%FF` and
    `evt-%FE` were then one id (the second event answered `duplicate` and dropped). A
    header is ASCII (its other characters percent-encoded): the server reads other
    bytes as Latin-1, and `josé` sent as UTF-8 became the user `josÃ©`."""
    if not value.isascii():
        raise InvalidCloudEvent(
            f"header {name} is not ASCII: percent-encode its other characters "
            "(CloudEvents HTTP binding, 3.1.3.2)"
        )
    try:
        return unquote(value, errors="strict")
    except UnicodeDecodeError:
        raise InvalidCloudEvent(f"header {name} is not percent-encoded UTF-8") from None


def decode(request: Request, max_bytes: int) -> Incoming:
    """A strictly decoded CloudEvent (binary or structured mode), or a 4xx ApiError."""
    body = read_body(request, max_bytes)
    headers = {k.lower(): v for k, v in request.headers.items()}
    binary = _binary_mode(request, headers)
    received: dict[str, str] = {}
    if binary:  # attribute values in headers are percent-encoded (HTTP binding, 3.1.3.2)
        sent = {k: v for k, v in headers.items() if k.startswith("ce-")}
        _check_count(len(sent))
        headers = {k: _unquoted(k, v) if k in sent else v for k, v in headers.items()}
        received = {k[3:]: v for k, v in sent.items() if headers[k] != v}
    else:  # structured: the SDK would go by a stray ce-specversion header
        headers = {k: v for k, v in headers.items() if not k.startswith("ce-")}
        names = _structured_names(body)
        _check_count(len(names))
        _check_names(names)
    try:
        event = from_http(headers, body, data_unmarshaller=lambda raw: raw)
    except ce_errors.GenericException as exc:
        raise InvalidCloudEvent(_sdk_message(exc, binary)) from None
    except (ValueError, TypeError, RecursionError):
        # The SDK also lets these out: a body that is not UTF-8 (UnicodeDecodeError), a
        # null required attribute, an unhashable specversion (found by tests/fuzz), JSON
        # nested too deeply.
        raise InvalidCloudEvent("the CloudEvent could not be parsed") from None
    attributes = event.get_attributes()
    found = unstorable_at({"attributes": dict(attributes)})
    if found is not None:  # structured JSON can carry "\u0000" or "\ud800": a poison event
        raise InvalidCloudEvent(f"the event at {found[0]}: {found[1]}")
    _check_attributes(attributes)
    incoming = Incoming(
        id=attributes["id"],
        source=attributes["source"],
        type=attributes["type"],
        subject=str(attributes.get("subject") or ""),
        time=str(attributes.get("time") or ""),
        data=_json_data(event.get_data()),
        extensions={k: v for k, v in attributes.items() if k not in _CONTEXT},
        received=received,
    )
    found = unstorable_at({"data": incoming.data})
    if found is not None:  # text no database can store: a poison event, not a retry
        raise InvalidCloudEvent(f"the event at {found[0]}: {found[1]}")
    return incoming


def _binary_mode(request: Request, headers: dict[str, str]) -> bool:
    """Whether the event is in binary mode; 400/415 for a request that is neither mode.

    A batch is refused with 415 before anything else: it is a well-formed request in a
    media type (content mode) this receiver does not take, which is what 415 says, not a
    malformed event (400). One event per request means one answer per event, so a
    KafkaSource's retry and dead-lettering stay per event.
    """
    if request.mimetype == BATCH:
        raise UnsupportedMediaType(
            f"batched CloudEvents ({BATCH}) are not supported: send one event per request, "
            f"binary mode or {STRUCTURED}",
            headers={"Accept": f"{STRUCTURED}, application/json"},
        )
    # The content type decides the mode (HTTP binding, section 3): a structured event is
    # read from its body alone, whatever `ce-*` headers came beside it.
    structured = request.mimetype == STRUCTURED
    binary = not structured and any(k.startswith("ce-") for k in headers)
    if not binary and not structured:
        if not _is_json(request.mimetype):
            raise UnsupportedMediaType(
                f"expected a binary-mode CloudEvent or {STRUCTURED}, got {request.mimetype!r}"
            )
        raise InvalidCloudEvent("not a CloudEvent: no ce-specversion header and not structured")
    if binary:
        missing = [a for a in REQUIRED if f"ce-{a}" not in headers]
        if missing:
            raise InvalidCloudEvent(f"missing required attributes: {', '.join(missing)}")
        if not _is_json(request.mimetype):
            raise UnsupportedMediaType(f"event data must be JSON, got {request.mimetype!r}")
    return binary


def _check_attributes(attributes: Mapping[str, Any]) -> None:
    missing = [a for a in REQUIRED if not attributes.get(a)]
    if missing:
        raise InvalidCloudEvent(f"missing required attributes: {', '.join(missing)}")
    not_text = [a for a in REQUIRED if not isinstance(attributes[a], str)]
    if not_text:  # structured mode: JSON could give numbers or objects
        raise InvalidCloudEvent(f"attributes must be strings: {', '.join(not_text)}")
    if attributes["specversion"] != "1.0":
        raise InvalidCloudEvent("unsupported specversion: only 1.0 is accepted")
    for name, limit in MAX_ATTRIBUTE_CHARS.items():
        if len(attributes[name]) > limit:
            raise InvalidCloudEvent(f"the {name} attribute is longer than {limit} characters")
    # What binary mode refused, structured mode took (a review): the spec's rules for both.
    _check_names(attributes)
    content_type = attributes.get("datacontenttype")
    if content_type is not None and (
        not isinstance(content_type, str) or not _is_json(content_type.split(";")[0].strip())
    ):
        raise UnsupportedMediaType("event data must be JSON (datacontenttype)")
    if "subject" in attributes and not isinstance(attributes["subject"], str):
        raise InvalidCloudEvent("the subject attribute must be a string")
    if "time" in attributes and not _timestamp(attributes["time"]):
        raise InvalidCloudEvent("the time attribute must be an RFC 3339 timestamp")


_ATTRIBUTE_NAME = re.compile(r"[a-z0-9]+")


def _check_count(count: int) -> None:
    if count > MAX_ATTRIBUTES:
        raise InvalidCloudEvent(f"an event has at most {MAX_ATTRIBUTES} attributes")


def _check_names(names: Iterable[str]) -> None:
    wrong = [name for name in names if not _ATTRIBUTE_NAME.fullmatch(name)]
    if wrong:
        raise InvalidCloudEvent(
            f"attribute names are lower-case ASCII letters and digits: {wrong[0][:64]!r}"
        )


def _structured_names(body: bytes) -> list[str]:
    """The attribute names of a structured event as sent (the SDK lower-cases them):
    the body's keys but `data` and `data_base64`; none where it is not a JSON object
    (the SDK's parse says what is wrong with it)."""
    try:
        found = json.loads(body)
    except (ValueError, RecursionError):
        return []
    if not isinstance(found, dict):
        return []
    return [str(k) for k in found if k not in ("data", "data_base64")]


_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _timestamp(value: Any) -> bool:
    """Whether `value` is an RFC 3339 timestamp (the SDK may hand a datetime back)."""
    if isinstance(value, datetime):
        return value.tzinfo is not None
    if not isinstance(value, str) or not _RFC3339.fullmatch(value):
        return False
    try:
        datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        return False
    return True


_CONTEXT = {"id", "source", "type", "specversion", "subject", "time", "datacontenttype"}


def _sdk_message(exc: Exception, binary: bool) -> str:
    """The SDK's messages echo the raw body; ours name the problem without it."""
    if isinstance(exc, ce_errors.MissingRequiredFields):
        if not binary:
            return "structured CloudEvent is not a JSON object with specversion, id, source, type"
        return "missing required CloudEvent attributes"
    if isinstance(exc, ce_errors.InvalidRequiredFields):
        return "invalid CloudEvent attributes (specversion must be 1.0)"
    return "the CloudEvent could not be parsed"


def _json_data(raw: Any) -> Any:
    if raw is None or raw in (b"", ""):
        return None
    if isinstance(raw, dict | list):
        return raw
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):  # ValueError: also an integer past the digit limit
        raise InvalidCloudEvent("event data is not valid JSON") from None


EventHandler = Callable[[Session, Incoming], list[str] | None]
Process = Callable[[Incoming], str]


def event_endpoint(accepts: frozenset[str], process: Process) -> Handler:
    """The HTTP side of the sink contract around `process`, which returns a status word.

    Events of other types get a 2xx no-op (a KafkaSource on a shared topic delivers
    every type), except a duetide type this code does not know, which is a 503: it comes
    from a newer release's producer, rolled out before this consumer (or this one rolled
    back), and is retried until a revision that takes it answers, or dead-lettered for a
    replay. Answered "ignored", its reminders were lost: notify before `reminder.due.batch`
    took a batch so, the reminders fired and never sent (an audit, 2026-12-07). Data that
    does not fit its type's model is a 400.
    """

    @guarded
    def endpoint(request: Request) -> Response:
        if request.method == "GET" and request.path.rstrip("/") == "/healthz":
            return json_response({"status": "ok"})
        if request.method != "POST":
            raise MethodNotAllowed("event sinks accept POST only", headers={"Allow": "POST"})
        auth.require_sender(request)  # Knative's OIDC sender identity, when the cluster uses it
        event = decode(request, get_settings().duetide_max_body_bytes)
        follow_trace(event)
        if event.type not in accepts:
            if event.type.startswith(events.PREFIX) and event.type not in events.KNOWN:
                handled(event, "newer")
                raise Unavailable(
                    f"type {event.type[:255]} is newer than this function: "
                    "retried until its upgrade takes it"
                )
            handled(event, "ignored")
            # The sender's text, bounded as the log line bounds it (it echoed 900 KB).
            reason = f"type {event.type[:255]} not handled"
            return json_response({"status": "ignored", "reason": reason})
        try:
            status = process(event)
        except pydantic.ValidationError as exc:
            first = exc.errors(include_url=False, include_input=False)[0]
            where = field_path(first["loc"])
            raise InvalidCloudEvent(
                f"invalid {event.type} data at {where}: {first['msg']}"
            ) from None
        handled(event, status)
        return json_response({"status": status})

    return endpoint


def follow_trace(event: Incoming) -> None:
    """Continue the trace the event's `traceparent` extension names (the CloudEvents
    distributed-tracing extension), so this function's log lines and the events it
    emits carry it; without a valid one the request's own span stays."""
    tracecontext.continue_from(event.extensions.get(tracecontext.HEADER))
    telemetry.note(kind="consumer", **{"cloudevents.event_id": event.id})


def handled(event: Incoming, status: str) -> None:
    """One line per event: what it was and what became of it (ids, never its data).

    The type is the sender's text until it is one this function accepts: the line
    bounds it, and the span and the count name an ignored one `other` (a metric's
    labels must be a small set)."""
    log_event(
        log,
        "event.handled",
        type=event.type[:255],
        event_id=event.id,
        source=event.source,
        status=status,
    )
    known = "other" if status in ("ignored", "newer") else event.type
    telemetry.note(f"process {known}", **{"cloudevents.event_type": known})
    telemetry.count_event(known, status)


def exactly_once(consumer: str, handler: EventHandler) -> Process:
    """The sink side of `run_once`: `handler` runs once per (source, id) for `consumer`."""

    def process(event: Incoming) -> str:
        done = run_once(
            EventKey(consumer, event.source, event.id), lambda s: (True, handler(s, event) or [])
        )
        return "duplicate" if done is None else "processed"

    return process
