"""The outbox publisher recovers from broker loss by itself, and never makes a request wait.

Real parts only: the embedded broker over the Kafka protocol (killed and replaced by a new,
empty one at the same address), the tasks and sweep functions, SQLite and PostgreSQL. A
slow broker is the real one behind a loopback proxy that holds every connection until the
test opens it, so "still waiting for the broker" is a state the test controls, not a time.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from duetide import events
from duetide.storage import outbox
from duetide_tools.local import broker as broker_module
from duetide_tools.local.broker import LOOPBACK, EmbeddedBroker, ensure_topics, free_loopback_port
from duetide_tools.manifests import TopicSpec
from tests.integration.conftest import function_client, use_broker
from tests.integration.test_reliability import ce_id, outbox_rows, pending, ping, read_topic
from tests.support import pipe, wait_for


@pytest.fixture
def topics(topics: dict[str, str]) -> Iterator[dict[str, str]]:
    """The shared `topics`, and this test's publisher closed after it."""
    yield topics
    close_publisher()


def close_publisher() -> None:
    publisher = outbox.get_publisher()
    if publisher is not None:
        publisher.close()


def create_topics(servers: str, topics: dict[str, str]) -> None:
    ensure_topics(servers, [TopicSpec(n, partitions=3) for n in topics.values()])


@pytest.fixture
def brokers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], Any]]:
    """Start embedded brokers one after another on one fixed port (memory only: each is
    empty), as a broker that is restarted or replaced at the same address."""
    port = free_loopback_port()
    monkeypatch.setattr(broker_module, "free_loopback_port", lambda: port)
    started: list[EmbeddedBroker] = []

    def start() -> EmbeddedBroker:
        running = EmbeddedBroker(log_path=tmp_path / f"broker-{len(started)}.log")
        started.append(running)
        return running.start()

    yield start
    close_publisher()  # a broker with no client connected stops at once
    for running in started:
        running.stop()


class GateProxy:
    """A loopback TCP proxy to the broker that holds each connection until `open()`.

    Only the bootstrap goes through it (the broker advertises its own address), which is
    where a new producer waits; `accepted` counts the producers that tried to connect.
    """

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.accepted = 0
        self.connected = threading.Event()
        self._gate = threading.Event()
        self._closed = threading.Event()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server((LOOPBACK, 0))
        self.address = f"{LOOPBACK}:{self._server.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def open(self) -> None:
        self._gate.set()

    def close(self) -> None:
        self._closed.set()
        self._gate.set()
        for sock in [self._server, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self._sockets.append(client)
            self.accepted += 1
            self.connected.set()
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        self._gate.wait()
        if self._closed.is_set():
            return
        try:
            upstream = socket.create_connection((LOOPBACK, self.upstream_port), timeout=5)
        except OSError:
            client.close()
            return
        upstream.settimeout(None)
        self._sockets.append(upstream)
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)


@pytest.fixture
def proxy(broker: EmbeddedBroker) -> Iterator[GateProxy]:
    gate = GateProxy(broker.port or 0)
    yield gate
    gate.close()


def task_event_ids(answers: list[Any]) -> set[str]:
    """The outbox row ids of the task.created events of these API answers."""
    keys = {answer.json["id"] for answer in answers}
    return {row.id for row in outbox_rows(events.TASK_CREATED) if row.key in keys}


def create_tasks(client: Any, headers: dict[str, str], count: int) -> list[Any]:
    answers = [
        client.post("/tasks", json={"title": f"t{i}"}, headers=headers) for i in range(count)
    ]
    assert [a.status_code for a in answers] == [201] * count
    return answers


# ------------------------------------------------ a broker restarted or replaced (item 1)


def test_publisher_recovers_by_itself_when_the_broker_is_replaced_while_idle(
    client, alice, topics, brokers, monkeypatch
):
    first = brokers()
    create_topics(first.bootstrap_servers, topics)
    use_broker(monkeypatch, first.bootstrap_servers)
    publisher = outbox.get_publisher()
    create_tasks(client, alice, 1)
    assert pending() == []  # the fast path built a producer and used it

    address = first.bootstrap_servers
    first.stop()
    second = brokers()  # empty: it knows neither the producer nor the topics
    assert second.bootstrap_servers == address
    create_topics(second.bootstrap_servers, topics)  # new topic ids: cached metadata is stale
    later = create_tasks(client, alice, 3)
    outbox.relay_pending()  # whatever the fast path could not send
    assert pending() == []
    assert outbox.get_publisher() is publisher  # the same process's publisher, not reset
    records = read_topic(second.bootstrap_servers, topics["tasks"])
    assert Counter(ce_id(r) for r in records) == {i: 1 for i in task_event_ids(later)}


