"""What a broker holds that its readers have not taken: asked when `duetide up` stops.

The embedded broker keeps its records in memory, so the next start on a home sends again
every event sent since the last run's broker started (`Stack._last_broker_start`), in
case one of them had not been delivered when it went. When the run stopped with every
KafkaSource's consumer group committed to the end of each partition it reads, and the
topics no KafkaSource reads (the dead letters) empty, nothing went with it, and sending
it all again would only make every consumer drop thousands of duplicates at the next
start. This module counts what was left, so a clean stop can say there is nothing to
send again.

The ends are the true ends (`topic_reader.true_ends`: the embedded broker's ListOffsets
can answer short), and a group that committed nothing on a partition counts every record
there as not taken: the count errs towards sending again.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from duetide_tools import topic_reader

FETCH_WAIT_MS = 10


def not_taken(
    starts: Mapping[TopicPartition, int],
    ends: Mapping[TopicPartition, int],
    committed: Mapping[str, Mapping[TopicPartition, int]],
    readers: Mapping[str, Collection[str]],
) -> int:
    """Records not taken, once per reader that has not taken them: for each partition of
    `ends`, its end less each reading group's committed offset (no offset: the
    partition's start), and every record of a partition of a topic nobody reads.
    `readers` maps a topic to the consumer groups that read it."""
    count = 0
    for partition, end in ends.items():
        start = starts.get(partition, 0)
        groups = readers.get(partition.topic, ())
        if not groups:
            count += max(end - start, 0)
        for group in groups:
            offset = committed.get(group, {}).get(partition, -1)
            count += max(end - max(offset, start), 0)
    return count


def count_not_taken(
    bootstrap_servers: str, readers: Mapping[str, Collection[str]], *, timeout_s: float
) -> int:
    """`not_taken` of the broker at `bootstrap_servers`, for every topic of `readers`
    (a topic it does not have counts nothing). Each request is bounded by `timeout_s`;
    KafkaError, OSError or topic_reader.TopicReadError when the broker does not answer."""
    timeout_ms = max(int(timeout_s * 1000), 100)
    limits: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "client_id": "duetide-local-backlog",
        "request_timeout_ms": timeout_ms + 100,
        "bootstrap_timeout_ms": timeout_ms,
    }
    consumer = KafkaConsumer(enable_auto_commit=False, fetch_max_wait_ms=FETCH_WAIT_MS, **limits)
    admin: KafkaAdminClient | None = None
    try:
        partitions = [
            TopicPartition(topic, number)
            for topic in sorted(readers)
            for number in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return 0
        starts = consumer.beginning_offsets(partitions, timeout_ms=timeout_ms)
        ends = topic_reader.true_ends(consumer, partitions, timeout_s)
        groups: dict[str, list[TopicPartition]] = {}
        for partition in partitions:
            for group in readers[partition.topic]:
                groups.setdefault(group, []).append(partition)
        committed: dict[str, dict[TopicPartition, int]] = {}
        if groups:
            admin = KafkaAdminClient(**limits)
            listed = admin.list_group_offsets(groups)
            committed = {
                group: {p: o.offset for p, o in offsets.items()}
                for group, offsets in listed.items()
            }
        return not_taken(starts, ends, committed, readers)
    finally:
        consumer.close(autocommit=False)
        if admin is not None:
            admin.close()
