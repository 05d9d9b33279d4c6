"""The delivery guarantees of RELIABILITY.md, each as a scenario against real parts.

The broker is the embedded Kafka-compatible one (over the Kafka protocol), the
functions are the real functions-framework apps, the database is SQLite and
PostgreSQL. Crashes are simulated where they would happen: a database error at the
commit, a failure between the broker's ack and the mark of the outbox row, an answer
that never reaches the deliverer.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, SQLModel, col, func, select

from duetide import events
from duetide.services import sweep
from duetide.storage import db, outbox
from duetide.storage.models import Notification, Outbox, ProcessedEvent, Task, utcnow
from duetide_tools import topic_reader
from duetide_tools.local import broker as broker_module
from duetide_tools.local.broker import EmbeddedBroker, ensure_topics, free_loopback_port
from duetide_tools.local.eventing import record_to_event, source_retries
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import auth_headers, function_client, use_broker
from tests.support import json_of

DAILY = {
    "title": "Water plants",
    "due_at": "2027-03-27T09:00:00+01:00",  # the next one crosses the DST change
    "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"},
}


# ------------------------------------------------------------------ helpers


@pytest.fixture
def kafka(broker: EmbeddedBroker, topics: dict[str, str], monkeypatch: pytest.MonkeyPatch):
    """The session broker with this test's topics, as the functions' publisher target."""
    ensure_topics(broker.bootstrap_servers, [TopicSpec(n, partitions=3) for n in topics.values()])
    use_broker(monkeypatch, broker.bootstrap_servers)
    return broker.bootstrap_servers


def read_topic(bootstrap_servers: str, topic: str) -> list[Any]:
    """Every record on `topic` (all partitions, to the true end), read without a group.

    Not to the ListOffsets end: the embedded broker under-reports it after a burst, which
    would hide the very duplicates these tests count (see `duetide_tools.topic_reader`)."""
    return topic_reader.read_records(bootstrap_servers, topic)


def ce_id(record: Any) -> str:
    return dict(record.headers)["ce_id"].decode()


def deliver(sink: Any, event_type: str, data: Any, event_id: str, source: str = "/test") -> Any:
    """POST one binary-mode CloudEvent, encoded by the SDK, as a KafkaSource would."""
    event = events.build(event_id=event_id, type=event_type, source=source, subject="s", data=data)
    headers, body = events.to_http(event)
    return sink.post("/", headers=headers, data=body)


def deliver_record(sink: Any, record: Any) -> Any:
    """POST a Kafka record the way the local KafkaSource dispatcher converts it."""
    headers, body = to_binary(record_to_event(record, "test"), data_marshaller=lambda d: d)
    return sink.post("/", headers=headers, data=body)


def count(model: Any, *where: Any) -> int:
    with db.session_scope(read_only=True) as session:
        return session.exec(select(func.count()).select_from(model).where(*where)).one()


def outbox_rows(event_type: str, key: str | None = None) -> list[Outbox]:
    with db.session_scope(read_only=True) as session:
        query = select(Outbox).where(Outbox.type == event_type)
        if key is not None:
            query = query.where(Outbox.key == key)
        return list(session.exec(query.order_by(col(Outbox.created_at))).all())


def pending() -> list[Outbox]:
    with db.session_scope(read_only=True) as session:
        return list(session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all())


def occurrences(series_id: str) -> list[tuple[str, str]]:
    """(scheduled_at, status) of every task of the series, in schedule order."""
    with db.session_scope(read_only=True) as session:
        rows = session.exec(
            select(Task.scheduled_at, Task.status)
            .where(Task.series_id == series_id)
            .order_by(col(Task.scheduled_at))
        ).all()
    found = [(at.isoformat(), status) for at, status in rows if at is not None]
    assert len(found) == len(rows), "an occurrence has no scheduled time"
    return found


def state() -> dict[str, Any]:
    """What a redelivery must not change: tasks, outbox, notifications, processed ids."""
    with db.session_scope(read_only=True) as session:
        tasks = session.exec(select(Task.id, Task.status, Task.scheduled_at)).all()
        return {
            "tasks": sorted((t, s, str(at)) for t, s, at in tasks),
            "outbox": count(Outbox),
            "notifications": count(Notification),
            "processed": count(ProcessedEvent),
        }


def ping(sweep_client: Any) -> Any:
    return deliver(sweep_client, events.PING, {"sweep": True}, str(uuid.uuid4()), "/ping")


def db_error(statement: str) -> OperationalError:
    return OperationalError(statement, None, ConnectionError("server closed the connection"))


@contextmanager
def commit_fails(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every commit fails after its statements were flushed: the crash before commit."""

    def failing_commit(session: Session) -> None:
        session.flush()
        raise db_error("COMMIT")

    with monkeypatch.context() as patch:
        patch.setattr(Session, "commit", failing_commit)
        yield


