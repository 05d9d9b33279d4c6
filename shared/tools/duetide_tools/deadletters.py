"""Dead letters: list the events a KafkaSource gave up on, and replay them onto their topic.

A dead letter is the original record (binary-mode CloudEvent: same value and `ce_*`
headers, keyed by its `partitionkey` extension as Knative's dead-letter KafkaSink keys
it) plus the extensions Knative adds on failure: `knativeerrordest` (the
sink URL), and with an HTTP answer `knativeerrorcode` and `knativeerrordata` (the
answer's body, which may echo the payload; it is never printed). A replay produces the
original record again, without those extensions and with the same `ce_id`, onto the
topic its KafkaSource reads, so a consumer that did process it after all deduplicates it.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from duetide_tools import topic_reader
from duetide_tools.manifests import Wiring

DEFAULT_TOPIC = "duetide-dead-letters"
ERROR_EXTENSION_PREFIX = "ce_knativeerror"
SOURCE_TOPIC_EXTENSION = "duetidesourcetopic"
"""The topic a record came from, which the local stack's dispatcher adds to a dead
letter (Knative's does not); a replay sends the letter back there, and drops it."""
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
        """The record's headers as they were before it was dead-lettered."""
        return [
            (name, value)
            for name, value in self.headers
            if not name.lower().startswith(ERROR_EXTENSION_PREFIX)
            and name.lower() != f"ce_{SOURCE_TOPIC_EXTENSION}"
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


MAX_FIELD_CHARS = 200
"""A field of a listed letter is cut after this: a header of 300 KB made a line as long."""


def _printable(text: str) -> str:
    """A header value on one line: no control characters, "-" when empty, cut at
    MAX_FIELD_CHARS (marked with "…")."""
    shown = "".join(c if c.isprintable() and not c.isspace() else "?" for c in text) or "-"
    return shown if len(shown) <= MAX_FIELD_CHARS else shown[:MAX_FIELD_CHARS] + "…"


def read(
    bootstrap_servers: str,
    topic: str,
    limit: int | None = None,
    *,
    timeout_s: float = READ_TIMEOUT_S,
) -> list[DeadLetter]:
    """The dead letters on `topic`, oldest first; with `limit`, only the newest `limit`.

    Every letter the broker acknowledged before the call is included: the topic is read
    to the high watermark of a fresh fetch, not to the end a ListOffsets request reports,
    which the embedded broker under-reports after a burst (see `duetide_tools.topic_reader`).
    Reads partitions directly (no consumer group), so listing commits nothing and does
    not disturb anyone else reading the topic.
    """
    try:
        records = topic_reader.read_records(
            bootstrap_servers, topic, limit=limit, timeout_s=timeout_s
        )
    except topic_reader.TopicReadError as exc:
        raise DeadLetterError(str(exc)) from None
    return [_letter(record) for record in records]


def _of_event(event_id: str) -> Callable[[Any], bool]:
    wanted = event_id.encode()
    return lambda record: any(
        name.lower() == "ce_id" and value == wanted for name, value in record.headers or ()
    )


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


def replay(
    bootstrap_servers: str,
    topic: str,
    *,
    event_id: str | None = None,
    to: str | None = None,
    wiring: Wiring | None = None,
    timeout_s: float = READ_TIMEOUT_S,
) -> Iterator[tuple[DeadLetter, str]]:
    """Produce the newest copy of each distinct event dead-lettered on `topic` (of
    `event_id` only, when given) onto its topic again; yields each (letter, topic) once
    the broker acknowledged it, a partition's letters in their order.

    Two reads of the topic, so that memory grows with the distinct events and not with
    their letters (a replay of 600,000 letters held them all, 1.3 GB): the first notes
    where each event's newest copy is and resolves every topic, so that an unresolvable
    letter stops the replay before anything is sent; the second sends those copies as
    it reads them, at most IN_FLIGHT unacknowledged.
    """
    from kafka import KafkaProducer

    plan, largest = _plan(bootstrap_servers, topic, event_id, to, wiring, timeout_s)
    if not plan:
        return
    producer = KafkaProducer(
        bootstrap_servers=bootstrap_servers,
        client_id="duetide-deadletters",
        acks="all",
        linger_ms=0,
        # The client refuses a record over 1 MiB by default, before the broker is asked;
        # a letter the broker once took goes back as large (the broker's limit still holds).
        max_request_size=max(_DEFAULT_REQUEST_BYTES, largest),
    )
    pending: deque[tuple[Any, DeadLetter, str]] = deque()
    try:
        batches = topic_reader.stream_records(bootstrap_servers, topic, timeout_s=timeout_s)
        with contextlib.closing(batches):
            for batch in batches:
                for record in batch:
                    target = plan.pop((record.partition, record.offset), None)
                    if target is None:
                        continue
                    letter = _letter(record)
                    headers = letter.original_headers()
                    sent = producer.send(
                        target, value=letter.value, key=letter.key, headers=headers
                    )
                    pending.append((sent, letter, target))
                    if len(pending) >= IN_FLIGHT:
                        yield from _acknowledged(pending)
                if not plan:
                    break
        yield from _acknowledged(pending)
    except topic_reader.TopicReadError as exc:
        raise DeadLetterError(str(exc)) from None
    finally:
        producer.close(timeout=SEND_TIMEOUT_S)
    if plan:
        raise DeadLetterError(
            f"{len(plan)} dead letters left {topic} between its two readings (retention?); "
            "the rest were replayed"
        )


IN_FLIGHT = 1000
"""Letters sent and not yet acknowledged, at most: what the replay holds at once."""


def _plan(
    bootstrap_servers: str,
    topic: str,
    event_id: str | None,
    to: str | None,
    wiring: Wiring | None,
    timeout_s: float,
) -> tuple[dict[tuple[int, int], str], int]:
    """Where each distinct event's newest letter is (partition, offset) and the topic it
    goes to, and the size of the largest of them (the first reading)."""
    newest: dict[tuple[str, str], tuple[int, int, str, int]] = {}
    resolved: dict[str, str] = {}
    keep = None if event_id is None else _of_event(event_id)
    try:
        batches = topic_reader.stream_records(bootstrap_servers, topic, timeout_s=timeout_s)
        for batch in batches:
            for record in batch if keep is None else filter(keep, batch):
                letter = _letter(record)
                destination = letter.destination
                if destination not in resolved:
                    resolved[destination] = to or _topic_of(letter, wiring)
                where = (letter.partition, letter.offset, destination, _size(letter))
                newest[(letter.attribute("source"), letter.event_id)] = where
    except topic_reader.TopicReadError as exc:
        raise DeadLetterError(str(exc)) from None
    plan = {(p, o): resolved[destination] for p, o, destination, _ in newest.values()}
    return plan, max((size for *_, size in newest.values()), default=0)


def _acknowledged(
    pending: deque[tuple[Any, DeadLetter, str]],
) -> Iterator[tuple[DeadLetter, str]]:
    """Wait for each send of `pending`, oldest first, emptying it."""
    while pending:
        sent, letter, target = pending.popleft()
        sent.get(timeout=SEND_TIMEOUT_S)
        yield letter, target


_DEFAULT_REQUEST_BYTES = 1 << 20
_RECORD_OVERHEAD_BYTES = 4096
"""Beyond key, value and headers: the request's and the batch's framing, generously."""


def _size(letter: DeadLetter) -> int:
    headers = sum(len(name) + len(value) for name, value in letter.original_headers())
    return len(letter.key or b"") + len(letter.value or b"") + headers + _RECORD_OVERHEAD_BYTES


def _topic_of(letter: DeadLetter, wiring: Wiring | None) -> str:
    """The topic the local stack's dispatcher noted, or the one its destination names."""
    topic = letter.attribute(SOURCE_TOPIC_EXTENSION) or None
    if topic is None and wiring is not None:
        topic = resolve_topic(letter.destination, wiring)
    if topic is None:
        raise DeadLetterError(
            f"cannot tell the original topic of dead letter id={letter.event_id} "
            f"(knativeerrordest={letter.destination or '-'}) from the KafkaSources in "
            "knative/; pass --to TOPIC"
        )
    return topic
