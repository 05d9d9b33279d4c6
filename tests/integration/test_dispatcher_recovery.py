"""A KafkaSource dispatcher carries on by itself when its broker is replaced.

The embedded broker keeps everything in memory, so a broker started again at the same
address is empty: no topics, no consumer groups, no producer ids. The dispatcher's consumer
must rejoin and read the new topic from its start (initialOffset: earliest), and its
dead-letter producer, which had talked to the old broker, must still write dead letters.
"""

from __future__ import annotations

from kafka import KafkaProducer

from duetide_tools.local.broker import ensure_topics
from duetide_tools.manifests import TopicSpec
from tests.integration.test_eventing import (
    RecordingSink,
    ce_headers,
    dispatcher,
    produce,
    read_all,
    sink,  # noqa: F401 (fixture)
    source_spec,
)
from tests.integration.test_publisher_recovery import brokers  # noqa: F401 (fixture)
from tests.support import wait_for


def poison(broker_servers: str, topic: str, event_id: str) -> None:
    client = KafkaProducer(bootstrap_servers=broker_servers, linger_ms=0)
    try:
        headers = ce_headers(specversion="1.0", id=event_id, type="t", source="/s")
        produce(client, topic, b"{}", event_id.encode(), **headers)
    finally:
        client.close(timeout=5)


def test_dispatcher_consumes_and_dead_letters_on_a_replacement_broker(
    brokers,  # noqa: F811
    sink: RecordingSink,  # noqa: F811
) -> None:
    topic, dead_letters = "recovery-events", "recovery-dead"
    topics = [TopicSpec(topic), TopicSpec(dead_letters)]
    sink.script(then=400, error_body=b"bad event")  # every event is dead-lettered at once
    first = brokers()
    address = first.bootstrap_servers
    ensure_topics(address, topics)
    running = dispatcher(first, source_spec(topic), sink.url, dead_letters).start()
    try:
        poison(first.bootstrap_servers, topic, "before")
        wait_for(lambda: running.dead_lettered == ["before"], "the first dead letter")

        first.stop()
        second = brokers()
        assert second.bootstrap_servers == address
        ensure_topics(second.bootstrap_servers, topics)
        poison(second.bootstrap_servers, topic, "after")

        wait_for(lambda: "after" in running.dead_lettered, "a dead letter on the new broker", 60)
        [dead] = read_all(second, dead_letters, 1)
    finally:
        running.stop()

    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "after"
    assert attributes["ce_knativeerrorcode"] == "400"
    assert [r.headers["ce-id"] for r in sink.received()] == ["before", "after"]