def test_publisher_recovers_by_itself_when_the_broker_dies_and_a_new_one_comes_up(
    client, alice, topics, brokers, monkeypatch
):
    sweeper = function_client("sweep")
    first = brokers()
    create_topics(first.bootstrap_servers, topics)
    use_broker(monkeypatch, first.bootstrap_servers)
    publisher = outbox.get_publisher()
    create_tasks(client, alice, 1)
    assert pending() == []

    first.stop()  # killed: the producer's connection and metadata point at nothing
    down = create_tasks(client, alice, 2)  # still 201: the events wait
    assert len(pending()) == 2
    assert outbox.relay_pending() == 0
    assert len(pending()) == 2

    second = brokers()  # a new, empty broker at the same address
    create_topics(second.bootstrap_servers, topics)
    assert ping(sweeper).status_code == 200  # the sweep's relay finds it by itself
    assert pending() == []
    back = create_tasks(client, alice, 1)
    assert pending() == []  # the relay's success closed the breaker: the fast path is back
    assert outbox.get_publisher() is publisher
    records = read_topic(second.bootstrap_servers, topics["tasks"])
    assert Counter(ce_id(r) for r in records) == {i: 1 for i in task_event_ids(down + back)}


# ------------------------------------------ the fast path never waits in line (item 9)


def test_fast_path_returns_at_once_while_another_request_waits_for_the_broker(
    client, alice, broker, topics, proxy, monkeypatch
):
    create_topics(broker.bootstrap_servers, topics)
    # Long enough that the other request is certainly still waiting when it is checked;
    # the test opens the gate instead of letting it expire.
    use_broker(monkeypatch, proxy.address, timeout_s=30)
    other_client = client.application.test_client()
    answers: list[Any] = []
    other = threading.Thread(
        target=lambda: answers.extend(create_tasks(other_client, alice, 1)), daemon=True
    )
    other.start()
    wait_for(proxy.connected.is_set, "the other request's send to reach the broker")

    mine = create_tasks(client, alice, 1)  # returns while the other send is held
    assert other.is_alive()  # so this request did not wait behind it
    waiting = {row.id for row in pending()}
    assert len(waiting) == 2 and task_event_ids(mine) < waiting  # nothing sent yet

    proxy.open()
    other.join(timeout=60)
    assert not other.is_alive() and len(answers) == 1
    # The other request's send went through once the broker answered, and then sent mine,
    # skipped while its producer was being built (not left for the next sweep).
    wait_for(lambda: pending() == [], "the skipped event sent after the other's")
    assert outbox.relay_pending() == 0
    records = read_topic(broker.bootstrap_servers, topics["tasks"])
    assert Counter(ce_id(r) for r in records) == {
        i: 1 for i in task_event_ids(mine) | task_event_ids(answers)
    }


def test_open_breaker_keeps_requests_off_the_broker_and_the_relay_closes_it(
    client, alice, broker, topics, proxy, monkeypatch
):
    create_topics(broker.bootstrap_servers, topics)
    use_broker(monkeypatch, proxy.address, timeout_s=1)
    publisher = outbox.get_publisher()
    assert publisher is not None
    failed = create_tasks(client, alice, 1)  # the broker does not answer: the send fails
    wait_for(lambda: not publisher.busy, "the failed send to end")
    assert not publisher.available  # the breaker is open
    tried = proxy.accepted

    skipped = create_tasks(client, alice, 2)
    assert proxy.accepted == tried  # no request contacted the broker
    assert {row.id for row in pending()} == task_event_ids(failed + skipped)

    proxy.open()
    assert outbox.relay_pending() == 3  # the relay ignores the breaker and finds the broker
    assert proxy.accepted > tried
    assert publisher.available
    create_tasks(client, alice, 1)
    assert pending() == []  # the fast path publishes again


def test_events_a_lost_broker_had_acknowledged_are_sent_again_after_a_requeue(
    client, alice, topics, brokers, monkeypatch, capsys
):
    from duetide_tools.cli import main

    first = brokers()
    create_topics(first.bootstrap_servers, topics)
    use_broker(monkeypatch, first.bootstrap_servers)
    before = create_tasks(client, alice, 1)
    since = outbox_rows(events.TASK_CREATED)[-1].sent_at
    assert since is not None
    lost = create_tasks(client, alice, 2)  # acknowledged by a broker about to lose them
    assert pending() == []

    first.stop()
    second = brokers()  # empty, as an embedded broker restarted
    create_topics(second.bootstrap_servers, topics)
    assert main(["outbox", "requeue", "--since", since.isoformat()]) == 0
    assert "requeued 3 events" in capsys.readouterr().out  # `before` too: sent at `since`
    outbox.relay_pending()

    assert pending() == []
    records = read_topic(second.bootstrap_servers, topics["tasks"])
    expected = task_event_ids(before) | task_event_ids(lost)
    assert Counter(ce_id(r) for r in records) == {i: 1 for i in expected}


def test_requeue_refuses_an_instant_without_an_offset(capsys):
    from duetide_tools.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["outbox", "requeue", "--since", "2026-12-01T09:00"])
    assert exit_.value.code == 2
    assert "needs an offset" in capsys.readouterr().err
