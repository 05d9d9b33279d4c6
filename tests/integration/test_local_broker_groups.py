"""Consumers of your own on the embedded broker: with the settings the README documents
(`duetide_tools.local.broker.consumer_settings`, `rdkafka_consumer_settings`) a new
consumer group gets its partitions in about 3 s, for kafka-python and for librdkafka.

With the clients' defaults the join takes ~23 s (half the 45 s session timeout: Tansu
waits that long for other members), so the bound awaited here (15 s, generous for the
~3 s expected) also tells the documented settings from the defaults.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import confluent_kafka
from kafka import KafkaConsumer

from duetide_tools.local.broker import (
    EmbeddedBroker,
    consumer_settings,
    ensure_topics,
    rdkafka_consumer_settings,
)
from duetide_tools.manifests import TopicSpec
from tests.conftest import unique_name

JOINED_WITHIN_S = 15.0


def _topic(broker: EmbeddedBroker, unique_topic: Callable[[str], str]) -> str:
    name = unique_topic("groups")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(name, partitions=3)])
    return name


def test_a_kafka_python_consumer_with_the_documented_settings_joins_fast(
    broker: EmbeddedBroker, unique_topic: Callable[[str], str]
):
    topic = _topic(broker, unique_topic)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap_servers,
        group_id=unique_name("own-group"),
        **consumer_settings(),
    )
    try:
        deadline = time.monotonic() + JOINED_WITHIN_S
        assigned = consumer.assignment()
        while not assigned and time.monotonic() < deadline:
            consumer.poll(timeout_ms=100)  # the join happens inside poll
            assigned = consumer.assignment()
        assert {tp.partition for tp in assigned} == {0, 1, 2}, "no partitions in time"
    finally:
        consumer.close()


def test_a_librdkafka_consumer_with_the_documented_settings_joins_fast(
    broker: EmbeddedBroker, unique_topic: Callable[[str], str]
):
    topic = _topic(broker, unique_topic)
    consumer = confluent_kafka.Consumer(
        {
            "bootstrap.servers": broker.bootstrap_servers,
            "group.id": unique_name("own-group"),
            **rdkafka_consumer_settings(),
        }
    )
    joined = threading.Event()
    partitions: list[int] = []

    def on_assign(_consumer: object, assigned: list[confluent_kafka.TopicPartition]) -> None:
        partitions.extend(tp.partition for tp in assigned)
        joined.set()

    try:
        consumer.subscribe([topic], on_assign=on_assign)
        deadline = time.monotonic() + JOINED_WITHIN_S
        while not joined.is_set() and time.monotonic() < deadline:
            consumer.poll(0.1)  # callbacks run inside poll
        assert sorted(partitions) == [0, 1, 2], "no partitions in time"
    finally:
        consumer.close()
