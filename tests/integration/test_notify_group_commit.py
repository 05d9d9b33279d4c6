"""notify's group commit (issue 16): concurrent deliveries checked and recorded in one
transaction, each still exactly once per channel, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import func, select

from duetide import events
from duetide.services import notify
from duetide.storage import db
from duetide.storage.models import Notification, ProcessedEvent, utcnow
from tests.integration.test_event_functions import due_reminder_event


def _count(model: Any) -> int:
    with db.session_scope(read_only=True) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def _held_group(
    monkeypatch: pytest.MonkeyPatch, waiting: int, race_group: bool = False
) -> list[int]:
    """One leader at a time, and the first group held until `waiting` events queue
    behind it, so the second group is all of them; returns the sizes of the groups
    (and of the events checked alone). `race_group`: after the second group's reads and
    before its INSERT, another transaction records the firing of its first event (then
    a 0 marks the race in the sizes).

    The queue has no signal of its own, so the held leader looks at it every 10 ms.
    """
    group = notify._GroupCommit(leaders=1)
    monkeypatch.setattr(notify, "_GROUP", group)
    commit_group = notify._commit_group
    sizes: list[int] = []
    never = threading.Event()

    def held(checks: list[notify._Check]) -> None:
        if not sizes:  # the first group: wait until the rest are queued behind it
            deadline = utcnow() + timedelta(seconds=30)
            while len(group._queue) < waiting and utcnow() < deadline:
                never.wait(0.01)
        sizes.append(len(checks))
        commit_group(checks)

    monkeypatch.setattr(notify, "_commit_group", held)
    if race_group:  # between the group's reads and its INSERT, from another thread
        notification_values = notify._notification_values

        def raced(due: events.ReminderEvent, channel: Any, result: Any, now: Any) -> dict[str, Any]:
            if len(sizes) == 2:
                racer = threading.Thread(target=_record_elsewhere, args=(due,))
                racer.start()
                racer.join(timeout=30)
                sizes.append(0)  # once
            return notification_values(due, channel, result, now)

        monkeypatch.setattr(notify, "_notification_values", raced)
    return sizes


def _record_elsewhere(due: events.ReminderEvent) -> None:
    with db.session_scope() as session:
        session.add(
            Notification(
                owner=due.owner, reminder_id=due.reminder_id, task_id=due.task_id,
                channel="log", scheduled_at=due.scheduled_at, detail="recorded elsewhere",
            )
        )  # fmt: skip


def _deliver_at_once(deliveries: list[tuple[str, events.ReminderEvent]]) -> list[str]:
    """Deliver all at once from threads; the statuses, in the order given."""
    statuses: list[str] = [""] * len(deliveries)
    start = threading.Barrier(len(deliveries))

    def one(index: int, event_id: str, due: events.ReminderEvent) -> None:
        start.wait()
        statuses[index] = notify.deliver("/duetide/sweep", event_id, due, utcnow())

    threads = [
        threading.Thread(target=one, args=(i, event_id, due))
        for i, (event_id, due) in enumerate(deliveries)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return statuses


def test_a_group_with_redeliveries_records_each_firing_once(client, alice, env, monkeypatch):
    firings = [
        events.ReminderEvent.model_validate(due_reminder_event(client, alice, f"t{i}"))
        for i in range(6)
    ]
    ids = [str(uuid.uuid4()) for _ in firings]
    # Each event three times under its id, and each firing once more under a new id.
    deliveries = [(event_id, due) for event_id, due in zip(ids, firings, strict=True)] * 3
    deliveries += [(str(uuid.uuid4()), due) for due in firings]
    sizes = _held_group(monkeypatch, waiting=len(deliveries) - 1)
    statuses = _deliver_at_once(deliveries)
    assert sizes[0] == 1 and sizes[1] == len(deliveries) - 1  # the rest in one transaction
    by_firing = Counter(
        (due.reminder_id, status) for (_, due), status in zip(deliveries, statuses, strict=True)
    )
    for due in firings:  # whichever of its four came first in the group sent it; the rest,
        # its own id again or the new one, are duplicates (not deliveries, nor late)
        assert by_firing[(due.reminder_id, "processed")] == 1
        assert by_firing[(due.reminder_id, "duplicate")] == 3
    assert _count(Notification) == len(firings)  # one log delivery per firing
    assert _count(ProcessedEvent) - _count_others() == len(firings) * 2
    again = _deliver_at_once([(event_id, due) for event_id, due in zip(ids, firings, strict=True)])
    assert again == ["duplicate"] * len(firings)
    assert _count(Notification) == len(firings)


def _count_others() -> int:
    """Processed ids of consumers other than notify."""
    with db.session_scope(read_only=True) as session:
        return session.exec(
            select(func.count())
            .select_from(ProcessedEvent)
            .where(ProcessedEvent.consumer != notify.CONSUMER)
        ).one()


def test_a_group_whose_commit_fails_is_checked_one_event_at_a_time(client, alice, env, monkeypatch):
    """Another delivery records one firing while the group runs (as a concurrent
    duplicate in another pod would): the group's INSERT fails on the unique key and
    commits nothing, then each event is checked alone: the others are delivered, and
    the conflicting one finds its firing recorded and sends nothing more. PostgreSQL
    only: SQLite's one writer cannot commit between a group's reads and its INSERT."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite's write lock, taken at BEGIN, keeps other writers out of a group")
    firings = [
        events.ReminderEvent.model_validate(due_reminder_event(client, alice, f"t{i}"))
        for i in range(4)
    ]
    sizes = _held_group(monkeypatch, waiting=len(firings) - 1, race_group=True)
    statuses = _deliver_at_once([(str(uuid.uuid4()), due) for due in firings])
    assert sizes == [1, 3, 0, 1, 1, 1]  # the failed group's three (raced), each alone after
    # The raced firing was sent by the other delivery: this one's is a duplicate of it.
    assert sorted(statuses) == ["duplicate"] + ["processed"] * (len(firings) - 1)
    with db.session_scope(read_only=True) as session:
        recorded = session.exec(select(Notification.reminder_id, Notification.detail)).all()
    assert sorted(reminder for reminder, _ in recorded) == sorted(d.reminder_id for d in firings)
    assert sorted(detail for _, detail in recorded) == ["", "", "", "recorded elsewhere"]


