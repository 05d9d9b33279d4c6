"""A stopping `duetide up` asks its embedded broker what its readers have not taken
(`duetide_tools.local.backlog`), over the wire, with real consumer groups' commits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.structs import OffsetAndMetadata

from duetide_tools.local.backlog import count_not_taken
from duetide_tools.local.broker import EmbeddedBroker, ensure_topics
from duetide_tools.manifests import TopicSpec
from tests.conftest import unique_name


@pytest.fixture
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    # A long linger puts records sent together into one batch: the embedded broker then
    # lists the partition's end as the batch's first offset plus one.
    made = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=200)
    yield made
    made.close()


def _commit(bootstrap_servers: str, group: str, partition: TopicPartition, offset: int) -> None:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=group, enable_auto_commit=False
    )
    try:
        consumer.commit({partition: OffsetAndMetadata(offset, "", -1)})
    finally:
        consumer.close(autocommit=False)


def test_records_count_until_every_group_reading_them_committed_to_their_true_end(
    broker: EmbeddedBroker, producer: KafkaProducer, unique_topic: Callable[[str], str]
):
    servers = broker.bootstrap_servers
    events, dead = unique_topic("events"), unique_topic("dead")
    ensure_topics(servers, [TopicSpec(events, partitions=3), TopicSpec(dead)])
    first, second = unique_name("first"), unique_name("second")
    readers = {events: [first, second], dead: []}
    assert count_not_taken(servers, readers, timeout_s=5) == 0

    partition = TopicPartition(events, 1)
    for _ in range(5):
        producer.send(events, b"{}", partition=1)
    producer.flush()
    assert count_not_taken(servers, readers, timeout_s=5) == 10

    listing = KafkaConsumer(bootstrap_servers=servers)
    try:
        listed_end = listing.end_offsets([partition])[partition]
    finally:
        listing.close()
    _commit(servers, first, partition, 5)
    _commit(servers, second, partition, listed_end)
    # What a check against the listed end would miss, if the broker lists it short.
    assert count_not_taken(servers, readers, timeout_s=5) == 5 - listed_end
    _commit(servers, second, partition, 5)
    assert count_not_taken(servers, readers, timeout_s=5) == 0

    producer.send(dead, b"{}")
    producer.flush()
    assert count_not_taken(servers, readers, timeout_s=5) == 1


def test_a_topic_the_broker_does_not_have_holds_nothing(broker: EmbeddedBroker):
    readers = {unique_name("never-created"): [unique_name("group")]}
    assert count_not_taken(broker.bootstrap_servers, readers, timeout_s=5) == 0