@pytest.fixture
def recurrence(env: str) -> Any:
    return function_client("recurrence")


@pytest.fixture
def notify(env: str) -> Any:
    return function_client("notify")


@pytest.fixture
def sweeper(env: str) -> Any:
    return function_client("sweep")


def create_series(client: Any, alice: dict[str, str], body: dict[str, Any] = DAILY) -> Any:
    response = client.post("/tasks", json=body, headers=alice)
    assert response.status_code == 201, response.json
    return response.json


def complete(client: Any, alice: dict[str, str], task_id: str) -> dict[str, Any]:
    """Complete via the API; the data of the task.completed event it wrote."""
    known = {row.id for row in outbox_rows(events.TASK_COMPLETED, task_id)}
    assert client.post(f"/tasks/{task_id}/complete", headers=alice).status_code == 200
    [row] = [r for r in outbox_rows(events.TASK_COMPLETED, task_id) if r.id not in known]
    return {"id": row.id, "data": row.data}


def due_reminder_event(client: Any, alice: dict[str, str], sweeper: Any) -> Outbox:
    """A task whose reminder is due, claimed by a sweep: its reminder.due outbox row."""
    at = (utcnow() - timedelta(seconds=5)).isoformat()
    body = {"title": "Call back", "reminders": [{"at": at}]}
    assert client.post("/tasks", json=body, headers=alice).status_code == 201
    assert ping(sweeper).status_code == 200
    [row] = outbox_rows(events.REMINDER_DUE)
    return row


# ------------------------------------------ 1. broker down while tasks are created


def test_broker_down_api_answers_201_and_each_event_is_published_once_when_it_is_back(
    client, alice, sweeper, topics, monkeypatch, tmp_path: Path
):
    port = free_loopback_port()  # nothing listens here yet: the broker is down
    use_broker(monkeypatch, f"127.0.0.1:{port}")
    answers = [client.post("/tasks", json={"title": f"t{i}"}, headers=alice) for i in range(3)]
    assert [a.status_code for a in answers] == [201, 201, 201]
    assert len(pending()) == 3
    assert ping(sweeper).status_code == 200  # the relay tries, and keeps them
    assert len(pending()) == 3

    monkeypatch.setattr(broker_module, "free_loopback_port", lambda: port)
    # The broker comes back at the same address (memory only: an in-memory broker keeps
    # nothing to flush, so it need not be given long to stop).
    with EmbeddedBroker(log_path=tmp_path / "broker.log", stop_timeout_s=1) as back:
        ensure_topics(back.bootstrap_servers, [TopicSpec(topics["tasks"], partitions=3)])
        assert ping(sweeper).status_code == 200  # the same process's publisher recovers
        assert pending() == []
        assert ping(sweeper).status_code == 200  # a sent row is not sent again
        records = read_topic(back.bootstrap_servers, topics["tasks"])
        publisher = outbox.get_publisher()
        assert publisher is not None
        publisher.close()
    rows = outbox_rows(events.TASK_CREATED)
    assert Counter(ce_id(r) for r in records) == {row.id: 1 for row in rows}
    assert {r.key.decode() for r in records} == {a.json["id"] for a in answers}


# ------------------------------------------------- 2. failure before the commit


def test_api_failure_before_commit_leaves_no_row_and_no_event(
    client, alice, kafka, topics, monkeypatch
):
    with commit_fails(monkeypatch):
        answer = client.post("/tasks", json={"title": "lost"}, headers=alice)
    assert answer.status_code == 503  # transient: the client may retry
    assert count(Task) == 0 and count(Outbox) == 0
    assert outbox.relay_pending() == 0
    assert read_topic(kafka, topics["tasks"]) == []
    # The retry succeeds: exactly one task and one event.
    assert client.post("/tasks", json={"title": "lost"}, headers=alice).status_code == 201
    assert count(Task) == 1 and len(read_topic(kafka, topics["tasks"])) == 1


