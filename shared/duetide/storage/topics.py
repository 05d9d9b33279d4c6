"""What the sweep reads of Kafka for operators: how many records the dead-letter topic
holds (`duetide.deadletters`, exported only when OpenTelemetry is configured).

The functions never see a dead letter: the KafkaSource's dispatcher writes it to the
KafkaSink's topic after its retries. Counting the topic's records (end minus beginning
offsets, per partition) is two ListOffsets requests and no record read, so a tick pays
almost nothing; what has passed its retention is no longer counted, as it can no longer
be replayed either.
"""

from __future__ import annotations

from typing import Any

from duetide.config import get_settings


def dead_letters_held(timeout_s: float) -> int | None:
    """Records on the dead-letter topic; None without a broker, or when it cannot say
    within `timeout_s` (each request is bounded by it)."""
    settings = get_settings()
    if not settings.kafka_bootstrap_servers:
        return None
    from kafka import KafkaConsumer, TopicPartition  # only on a tick that exports
    from kafka.errors import KafkaError

    timeout_ms = max(int(timeout_s * 1000), 1000)
    consumer: Any = None
    try:
        consumer = KafkaConsumer(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            enable_auto_commit=False,
            request_timeout_ms=timeout_ms + 1000,
            bootstrap_timeout_ms=timeout_ms,
        )
        topic = settings.duetide_topic_dead_letters
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            return 0
        partitions = [TopicPartition(topic, n) for n in numbers]
        first = consumer.beginning_offsets(partitions, timeout_ms=timeout_ms)
        end = consumer.end_offsets(partitions, timeout_ms=timeout_ms)
        return sum(max(end[tp] - first[tp], 0) for tp in partitions)
    except (KafkaError, OSError, ValueError):
        return None
    finally:
        if consumer is not None:
            consumer.close(autocommit=False)
