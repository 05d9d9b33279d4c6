"""Live activity's pure parts: the slots that bound waiters and streams, an event's bytes,
and the long-poll's waiting (with the clock's sleep replaced, so nothing really waits)."""

from __future__ import annotations

import pytest

from duetide.errors import RateLimited, Unavailable
from duetide.services.responses import ActivityItem, ActivityPage
from duetide.web import live


def item(event_id: str) -> ActivityItem:
    return ActivityItem(
        type="dev.duetide.task.deleted.v1",
        task_id="t1",
        at="2026-12-02T14:00:00+00:00",
        event_id=event_id,
        actor="user:alice",
        series_id=None,
        deleted=True,
        task=None,
        superseded=False,
        changes=None,
    )


def test_a_slot_over_the_bound_is_a_503_and_is_given_back_once() -> None:
    slots = live.Slots(2, "streams")
    give_back = slots.take("alice")
    bobs = slots.take("bob")
    with pytest.raises(Unavailable) as refused:
        slots.take("carol")
    assert refused.value.headers == {"Retry-After": "1"}
    give_back()
    give_back()  # twice: still one slot, not two
    again = slots.take("carol")
    with pytest.raises(Unavailable):
        slots.take("alice")
    again()
    bobs()
    with pytest.raises(Unavailable):
        live.Slots(0, "streams").take("alice")


def test_one_owner_holds_at_most_half_of_the_slots() -> None:
    """One user held every stream of a process, and everyone else got 503."""
    slots = live.Slots(4, "streams")
    held = [slots.take("hog"), slots.take("hog")]
    with pytest.raises(RateLimited) as refused:
        slots.take("hog")
    assert refused.value.status == 429 and refused.value.headers == {"Retry-After": "1"}
    others = [slots.take("alice"), slots.take("bob")]  # the rest stay theirs to take
    held[0]()
    held.append(slots.take("hog"))  # a share given back can be taken again
    for give_back in held + others:
        give_back()
    assert [slots.take("solo"), slots.take("solo")]  # all free again
    one = live.Slots(1, "streams")  # one slot: one owner may take it
    one.take("hog")


def test_an_event_names_its_id_type_and_data_on_single_lines() -> None:
    text = live.sse_event("tok_1", item("e\n1")).decode()
    lines = text.split("\n")
    assert lines[0] == "id: tok_1"
    assert lines[1] == "event: dev.duetide.task.deleted.v1"
    assert lines[2].startswith("data: {") and '"event_id":"e\\n1"' in lines[2]
    assert lines[3:] == ["", ""]  # the blank line that ends the event


def test_a_long_poll_answers_at_the_first_read_with_items_and_takes_no_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(live, "waiters", lambda: live.Slots(0, "waiting requests"))
    full = ActivityPage(items=[item("e1")], since="s1", more=False)

    def never(seconds: float) -> None:
        pytest.fail("a long-poll with items waited")

    assert live.wait_for_page("alice", lambda: full, 25, sleep=never) is full


def test_a_long_poll_reads_until_an_item_or_the_end_of_the_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = [0.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    empty = ActivityPage(items=[], since="s0", more=False)
    full = ActivityPage(items=[item("e1")], since="s1", more=False)
    pages = iter([empty, empty, empty, full])
    assert live.wait_for_page("alice", lambda: next(pages), 10, sleep=sleep) is full
    assert slept == [0.5, 0.5, 0.5]

    slept.clear()
    assert live.wait_for_page("alice", lambda: empty, 1.2, sleep=sleep) is empty
    assert slept == pytest.approx([0.5, 0.5, 0.2])


def test_a_long_poll_answers_once_the_process_is_told_to_stop() -> None:
    """SIGTERM with a long-poll waiting: it answers what it has at once, instead of
    holding the shutdown up to its whole wait (an audit, 2026-12-07)."""
    empty = ActivityPage(items=[], since="s0", more=False)
    reads: list[ActivityPage] = []

    def read() -> ActivityPage:
        reads.append(empty)
        if len(reads) == 1:
            live.STOPPING.set()  # the signal arrives while it waits
        return empty

    try:
        assert live.wait_for_page("alice", read, 25) is empty
    finally:
        live.STOPPING.clear()
    assert len(reads) == 1
