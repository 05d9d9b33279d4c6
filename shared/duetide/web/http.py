"""What every HTTP entry point shares: JSON answers, the error mapping, body limits.

Each function decodes with these and maps errors in one place (`guarded`), so a
client always gets `{"error": {"code", "message", "details"}}` and never a 500 for
anything it sent.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pydantic
from flask import Request, Response
from sqlalchemy.exc import DataError, DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from duetide import telemetry, tracecontext
from duetide.errors import (
    ApiError,
    BadRequest,
    PayloadTooLarge,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
    error_body,
)
from duetide.logs import log_event
from duetide.rules.text import PATTERN_WORDS, text_problem

log = logging.getLogger("duetide.web.http")

Handler = Callable[[Request], Response]
M = TypeVar("M", bound=pydantic.BaseModel)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """`body` as JSON: a response model (`services.responses`) without the defaults it
    was not given, or plain JSON data. A 204 has neither a body nor a Content-Type (Flask
    would name text/html)."""
    if status == 204:
        empty = Response(status=204, headers=headers)
        del empty.headers["Content-Type"]
        return empty
    return json_text_response(payload(body), status, headers)


def json_text_response(
    text: str, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON already rendered (an answer whose ETag hashed its text)."""
    return Response(text, status=status, mimetype="application/json", headers=headers)


def payload(body: Any) -> str:
    """The JSON text of an answer (and what an entity tag is a hash of, `preconditions`)."""
    if isinstance(body, pydantic.BaseModel):
        return body.model_dump_json(exclude_unset=True)
    return json.dumps(body, separators=(",", ":"), default=str)


def error_response(err: ApiError) -> Response:
    return json_response(err.body(), err.status, err.headers)


MAX_DETAILS = 20
"""The most invalid fields a 422 names: a body of 60,000 unknown keys was answered with
each of them, 4.4 MB built in 0.3 s (a probe, 2026-12-06)."""


FIELD_PART_CHARS, FIELD_PATH_CHARS = 64, 255
"""How much of a field's name, and of its whole path, an answer repeats: the names are
the sender's (an unknown key, a tag map's key), and a 500 KB key came back whole in the
message and again in `details` (an audit, 2026-12-07)."""


def field_part(part: object) -> str:
    text = str(part)
    return text if len(text) <= FIELD_PART_CHARS else text[:FIELD_PART_CHARS] + "…"


def field_path(parts: Iterable[object]) -> str:
    """`task.tags.0` for an error's location, each name and the whole path bounded (a
    path cut short keeps its end, the field itself)."""
    return bounded_path(".".join(field_part(part) for part in parts))


def bounded_path(path: str) -> str:
    return path if len(path) <= FIELD_PATH_CHARS else "…" + path[-FIELD_PATH_CHARS:]


def validation_failed(exc: pydantic.ValidationError) -> ValidationFailed:
    """A pydantic error as a 422 naming each field, up to MAX_DETAILS of them (the
    message says how many more); input values are not echoed back."""
    errors = exc.errors(include_url=False, include_input=False)
    details = [
        {"field": field_path(err["loc"]) or None, "message": _words(err)}
        for err in errors[:MAX_DETAILS]
    ]
    fields = ", ".join(d["field"] or "body" for d in details)
    more = len(errors) - len(details)
    message = f"invalid value for {fields}" + (f" and {more} more" if more else "")
    return ValidationFailed(message, details=details)


def _words(error: Any) -> str:
    """The error's message; for a pattern of `schemas.PATTERN_WORDS`, its words."""
    if error["type"] == "string_pattern_mismatch":
        return PATTERN_WORDS.get(error.get("ctx", {}).get("pattern"), error["msg"])
    return str(error["msg"])


def read_body(request: Request, max_bytes: int) -> bytes:
    """The raw body, refusing more than `max_bytes` without reading it all, and one in a
    content coding (gzip...): it would be read as the bytes it is compressed to, and
    refused as not JSON, or its size bound would not bound what it unpacks to. RFC 7694
    says to answer 415 with the codings taken."""
    coding = request.headers.get("Content-Encoding", "").strip().lower()
    if coding not in ("", "identity"):
        raise UnsupportedMediaType(
            "request bodies are not taken in a content coding: send the body as it is",
            headers={"Accept-Encoding": "identity"},
        )
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    data = request.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"request body is larger than {max_bytes} bytes")
    return data