def test_sink_failure_before_commit_leaves_no_effect_and_the_redelivery_applies_it(
    client, alice, recurrence, monkeypatch
):
    first = create_series(client, alice)
    completed = complete(client, alice, first["id"])
    before = state()
    with commit_fails(monkeypatch):
        answer = deliver(recurrence, events.TASK_COMPLETED, completed["data"], completed["id"])
    assert answer.status_code == 503  # the KafkaSource retries it
    assert state() == before  # no next occurrence, no outbox row, no processed id
    redelivered = deliver(recurrence, events.TASK_COMPLETED, completed["data"], completed["id"])
    assert redelivered.json["status"] == "processed"
    assert len(occurrences(first["series_id"])) == 2


def test_command_failure_before_commit_leaves_no_task_and_the_retry_creates_one(
    client, alice, monkeypatch
):
    event = events.build(
        event_id="cmd-1", type=events.CMD_TASK_CREATE, source="/crm", subject="",
        data={"task": {"title": "Call the customer"}},
    )  # fmt: skip
    headers, body = events.to_http(event)
    with commit_fails(monkeypatch):
        answer = client.post("/commands", headers={**headers, **alice}, data=body)
    assert answer.status_code == 503
    assert count(Task) == 0 and count(Outbox) == 0 and count(ProcessedEvent) == 0
    assert client.post("/commands", headers={**headers, **alice}, data=body).status_code == 201
    assert count(Task) == 1


# ------------------------- 3. publisher killed after the broker's ack, before the mark


def test_crash_after_ack_sends_the_completion_twice_and_recurrence_materialises_once(
    client, alice, recurrence, kafka, topics, monkeypatch
):
    first = create_series(client, alice)  # published by the fast path, marked sent

    def crash_before_mark(session: Session, ids: list[str]) -> None:
        raise db_error("UPDATE outbox")

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "mark_sent", crash_before_mark)
        answer = client.post(f"/tasks/{first['id']}/complete", headers=alice)
    assert answer.status_code == 200  # committed, so answered as such
    [completed] = outbox_rows(events.TASK_COMPLETED)
    assert [row.id for row in pending()] == [completed.id]  # acked, but not marked
    assert outbox.relay_pending() == 1  # the relay sends it again, same ce_id
    records = read_topic(kafka, topics["tasks"])
    assert Counter(ce_id(r) for r in records)[completed.id] == 2

    answers = [deliver_record(recurrence, r) for r in records]
    assert [a.status_code for a in answers] == [200] * len(records)
    statuses = [a.json["status"] for r, a in zip(records, answers, strict=True)
                if ce_id(r) == completed.id]  # fmt: skip
    assert statuses == ["processed", "duplicate"]
    assert len(occurrences(first["series_id"])) == 2


def test_relay_crash_after_ack_sends_the_reminder_twice_and_notify_delivers_once(
    client, alice, notify, sweeper, topics, broker, monkeypatch
):
    due = due_reminder_event(client, alice, sweeper)  # claimed while no broker is configured
    ensure_topics(broker.bootstrap_servers, [TopicSpec(topics["reminders"], partitions=3)])
    use_broker(monkeypatch, broker.bootstrap_servers)

    def crash_before_mark(session: Session, ids: list[str]) -> None:
        raise db_error("UPDATE outbox")

    with monkeypatch.context() as patch:
        patch.setattr(outbox, "mark_sent", crash_before_mark)
        assert ping(sweeper).status_code == 503  # the relay died after the ack
    assert due.id in {row.id for row in pending()}
    assert ping(sweeper).status_code == 200
    assert pending() == []
    records = read_topic(broker.bootstrap_servers, topics["reminders"])
    assert [ce_id(r) for r in records] == [due.id, due.id]

    first = deliver_record(notify, records[0])
    assert first.json["status"] == "processed"
    delivered = count(Notification)
    assert delivered >= 1
    second = deliver_record(notify, records[1])
    assert (second.status_code, second.json["status"]) == (200, "duplicate")
    assert count(Notification) == delivered


