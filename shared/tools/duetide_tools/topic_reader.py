"""Read every record of a topic up to its true end, without a consumer group.

The end of a partition is not what a ListOffsets request (kafka-python's `end_offsets`)
says on every broker: the embedded Tansu broker answers "latest" with the base offset of
the partition's *last batch* plus one, so five dead letters produced within a millisecond
(batches [0], [1], [2, 3, 4]) show an end of 3 while offsets 0-4 exist. A reader that
stops at that figure silently loses the newest records. The high watermark a Fetch
response carries is right on every broker (it is what consumers advance on), so the
reader here stops each partition at the larger of

- the high watermark of its first fetch, made *after* the read began, and
- a ListOffsets end re-read once that fetch has answered (a broker that gets this one
  right and the fetch wrong is covered too),

so every record acknowledged before the call is included, and a topic that keeps growing
while it is read does not keep the reader chasing it. The whole read is bounded by a
deadline.
"""

from __future__ import annotations

import time
from collections.abc import Generator, Mapping
from typing import Any

POLL_MS = 200
ENDS_POLL_MS = 20
FETCH_WAIT_MS = 100
DEFAULT_TIMEOUT_S = 15.0
BOOTSTRAP_TIMEOUT_S = 5.0


class TopicReadError(RuntimeError):
    """The topic does not exist or could not be read to its end in time."""


def targets(
    highwaters: Mapping[Any, int | None], listed_ends: Mapping[Any, int]
) -> dict[Any, int] | None:
    """Where to stop each partition, or None while a partition's high watermark is unknown.

    The target is the larger of the first fetch's high watermark and the ListOffsets end
    (either may be the one a broker gets right). Both were taken after the read began,
    so every record acknowledged before it lies below its target. Records written later
    may or may not be read; the read does not chase a topic that keeps growing.
    """
    if any(highwater is None for highwater in highwaters.values()):
        return None
    return {p: max(highwater or 0, listed_ends.get(p, 0)) for p, highwater in highwaters.items()}


def caught_up(positions: Mapping[Any, int], stop_at: Mapping[Any, int]) -> bool:
    """True when every partition's position reached its target."""
    return all(position >= stop_at[p] for p, position in positions.items())


def first_offsets(
    starts: Mapping[Any, int], listed_ends: Mapping[Any, int], limit: int | None
) -> dict[Any, int]:
    """Where to start each partition: its beginning, or `limit` before its listed end.

    A listed end can only be too low (see the module docstring), so starting `limit`
    before it reads at least the newest `limit` records; the caller keeps the newest.
    """
    if limit is None:
        return dict(starts)
    return {p: max(start, listed_ends[p] - limit) for p, start in starts.items()}


def read_records(
    bootstrap_servers: str,
    topic: str,
    *,
    limit: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> list[Any]:
    """The records of `topic` (kafka-python ConsumerRecords), ordered by (timestamp,
    partition, offset); with `limit`, the newest `limit` of them."""
    records = [
        record for batch in _batches(bootstrap_servers, topic, limit, timeout_s) for record in batch
    ]
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return records[-limit:] if limit is not None else records


def stream_records(
    bootstrap_servers: str, topic: str, *, timeout_s: float = DEFAULT_TIMEOUT_S
) -> Generator[list[Any], None, None]:
    """The records of `topic` in batches as they are read, each partition's in offset
    order, for a caller that must not hold the whole topic. `timeout_s` bounds the read's
    own time: what the caller spends between batches does not count."""
    return _batches(bootstrap_servers, topic, None, timeout_s)


def _batches(
    bootstrap_servers: str, topic: str, limit: int | None, timeout_s: float
) -> Generator[list[Any], None, None]:
    """Partitions are assigned, not subscribed: nothing is committed and no group is
    joined, so reading disturbs no one else reading the topic."""
    from kafka import KafkaConsumer  # the CLI's other commands need no Kafka client
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap_servers,
        enable_auto_commit=False,
        fetch_max_wait_ms=FETCH_WAIT_MS,  # an empty partition's first fetch answers soon
        # kafka-python waits 30 s for a broker that is not there; a command says so sooner
        bootstrap_timeout_ms=int(min(timeout_s, BOOTSTRAP_TIMEOUT_S) * 1000),
    )
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise TopicReadError(f"no topic {topic!r} on {bootstrap_servers}")
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        consumer.assign(partitions)
        starts = consumer.beginning_offsets(partitions)
        ends = consumer.end_offsets(partitions)
        for partition, offset in first_offsets(starts, ends, limit).items():
            consumer.seek(partition, offset)
        yield from _drain(consumer, topic, partitions, timeout_s)
    finally:
        consumer.close(autocommit=False)


def true_ends(consumer: Any, partitions: list[Any], timeout_s: float) -> dict[Any, int]:
    """Where each of `partitions` ends (see the module docstring), by a fetch from its
    listed end: `consumer` (kafka-python, no group) is assigned them, and what it polls
    there is dropped. Bounded by `timeout_s` (TopicReadError)."""
    listed = consumer.end_offsets(partitions)
    consumer.assign(partitions)
    for partition in partitions:
        consumer.seek(partition, listed[partition])
    deadline = time.monotonic() + timeout_s
    while True:
        consumer.poll(timeout_ms=ENDS_POLL_MS)  # returns at its timeout when nothing came
        highwaters = {p: consumer.highwater(p) for p in partitions}
        if None not in highwaters.values():
            ends = targets(highwaters, consumer.end_offsets(partitions))
            assert ends is not None
            return ends
        if time.monotonic() > deadline:
            raise TopicReadError(f"no fetch answered within {timeout_s:g} s")


def _drain(
    consumer: Any, topic: str, partitions: list[Any], timeout_s: float
) -> Generator[list[Any], None, None]:
    stop_at: dict[Any, int] | None = None
    deadline = time.monotonic() + timeout_s
    while True:
        for batch in consumer.poll(timeout_ms=POLL_MS).values():
            paused = time.monotonic()
            yield batch
            deadline += time.monotonic() - paused
        highwaters = {p: consumer.highwater(p) for p in partitions}
        if stop_at is None and None not in highwaters.values():
            # Re-read now, after the first fetches answered: the first reading may be stale.
            stop_at = targets(highwaters, consumer.end_offsets(partitions))
        if stop_at is not None and caught_up(
            {p: consumer.position(p) for p in partitions}, stop_at
        ):
            return
        if time.monotonic() > deadline:
            raise TopicReadError(f"could not read {topic} to its end within {timeout_s:g} s")
