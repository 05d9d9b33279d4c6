"""The event pipeline keeps pace with load (issue 12, `scripts/bench pipeline`).

Three causes of latency and refusals that load exposed, each with the behaviour that
replaced it, on the real parts: the embedded broker over the Kafka protocol, the tasks
function, SQLite files shared by several connections, PostgreSQL.

- Requests that found a publish under way left their events for the next sweep (a
  minute on the default schedule): now concurrent requests share the producer.
- A writer waiting for SQLite's write lock slept up to 100 ms between tries while
  others took it: now it tries again within a couple of milliseconds.
- The dispatcher's broker fetch waited 500 ms for records that had already arrived
  (the embedded broker holds a fetch for its whole wait): now 10 ms while records flow.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from kafka import KafkaProducer
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from duetide import events
from duetide.storage import db
from duetide.storage.models import Task
from duetide_tools.local import eventing
from duetide_tools.local.broker import EmbeddedBroker, ensure_topics
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import auth_headers, use_broker
from tests.integration.test_eventing import RecordingSink, dispatcher, source_spec
from tests.integration.test_reliability import ce_id, outbox_rows, pending, read_topic
from tests.support import wait_for

CLIENTS, EACH = 12, 4


def test_concurrent_requests_all_publish_on_the_fast_path(client, broker, topics, monkeypatch):
    ensure_topics(broker.bootstrap_servers, [TopicSpec(n, partitions=3) for n in topics.values()])
    use_broker(monkeypatch, broker.bootstrap_servers, timeout_s=10)
    users = [auth_headers(f"user-{n}") for n in range(CLIENTS)]
    assert client.post("/tasks", json={"title": "first"}, headers=users[0]).status_code == 201
    assert pending() == []  # the producer stands

    def create(headers: dict[str, str]) -> list[int]:
        own = client.application.test_client()  # a client per thread, one app, as gthread
        return [
            own.post("/tasks", json={"title": f"t{n}"}, headers=headers).status_code
            for n in range(EACH)
        ]

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = [s for answers in pool.map(create, users) for s in answers]

    assert statuses == [201] * CLIENTS * EACH
    # Every request's event went out before its answer; none was left for the relay.
    assert pending() == []
    sent = {row.id for row in outbox_rows(events.TASK_CREATED)}
    assert len(sent) == CLIENTS * EACH + 1
    records = read_topic(broker.bootstrap_servers, topics["tasks"])
    assert Counter(ce_id(r) for r in records) == {i: 1 for i in sent}


@pytest.fixture
def sqlite_file(env: str) -> str:
    if not env.startswith("sqlite"):
        pytest.skip("SQLite's write lock")
    return env.split("///", 1)[1]


def hold_write_lock(path: str) -> sqlite3.Connection:
    """Another process's writer, as far as SQLite can tell: its own connection."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    return other


def test_a_sqlite_writer_waits_for_the_write_lock_then_writes(sqlite_file: str) -> None:
    other = hold_write_lock(sqlite_file)
    began = threading.Event()
    outcome: list[Any] = []

    def write() -> None:
        began.set()
        try:
            with db.session_scope() as session:
                session.add(Task(owner="alice", title="after the lock"))
            outcome.append("written")
        except Exception as exc:  # the assertion below names it
            outcome.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    began.wait()
    writer.join(timeout=0.3)
    assert writer.is_alive() and outcome == []  # queued behind the lock, not refused
    other.execute("COMMIT")
    writer.join(timeout=10)
    assert outcome == ["written"]
    with db.session_scope(read_only=True) as session:
        assert session.exec(select(Task.title)).all() == ["after the lock"]
    other.close()


def test_a_sqlite_writer_gives_up_after_the_busy_timeout(sqlite_file: str, monkeypatch) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    other = hold_write_lock(sqlite_file)
    try:
        with pytest.raises(OperationalError, match="locked"), db.session_scope() as session:
            session.add(Task(owner="alice", title="never"))
    finally:
        other.execute("ROLLBACK")
        other.close()
    with db.session_scope() as session:  # the connection is usable again, locks as before
        session.add(Task(owner="alice", title="now"))
    with db.session_scope(read_only=True) as session:
        assert session.exec(select(Task.title)).all() == ["now"]