# ------------------------------- 4. one completion, delivered many times and reordered


def test_same_completion_delivered_five_times_yields_exactly_one_next_occurrence(
    client, alice, recurrence
):
    first = create_series(client, alice)
    completed = complete(client, alice, first["id"])
    answers = [
        deliver(recurrence, events.TASK_COMPLETED, completed["data"], completed["id"])
        for _ in range(5)
    ]
    assert [a.json["status"] for a in answers] == ["processed"] + ["duplicate"] * 4
    # The same fact under other ids (a producer that re-sent it as new events): still one.
    for _ in range(5):
        deliver(recurrence, events.TASK_COMPLETED, completed["data"], str(uuid.uuid4()))
    assert occurrences(first["series_id"]) == [
        ("2027-03-27T08:00:00+00:00", "done"),
        ("2027-03-28T07:00:00+00:00", "open"),  # 09:00 Berlin, after the DST change
    ]


@pytest.mark.parametrize(
    "order",
    [("first", "second"), ("second", "first"), ("second", "first", "second", "first", "first")],
)
def test_complete_reopen_complete_yields_exactly_one_next_occurrence(
    client, alice, recurrence, order
):
    first = create_series(client, alice)
    completions = {"first": complete(client, alice, first["id"])}
    assert client.post(f"/tasks/{first['id']}/reopen", headers=alice).status_code == 200
    completions["second"] = complete(client, alice, first["id"])
    for name in order:
        event = completions[name]
        deliver(recurrence, events.TASK_COMPLETED, event["data"], event["id"])
    assert [status for _, status in occurrences(first["series_id"])] == ["done", "open"]


# -------------------- 5. many series, shuffled and duplicated: same as ordered and once

RULES = [
    DAILY,
    {"title": "Weekly, twice", "due_at": "2027-01-04T08:30:00Z",
     "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=2"}},
    {"title": "Month end", "due_at": "2027-01-31T18:00:00-05:00",
     "recurrence": {"rrule": "FREQ=MONTHLY;BYMONTHDAY=31", "timezone": "America/New_York"}},
]  # fmt: skip
PLANS = st.lists(
    st.tuples(st.sampled_from(range(len(RULES))), st.integers(min_value=1, max_value=3)),
    min_size=1,
    max_size=3,
)
MAX_RANDOM_STEPS = 25


def fresh_tables() -> None:
    with db.session_scope() as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(text(f"DELETE FROM {table.name}"))


class History:
    """Series driven through the API, their task.completed events delivered by the test."""

    def __init__(self, client: Any, recurrence: Any, plans: list[tuple[int, int]]):
        fresh_tables()
        self.client, self.recurrence = client, recurrence
        self.alice = auth_headers("alice")
        self.series = [create_series(client, self.alice, RULES[r])["series_id"] for r, _ in plans]
        self.remaining = [k for _, k in plans]  # completions of distinct occurrences to do
        self.completed: set[str] = set()
        self.reopened: set[str] = set()
        self.last_completed: dict[int, str] = {}
        self.undelivered: list[dict[str, Any]] = []
        self.delivered: list[dict[str, Any]] = []

    def open_tasks(self) -> dict[str, str]:
        """series id -> its open occurrence (at most one at any time)."""
        with db.session_scope() as session:
            rows = session.exec(
                select(Task.series_id, Task.id).where(
                    col(Task.series_id).in_(self.series), Task.status == "open"
                )
            ).all()
        found = {series_id: task_id for series_id, task_id in rows if series_id}
        assert len(found) == len(rows), rows
        return found

    def can_complete(self, index: int, open_tasks: dict[str, str]) -> str | None:
        task = open_tasks.get(self.series[index])
        wanted = task is not None and (task in self.reopened or self.remaining[index] > 0)
        return task if wanted else None

    def complete(self, index: int, task_id: str) -> None:
        if task_id not in self.completed:
            self.remaining[index] -= 1
        self.completed.add(task_id)
        self.reopened.discard(task_id)
        self.last_completed[index] = task_id
        self.undelivered.append(complete(self.client, self.alice, task_id))

    def reopen(self, index: int) -> None:
        task_id = self.last_completed[index]
        answer = self.client.post(f"/tasks/{task_id}/reopen", headers=self.alice)
        assert answer.status_code == 200
        self.reopened.add(task_id)

    def deliver(self, event: dict[str, Any], event_id: str | None = None) -> None:
        answer = deliver(
            self.recurrence, events.TASK_COMPLETED, event["data"], event_id or event["id"],
            events.SOURCE_TASKS,
        )  # fmt: skip
        assert answer.status_code == 200, answer.json

    def deliver_first(self, position: int) -> None:
        event = self.undelivered.pop(position)
        self.deliver(event)
        self.delivered.append(event)

    def finish_in_order(self) -> None:
        """Complete what is left and deliver everything, each once, in order."""
        while self.undelivered:
            self.deliver_first(0)
        for index in range(len(self.series)):
            while (task := self.can_complete(index, self.open_tasks())) is not None:
                self.complete(index, task)
                self.deliver_first(0)

    def final(self) -> list[tuple[int, str, str]]:
        """(series number, scheduled_at, status) of every occurrence: comparable across runs."""
        number = {series_id: n for n, series_id in enumerate(self.series)}
        return sorted(
            (number[series_id], at, status)
            for series_id in self.series
            for at, status in occurrences(series_id)
        )


