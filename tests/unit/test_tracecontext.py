"""W3C Trace Context parsing (the recommendation's section 3.2 and processing model 4.3):
what is valid continues the trace, anything else starts a new one."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from duetide import tracecontext

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"


def test_the_specs_example_is_read_as_written() -> None:
    assert tracecontext.parse(VALID) == tracecontext.Parent(TRACE, SPAN, "01")
    assert tracecontext.parse(f"00-{TRACE}-{SPAN}-00") == tracecontext.Parent(TRACE, SPAN, "00")


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        VALID.upper(),  # lowercase hex only
        f"00-{TRACE.upper()}-{SPAN}-01",
        f"ff-{TRACE}-{SPAN}-01",  # version ff is invalid
        f"00-{'0' * 32}-{SPAN}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{SPAN}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE}-{SPAN}-01 ",
        f"00-{TRACE[:-1]}-{SPAN}-01",  # short trace id
        f"00-{TRACE}-{SPAN[:-1]}-01",
        f"00-{TRACE}-{SPAN}-1",
        f"00_{TRACE}_{SPAN}_01",
        f"0g-{TRACE}-{SPAN}-01",
        f"01-{TRACE}-{SPAN}-01extra",  # a later version's extra part starts with "-"
        f"01-{TRACE}-{SPAN}-01-" + "x" * 500,  # bounded
        42,
    ],
)
def test_an_invalid_traceparent_is_ignored(value: object) -> None:
    assert tracecontext.parse(value) is None


def test_a_later_version_is_read_by_the_fields_it_shares_with_00() -> None:
    parent = tracecontext.parse(f"cc-{TRACE}-{SPAN}-03-what-the-future-adds")
    assert parent == tracecontext.Parent(TRACE, SPAN, "01")  # only the sampled bit carries


def test_a_span_continues_its_parents_trace_with_an_id_of_its_own() -> None:
    parent = tracecontext.parse(VALID)
    span = tracecontext.start(parent)
    assert (span.trace_id, span.parent_id, span.flags) == (TRACE, SPAN, "01")
    assert span.span_id != SPAN
    assert re.fullmatch(rf"00-{TRACE}-[0-9a-f]{{16}}-01", span.traceparent)
    assert tracecontext.parse(span.traceparent) == tracecontext.Parent(TRACE, span.span_id, "01")


def test_without_a_parent_a_new_trace_starts() -> None:
    first, second = tracecontext.start(), tracecontext.start()
    assert first.trace_id != second.trace_id and first.parent_id is None
    assert tracecontext.parse(first.traceparent) is not None


def test_bound_restores_the_span_before_it_even_after_an_event_continued_another() -> None:
    outer = tracecontext.start()
    with tracecontext.bound(outer):
        with tracecontext.bound(tracecontext.start()):
            assert tracecontext.continue_from("not a traceparent") is None
            followed = tracecontext.continue_from(VALID)
            assert followed is not None and tracecontext.current() == followed
        assert tracecontext.current() == outer
    assert tracecontext.current() is None


@given(st.text(max_size=80))
def test_parse_never_raises_and_accepts_only_the_layout(value: str) -> None:
    parent = tracecontext.parse(value)
    if parent is not None:
        assert re.match(r"[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}", value)
