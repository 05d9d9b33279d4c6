"""A local stand-in for Knative eventing: KafkaSource dispatchers and PingSource timers.

Each class runs one manifest object (see `duetide_tools.manifests`) in a thread and
behaves as Knative's data plane does, so that the functions see the same HTTP
CloudEvents locally as on a cluster:

- `KafkaSourceDispatcher` mirrors knative-extensions/eventing-kafka-broker's
  dispatcher (`RecordDispatcherImpl`, `InvalidCloudEventInterceptor`,
  `OrderedConsumerVerticle`, `UnorderedConsumerVerticle`, `OffsetManager`):
  `ordering: ordered` delivers one record at a time per partition with partitions
  in parallel, `unordered` delivers concurrently (bounded); the retry/backoff/
  dead-letter contract; a record's offset becomes committable once it is handled,
  whatever its outcome, and each partition commits its contiguous handled prefix.
  Beyond Knative, for the embedded broker: a hole in a partition's offsets is fetched
  again before it is passed over (`OffsetTrail`), and a fetch that left records at the
  broker is followed by a long one (`FLOWING_FETCH_WAIT_MS`).
- `PingTimer` mirrors knative/eventing's mt-ping adapter (`pkg/adapter/mtping`):
  a new event id per tick, 0-500 ms jitter, 5 retries at 50 ms exponential
  backoff, no dead-letter sink, missed ticks not replayed.

Every wait is on a `threading.Event`, so `stop()` returns within a few seconds.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import http.client
import itertools
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cloudevents import exceptions as ce_errors
from cloudevents.conversion import from_json, to_binary
from cloudevents.http import CloudEvent
from cloudevents.kafka import KafkaMessage
from cloudevents.kafka import from_binary as kafka_from_binary
from cloudevents.kafka import to_binary as kafka_to_binary
from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from duetide_tools.deadletters import SOURCE_TOPIC_EXTENSION
from duetide_tools.manifests import KafkaSourceSpec, PingSourceSpec

log = logging.getLogger(__name__)

KAFKA_EVENT_TYPE = "dev.knative.kafka.event"
PING_EVENT_TYPE = "dev.knative.sources.ping"
DEFAULT_NAMESPACE = "default"
# Knative's per-attempt request timeout when a source has no `delivery.timeout`.
DEFAULT_ATTEMPT_TIMEOUT_S = 600.0
# eventing-kafka-broker truncates the failed response body to 1 KiB for knativeerrordata.
ERROR_DATA_MAX_BYTES = 1024
DEAD_LETTER_MAX_BYTES = 1_000_000
"""A dead letter's data and headers, under the producer's and Kafka's 1 MiB for a
request: a record that fits brings the error extensions along, and one of 1,047,002
bytes made a letter the producer refused for good, retried every 5 s while its
partition waited (an audit, 2026-12-07). Past it the letter goes without its data."""
DATA_DROPPED_EXTENSION = "duetidedatadropped"
"""On a dead letter sent without its data (DEAD_LETTER_MAX_BYTES): the data's size."""
# Response bodies are not used beyond knativeerrordata; a longer one closes the connection.
_RESPONSE_READ_LIMIT = 64 * 1024
_DLS_BACKOFF_CAP_S = 5.0
"""Longest wait between attempts to write a dead letter while the broker is away."""
# KafkaSource retries these (and every 5xx, connection error and timeout).
_SOURCE_RETRIED_STATUSES = frozenset({404, 408, 409, 429})
# PingSource sends through the CloudEvents Go SDK, whose default retriable set is this
# (cloudevents/sdk-go v2/protocol/http/protocol.go `defaultRetriableErrors`).
_PING_RETRIED_STATUSES = frozenset({404, 413, 425, 429, 502, 503, 504})
_PING_RETRIES = 5
_PING_BACKOFF_S = 0.05
_PING_JITTER_S = 0.5
_REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type")
_PARTITION_KEY_HEADER = "ce_partitionkey"
# How a server's close of an idle kept-alive connection shows on the next request.
_STALE_CONNECTION = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


def _identity(value: Any) -> Any:
    return value


# --------------------------------------------------------------------------- HTTP


@dataclass(frozen=True)
class SinkResponse:
    """What one POST got: an HTTP status and body, or no status for a connection error."""

    status: int | None
    body: bytes = b""
    error: str = ""
    unsendable: bool = False
    """The request could not be built (a header HTTP cannot carry): no retry helps."""

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def describe(self) -> str:
        return str(self.status) if self.status is not None else f"no response ({self.error})"


class HttpSink:
    """POSTs to one URL over a kept-alive connection (stdlib only: no extra dependency).

    `abort()` may be called from another thread: it breaks the in-flight request and
    makes every later `post` fail at once, so that a stopping dispatcher does not
    wait out a long per-attempt timeout.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.url = url
        self.timeout_s = timeout_s
        self._parts = parts
        self._host = parts.hostname
        self._target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self._conn: http.client.HTTPConnection | None = None
        self._aborted = False
        self._lock = threading.Lock()

    def post(self, headers: Mapping[str, Any], body: bytes | None) -> SinkResponse:
        wire_headers = {name: str(value).encode() for name, value in headers.items()}
        reused = self._conn is not None and self._conn.sock is not None
        try:
            return self._exchange(wire_headers, body)
        except ValueError:  # http.client's check of a header; the value is not logged
            self.close()
            return SinkResponse(None, error="a header value HTTP cannot carry", unsendable=True)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            if not (reused and isinstance(exc, _STALE_CONNECTION) and not self._aborted):
                return SinkResponse(None, error=repr(exc))
        # The server closed the idle kept-alive connection: one fresh try, as HTTP clients do.
        try:
            return self._exchange(wire_headers, body)
        except (OSError, http.client.HTTPException) as exc:
            self.close()
            return SinkResponse(None, error=repr(exc))

    def _exchange(self, headers: dict[str, bytes], body: bytes | None) -> SinkResponse:
        conn = self._connection()
        conn.request("POST", self._target, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read(_RESPONSE_READ_LIMIT)
        if response.will_close or not response.isclosed():
            self.close()  # closed by the server, or a body we did not read to the end
        return SinkResponse(response.status, data)

    def _connection(self) -> http.client.HTTPConnection:
        with self._lock:
            if self._aborted:
                raise ConnectionAbortedError("the sink was aborted")
            if self._conn is None:
                https = self._parts.scheme == "https"
                cls = http.client.HTTPSConnection if https else http.client.HTTPConnection
                self._conn = cls(self._host, self._parts.port, timeout=self.timeout_s)
            conn = self._conn
        if conn.sock is None:
            conn.connect()
            with self._lock:  # an abort() during connect() saw no socket to shut down
                if self._aborted:
                    raise ConnectionAbortedError("the sink was aborted")
        return conn

    def abort(self) -> None:
        """Break the in-flight request and refuse later ones (safe from any thread)."""
        with self._lock:
            self._aborted = True
            sock = self._conn.sock if self._conn is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class Unsendable(ValueError):
    """An event Knative's dispatcher could not deliver as it is (a reason, no value)."""


_AS_SENT = re.compile(r"[\t\x20-\x7e]*")
"""What a `ce-*` header value carries through Knative's dispatcher unchanged."""