def shuffled_duplicated_run(history: History, data: st.DataObject) -> None:
    """Random interleaving across series, reopen/complete cycles, redeliveries (same id or
    re-sent under a new id), then the whole stream again shuffled and duplicated.

    A completion's event can only exist once its occurrence does, so within a series the
    first delivery of completion n+1 follows completion n; everything else is free.
    """
    for _ in range(MAX_RANDOM_STEPS):
        moves: list[tuple[str, Any]] = [("deliver", n) for n in range(len(history.undelivered))]
        open_tasks = history.open_tasks()
        for index, series_id in enumerate(history.series):
            task = history.can_complete(index, open_tasks)
            if task is not None:
                moves.append(("complete", (index, task)))
            elif index in history.last_completed and series_id not in open_tasks:
                moves.append(("reopen", index))
        if history.delivered:
            moves.append(("redeliver", None))
        if not moves:
            break
        move, arg = data.draw(st.sampled_from(moves))
        if move == "deliver":
            history.deliver_first(arg)
        elif move == "complete":
            history.complete(*arg)
        elif move == "reopen":
            history.reopen(arg)
        else:
            event = data.draw(st.sampled_from(history.delivered))
            history.deliver(event, None if data.draw(st.booleans()) else str(uuid.uuid4()))
    history.finish_in_order()
    replay = data.draw(st.permutations(history.delivered + history.delivered))
    for event in replay:
        history.deliver(event)


