"""What the embedded broker's fetches sometimes get wrong, and the dispatcher copes with:
- a hole in a partition's offsets, as its produce/fetch race leaves one: a fetch finds a
  later batch while an earlier one is not stored yet (RELIABILITY.md, scenario 7c), also
  right where an assignment starts;
- a short fetch answered with no records though records wait (listing a partition of
  many batches outran the fetch's wait).
Neither can be made to happen on demand with the broker alone, so a Kafka-protocol proxy
on loopback alters the dispatcher's fetch responses (`tests.kafka_proxy`); the broker,
the clients and the HTTP sink are the real ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaProducer
from kafka.structs import TopicPartition

from duetide_tools.local import eventing
from duetide_tools.local.broker import LOOPBACK, EmbeddedBroker, ensure_topics
from duetide_tools.local.eventing import KafkaSourceDispatcher
from duetide_tools.manifests import TopicSpec
from tests.integration.test_eventing import (
    WAIT_S,
    RecordingSink,
    committed_offset,
    dispatcher,
    offsets_by_partition,
    produce_plain,
    source_spec,
)
from tests.kafka_proxy import FetchFaultProxy
from tests.support import wait_for


@pytest.fixture(scope="module")
def proxied(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[EmbeddedBroker, FetchFaultProxy]]:
    """A broker that advertises the proxy's address, so every client but the bootstrap
    goes through it."""
    broker = EmbeddedBroker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")

    def upstream() -> tuple[str, int]:
        assert broker.port is not None
        return LOOPBACK, broker.port

    with FetchFaultProxy(upstream) as proxy:
        broker.advertised_port = proxy.port
        with broker:
            yield broker, proxy


@pytest.fixture
def proxy(proxied: tuple[EmbeddedBroker, FetchFaultProxy]) -> Iterator[FetchFaultProxy]:
    yield proxied[1]
    proxied[1].reset()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as running:
        yield running


@pytest.fixture
def filled(
    proxied: tuple[EmbeddedBroker, FetchFaultProxy], unique_topic: Callable[[str], str]
) -> Iterator[tuple[str, KafkaProducer]]:
    """A topic, and a producer whose records may each be a batch of their own."""
    topic = unique_topic("filled")
    ensure_topics(proxied[0].bootstrap_servers, [TopicSpec(topic)])
    producer = KafkaProducer(bootstrap_servers=proxied[0].bootstrap_servers, linger_ms=0)
    yield topic, producer
    producer.close(timeout=5)


Fault = Callable[[FetchFaultProxy], None]


@pytest.fixture
def faulted(
    proxied: tuple[EmbeddedBroker, FetchFaultProxy],
    proxy: FetchFaultProxy,
    filled: tuple[str, KafkaProducer],
    sink: RecordingSink,
) -> Iterator[Callable[[Fault], KafkaSourceDispatcher]]:
    """`faulted(fault)`: a dispatcher that delivered offset 0 (so records flow), then
    `fault(proxy)`, then offsets 1-3 produced one batch each."""
    broker, (topic, producer) = proxied[0], filled
    running: list[KafkaSourceDispatcher] = []

    def start(fault: Fault) -> KafkaSourceDispatcher:
        source = dispatcher(broker, source_spec(topic), sink.url, None).start()
        running.append(source)
        assert source.wait_assigned(WAIT_S)
        produce_plain(producer, topic, 0, 1)
        wait_for(lambda: len(sink.received()) == 1, "offset 0 delivered")
        fault(proxy)
        produce_plain(producer, topic, 0, 3, one_by_one=True)
        return source

    yield start
    for source in running:
        source.stop()


def test_a_hole_the_next_fetch_fills_loses_nothing_and_keeps_the_order(
    faulted: Callable[[Fault], KafkaSourceDispatcher],
    proxy: FetchFaultProxy,
    sink: RecordingSink,
) -> None:
    source = faulted(lambda proxy: proxy.hide(0, 1, times=1))

    wait_for(lambda: len(sink.received()) >= 4, "offsets 0-3 delivered")
    assert offsets_by_partition(sink.received()) == {0: [0, 1, 2, 3]}
    assert proxy.shown_holes() == 1  # the dispatcher did see 2 without 1
    tp = TopicPartition(source.spec.topics[0], 0)
    assert list(source.holes_filled) == [(tp, 1)]
    assert not source.holes_passed


def test_a_hole_that_stays_is_passed_over_after_the_recheck_and_committed_past(
    faulted: Callable[[Fault], KafkaSourceDispatcher],
    proxy: FetchFaultProxy,
    sink: RecordingSink,
    proxied: tuple[EmbeddedBroker, FetchFaultProxy],
) -> None:
    source = faulted(lambda proxy: proxy.hide(0, 1, times=None))

    wait_for(lambda: len(sink.received()) >= 3, "offsets 0, 2 and 3 delivered")
    assert offsets_by_partition(sink.received()) == {0: [0, 2, 3]}
    assert proxy.shown_holes() > 1  # fetched again before it was taken as real
    tp = TopicPartition(source.spec.topics[0], 0)
    assert list(source.holes_passed) == [(tp, 1)]
    assert not source.holes_filled
    wait_for(lambda: committed_offset(proxied[0], source.spec) == 4, "offset 4 committed")


def test_a_short_fetch_answered_empty_while_records_wait_is_followed_by_a_long_one(
    faulted: Callable[[Fault], KafkaSourceDispatcher],
    proxy: FetchFaultProxy,
    sink: RecordingSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(eventing, "IDLE_AFTER_S", 60.0)  # the idle switch cannot rescue it
    faulted(lambda proxy: proxy.starve(0, below_ms=eventing.IDLE_FETCH_WAIT_MS))

    wait_for(lambda: len(sink.received()) >= 4, "offsets 1-3 delivered")
    assert offsets_by_partition(sink.received()) == {0: [0, 1, 2, 3]}
    assert proxy.starved_responses() >= 1  # a short fetch did come back without them


def test_a_hole_where_a_new_group_starts_is_fetched_again(
    proxied: tuple[EmbeddedBroker, FetchFaultProxy],
    proxy: FetchFaultProxy,
    sink: RecordingSink,
    filled: tuple[str, KafkaProducer],
) -> None:
    """No commit yet (initialOffset earliest): the first fetch shows offsets 1-3, not 0."""
    topic, producer = filled
    produce_plain(producer, topic, 0, 4, one_by_one=True)
    proxy.hide(0, 0, times=1)

    with dispatcher(proxied[0], source_spec(topic), sink.url, None) as source:
        wait_for(lambda: len(sink.received()) >= 4, "offsets 0-3 delivered")
        assert offsets_by_partition(sink.received()) == {0: [0, 1, 2, 3]}
        assert proxy.shown_holes() == 1
        assert list(source.holes_filled) == [(TopicPartition(topic, 0), 0)]


def test_a_hole_at_the_committed_offset_of_a_new_assignment_is_fetched_again(
    proxied: tuple[EmbeddedBroker, FetchFaultProxy],
    proxy: FetchFaultProxy,
    sink: RecordingSink,
    filled: tuple[str, KafkaProducer],
) -> None:
    """The group committed 0-1 and is assigned the partition again (a restart, a
    rebalance): the first fetch shows offsets 3-4, not 2."""
    broker, (topic, producer) = proxied[0], filled
    spec = source_spec(topic)
    produce_plain(producer, topic, 0, 2, one_by_one=True)
    with dispatcher(broker, spec, sink.url, None) as first:
        # Received is not yet answered: a stop then breaks the second delivery off.
        wait_for(
            lambda: len(sink.received()) == 2 and first.in_flight() == 0,
            "offsets 0-1 delivered and answered",
        )
    assert committed_offset(broker, spec) == 2  # committed on stop
    produce_plain(producer, topic, 0, 3, one_by_one=True)
    proxy.hide(0, 2, times=1)

    with dispatcher(broker, spec, sink.url, None) as source:
        wait_for(lambda: len(sink.received()) >= 5, "offsets 2-4 delivered")
        assert offsets_by_partition(sink.received()) == {0: [0, 1, 2, 3, 4]}
        assert proxy.shown_holes() == 1
        assert list(source.holes_filled) == [(TopicPartition(topic, 0), 2)]