def _http_parts(event: CloudEvent) -> tuple[dict[str, str], bytes | None]:
    """Binary-mode HTTP headers and body for `event`, encoded by the CloudEvents SDK,
    each attribute value as it is: Knative's dispatcher (sdk-java) writes values into
    headers unencoded (cloudevents/sdk-java#748), though the HTTP binding (3.1.3.2) asks
    for percent-encoding, which duetide's sinks decode. So a value that is not printable
    ASCII arrives changed on a cluster, or not at all (Vert.x refuses some characters,
    Netty narrows the rest to bytes): `Unsendable` here, dead-lettered at once, rather
    than delivered intact as this dispatcher once did by encoding it, so that what works
    locally works on a cluster. A producer percent-encodes such values itself.

    Every event built here carries its data as bytes (or None), sent as they are."""
    headers, body = to_binary(event, data_marshaller=_identity)
    for name, value in headers.items():
        if name.startswith("ce-") and not _AS_SENT.fullmatch(str(value)):
            raise Unsendable(
                f"header {name} is not printable ASCII, which Knative's dispatcher sends "
                "changed or not at all: percent-encode it in the record"
            )
    return headers, body


# -------------------------------------------------------------- record -> event


def _record_headers(record: Any) -> dict[str, bytes]:
    return {name.lower(): value for name, value in (record.headers or []) if value is not None}


def _new_event(attributes: Mapping[str, Any], data: bytes | None) -> CloudEvent:
    """A CloudEvent with exactly `attributes`: without the `time` the SDK adds by default."""
    return _drop_sdk_defaults(CloudEvent(attributes, data), set(attributes))


def record_to_event(
    record: Any, source_name: str, namespace: str = DEFAULT_NAMESPACE
) -> CloudEvent:
    """The CloudEvent a KafkaSource delivers for `record`.

    A record that is a CloudEvent (binary `ce_*` headers, or structured JSON) passes
    through unchanged; any other becomes `dev.knative.kafka.event`, as Knative's
    `InvalidCloudEventInterceptor` builds it.
    """
    headers = _record_headers(record)
    event = None
    content_type = headers.get("content-type", b"").decode(errors="replace").lower()
    if content_type.startswith("application/cloudevents"):
        event = _structured_event(record.value)
    elif "ce_specversion" in headers:
        event = _binary_event(headers, record.key, record.value)
    return event if event is not None else _plain_event(record, headers, source_name, namespace)


def _binary_event(headers: dict[str, bytes], key: Any, value: Any) -> CloudEvent | None:
    present = {name[3:] for name in headers if name.startswith("ce_")}
    if not set(_REQUIRED_ATTRIBUTES) <= present:
        return None  # Knative's deserializer rejects it too; it then becomes a plain record
    try:
        event = kafka_from_binary(KafkaMessage(headers, key, value), data_unmarshaller=_identity)
    except (ce_errors.GenericException, UnicodeDecodeError):
        return None
    if "partitionkey" in present:  # the SDK puts the record's key (bytes) in its place
        event["partitionkey"] = headers[_PARTITION_KEY_HEADER].decode()
    return _drop_sdk_defaults(event, present | {"datacontenttype"})


def _structured_event(value: bytes | None) -> CloudEvent | None:
    if not value:
        return None
    try:
        envelope = json.loads(value)
        event = from_json(CloudEvent, value, data_unmarshaller=_identity)
    except (ce_errors.GenericException, ValueError):
        return None
    if not isinstance(envelope, dict) or not _readable_attributes(envelope):
        return None
    if isinstance(event.data, str):
        # The SDK hands a structured `data` member over as its JSON text. As an HTTP body
        # that text is right, except for a JSON string under a non-JSON content type.
        content_type = event.get("datacontenttype") or "application/json"
        value = envelope["data"]
        text = value if isinstance(value, str) and "json" not in content_type else event.data
        event.data = text.encode()
    return _drop_sdk_defaults(event, set(envelope))


_TEXT_ATTRIBUTES = (*_REQUIRED_ATTRIBUTES, "datacontenttype", "dataschema", "subject", "time")


def _readable_attributes(envelope: dict[str, Any]) -> bool:
    """Whether Knative's deserializer (sdk-java's JSON format) reads the envelope as an
    event: its required attributes there, the spec's attributes strings, extensions
    strings, booleans or integers. Anything else is an InvalidCloudEvent it delivers as
    a plain record. A `datacontenttype` of 5 raised here, and the dispatcher stopped on
    the record at every restart (an audit, 2026-12-07)."""
    if not set(_REQUIRED_ATTRIBUTES) <= envelope.keys():
        return False
    for name, value in envelope.items():
        if name in ("data", "data_base64"):
            continue
        if not isinstance(value, str if name in _TEXT_ATTRIBUTES else str | bool | int):
            return False
    return True


def _drop_sdk_defaults(event: CloudEvent, present: set[str]) -> CloudEvent:
    """Remove what the SDK added on decoding (`time`, `partitionkey`): pass-through is verbatim."""
    for name in ("time", "partitionkey"):
        if name not in present and name in event:
            del event[name]
    return event


def _plain_event(
    record: Any, headers: dict[str, bytes], source_name: str, namespace: str
) -> CloudEvent:
    partition, offset = record.partition, record.offset
    attributes: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"partition:{partition}/offset:{offset}",
        "type": KAFKA_EVENT_TYPE,
        "source": f"/apis/v1/namespaces/{namespace}/kafkasources/{source_name}#{record.topic}",
        "subject": f"partition:{partition}#{offset}",
    }
    if record.timestamp is not None and record.timestamp >= 0:
        stamp = dt.datetime.fromtimestamp(record.timestamp / 1000, dt.UTC)
        attributes["time"] = stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    if record.key is not None:
        key = record.key.decode(errors="replace") if isinstance(record.key, bytes) else record.key
        attributes["partitionkey"] = attributes["key"] = key
    for name, value in headers.items():
        text = value.decode(errors="replace")
        if name.lower() == "content-type":
            attributes["datacontenttype"] = text.lower()
        else:
            attributes["kafkaheader" + "".join(c for c in name.lower() if c.isalnum())] = text
    return _new_event(attributes, record.value)


def dead_letter_event(
    event: CloudEvent, destination: str, response: SinkResponse, topic: str
) -> CloudEvent:
    """`event` with the extensions Knative adds before the dead-letter sink.

    As eventing-kafka-broker's `RecordDispatcherImpl.errorTransform`: always
    `knativeerrordest`; with an HTTP response also `knativeerrorcode` and
    `knativeerrordata` (the body's first 1024 bytes, standard base64). And, which
    Knative's does not, the topic the record came from (`SOURCE_TOPIC_EXTENSION`): the
    local stack's sinks are loopback addresses that name no Service, so without it no
    dead letter of the local stack could be replayed without `--to`.
    """
    attributes = dict(event.get_attributes())
    attributes[SOURCE_TOPIC_EXTENSION] = topic
    attributes["knativeerrordest"] = destination
    if response.status is not None:
        attributes["knativeerrorcode"] = str(response.status)
        if response.body:
            body = response.body[:ERROR_DATA_MAX_BYTES]
            attributes["knativeerrordata"] = base64.b64encode(body).decode("ascii")
    return _new_event(attributes, event.get_data())


