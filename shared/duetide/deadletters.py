"""Dead letters: list the events a KafkaSource gave up on, and replay them onto their topic.

A dead letter is the original record (binary-mode CloudEvent: same key, value and
`ce_*` headers) plus the extensions Knative adds on failure: `knativeerrordest` (the
sink URL), and with an HTTP answer `knativeerrorcode` and `knativeerrordata` (the
answer's body, which may echo the payload; it is never printed). A replay produces the
original record again, without those extensions and with the same `ce_id`, onto the
topic its KafkaSource reads, so a consumer that did process it after all deduplicates it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from duetide.local.manifests import Wiring

DEFAULT_TOPIC = "duetide-dead-letters"
ERROR_EXTENSION_PREFIX = "ce_knativeerror"
READ_TIMEOUT_S = 15.0
SEND_TIMEOUT_S = 10.0


class DeadLetterError(RuntimeError):
    """A dead letter that cannot be listed or replayed; the message says what to do."""


@dataclass(frozen=True)
class DeadLetter:
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]

    def attribute(self, name: str) -> str:
        """A CloudEvent attribute from the binary-mode `ce_<name>` header ("" if absent)."""
        for header, value in self.headers:
            if header.lower() == f"ce_{name}":
                return value.decode(errors="replace")
        return ""

    @property
    def event_id(self) -> str:
        return self.attribute("id")

    @property
    def destination(self) -> str:
        return self.attribute("knativeerrordest")

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The record's headers as they were before Knative dead-lettered it."""
        return [
            (name, value)
            for name, value in self.headers
            if not name.lower().startswith(ERROR_EXTENSION_PREFIX)
        ]

    def line(self) -> str:
        """One line for an operator: where it is, what it is, why it failed; no data."""
        fields = {
            "offset": f"{self.partition}:{self.offset}",
            "type": self.attribute("type"),
            "id": self.event_id,
            "subject": self.attribute("subject"),
            "knativeerrorcode": self.attribute("knativeerrorcode"),
            "knativeerrordest": self.destination,
        }
        return " ".join(f"{name}={_printable(value)}" for name, value in fields.items())


def _printable(text: str) -> str:
    """A header value on one line: no control characters, "-" when empty."""
    return "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "-"


def read(bootstrap_servers: str, topic: str, limit: int | None = None) -> list[DeadLetter]:
    """The dead letters on `topic`, oldest first; with `limit`, only the newest `limit`.

    Reads partitions directly (no consumer group), so listing commits nothing and does
    not disturb anyone else reading the topic.
    """
    from kafka import KafkaConsumer  # the CLI's other commands need no Kafka client
    from kafka.structs import TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        numbers = consumer.partitions_for_topic(topic)
        if not numbers:
            raise DeadLetterError(f"no topic {topic!r} on {bootstrap_servers}")
        partitions = [TopicPartition(topic, n) for n in sorted(numbers)]
        consumer.assign(partitions)
        ends = consumer.end_offsets(partitions)
        starts = consumer.beginning_offsets(partitions)
        for partition in partitions:
            first = starts[partition]
            if limit is not None:
                first = max(first, ends[partition] - limit)
            consumer.seek(partition, first)
        letters = _read_until(consumer, topic, ends)
    finally:
        consumer.close(autocommit=False)
    letters.sort(key=lambda d: (d.timestamp, d.partition, d.offset))
    return letters[-limit:] if limit is not None else letters


def _read_until(consumer: Any, topic: str, ends: dict[Any, int]) -> list[DeadLetter]:
    """Poll the assigned partitions up to the end offsets taken before reading."""
    letters: list[DeadLetter] = []
    deadline = time.monotonic() + READ_TIMEOUT_S
    while any(consumer.position(p) < end for p, end in ends.items()):
        if time.monotonic() > deadline:
            raise DeadLetterError(f"timed out after {READ_TIMEOUT_S:g} s reading {topic}")
        for partition, records in consumer.poll(timeout_ms=200).items():
            letters.extend(_letter(r) for r in records if r.offset < ends[partition])
    return letters


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(
        partition=record.partition,
        offset=record.offset,
        timestamp=record.timestamp,
        key=record.key,
        value=record.value,
        headers=tuple(record.headers or ()),
    )


def resolve_topic(destination: str, wiring: Wiring) -> str | None:
    """The topic of the KafkaSource whose sink is `destination`, if exactly one matches.

    On a cluster `knativeerrordest` is the sink Service's address
    (`http://duetide-recurrence.<namespace>.svc.cluster.local` plus the source's
    `sink.uri` path): the first host label names the Service. A loopback address (the
    local stack) names no Service; then the path alone decides when it is unique.
    """
    parts = urlsplit(destination)
    path = parts.path.rstrip("/")
    service = (parts.hostname or "").split(".")[0]
    on_path = [
        source
        for source in wiring.kafka_sources
        if source.sink.kind == "Service" and source.sink.path.rstrip("/") == path
    ]
    named = [source for source in on_path if source.sink.name == service]
    candidates = named or on_path
    if len(candidates) != 1 or len(candidates[0].topics) != 1:
        return None
    return candidates[0].topics[0]


def distinct_events(letters: Iterable[DeadLetter], event_id: str | None) -> list[DeadLetter]:
    """The letters to replay: the newest copy of each distinct event (of `event_id` only,
    when given), in the order they were dead-lettered."""
    newest: dict[tuple[str, str], DeadLetter] = {}
    for letter in letters:
        if event_id is None or letter.event_id == event_id:
            newest[(letter.attribute("source"), letter.event_id)] = letter
    return sorted(newest.values(), key=lambda d: (d.timestamp, d.partition, d.offset))


def replay(
    bootstrap_servers: str,
    letters: list[DeadLetter],
    *,
    to: str | None = None,
    wiring: Wiring | None = None,
) -> list[tuple[DeadLetter, str]]:
    """Produce each letter's original record onto its topic; returns (letter, topic) pairs.

    Every topic is resolved before anything is sent, so an unresolvable letter stops the
    replay before it starts.
    """
    from kafka import KafkaProducer

    plan = [(letter, to or _topic_of(letter, wiring)) for letter in letters]
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="duetide-deadletters",
        acks="all",
        linger_ms=0,
    )
    try:
        for letter, topic in plan:
            producer.send(
                topic, value=letter.value, key=letter.key, headers=letter.original_headers()
            ).get(timeout=SEND_TIMEOUT_S)
    finally:
        producer.close(timeout=SEND_TIMEOUT_S)
    return plan


def _topic_of(letter: DeadLetter, wiring: Wiring | None) -> str:
    topic = resolve_topic(letter.destination, wiring) if wiring is not None else None
    if topic is None:
        raise DeadLetterError(
            f"cannot tell the original topic of dead letter id={letter.event_id} "
            f"(knativeerrordest={letter.destination or '-'}) from the KafkaSources in "
            "knative/; pass --to TOPIC"
        )
    return topic
