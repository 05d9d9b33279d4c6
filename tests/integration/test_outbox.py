"""The outbox publisher against the embedded broker over the Kafka protocol."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from sqlalchemy import text
from sqlmodel import col, select

from duetide import events
from duetide.storage import db, outbox
from duetide.storage.models import Outbox
from duetide_tools.local.broker import consumer_settings, ensure_topics, free_loopback_port
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import use_broker
from tests.support import wait_for


@pytest.fixture
def topics(broker, unique_topic, monkeypatch, env):
    names = {"tasks": unique_topic("tasks"), "reminders": unique_topic("reminders")}
    ensure_topics(broker.bootstrap_servers, [TopicSpec(n, partitions=3) for n in names.values()])
    monkeypatch.setenv("DUETIDE_TOPIC_TASK_EVENTS", names["tasks"])
    monkeypatch.setenv("DUETIDE_TOPIC_REMINDERS", names["reminders"])
    return names


def consume(
    bootstrap: str, topic: str, expected: int, timeout_s: float = 20.0
) -> list[ConsumerRecord]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=500,
        **consumer_settings(),
    )
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                records.extend(batch)
        # One more short poll: anything beyond `expected` is a duplicate we must see.
        for batch in consumer.poll(timeout_ms=1000).values():
            records.extend(batch)
    finally:
        consumer.close()
    return records


def pending() -> list[Outbox]:
    with db.session_scope() as session:
        return list(session.exec(select(Outbox).where(col(Outbox.sent_at).is_(None))).all())


def test_events_are_published_after_commit_as_binary_cloudevents(
    client, alice, broker, topics, monkeypatch
):
    use_broker(monkeypatch, broker.bootstrap_servers)
    task = client.post("/tasks", json={"title": "x"}, headers=alice).json
    client.post(f"/tasks/{task['id']}/complete", headers=alice)
    assert pending() == []
    records = consume(broker.bootstrap_servers, topics["tasks"], expected=2)
    assert len(records) == 2
    with db.session_scope() as session:
        rows = {r.id: r for r in session.exec(select(Outbox)).all()}
    for record in records:
        headers = {k: v.decode() for k, v in record.headers}
        assert record.key == task["id"].encode()  # per-task ordering
        assert headers["ce_id"] in rows  # ce_id is the outbox row id
        assert headers["ce_specversion"] == "1.0"
        assert headers["ce_source"] == events.SOURCE_TASKS
        assert headers["ce_subject"] == task["id"]
        assert headers["content-type"] == "application/json"
    types = [dict(r.headers)["ce_type"].decode() for r in records]
    assert types == [events.TASK_CREATED, events.TASK_COMPLETED]
    assert len({r.partition for r in records}) == 1


def test_broker_down_keeps_events_until_it_is_back(client, alice, broker, topics, monkeypatch):
    use_broker(monkeypatch, f"127.0.0.1:{free_loopback_port()}")  # nothing listens there
    created = [client.post("/tasks", json={"title": f"t{i}"}, headers=alice) for i in range(3)]
    assert [r.status_code for r in created] == [201, 201, 201]
    assert len(pending()) == 3
    assert outbox.relay_pending() == 0  # still down: nothing marked sent
    assert len(pending()) == 3
    use_broker(monkeypatch, broker.bootstrap_servers)
    assert outbox.relay_pending() == 3
    assert pending() == []
    assert outbox.relay_pending() == 0  # sent rows are not sent again
    records = consume(broker.bootstrap_servers, topics["tasks"], expected=3)
    assert sorted(dict(r.headers)["ce_id"].decode() for r in records) == sorted(
        r.id for r in _all_rows()
    )


def _all_rows() -> list[Outbox]:
    with db.session_scope() as session:
        return list(session.exec(select(Outbox)).all())


def test_record_many_stores_what_record_stores(env):
    """The sweep's bulk write and the one-row write store the same columns, the JSON text
    of `data` included, on each backend; each row gets its own id, times in given order."""
    data = {"title": 'Zahnarzt "Müller"\n\u2603', "due_at": None, "n": [1, 2.5, True]}
    with db.session_scope() as session:
        single = outbox.record(session, type=events.REMINDER_DUE, key="k1", data=data, source="/s")
    with db.session_scope() as session:
        given = [outbox.Event(events.REMINDER_DUE, "k1", data),
                 outbox.Event(events.REMINDER_MISSED, "k2", {"x": 1})]  # fmt: skip
        assert outbox.record_many(session, given, source="/s") == 2
    with db.session_scope() as session:
        rows = session.exec(select(Outbox)).all()
        as_text = dict(session.execute(text("SELECT id, CAST(data AS TEXT) FROM outbox")).all())
    assert len({row.id for row in rows}) == 3
    twin, missed = (next(r for r in rows if r.id != single.id and r.key == k) for k in ("k1", "k2"))
    stored = next(r for r in rows if r.id == single.id)
    fields = ["topic", "key", "type", "source", "subject", "data", "sent_at", "attempts"]
    assert [getattr(twin, f) for f in fields] == [getattr(stored, f) for f in fields]
    assert (stored.sent_at, stored.attempts) == (None, 0)
    assert as_text[twin.id] == as_text[single.id]
    assert (missed.topic, missed.subject, missed.data) == (
        outbox.topic_for(events.REMINDER_MISSED), "k2", {"x": 1}
    )  # fmt: skip
    assert single.created_at <= twin.created_at <= missed.created_at


def test_a_relay_waiting_for_the_broker_on_sqlite_holds_no_writer_up(
    client, alice, env, monkeypatch
):
    """The relay sent inside its write transaction: on SQLite, whose lock is the whole
    database's, every writer waited for a broker that did not answer (up to the send's
    bound each ping)."""
    if not env.startswith("sqlite"):
        pytest.skip("PostgreSQL's relay locks its rows only")
    silent = socket.create_server(("127.0.0.1", 0))  # takes connections, never answers
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.append(silent.accept()[0]), daemon=True).start()
    use_broker(monkeypatch, f"127.0.0.1:{silent.getsockname()[1]}", timeout_s=2.0)
    assert client.post("/tasks", json={"title": "waits"}, headers=alice).status_code == 201
    relay = threading.Thread(target=outbox.relay_pending)
    try:
        relay.start()
        publisher = outbox.get_publisher()
        assert publisher is not None
        wait_for(lambda: publisher.busy, "the relay to be sending")
        assert client.post("/tasks", json={"title": "meanwhile"}, headers=alice).status_code == 201
        assert relay.is_alive()  # written while the relay still waited for the broker
    finally:
        relay.join(timeout=30)
        silent.close()
        for connection in held:
            connection.close()
    assert {row.id for row in pending()} == {row.id for row in _all_rows()}  # none sent


def _plan_nodes(plan: dict) -> list[dict]:
    return [plan, *(node for child in plan.get("Plans", []) for node in _plan_nodes(child))]


def test_a_relay_batch_reads_a_batch_not_the_whole_backlog(env):
    """By `ix_outbox_pending (sent_at, created_at)` PostgreSQL could not take unsent rows
    in order (`IS NULL` is no equality to it) and, the row locks between the limit and
    the sort, sorted every unsent row for each batch: 150-200 ms and 76-84 MB on disk a
    batch at 200,000 after a broker outage (an audit, 2026-12-07)."""
    if not env.startswith("postgresql"):
        pytest.skip("PostgreSQL's plan (SQLite's searches the index as it is)")
    backlog = 20_000
    event = outbox.Event(events.TASK_CREATED, "task-1", {"task_id": "task-1"})
    with db.session_scope() as session:
        outbox.insert_pending(session, outbox.pending_rows([event] * backlog, source="/t"))
        session.connection().exec_driver_sql("ANALYZE outbox")
    batch = outbox.unsent(500).with_for_update(skip_locked=True)  # the relay's, on PostgreSQL
    with db.session_scope() as session:
        connection = session.connection()
        sql = str(batch.compile(connection, compile_kwargs={"literal_binds": True}))
        [[plan]] = connection.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + sql).all()
    nodes = _plan_nodes(plan[0]["Plan"])
    read = max(node["Actual Rows"] for node in nodes)
    assert read <= 500, f"a batch of 500 read {read} rows of {backlog} unsent"
    assert not [node for node in nodes if node["Node Type"] == "Sort"]