def _kafka_parts(event: CloudEvent) -> KafkaMessage:
    """Binary-mode Kafka record for `event`, encoded by the CloudEvents SDK, as Knative's
    dead-letter KafkaSink produces it: keyed by its `partitionkey` extension, which stays a
    header too (sdk-java's `PartitionKeyExtensionInterceptor`), and without a key when it
    has none, whatever the failed record's key was."""
    attributes = {name: _header_text(value) for name, value in event.get_attributes().items()}
    partition_key = attributes.get("partitionkey")
    key = None if partition_key is None else partition_key.encode()
    headed = _new_event(attributes, event.get_data())
    # cloudevents 1.12 kafka.to_binary reads event["datacontenttype"] unguarded; None
    # means "no content-type header" to it.
    headed["datacontenttype"] = attributes.get("datacontenttype")
    message = kafka_to_binary(headed, data_marshaller=_identity, key_mapper=lambda _: key)
    if key is not None:  # the SDK drops the header it maps to the key; sdk-java keeps it
        message.headers[_PARTITION_KEY_HEADER] = key
    return message


def _size(message: KafkaMessage) -> int:
    headers = sum(len(name) + len(value) for name, value in message.headers.items())
    return len(message.key or b"") + len(message.value or b"") + headers


def _header_text(value: Any) -> str:
    """An attribute as a Kafka header's UTF-8 text: an extension may be a boolean or an
    integer (the SDK encoded only strings: an `attempt: 3` raised, and the dispatcher
    stopped on the record), and a lone surrogate no UTF-8 can carry becomes U+FFFD."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return re.sub("[\ud800-\udfff]", "\ufffd", str(value))


# ------------------------------------------------------------- KafkaSource


ORDERED = "ordered"
UNORDERED = "unordered"
# Deliveries in flight at once: partitions in parallel (ordered), records (unordered).
# Knative bounds unordered in-flight records by max.poll.records (50 by default, per
# consumer across its partitions: eventing-kafka-broker's UnorderedConsumerVerticle);
# the local stack keeps a smaller bound, one thread and HTTP connection per delivery,
# still above what one notify pod takes at once (containerConcurrency 32), so a burst
# keeps it full (issue 16).
DEFAULT_MAX_IN_FLIGHT = 40
# Records polled but not yet started, per partition, before the partition is paused.
DEFAULT_MAX_BUFFERED_PER_PARTITION = 100
# Every poll takes all the records the consumer has fetched. kafka-python 3.0.12 can
# strand a partition for good when it is paused while part of a fetched batch is still
# undelivered: the rest is parked and, once the partition is resumed, only restored in a
# state its fetcher need not reach again (`Fetcher.fetched_records`, KAFKA-7548 port);
# the partition is not fetched meanwhile. Draining each fetch keeps that path unused;
# what one poll adds is still bounded by one fetch response (`fetch_max_bytes`,
# `max_partition_fetch_bytes`).
_POLL_ALL_FETCHED = 1 << 30
# Poll timeout while deliveries are under way: how soon completions are committed and
# paused partitions resumed.
_BUSY_POLL_MS = 20
# How long the stopping poll thread waits for its workers (their sinks are aborted).
_WORKER_JOIN_S = 2.0
# How long the broker may hold a fetch that finds nothing new. Kafka answers a waiting
# fetch as soon as a record arrives; the embedded broker (Tansu) holds it for the whole
# wait, so a record waits for the fetch in progress: with kafka-python's default of
# 500 ms the raw produce -> poll round trip was p99 250 ms at 50 records/s; with 10 ms,
# 5 ms (`scripts/bench pipeline`, raw Kafka rows). A short wait costs fetches (an idle
# consumer at 25 ms: ~0.05 s of broker CPU and ~0.04 s of its own per second), so the
# dispatcher uses it only while records flow, and the long one after IDLE_AFTER_S
# without any: the first record after a quiet spell waits for at most half of it.
# The wait is also all the time Tansu gives itself to list a partition's stored batches
# (one object a batch, and the outbox sends a record a batch): a 10 ms fetch of a
# partition holding 24,000 such batches came back empty, over and over, where a 200 ms
# one returned them all at once. So once fetches have shown records they did not return
# (the high watermark past the next offset) for BEHIND_FOR_S, the next one gets the long
# wait: with records there to return, it is answered as soon as they are read. Not at
# once: Tansu raises the high watermark when it reserves a batch's offsets, before it
# stores the batch, so while records flow a fetch often shows one that the next short
# fetch returns (a long wait each time made the dispatcher's p50 at 35/s 50 ms, not 3).
# A longer flowing wait saves nothing: at 20 ms, alternated with 10 ms in the pipeline
# benchmark at 50/s (2026-12-04, two runs each), the dispatchers spent 10.0-10.1 ms of
# CPU a completion against 9.5-10.5 and the broker 4.3-4.4 against 4.2-4.5 (records
# flow often enough that a fetch rarely waits out its whole time), and raw p99 was higher.
# Tansu does honour `fetch_min_bytes`: at 100 records/s on 6 partitions, 1,200 bytes
# (two records) with a 25 ms wait halved a consumer's fetches and cut its CPU by a third,
# p50 5-10 -> 17-19 ms; in the pipeline at 50/s (1,500 bytes, alternated, two runs each)
# the dispatchers spent 7.9-8.4 ms a completion against 9.5-10.1, the stack 40-42
# against 42-44, and every round still fell behind: 5% for +10 ms on every hop, not taken.
FLOWING_FETCH_WAIT_MS = 10
IDLE_FETCH_WAIT_MS = 200
IDLE_AFTER_S = 2.0
BEHIND_FOR_S = 0.05


# How often the done prefix is committed while records flow. Every poll (each fetch,
# every 10 ms while flowing) was an OffsetCommit request for the broker and this process
# to handle; what a crash leaves uncommitted is redelivered and deduplicated by the
# sinks, so this much later costs nothing but those redeliveries. On a rebalance and on
# stop the done prefix is committed at once, as before.
COMMIT_INTERVAL_S = 0.1


def dispatcher_fetch_settings() -> dict[str, Any]:
    """The consumer's fetch settings while records flow (the benchmark's raw round trip
    uses them too, as the floor of what a dispatcher can do)."""
    return {"fetch_max_wait_ms": FLOWING_FETCH_WAIT_MS}


def source_retries(status: int | None) -> bool:
    """Whether a KafkaSource sends an event again after this answer (None: no answer)."""
    return status is None or status >= 500 or status in _SOURCE_RETRIED_STATUSES


# How long a hole in a partition's offsets is fetched again before it is taken as real.
HOLE_RECHECK_S = 0.1
_HOLES_KEPT = 100  # holes remembered for diagnostics, per dispatcher and outcome
_FETCH_START_TIMEOUT_MS = 2000  # each of the two questions of `_fetch_start`


@dataclass(frozen=True)
class Followed:
    """What `OffsetTrail.follow` found in a poll's records for one partition."""

    taken: int
    """How many of the records to hand over (those before a hole being fetched again)."""
    refetch_from: int | None = None
    """The offset to fetch again from: the first one missing."""
    filled: int | None = None
    """A hole's first offset that arrived when fetched again (the broker's race caught)."""
    passed: tuple[int, ...] = ()
    """Holes passed over as real, each as its first offset missing."""