def test_the_dispatcher_fetches_briefly_while_records_flow_and_long_once_idle(
    broker: EmbeddedBroker, unique_topic, monkeypatch
) -> None:
    monkeypatch.setattr(eventing, "IDLE_AFTER_S", 0.5)
    topic = unique_topic("paced")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(topic)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
    with RecordingSink() as sink:
        source = dispatcher(broker, source_spec(topic), sink.url, None)
        with source:
            assert source.wait_assigned(30)
            consumer: Any = source._consumer

            def broker_wait() -> int:
                return int(consumer._fetcher.config["fetch_max_wait_ms"])

            assert broker_wait() == eventing.IDLE_FETCH_WAIT_MS
            producer.send(topic, b"one").get(timeout=10)
            wait_for(lambda: len(sink.requests) == 1, "the record delivered")
            wait_for(lambda: broker_wait() == eventing.FLOWING_FETCH_WAIT_MS, "short waits")
            wait_for(lambda: broker_wait() == eventing.IDLE_FETCH_WAIT_MS, "long waits again")
    producer.close()


def test_a_consumer_configured_with_its_own_fetch_wait_keeps_it(
    broker: EmbeddedBroker, unique_topic
) -> None:
    topic = unique_topic("own-wait")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(topic)])
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
    with RecordingSink() as sink:
        source = dispatcher(broker, source_spec(topic), sink.url, None, {"fetch_max_wait_ms": 321})
        with source:
            assert source.wait_assigned(30)
            producer.send(topic, b"one").get(timeout=10)
            wait_for(lambda: len(sink.requests) == 1, "the record delivered")
            consumer: Any = source._consumer
            assert consumer._fetcher.config["fetch_max_wait_ms"] == 321
    producer.close()


def test_sqlite_writers_of_a_process_take_turns_and_readers_do_not_queue(
    sqlite_file: str,
) -> None:
    inside, leave = threading.Event(), threading.Event()
    order: list[str] = []

    def first() -> None:
        with db.session_scope() as session:
            session.add(Task(owner="alice", title="first"))
            session.flush()
            inside.set()
            leave.wait(10)
            order.append("first")

    def second() -> None:
        with db.session_scope() as session:
            order.append("second")
            session.add(Task(owner="alice", title="second"))

    one = threading.Thread(target=first)
    one.start()
    inside.wait(10)
    two = threading.Thread(target=second)
    two.start()
    with db.session_scope(read_only=True) as session:  # a reader passes the queue
        assert session.exec(select(Task.title)).all() == []
    two.join(timeout=0.3)
    assert two.is_alive() and order == []  # the second writer waits its turn
    leave.set()
    one.join(10)
    two.join(10)
    assert order == ["first", "second"]
    with db.session_scope(read_only=True) as session:
        assert sorted(session.exec(select(Task.title)).all()) == ["first", "second"]


def test_a_sqlite_writer_waiting_for_its_turn_gives_up_after_the_busy_timeout(
    sqlite_file: str, monkeypatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.05)
    inside, leave = threading.Event(), threading.Event()

    def holder() -> None:
        with db.session_scope() as session:
            session.add(Task(owner="alice", title="held"))
            session.flush()
            inside.set()
            leave.wait(10)

    one = threading.Thread(target=holder)
    one.start()
    inside.wait(10)
    try:  # a request that cannot get the turn answers 503, as for SQLite's own lock
        with pytest.raises(OperationalError, match="turn"), db.session_scope() as session:
            session.add(Task(owner="alice", title="never"))
    finally:
        leave.set()
        one.join(10)
    with db.session_scope(read_only=True) as session:
        assert session.exec(select(Task.title)).all() == ["held"]