def test_a_batch_joins_the_group_of_the_events_queued_beside_it(client, alice, env, monkeypatch):
    """A reminder.due.batch's reminders wait as one ticket: held behind a leading event,
    they and a single event queued beside them commit as one group of four."""
    firings = [
        events.ReminderEvent.model_validate(due_reminder_event(client, alice, f"t{i}"))
        for i in range(5)
    ]
    sizes = _held_group(monkeypatch, waiting=2)  # the batch and the second single
    statuses: dict[str, list[str]] = {}

    def single(name: str, due: events.ReminderEvent) -> None:
        statuses[name] = [notify.deliver("/duetide/sweep", str(uuid.uuid4()), due, utcnow())]

    def batch() -> None:
        statuses["batch"] = notify.deliver_batch("/duetide/sweep", "b1", firings[1:4], utcnow())

    leader = threading.Thread(target=single, args=("first", firings[0]))
    leader.start()
    _wait_for(lambda: notify._GROUP._leaders == 1)
    others = [
        threading.Thread(target=batch),
        threading.Thread(target=single, args=("last", firings[4])),
    ]
    for thread in others:
        thread.start()
    for thread in [leader, *others]:
        thread.join(timeout=60)

    assert sizes == [1, 4]
    assert statuses == {"first": ["processed"], "batch": ["processed"] * 3, "last": ["processed"]}
    assert _count(Notification) == 5
    with db.session_scope(read_only=True) as session:
        scopes = session.exec(
            select(ProcessedEvent.scope).where(ProcessedEvent.event_id == "b1")
        ).all()
    assert sorted(scopes) == sorted(due.reminder_id for due in firings[1:4])


def test_a_batch_larger_than_a_group_commits_alone(client, alice, env, monkeypatch):
    firings = [
        events.ReminderEvent.model_validate(due_reminder_event(client, alice, f"t{i}"))
        for i in range(3)
    ]
    monkeypatch.setattr(notify, "_GROUP", notify._GroupCommit(limit=2, leaders=1))
    commit_group = notify._commit_group
    sizes: list[int] = []

    def counted(checks: list[notify._Check]) -> None:
        sizes.append(len(checks))
        commit_group(checks)

    monkeypatch.setattr(notify, "_commit_group", counted)
    assert notify.deliver_batch("/duetide/sweep", "b1", firings, utcnow()) == ["processed"] * 3
    assert sizes == [3] and _count(Notification) == 3


def _wait_for(condition: Any, timeout_s: float = 30) -> None:
    deadline = utcnow() + timedelta(seconds=timeout_s)
    while not condition():
        assert utcnow() < deadline, "timed out"
        threading.Event().wait(0.01)