@dataclass
class OffsetTrail:
    """Whether a partition's records follow on from the last one handed over.

    Tansu (the embedded broker, 0.6) reserves a produced batch's offsets and stores the
    batch in two steps; a fetch in between finds a later producer's batch and not the
    earlier one, and a Kafka consumer moves past the hole as past compacted records, so
    the earlier record was never delivered (RELIABILITY.md, scenario 7c).
    These topics are neither compacted nor transactional, so a hole is taken for that
    race first: the records from it on are dropped and fetched again until the hole
    has been seen for HOLE_RECHECK_S; then it is real (a produce that failed after
    reserving its offsets, transaction markers, compaction) and passed over.
    """

    next_offset: int | None = None
    """One past the last offset handed over. At the start of an assignment, the offset
    its fetching began at when the dispatcher could learn it (`start`), else None until
    the first record, which is then taken as the start."""
    hole: tuple[int, float] | None = None
    """The missing offset being fetched again, and when it was first seen."""

    def follow(self, offsets: list[int], now: float) -> Followed:
        """Check the offsets of a poll's records for one partition, in order."""
        filled: int | None = None
        passed: list[int] = []
        for taken, offset in enumerate(offsets):
            expected = self.next_offset
            if expected is not None and offset > expected:
                if self.hole is None or self.hole[0] != expected:
                    self.hole = (expected, now)
                if now - self.hole[1] < HOLE_RECHECK_S:
                    return Followed(taken, expected, filled, tuple(passed))
                passed.append(expected)
                self.hole = None
            elif self.hole is not None and offset == self.hole[0]:
                filled, self.hole = offset, None
            self.next_offset = offset + 1
        return Followed(len(offsets), None, filled, tuple(passed))


@dataclass(eq=False)
class _Partition:
    """One assigned partition: its buffered records and what of them is done.

    `received` holds the offsets handed to this dispatcher in this assignment (its
    epoch), oldest first, up to the first that is not done yet; `done` the offsets
    done out of turn (unordered). `commit_to` is one past the last offset of the
    contiguous done prefix: the offset to commit.
    """

    epoch: int = 0
    assigned: bool = True
    paused: bool = False
    in_flight: int = 0
    pending: deque[Any] = field(default_factory=deque)
    received: deque[int] = field(default_factory=deque)
    done: set[int] = field(default_factory=set)
    commit_to: int | None = None
    committed: int | None = None
    trail: OffsetTrail = field(default_factory=OffsetTrail)