@settings(
    max_examples=25,
    deadline=None,
    # No shrinking: an example takes ~0.3 s, shrinking would outlast the test timeout;
    # a failure is reported with every draw, which is enough to replay it.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plans=PLANS, data=st.data())
def test_shuffled_duplicated_completions_end_as_the_ordered_deduplicated_stream(
    client, recurrence, plans, data
):
    shuffled = History(client, recurrence, plans)
    shuffled_duplicated_run(shuffled, data)
    outcome = shuffled.final()  # the next History starts on fresh tables
    ordered = History(client, recurrence, plans)
    ordered.finish_in_order()
    assert outcome == ordered.final()
    assert shuffled.remaining == ordered.remaining


# ---------------------------- 6. a consumer killed after its commit, before answering


def test_recurrence_answer_lost_after_commit_redelivery_changes_nothing(client, alice, recurrence):
    first = create_series(client, alice)
    completed = complete(client, alice, first["id"])
    deliver(recurrence, events.TASK_COMPLETED, completed["data"], completed["id"])  # lost
    assert len(occurrences(first["series_id"])) == 2  # the effect committed
    before = state()
    again = deliver(recurrence, events.TASK_COMPLETED, completed["data"], completed["id"])
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert state() == before


def test_notify_answer_lost_after_commit_redelivery_changes_nothing(client, alice, notify, sweeper):
    due = due_reminder_event(client, alice, sweeper)
    deliver(notify, events.REMINDER_DUE, due.data, due.id, due.source)  # answer lost
    assert count(Notification) >= 1
    before = state()
    again = deliver(notify, events.REMINDER_DUE, due.data, due.id, due.source)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert state() == before


def test_command_answer_lost_after_commit_retry_changes_nothing(client, alice):
    event = events.build(
        event_id="cmd-2", type=events.CMD_TASK_CREATE, source="/crm", subject="",
        data={"task": {"title": "Send the offer"}},
    )  # fmt: skip
    headers, body = events.to_http(event)
    client.post("/commands", headers={**headers, **alice}, data=body)  # answer lost
    assert count(Task) == 1
    before = state()
    again = client.post("/commands", headers={**headers, **alice}, data=body)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert state() == before


def test_command_keys_of_two_users_never_collide_whatever_their_text(client):
    """User `team|alice` from `/shop` and user `team` from `alice|/shop`, same id: once
    joined with "|" into one key, the second was taken for a duplicate of the first."""
    sent = []
    for user, source in (("team|alice", "/shop"), ("team", "alice|/shop")):
        event = events.build(
            event_id="order-9", type=events.CMD_TASK_CREATE, source=source, subject="",
            data={"task": {"title": f"for {user}"}},
        )  # fmt: skip
        headers, body = events.to_http(event)
        answer = client.post("/commands", headers={**headers, **auth_headers(user)}, data=body)
        sent.append((answer.status_code, answer.json["status"]))
    assert sent == [(201, "processed"), (201, "processed")]
    assert count(Task) == 2


def test_a_command_whose_key_is_too_large_to_index_is_refused_not_retried(env, client):
    """User, source and id each within 255 characters, but in 4-byte characters the
    processed-id key outgrew PostgreSQL's index row (2,704 bytes): answered 503, which
    the KafkaSource retried, then dead-lettered, holding the partition meanwhile."""
    # Printable, 4 bytes each in UTF-8, and varied: PostgreSQL compresses a repetitive key.
    wide = "".join(chr(0x20000 + i * 7919 % 0xA6D0) for i in range(255))
    event = events.build(
        event_id=wide, type=events.CMD_TASK_CREATE, source=wide, subject="",
        data={"task": {"title": "wide"}},
    )  # fmt: skip
    headers, body = events.to_http(event)
    answer = client.post("/commands", headers={**headers, **auth_headers(wide)}, data=body)
    if env.startswith("postgresql"):
        assert answer.status_code == 400, answer.json
        assert answer.json["error"]["message"] == "a value of this request is too large to store"
        assert count(Task) == 0 and count(ProcessedEvent) == 0
    else:  # SQLite has no such limit
        assert answer.status_code == 201, answer.json


def test_processed_ids_are_purged_after_the_redelivery_window(env):
    now = utcnow()
    with db.session_scope() as session:
        for name, age in (
            ("old", sweep.PROCESSED_EVENT_TTL + timedelta(minutes=1)),
            ("recent", sweep.PROCESSED_EVENT_TTL - timedelta(minutes=1)),
        ):
            session.add(ProcessedEvent(consumer="recurrence", source="/t", event_id=name,
                                       processed_at=now - age))  # fmt: skip
    sweep.purge_processed(now)
    with db.session_scope() as session:
        assert session.exec(select(ProcessedEvent.event_id)).all() == ["recent"]


def test_a_backlog_is_purged_in_short_transactions_over_several_pings(env, monkeypatch):
    """One DELETE of everything expired held its locks (on SQLite: the write lock every
    writer waits for) as long as a backlog took; now each deletes a batch at most."""
    monkeypatch.setattr(sweep, "PURGE_BATCH", 10)
    now = utcnow()
    old = now - sweep.PROCESSED_EVENT_TTL - timedelta(minutes=1)
    with db.session_scope() as session:
        session.add_all(
            ProcessedEvent(
                consumer="recurrence",
                source="/t",
                event_id=f"old-{n}",
                processed_at=old - timedelta(seconds=n),
            )
            for n in range(35)
        )
        session.add(ProcessedEvent(consumer="notify", source="/t", event_id="recent",
                                   processed_at=now))  # fmt: skip
        session.add_all(
            Outbox(
                topic="t", key=f"k{n}", type="x", source="/s", data={}, created_at=old, sent_at=old
            )
            for n in range(3)
        )
    deleted: list[int] = []
    delete_batch = sweep._delete_batch

    def counted(*args):
        deleted.append(delete_batch(*args))  # each batch a transaction of its own
        return deleted[-1]

    monkeypatch.setattr(sweep, "_delete_batch", counted)
    monkeypatch.setattr(sweep, "PURGE_BUDGET_S", 0.0)  # a ping with no time: one round
    assert sweep.purge_processed(now) == 10 + 3
    monkeypatch.setattr(sweep, "PURGE_BUDGET_S", 60.0)
    assert sweep.purge_processed(now) == 25
    assert max(deleted) == 10 and sum(deleted) == 38
    with db.session_scope() as session:
        assert session.exec(select(ProcessedEvent.event_id)).all() == ["recent"]
        assert session.exec(select(Outbox.key)).all() == []


def test_sent_outbox_rows_are_purged_after_their_keeping_time_and_unsent_ones_never(env):
    now = utcnow()
    old = now - sweep.SENT_OUTBOX_TTL - timedelta(minutes=1)
    recent = now - sweep.SENT_OUTBOX_TTL + timedelta(minutes=1)
    with db.session_scope() as session:
        for key, created, sent in (
            ("old", old, old),
            ("recent", old, recent),
            ("unsent", old, None),
        ):
            session.add(Outbox(topic="t", key=key, type="x", source="/s", data={},
                               created_at=created, sent_at=sent))  # fmt: skip
    sweep.purge_processed(now)
    with db.session_scope() as session:
        assert sorted(session.exec(select(Outbox.key)).all()) == ["recent", "unsent"]


# ------------------------- 8. malformed CloudEvents, structured mode and /commands

STRUCTURED = {"content-type": "application/cloudevents+json"}
GOOD = {"specversion": "1.0", "id": "1", "type": events.TASK_COMPLETED, "source": "/s"}


def structured(**changes: Any) -> bytes:
    envelope = {k: v for k, v in {**GOOD, **changes}.items() if v is not None}
    return json.dumps(envelope).encode()


CE_JSON = "application/cloudevents+json"
MALFORMED_STRUCTURED = [
    pytest.param(CE_JSON, structured(id=None), 400, id="missing-id"),
    pytest.param(CE_JSON, structured(type=None), 400, id="missing-type"),
    pytest.param(CE_JSON, structured(source=None), 400, id="missing-source"),
    pytest.param(CE_JSON, structured(specversion=None), 400, id="missing-specversion"),
    pytest.param(CE_JSON, structured(id=""), 400, id="empty-id"),
    pytest.param(CE_JSON, structured(specversion="0.3"), 400, id="specversion-0.3"),
    pytest.param(CE_JSON, b"{bad json", 400, id="bad-json"),
    pytest.param(CE_JSON, b"[]", 400, id="array"),
    pytest.param(CE_JSON, b'"an event"', 400, id="string"),
    pytest.param(CE_JSON, b"", 400, id="empty-body"),
    pytest.param(CE_JSON, b"\xff\xfe{}", 400, id="not-utf8"),
    pytest.param(
        CE_JSON,
        structured(datacontenttype="application/json", data_base64="bm90IGpzb24="),
        400,
        id="data-not-json",
    ),
    pytest.param("application/cloudevents-batch+json", b"[" + structured() + b"]", 415, id="batch"),
    pytest.param("application/cloudevents+xml", b"<event/>", 415, id="xml-format"),
    pytest.param("text/plain", structured(), 415, id="text-plain"),
    pytest.param(CE_JSON, structured(data="x" * 2_000_000), 413, id="oversized"),
]
BINARY = {"ce-id": "1", "ce-type": events.CMD_TASK_CREATE, "ce-source": "/s",
          "ce-specversion": "1.0", "content-type": "application/json"}  # fmt: skip
MALFORMED_BINARY = [
    pytest.param({**BINARY, "ce-id": None}, b"{}", 400, id="missing-id"),
    pytest.param({**BINARY, "ce-type": None}, b"{}", 400, id="missing-type"),
    pytest.param({**BINARY, "ce-specversion": None}, b"{}", 400, id="missing-specversion"),
    pytest.param({**BINARY, "ce-specversion": "0.3"}, b"{}", 400, id="specversion-0.3"),
    pytest.param(BINARY, b"{not json", 400, id="bad-json"),
    pytest.param({**BINARY, "content-type": "application/xml"}, b"<a/>", 415, id="xml-data"),
    pytest.param({"content-type": "application/json"}, b"{}", 400, id="no-cloudevent"),
    pytest.param(BINARY, b"[" * 2_000_000, 413, id="oversized"),
]


def nothing_written() -> bool:
    return count(Task) == count(Outbox) == count(ProcessedEvent) == count(Notification) == 0


@pytest.mark.parametrize("name", ["recurrence", "sweep", "notify"])
@pytest.mark.parametrize(("content_type", "body", "status"), MALFORMED_STRUCTURED)
def test_malformed_structured_cloudevents_get_4xx_and_write_nothing(
    env, name, content_type, body, status
):
    answer = function_client(name).post("/", headers={"content-type": content_type}, data=body)
    assert answer.status_code == status, answer.json
    assert "error" in json_of(answer)
    assert nothing_written()


@pytest.mark.parametrize(("content_type", "body", "status"), MALFORMED_STRUCTURED)
def test_malformed_structured_commands_get_4xx_and_write_nothing(
    client, alice, content_type, body, status
):
    headers = {"content-type": content_type, **alice}
    answer = client.post("/commands", headers=headers, data=body)
    assert answer.status_code == status, answer.json
    assert nothing_written()


@pytest.mark.parametrize(("headers", "body", "status"), MALFORMED_BINARY)
def test_malformed_binary_commands_get_4xx_and_write_nothing(client, alice, headers, body, status):
    sent = {k: v for k, v in headers.items() if v is not None}
    answer = client.post("/commands", headers={**sent, **alice}, data=body)
    assert answer.status_code == status, answer.json
    assert nothing_written()


def command(event_type: str, data: Any, event_id: str = "c-1") -> tuple[dict[str, str], bytes]:
    event = events.build(event_id=event_id, type=event_type, source="/crm", subject="", data=data)
    return events.to_http(event)


@pytest.mark.parametrize(
    ("event_type", "data", "status"),
    [
        ("dev.duetide.task.delete.v1", {"task_id": "x"}, 400),  # unknown command type
        (events.CMD_TASK_COMPLETE, {"task_id": 5}, 400),
        (events.CMD_TASK_COMPLETE, {"task_id": "x", "extra": 1}, 400),
        (events.CMD_TASK_CREATE, None, 400),
        (events.CMD_TASK_CREATE, {"task": {"title": ""}}, 422),
        # Not 404, which a KafkaSource retries: it held the partition ~31 s.
        (events.CMD_TASK_COMPLETE, {"task_id": str(uuid.uuid4())}, 422),
    ],
)
def test_invalid_commands_get_4xx_and_write_nothing(client, alice, event_type, data, status):
    headers, body = command(event_type, data)
    answer = client.post("/commands", headers={**headers, **alice}, data=body)
    assert answer.status_code == status, answer.json
    assert not source_retries(answer.status_code)  # the content is wrong: never again
    assert nothing_written()


def test_commands_need_a_valid_sender_in_either_mode(client, alice):
    headers, body = command(events.CMD_TASK_CREATE, {"task": {"title": "x"}})
    assert client.post("/commands", headers=headers, data=body).status_code == 401
    forged = {**headers, "Authorization": "Bearer not.a.token"}
    assert client.post("/commands", headers=forged, data=body).status_code == 401
    unsigned = {**headers, "ce-duetideuser": "alice"}  # a user named, nobody vouching
    assert client.post("/commands", headers=unsigned, data=body).status_code == 401
    token_in_event = {**headers, "ce-authtoken": alice["Authorization"].split()[1]}
    assert client.post("/commands", headers=token_in_event, data=body).status_code == 400
    event = events.build(event_id="s-1", type=events.CMD_TASK_CREATE, source="/crm",
                         subject="", data={"task": {"title": "x"}})  # fmt: skip
    s_headers, s_body = to_structured(event, data_marshaller=lambda d: d)
    assert client.post("/commands", headers=s_headers, data=s_body).status_code == 401
    assert nothing_written()