def read_json(request: Request, max_bytes: int) -> Any:
    """The JSON body of a request: 413 if too large, 415 if not JSON, 400 if unparsable,
    422 if a text holds a NUL character or a lone surrogate."""
    body = read_body(request, max_bytes)
    if not body:
        raise BadRequest("a JSON request body is required")
    if request.mimetype not in ("application/json", "") and not request.mimetype.endswith("+json"):
        raise UnsupportedMediaType("the request body must be application/json")
    try:
        data = json.loads(body)
    except ValueError as exc:  # not UTF-8, not JSON, or an integer past Python's digit limit
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the request body is nested too deeply") from None
    reject_unstorable(data)
    return data


def unstorable_at(data: Any) -> tuple[str, str] | None:
    """Where (`field.0.name`) the first text or number that cannot be stored is, and why.

    Refused at the edge on every backend. Iterative: the value may be nested as deeply
    as json.loads allows. json.loads (and the CloudEvents SDK's reading of a structured
    event) takes `NaN`, `Infinity` and `1e999`, which are no JSON: PostgreSQL's json
    type refuses them, and a webhook receiver would get a body it cannot parse.
    """
    if not _any_unstorable(data):
        return None
    pending: list[tuple[str, Any]] = [("", data)]
    while pending:
        where, value = pending.pop()
        if isinstance(value, str) and (problem := text_problem(value)):
            return bounded_path(where), problem
        if isinstance(value, float) and not math.isfinite(value):
            return bounded_path(where), "numbers must be finite (NaN and Infinity are not JSON)"
        if isinstance(value, Mapping):
            for key, item in value.items():
                if isinstance(key, str) and (problem := text_problem(key)):
                    return bounded_path(where), problem
                part = field_part(key)
                pending.append((f"{where}.{part}" if where else part, item))
        elif isinstance(value, list):
            pending.extend((f"{where}.{i}" if where else str(i), v) for i, v in enumerate(value))
    return None


def _any_unstorable(data: Any) -> bool:
    """`unstorable_at` without the paths: naming each element's place cost most of its
    time (174 ms for a body of 200,000 tags), spent on every body, which is clean."""
    pending = [data]
    while pending:
        value = pending.pop()
        if isinstance(value, str):
            if text_problem(value):
                return True
        elif isinstance(value, float):
            if not math.isfinite(value):
                return True
        elif isinstance(value, Mapping):
            if any(isinstance(key, str) and text_problem(key) for key in value):
                return True
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
    return False


def reject_unstorable(data: Any, field: str | None = None) -> None:
    found = unstorable_at(data)
    if found is not None:
        where, problem = found
        field = ".".join(part for part in (field, where) if part) or None
        raise ValidationFailed.of(field, problem)


def parse_model(model: type[M], data: Any) -> M:
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise validation_failed(exc) from None


def guarded(handler: Handler) -> Handler:
    """Run `handler` in a span of the caller's trace (`traced`) and map every error to
    the JSON shape; an unexpected exception is a logged bug (500)."""

    @functools.wraps(handler)
    def wrapper(request: Request) -> Response:
        return traced(request, lambda: _answer(handler, request))

    return wrapper


def traced(request: Request, answer: Callable[[], Response]) -> Response:
    """Answer in a new span: of the trace a valid `traceparent` header names, else of a
    new trace (W3C Trace Context; more than one such header is invalid too). An event's
    own `traceparent` extension, read later, may continue another trace (`web.sink`).

    The answer carries the span in `traceresponse` (Trace Context Level 2), so a client
    can quote the trace of a request it reports; one JSON line logs the request.
    """
    given = request.headers.getlist(tracecontext.HEADER)
    parent = tracecontext.parse(given[0]) if len(given) == 1 else None
    span = telemetry.decided(tracecontext.start(parent))
    probe = request.path.rstrip("/") == "/healthz"  # the probes would drown the rest
    with tracecontext.bound(span), telemetry.request_span(request.method, not probe) as notes:
        started = time.perf_counter()
        response = answer()
        span = tracecontext.current() or span  # an event may have continued its own trace
        response.headers[tracecontext.RESPONSE_HEADER] = span.traceparent
        notes.status(response.status_code)
        path = loggable_path(request.path)
        notes.note(**{"url.path": path})
        if not probe:
            log_event(
                log,
                "http.request",
                method=request.method,
                path=path,
                status=response.status_code,
                duration_ms=round((time.perf_counter() - started) * 1000, 1),
            )
    return response