class _WorkQueue:
    """Polled records per partition, shared by the poll thread, the workers and the
    rebalance listener (all under one lock).

    Ordered: a partition's next record starts only when its previous one is done, so
    partitions proceed in parallel and each in order (Knative's `OrderedAsyncExecutor`
    per partition). Unordered: any buffered record may start, partitions taken in turn.
    Either way the offset to commit is the end of the contiguous done prefix
    (Knative's `OffsetManager`), so a record not done is never committed.
    """

    def __init__(self, ordered: bool) -> None:
        self.ordered = ordered
        self._cond = threading.Condition()
        self._partitions: dict[TopicPartition, _Partition] = {}
        self._ready: deque[TopicPartition] = deque()  # partitions a worker may take from
        self._ready_set: set[TopicPartition] = set()
        self._buffered = 0
        self._busy = 0

    # the poll thread

    def started(self, tp: TopicPartition) -> bool:
        """Whether `tp`'s trail has a start in this assignment (see `add`)."""
        with self._cond:
            state = self._partitions.get(tp)
            return state is not None and state.trail.next_offset is not None

    def add(
        self, tp: TopicPartition, records: list[Any], now: float, start: int | None = None
    ) -> Followed:
        """Buffer a poll's records for `tp` up to a hole in its offsets (OffsetTrail);
        `start`, where this assignment's fetching of `tp` began, if not started yet."""
        with self._cond:
            state = self._partitions.get(tp)
            if state is None:
                state = self._partitions[tp] = _Partition()
            state.assigned = True  # (re)assigned: an old epoch's delivery may still run
            if state.trail.next_offset is None:
                state.trail.next_offset = start
            followed = state.trail.follow([record.offset for record in records], now)
            records = records[: followed.taken]
            for record in records:
                state.pending.append(record)
                state.received.append(record.offset)
            self._buffered += len(records)
            self._mark_ready(tp, state)
            self._cond.notify(len(records))
            return followed

    def startable(self) -> int:
        """How many deliveries could start now (workers wanted)."""
        with self._cond:
            return self._buffered if not self.ordered else len(self._ready)

    def idle_workers(self, workers: int) -> int:
        with self._cond:
            return workers - self._busy

    def has_work(self) -> bool:
        with self._cond:
            return bool(self._busy or self._buffered) or any(
                s.commit_to != s.committed for s in self._partitions.values() if s.assigned
            )

    def backpressure(
        self, assigned: set[TopicPartition], limit: int
    ) -> tuple[list[TopicPartition], list[TopicPartition]]:
        """Partitions to pause (buffer full) and to resume (buffer half drained)."""
        pause: list[TopicPartition] = []
        resume: list[TopicPartition] = []
        with self._cond:
            for tp, state in self._partitions.items():
                if not state.assigned or tp not in assigned:
                    continue
                if not state.paused and len(state.pending) >= limit:
                    state.paused = True
                    pause.append(tp)
                elif state.paused and len(state.pending) <= limit // 2:
                    state.paused = False
                    resume.append(tp)
        return pause, resume

    def next_offsets(self, assigned: set[TopicPartition]) -> dict[TopicPartition, int]:
        """{partition: the offset after the last record polled}, for the partitions
        assigned, not paused, and polled from in this assignment."""
        with self._cond:
            return {
                tp: state.trail.next_offset
                for tp, state in self._partitions.items()
                if tp in assigned
                and state.assigned
                and not state.paused
                and state.trail.next_offset is not None
            }

    def to_commit(self, assigned: set[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """{partition: (offset to commit, epoch)} where the done prefix moved on."""
        with self._cond:
            return {
                tp: (state.commit_to, state.epoch)
                for tp, state in self._partitions.items()
                if state.assigned
                and tp in assigned
                and state.commit_to is not None
                and state.commit_to != state.committed
            }

    def committed(self, offsets: Mapping[TopicPartition, tuple[int, int]]) -> None:
        with self._cond:
            for tp, (offset, epoch) in offsets.items():
                state = self._partitions.get(tp)
                if state is not None and state.epoch == epoch:
                    state.committed = offset

    # the rebalance listener

    def revoke(self, partitions: Any) -> dict[TopicPartition, int]:
        """Drop the buffered work of `partitions`; the offsets still to commit for them.

        A delivery under way goes on (it cannot be called back), but its outcome is
        no longer counted: the new owner starts from the committed offset.
        """
        offsets: dict[TopicPartition, int] = {}
        with self._cond:
            for tp in partitions:
                state = self._partitions.get(tp)
                if state is None:
                    continue
                if state.commit_to is not None and state.commit_to != state.committed:
                    offsets[tp] = state.commit_to
                if tp in self._ready_set:
                    self._ready_set.discard(tp)
                    self._ready.remove(tp)
                self._buffered -= len(state.pending)
                state.pending.clear()
                state.received.clear()
                state.done.clear()
                state.commit_to = state.committed = None
                state.paused = False
                state.trail = OffsetTrail()
                state.epoch += 1
                if state.in_flight:
                    state.assigned = False
                else:
                    del self._partitions[tp]
        return offsets

    # the workers

    def take(self, stopping: threading.Event) -> tuple[TopicPartition, int, Any] | None:
        """The next record to deliver (partition, epoch, record); None once stopping."""
        with self._cond:
            while True:
                if stopping.is_set():
                    return None
                if self._ready:
                    break
                self._cond.wait(1.0)
            tp = self._ready.popleft()
            self._ready_set.discard(tp)
            state = self._partitions[tp]
            record = state.pending.popleft()
            self._buffered -= 1
            state.in_flight += 1
            self._busy += 1
            self._mark_ready(tp, state)  # unordered: the partition's turn comes again
            return tp, state.epoch, record

    def finish(self, tp: TopicPartition, epoch: int, offset: int, handled: bool) -> None:
        """A delivery ended; `handled` (any final outcome) makes its offset committable."""
        with self._cond:
            self._busy -= 1
            state = self._partitions[tp]
            state.in_flight -= 1
            if handled and epoch == state.epoch:
                state.done.add(offset)
                while state.received and state.received[0] in state.done:
                    next_done = state.received.popleft()
                    state.done.discard(next_done)
                    state.commit_to = next_done + 1
            if not state.assigned and not state.in_flight:
                del self._partitions[tp]
                return
            if self._mark_ready(tp, state):
                self._cond.notify()

    def wake_all(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # introspection

    def buffered(self) -> int:
        with self._cond:
            return self._buffered

    def in_flight(self) -> int:
        with self._cond:
            return self._busy

    def paused(self) -> set[TopicPartition]:
        with self._cond:
            return {tp for tp, state in self._partitions.items() if state.paused}

    def _mark_ready(self, tp: TopicPartition, state: _Partition) -> bool:
        if tp in self._ready_set or not state.pending:
            return False
        if self.ordered and state.in_flight:
            return False
        self._ready.append(tp)
        self._ready_set.add(tp)
        return True


class _RebalanceListener(AsyncConsumerRebalanceListener):
    """Commits the done prefix of revoked partitions and drops their buffered records.

    kafka-python 3 runs listeners on its IO thread, inside the poll thread's `poll()`;
    a blocking consumer call would deadlock there, so the commit is awaited instead.
    """

    def __init__(self, dispatcher: KafkaSourceDispatcher) -> None:
        self._dispatcher = dispatcher
        self._owned: set[TopicPartition] = set()

    async def on_partitions_revoked(self, revoked: Any) -> None:
        self._forget(revoked)
        await self._dispatcher._revoke(revoked, commit=True)

    async def on_partitions_lost(self, lost: Any) -> None:
        self._forget(lost)
        await self._dispatcher._revoke(lost, commit=False)  # no longer a member: no commit

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self._owned |= set(assigned)
        if self._owned:
            self._dispatcher._assigned.set()

    def _forget(self, partitions: Any) -> None:
        self._owned -= set(partitions)
        if not self._owned:
            self._dispatcher._assigned.clear()


class KafkaSourceDispatcher:
    """One KafkaSource: a consumer group that POSTs each record to the sink.

    `sink_url` is the sink Service's URL with the source's `sink.uri` path joined;
    `dead_letter_topic` is the topic of the KafkaSink named as dead-letter sink.
    `consumer_config` is passed to `KafkaConsumer` (the local stack passes
    `duetide_tools.local.broker.consumer_settings()`).

    As Knative's dispatcher (`OrderedConsumerVerticle`, `UnorderedConsumerVerticle`,
    `OffsetManager`): one thread polls, pauses and resumes partitions and commits;
    up to `max_in_flight` worker threads deliver, each with its own HTTP connection.
    With `spec.ordering` "ordered" each partition delivers one record at a time and
    partitions proceed in parallel; "unordered" delivers any buffered record. A
    partition with `max_buffered_per_partition` records waiting is paused until half
    of them have started (one poll may add a fetch's worth beyond that). The committed
    offset of a partition is always the end of its contiguous prefix of handled
    records, so an undelivered one stays uncommitted.
    """

    def __init__(
        self,
        spec: KafkaSourceSpec,
        bootstrap_servers: str,
        sink_url: str,
        *,
        dead_letter_topic: str | None = None,
        consumer_config: Mapping[str, Any] | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        poll_timeout_s: float = 0.2,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        max_buffered_per_partition: int = DEFAULT_MAX_BUFFERED_PER_PARTITION,
    ) -> None:
        if spec.initial_offset not in ("earliest", "latest"):
            raise ValueError(f"KafkaSource {spec.name}: initialOffset {spec.initial_offset!r}")
        if spec.ordering not in (ORDERED, UNORDERED):
            raise ValueError(f"KafkaSource {spec.name}: ordering {spec.ordering!r}")
        if min(max_in_flight, max_buffered_per_partition) < 1:
            raise ValueError(f"KafkaSource {spec.name}: dispatcher bounds must be positive")
        HttpSink(sink_url, 1.0)  # validates the URL now rather than in a worker
        self.spec = spec
        self.bootstrap_servers = bootstrap_servers
        self.sink_url = sink_url
        self.dead_letter_topic = dead_letter_topic
        self.namespace = namespace
        self.max_in_flight = max_in_flight
        self.max_buffered_per_partition = max_buffered_per_partition
        self._consumer_config = dict(consumer_config or {})
        self._poll_timeout_ms = int(poll_timeout_s * 1000)
        self._delivery = spec.delivery
        self._attempt_timeout_s = spec.delivery.timeout_s or DEFAULT_ATTEMPT_TIMEOUT_S
        self._queue = _WorkQueue(ordered=spec.ordering == ORDERED)
        self._stopping = threading.Event()
        self._assigned = threading.Event()
        self._settled = threading.Event()
        self._consumer: KafkaConsumer | None = None
        self._producer: KafkaProducer | None = None
        self._producer_lock = threading.Lock()
        self.failure: Exception | None = None
        """The error that ended this dispatcher's loop, if one did: Knative's dispatcher pod
        would be restarted, and `duetide up`'s supervisor starts a `successor`."""
        self.dead_lettered: list[str] = []
        """Ids of the events this dispatcher dead-lettered (diagnostics, the soak's ledger)."""
        self.holes_filled: deque[tuple[TopicPartition, int]] = deque(maxlen=_HOLES_KEPT)
        """The latest offsets that were missing from a fetch and came when fetched again."""
        self.holes_passed: deque[tuple[TopicPartition, int]] = deque(maxlen=_HOLES_KEPT)
        """The latest offsets still missing after HOLE_RECHECK_S, passed over."""
        self._sinks: list[HttpSink] = []
        self._sinks_lock = threading.Lock()
        self._workers: list[threading.Thread] = []
        self._thread: threading.Thread | None = None
        self._last_records = float("-inf")
        self._behind_since: dict[TopicPartition, tuple[int, float]] = {}
        """Partitions whose high watermark is past the next offset: (that offset, since)."""

    # lifecycle

    def start(self) -> KafkaSourceDispatcher:
        if self._thread is not None:
            raise RuntimeError(f"KafkaSource {self.spec.name} dispatcher already started")
        self._consumer = KafkaConsumer(**self._consumer_kwargs())
        try:
            self._consumer.subscribe(
                topics=list(self.spec.topics),
                # kafka-python 3 takes an async listener; its stubs name only the sync kind.
                listener=_RebalanceListener(self),  # type: ignore[arg-type]
            )
        except Exception:
            self._consumer.close(autocommit=False, timeout_ms=1000)
            raise
        self._thread = threading.Thread(
            target=self._run, name=f"kafkasource-{self.spec.name}", daemon=True
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def successor(self) -> KafkaSourceDispatcher:
        """A new dispatcher, not started, for the same source and sink: it resumes from the
        consumer group's committed offsets, so what this one had not finished is sent again."""
        return KafkaSourceDispatcher(
            self.spec,
            self.bootstrap_servers,
            self.sink_url,
            dead_letter_topic=self.dead_letter_topic,
            consumer_config=self._consumer_config,
            namespace=self.namespace,
            poll_timeout_s=self._poll_timeout_ms / 1000,
            max_in_flight=self.max_in_flight,
            max_buffered_per_partition=self.max_buffered_per_partition,
        )

    def wait_settled(self, timeout_s: float) -> bool:
        """True once a stopping dispatcher has made its last commit and delivers nothing
        more: its group's offsets are final, though it may still be leaving the group
        (closing its consumer waits up to 2 s for the coordinator)."""
        return self._settled.wait(timeout_s)

    def wait_assigned(self, timeout_s: float) -> bool:
        """True once the group join gave this consumer its partitions (within `timeout_s`)."""
        return self._assigned.wait(timeout_s)

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop after the deliveries in hand; an undelivered record stays uncommitted."""
        self._halt()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning(
                    "KafkaSource %s dispatcher did not stop in %gs", self.spec.name, timeout_s
                )

    def __enter__(self) -> KafkaSourceDispatcher:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # introspection (tests, diagnostics)

    def buffered(self) -> int:
        """Records polled and not yet started."""
        return self._queue.buffered()

    def in_flight(self) -> int:
        """Deliveries under way."""
        return self._queue.in_flight()

    def paused_partitions(self) -> set[TopicPartition]:
        """Partitions paused because their buffer is full."""
        return self._queue.paused()

    def _consumer_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers,
            "client_id": f"duetide-kafkasource-{self.spec.name}",
            "group_id": self.spec.consumer_group,
            "enable_auto_commit": False,
            "auto_offset_reset": self.spec.initial_offset,
            # The poll thread never waits on a delivery; this only guards against surprises.
            "max_poll_interval_ms": self._worst_case_record_ms(),
            "fetch_max_wait_ms": IDLE_FETCH_WAIT_MS,
            # kafka-python's own sensors, recorded on every fetch and read by no one here:
            # 7% of the dispatchers' CPU in the pipeline's profile.
            "metrics_enabled": False,
        }
        kwargs.update(self._consumer_config)
        return kwargs

    def _pace_fetches(self, consumer: KafkaConsumer, got_records: bool) -> None:
        """Short broker waits while records flow, long ones once idle or while records
        wait at the broker (FLOWING_FETCH_WAIT_MS).

        kafka-python reads `fetch_max_wait_ms` from its fetcher's config for each fetch
        request it builds (3.0: `Fetcher._create_fetch_requests`), so changing it there
        takes effect from the next fetch. A consumer configured with its own wait
        (`consumer_config`) keeps it.
        """
        if "fetch_max_wait_ms" in self._consumer_config:
            return
        now = time.monotonic()
        if got_records:
            self._last_records = now
        flowing = now - self._last_records < IDLE_AFTER_S
        stuck = self._stuck_behind(consumer, now)
        wait = FLOWING_FETCH_WAIT_MS if flowing and not stuck else IDLE_FETCH_WAIT_MS
        fetcher = getattr(consumer, "_fetcher", None)
        if fetcher is not None and fetcher.config.get("fetch_max_wait_ms") != wait:
            fetcher.config["fetch_max_wait_ms"] = wait

    def _stuck_behind(self, consumer: KafkaConsumer, now: float) -> bool:
        """Whether a partition's fetches have shown records they did not return, without
        moving on, for BEHIND_FOR_S."""
        behind: dict[TopicPartition, tuple[int, float]] = {}
        for tp, next_offset in self._queue.next_offsets(consumer.assignment()).items():
            highwater = consumer.highwater(tp)
            if highwater is not None and highwater > next_offset:
                seen = self._behind_since.get(tp)
                behind[tp] = seen if seen and seen[0] == next_offset else (next_offset, now)
        self._behind_since = behind
        return any(now - since >= BEHIND_FOR_S for _, since in behind.values())

    def _worst_case_record_ms(self) -> int:
        delivery = self._delivery
        attempts = delivery.retry + 1
        backoff = sum(delivery.backoff(n) for n in range(1, delivery.retry + 1))
        worst = attempts * self._attempt_timeout_s + backoff + 60
        return max(300_000, int(worst * 1000))

    def _halt(self) -> None:
        """Stop starting deliveries and break those under way (safe from any thread)."""
        self._stopping.set()
        with self._sinks_lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.abort()
        self._queue.wake_all()

    # the poll thread: the only one that calls the consumer (besides its listener)

    def _run(self) -> None:
        assert self._consumer is not None
        consumer = self._consumer
        try:
            committed_at = 0.0
            while not self._stopping.is_set():
                self._poll_once(consumer)
                if time.monotonic() - committed_at >= COMMIT_INTERVAL_S:
                    self._commit_done(consumer)
                    committed_at = time.monotonic()
        except Exception as exc:
            self.failure = exc
            log.exception("KafkaSource %s: dispatcher stopped by an error", self.spec.name)
        finally:
            self._halt()
            self._join_workers()
            with contextlib.suppress(Exception):
                self._commit_done(consumer, timeout_ms=2000)  # what finished meanwhile
            self._settled.set()
            self._close_clients()

    def _poll_once(self, consumer: KafkaConsumer) -> None:
        self._apply_backpressure(consumer)
        timeout_ms = _BUSY_POLL_MS if self._queue.has_work() else self._poll_timeout_ms
        try:
            batches = consumer.poll(timeout_ms=timeout_ms, max_records=_POLL_ALL_FETCHED)
        except KafkaError as exc:
            log.warning("KafkaSource %s: poll failed: %r", self.spec.name, exc)
            self._stopping.wait(1.0)
            return
        self._pace_fetches(consumer, bool(batches))
        if not batches or self._stopping.is_set():
            return
        assigned = consumer.assignment()
        now = time.monotonic()
        for tp, records in batches.items():
            if tp in assigned and records:
                start = None if self._queue.started(tp) else self._fetch_start(consumer, tp)
                self._follow(consumer, tp, self._queue.add(tp, records, now, start))
        self._spawn_workers()

    def _fetch_start(self, consumer: KafkaConsumer, tp: TopicPartition) -> int | None:
        """The offset this assignment's fetching of `tp` began at, asked of the broker
        once, when its first records arrive: the group's committed offset (or the
        partition's first offset, if that is later), or with no commit and initialOffset
        earliest, the first offset. So a hole right at the start is caught as any other
        (OffsetTrail). None when it cannot be known (initialOffset latest and no commit,
        or the broker did not answer): the first record is then taken as the start."""
        try:
            committed = consumer.committed(tp, timeout_ms=_FETCH_START_TIMEOUT_MS)
            if committed is None and self.spec.initial_offset != "earliest":
                return None
            first = consumer.beginning_offsets([tp], timeout_ms=_FETCH_START_TIMEOUT_MS)[tp]
        except KafkaError as exc:
            log.warning(
                "KafkaSource %s: where %s[%d] starts not known: %r",
                self.spec.name,
                tp.topic,
                tp.partition,
                exc,
            )
            return None
        return first if committed is None else max(committed, first)

    def _follow(self, consumer: KafkaConsumer, tp: TopicPartition, followed: Followed) -> None:
        """Fetch a hole in `tp`'s offsets again, and say what became of one."""
        name, where = self.spec.name, f"{tp.topic}[{tp.partition}]"
        if followed.refetch_from is not None:
            log.debug(
                "KafkaSource %s: %s offset %d missing; fetching again",
                name,
                where,
                followed.refetch_from,
            )
            consumer.seek(tp, followed.refetch_from)
        if followed.filled is not None:
            self.holes_filled.append((tp, followed.filled))
            log.info(
                "KafkaSource %s: %s offset %d arrived when fetched again (the broker "
                "had shown a later batch first)",
                name,
                where,
                followed.filled,
            )
        for offset in followed.passed:
            self.holes_passed.append((tp, offset))
            log.warning(
                "KafkaSource %s: %s offset %d still missing after %gs; passed over "
                "(a failed produce, a transaction marker, or compaction)",
                name,
                where,
                offset,
                HOLE_RECHECK_S,
            )

    def _apply_backpressure(self, consumer: KafkaConsumer) -> None:
        assigned = consumer.assignment()
        pause, resume = self._queue.backpressure(assigned, self.max_buffered_per_partition)
        for tp in pause:
            with contextlib.suppress(KeyError):  # revoked meanwhile
                consumer.pause(tp)
                log.debug("KafkaSource %s: paused %s (buffer full)", self.spec.name, tp)
        for tp in resume:
            with contextlib.suppress(KeyError):
                consumer.resume(tp)
                log.debug("KafkaSource %s: resumed %s", self.spec.name, tp)

    def _commit_done(self, consumer: KafkaConsumer, timeout_ms: int | None = None) -> None:
        offsets = self._queue.to_commit(consumer.assignment())
        if not offsets:
            return
        wire = {tp: OffsetAndMetadata(offset, "", -1) for tp, (offset, _) in offsets.items()}
        try:
            consumer.commit(wire, timeout_ms=timeout_ms)
        except KafkaError as exc:
            # A rebalance took the partition: the new owner redelivers (at-least-once).
            log.warning("KafkaSource %s: commit failed: %r", self.spec.name, exc)
            return
        self._queue.committed(offsets)

    async def _revoke(self, partitions: Any, *, commit: bool) -> None:
        """Rebalance: commit the revoked partitions' done prefix, drop their buffers."""
        offsets = self._queue.revoke(partitions)
        if not (commit and offsets and self._consumer is not None):
            return
        wire = {tp: OffsetAndMetadata(offset, "", -1) for tp, offset in offsets.items()}
        try:
            await self._consumer.commit_async(wire)
        except Exception as exc:
            log.warning("KafkaSource %s: commit on revocation failed: %r", self.spec.name, exc)

    def _spawn_workers(self) -> None:
        while len(self._workers) < self.max_in_flight and self._queue.startable() > (
            self._queue.idle_workers(len(self._workers))
        ):
            sink = HttpSink(self.sink_url, self._attempt_timeout_s)
            with self._sinks_lock:
                if self._stopping.is_set():
                    return
                self._sinks.append(sink)
            worker = threading.Thread(
                target=self._work,
                args=(sink,),
                name=f"kafkasource-{self.spec.name}-{len(self._workers)}",
                daemon=True,
            )
            self._workers.append(worker)
            worker.start()

    def _join_workers(self) -> None:
        deadline = time.monotonic() + _WORKER_JOIN_S
        for worker in self._workers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.warning("KafkaSource %s: a delivery did not stop in time", self.spec.name)

    # the workers

    def _work(self, sink: HttpSink) -> None:
        try:
            while (item := self._queue.take(self._stopping)) is not None:
                tp, epoch, record = item
                handled = False
                try:
                    handled = self._handle_or_set_aside(record, sink)
                finally:
                    self._queue.finish(tp, epoch, record.offset, handled)
        except Exception as exc:
            self.failure = exc
            log.exception("KafkaSource %s: dispatcher stopped by an error", self.spec.name)
            self._halt()
        finally:
            sink.close()

    def _handle_or_set_aside(self, record: Any, sink: HttpSink) -> bool:
        """`_handle`, and a record it raises on dead-lettered as a plain record, so the
        partition goes on (Knative's `RecordDispatcherImpl` discards a record it cannot
        handle): the dispatcher stopped on it, and on it again at every restart, and
        nothing after it was delivered (an audit, 2026-12-07)."""
        try:
            return self._handle(record, sink)
        except Exception as exc:
            log.exception(
                "KafkaSource %s: %s-%s offset %s cannot be dispatched",
                self.spec.name,
                record.topic,
                record.partition,
                record.offset,
            )
            event = _plain_event(record, _record_headers(record), self.spec.name, self.namespace)
            failed = SinkResponse(None, error=f"cannot be dispatched: {exc!r}", unsendable=True)
            return self._fail(record, event, failed)

    def _handle(self, record: Any, sink: HttpSink) -> bool:
        """Deliver one record; False if stopping interrupted it (it stays uncommitted)."""
        event = record_to_event(record, self.spec.name, self.namespace)
        try:
            headers, body = _http_parts(event)
        except Unsendable as exc:
            return self._fail(record, event, SinkResponse(None, error=str(exc), unsendable=True))
        response = self._deliver(sink, headers, body)
        if response is None:
            return False
        if not response.ok:
            return self._fail(record, event, response)
        return True

    def _deliver(
        self, sink: HttpSink, headers: dict[str, str], body: bytes | None
    ) -> SinkResponse | None:
        """The final answer after retries, or None if stop() cut the delivery short."""
        response = SinkResponse(None, error="not sent")
        for attempt in range(self._delivery.retry + 1):
            if attempt and self._stopping.wait(self._delivery.backoff(attempt)):
                return None
            response = sink.post(headers, body)
            if response.ok:
                return response
            if self._stopping.is_set():
                return None
            if response.unsendable or not source_retries(response.status):
                return response
        return response

    def _fail(self, record: Any, event: CloudEvent, response: SinkResponse) -> bool:
        """Dead-letter a record that failed; False if stop() came first (it stays uncommitted).

        Unlike Knative's dispatcher, which commits a record whose dead-lettering failed,
        this one retries with backoff until the dead-letter topic takes it: an event is
        never dropped because the broker was briefly away.
        """
        if self.dead_letter_topic is None:
            log.warning(
                "KafkaSource %s: dropped event type=%s id=%s after %s (no dead-letter sink)",
                self.spec.name,
                event["type"],
                event["id"],
                response.describe(),
            )
            return True
        dead = dead_letter_event(event, self.sink_url, response, record.topic)
        message = _kafka_parts(dead)
        if _size(message) > DEAD_LETTER_MAX_BYTES:
            data = dead.get_data() or b""
            dropped = {**dead.get_attributes(), DATA_DROPPED_EXTENSION: str(len(data))}
            message = _kafka_parts(_new_event(dropped, b""))  # Kafka wants a key or value
        for attempt in itertools.count():
            if attempt and self._stopping.wait(min(0.25 * 2**attempt, _DLS_BACKOFF_CAP_S)):
                return False
            try:
                self._dead_letter_producer().send(
                    self.dead_letter_topic,
                    key=message.key,
                    value=message.value,
                    headers=list(message.headers.items()),
                ).get(timeout=10)
                break
            except KafkaError as exc:
                self._discard_producer()
                log.error(
                    "KafkaSource %s: could not dead-letter type=%s id=%s to %s (%r); retrying",
                    self.spec.name,
                    event["type"],
                    event["id"],
                    self.dead_letter_topic,
                    exc,
                )
        with self._producer_lock:
            self.dead_lettered.append(str(event["id"]))
        log.warning(
            "KafkaSource %s: dead-lettered type=%s id=%s code=%s to %s",
            self.spec.name,
            event["type"],
            event["id"],
            response.describe(),
            self.dead_letter_topic,
        )
        return True

    def _dead_letter_producer(self) -> KafkaProducer:
        with self._producer_lock:  # KafkaProducer is thread-safe; its creation is not
            if self._producer is None:
                # Not idempotent: an idempotent producer's id dies with the broker that
                # issued it (UnknownProducerId), and a dead letter sent twice is harmless.
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    client_id=f"duetide-kafkasource-{self.spec.name}-dls",
                    linger_ms=0,
                    acks="all",
                    enable_idempotence=False,
                    max_in_flight_requests_per_connection=1,
                    metrics_enabled=False,
                )
            return self._producer

    def _discard_producer(self) -> None:
        """Drop a producer that failed; the next dead letter connects afresh."""
        with self._producer_lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                producer.close(timeout=0)

    def _close_clients(self) -> None:
        with self._sinks_lock:
            sinks = list(self._sinks)
        for sink in sinks:
            sink.close()
        with self._producer_lock:
            if self._producer is not None:
                self._producer.close(timeout=2)
        if self._consumer is not None:
            self._consumer.close(autocommit=False, timeout_ms=2000)


# ------------------------------------------------------------- PingSource


class CronSchedule:
    """A PingSource schedule: 5 cron fields, or 6 with seconds first, or an @descriptor."""

    def __init__(self, expression: str, timezone: str = "") -> None:
        try:
            from croniter import croniter
        except ImportError as exc:
            raise RuntimeError(
                "cron schedules need croniter: pip install 'duetide[local]'"
            ) from exc
        fields = expression.split()
        if expression.startswith("@every") or not (
            expression.startswith("@") or len(fields) in (5, 6)
        ):
            raise ValueError(
                f"schedule {expression!r}: use 5 cron fields, 6 with seconds first, or "
                "@hourly/@daily/...; set an interval for the local stack instead"
            )
        if not croniter.is_valid(expression, second_at_beginning=True):
            raise ValueError(f"schedule {expression!r} is not a valid cron expression")
        try:
            self.zone = ZoneInfo(timezone) if timezone else dt.UTC
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"timezone {timezone!r} is not an IANA time zone") from exc
        self.expression = expression
        self._croniter = croniter

    def next_after(self, now: dt.datetime) -> dt.datetime:
        local = now.astimezone(self.zone)
        found = self._croniter(self.expression, local, second_at_beginning=True)
        return found.get_next(dt.datetime)


class PingTimer:
    """One PingSource: POSTs a `dev.knative.sources.ping` event on the schedule.

    With `interval_s` (the local stack's DUETIDE_PING_INTERVAL) it ticks every
    `interval_s` seconds instead of on the cron schedule, without jitter.
    """

    def __init__(
        self,
        spec: PingSourceSpec,
        sink_url: str,
        *,
        interval_s: float | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        attempt_timeout_s: float = 30.0,
    ) -> None:
        if interval_s is not None and interval_s <= 0:
            raise ValueError(f"PingSource {spec.name}: interval must be positive")
        self.spec = spec
        self.sink_url = sink_url
        self.interval_s = interval_s
        self.namespace = namespace
        self._schedule = None if interval_s else CronSchedule(spec.schedule, spec.timezone)
        self._sink = HttpSink(sink_url, attempt_timeout_s)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> PingTimer:
        if self._thread is not None:
            raise RuntimeError(f"PingSource {self.spec.name} timer already started")
        self._thread = threading.Thread(
            target=self._run, name=f"pingsource-{self.spec.name}", daemon=True
        )
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stopping.set()
        self._sink.abort()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("PingSource %s timer did not stop in %gs", self.spec.name, timeout_s)

    def __enter__(self) -> PingTimer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def make_event(self) -> CloudEvent:
        """The event of one tick: a new id each time, data and content type from the spec."""
        attributes = {
            "specversion": "1.0",
            "id": str(uuid.uuid4()),
            "type": PING_EVENT_TYPE,
            "source": f"/apis/v1/namespaces/{self.namespace}/pingsources/{self.spec.name}",
        }
        data = self.spec.data.encode() if self.spec.data else None
        if data is not None and self.spec.content_type:
            attributes["datacontenttype"] = self.spec.content_type
        return CloudEvent(attributes, data)

    def _run(self) -> None:
        try:
            next_tick = time.monotonic()
            while not self._stopping.is_set():
                next_tick, delay = self._next_delay(next_tick)
                if self._stopping.wait(delay):
                    return
                self._tick()
        finally:
            self._sink.close()

    def _next_delay(self, last_tick: float) -> tuple[float, float]:
        """(monotonic time of the next tick, seconds to wait for it); missed ticks are skipped."""
        now = time.monotonic()
        if self.interval_s:
            missed = max(0, int((now - last_tick) // self.interval_s))
            next_tick = last_tick + (missed + 1) * self.interval_s
            return next_tick, next_tick - now
        assert self._schedule is not None
        wall_now = dt.datetime.now(dt.UTC)
        wait = (self._schedule.next_after(wall_now) - wall_now).total_seconds()
        return now + wait, max(0.0, wait) + random.uniform(0, _PING_JITTER_S)

    def _tick(self) -> None:
        event = self.make_event()
        headers, body = _http_parts(event)
        response = self._sink.post(headers, body)
        for attempt in range(1, _PING_RETRIES + 1):
            if response.ok or self._stopping.is_set():
                break
            if response.status is not None and response.status not in _PING_RETRIED_STATUSES:
                break
            if self._stopping.wait(_PING_BACKOFF_S * 2**attempt):
                return
            response = self._sink.post(headers, body)
        if not response.ok and not self._stopping.is_set():
            log.warning(
                "PingSource %s: event id=%s lost after %s",
                self.spec.name,
                event["id"],
                response.describe(),
            )
