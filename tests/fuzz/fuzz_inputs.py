"""A coverage-guided fuzz target (atheris) for the inputs clients control most directly.

One input drives one of three paths, chosen by its first byte:

- ``C``: a CloudEvent over HTTP, ``duetide.web.sink.decode`` on a Werkzeug request. The rest
  of the input is HTTP-like text: ``name: value`` header lines, a blank line, the body.
- ``R``: RRULE text through ``recurrence.parse``, then ``forecast`` and ``next``. The rest is
  NUL-separated: rule, zone, DTSTART (ISO 8601), mode, month_end, catch_up.
- ``F``: a JSON recurrence spec through ``friendly_to_rrule``, then ``parse``.

Allowed outcomes: success, a 4xx `ApiError` that the sink contract names (400, 413, 415),
or ``RecurrenceError`` (the API's 422). Anything else escapes and atheris reports a crash.
The seed corpus (tests/fuzz/corpus/) uses the same text forms. A longer run, keeping what
it learns outside the repository (libFuzzer writes to the first directory):

    .venv/bin/python tests/fuzz/fuzz_inputs.py /tmp/duetide-corpus tests/fuzz/corpus \
        -dict=tests/fuzz/fuzz.dict -max_len=2048 -timeout=10 -max_total_time=600
"""

from __future__ import annotations

import contextlib
import json
import sys
from datetime import UTC, datetime, timedelta

import atheris
from flask import Request
from werkzeug.test import EnvironBuilder

from duetide.errors import InvalidCloudEvent, PayloadTooLarge, UnsupportedMediaType

# Imported first so that only the parsing code below is instrumented (a faster start).
from duetide.web import auth, http  # noqa: F401

# Coverage instrumentation only when fuzzing: test_fuzz.py replays seeds in its own process.
with (
    atheris.instrument_imports(include=["cloudevents", "dateutil", "duetide"])
    if __name__ == "__main__"
    else contextlib.nullcontext()
):
    from duetide.rules import recurrence
    from duetide.web import sink

MAX_BODY = 4096
SINK_ERRORS = (InvalidCloudEvent, PayloadTooLarge, UnsupportedMediaType)
DEFAULT_START = datetime(2026, 1, 31, 9, 0, tzinfo=UTC)


def cloudevent(data: bytes) -> None:
    head, _, body = data.partition(b"\n\n")
    headers = []
    for line in head.split(b"\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip():
            # WSGI hands header values over as latin-1 text.
            headers.append((name.strip().decode("latin-1"), value.strip().decode("latin-1")))
    try:
        environ = EnvironBuilder(method="POST", path="/", headers=headers, data=body).get_environ()
    except (ValueError, TypeError):
        return  # not a request a server could have parsed (e.g. a bad Content-Length)
    try:
        event = sink.decode(Request(environ), MAX_BODY)
    except SINK_ERRORS as error:
        assert 400 <= error.status < 500, error
        return
    assert event.id and event.source and event.type, event


def rule_text(data: bytes) -> None:
    fields = data.decode("utf-8", "replace").split("\x00")
    rule, zone, start, mode, month_end, catch_up = (fields + [""] * 6)[:6]
    try:
        dtstart = datetime.fromisoformat(start) if start else DEFAULT_START
    except ValueError:
        dtstart = DEFAULT_START
    try:
        # Any text on purpose: Policy checks its words at run time (a stored row may hold any).
        policy = recurrence.Policy(
            mode or "schedule",  # type: ignore[arg-type]
            month_end or "skip",  # type: ignore[arg-type]
            catch_up or "next_in_series",  # type: ignore[arg-type]
        )
        expand(recurrence.parse(rule, zone or "UTC", dtstart, policy))
    except recurrence.RecurrenceError:
        pass


def friendly(data: bytes) -> None:
    try:
        spec = json.loads(data)
    except (ValueError, RecursionError):
        return
    try:
        text = recurrence.friendly_to_rrule(spec)
        expand(recurrence.parse(text, "Europe/Berlin", DEFAULT_START))
    except recurrence.RecurrenceError:
        pass


def expand(rule: recurrence.SeriesRule) -> None:
    """What the API and the recurrence function do with a stored rule."""
    occurrences = rule.forecast(12)
    assert occurrences == sorted(set(occurrences)), occurrences
    if not occurrences:
        return
    last, index = occurrences[-1], len(occurrences) - 1
    following = rule.next(last, index, completed_at=last + timedelta(hours=1), now=last)
    assert following is None or following.scheduled_at > last, (following, last)


TARGETS = {ord("C"): cloudevent, ord("R"): rule_text, ord("F"): friendly}


def test_one_input(data: bytes) -> None:
    if not data:
        return
    target = TARGETS.get(data[0], list(TARGETS.values())[data[0] % len(TARGETS)])
    target(data[1:])


if __name__ == "__main__":
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