_FEED_TOKEN = re.compile(r"(?i)(/calendar/+)(?!feed-token(?:/|$)).+")
"""A calendar feed token in a path (`/calendar/{feed_token}.ics`), wherever it stands,
in any case and after any number of slashes: a path that routes nowhere is logged too,
so all that follows `/calendar/` goes (`/calendar/%2e%2e/<token>.ics` kept the token:
an audit, 2026-12-07)."""


def loggable_path(path: str) -> str:
    """`path` as logs and spans may hold it (at most 200 characters): a calendar feed
    URL is a secret, so its token is replaced by `{feed_token}`."""
    return _FEED_TOKEN.sub(r"\1{feed_token}", path)[:200]


def _answer(handler: Handler, request: Request) -> Response:
    try:
        return handler(request)
    except ApiError as err:
        return error_response(err)
    except pydantic.ValidationError as exc:
        return error_response(validation_failed(exc))
    except (OperationalError, DataError, PoolTimeout) as exc:  # a pool's wait too
        return _database_error(exc)
    except DBAPIError as exc:
        if exc.connection_invalidated or _schema_behind(exc.orig):  # (25P03: idle too long)
            return _database_error(exc)
        return _unhandled(request)
    except Exception:
        return _unhandled(request)


_SCHEMA_BEHIND_STATES = ("42P01", "42703")  # PostgreSQL: undefined table, column
_SCHEMA_BEHIND_WORDS = ("no such table", "no such column", "has no column named")  # SQLite


def _schema_behind(cause: BaseException | None) -> bool:
    """Whether the driver's error `cause` says the database lacks a table or column this
    code uses: its schema is older (a function started before `duetide migrate` ran, or
    against a new database)."""
    if str(getattr(cause, "sqlstate", None) or "") in _SCHEMA_BEHIND_STATES:
        return True
    return any(words in str(cause) for words in _SCHEMA_BEHIND_WORDS)


def _database_error(exc: Exception) -> Response:
    cause = getattr(exc, "orig", None) or exc
    sqlstate = str(getattr(cause, "sqlstate", None) or "")
    if _schema_behind(cause):
        # Not the content (a 4xx), nor a bug (a 500): served again once migrated, so an
        # event's redelivery then succeeds. The operator's log says what to do.
        log_event(log, "database.schema_behind", level=logging.ERROR, error=str(cause)[:200])
        return error_response(
            Unavailable(
                "the database schema is older than this service: the operator runs the "
                "migrations (`duetide migrate`); retry",
                headers={"Retry-After": "5"},
            )
        )
    if sqlstate.startswith(("22", "54")):
        # A value the database refused (class 22, data exception: a number out of range,
        # text it cannot hold) or could not index (class 54, program limit exceeded: an
        # index row over PostgreSQL's 2,704 bytes, a command's user, source and id near
        # their limits in 4-byte characters): the content, not the database, so a retry
        # (an event's redelivery) would only fail again. Logged: the edge should have
        # refused it with a 422 naming the field.
        log_event(log, "database.refused_value", level=logging.WARNING, sqlstate=sqlstate)
        limit = sqlstate.startswith("54")
        message = "is too large to store" if limit else "cannot be stored"
        return error_response(BadRequest(f"a value of this request {message}"))
    log_event(log, "database.unavailable", level=logging.WARNING, error=str(cause)[:200])
    return error_response(
        Unavailable("the database is unavailable; retry", headers={"Retry-After": "1"})
    )


def _unhandled(request: Request) -> Response:
    log.exception(
        "unhandled error",
        extra={
            "event": "http.unhandled",
            "method": request.method,
            "path": loggable_path(request.path),
        },
    )
    return json_response(error_body("internal", "internal error"), status=500)
