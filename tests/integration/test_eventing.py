"""The local Knative stand-in against the embedded broker and a real HTTP sink on loopback.

Records go over the Kafka protocol (kafka-python and librdkafka producers); the sink
is a real HTTP server that records each request and answers scripted statuses.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import json
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import confluent_kafka
import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from duetide_tools.local.broker import (
    EmbeddedBroker,
    consumer_settings,
    ensure_topics,
    free_loopback_port,
)
from duetide_tools.local.eventing import CronSchedule, KafkaSourceDispatcher, PingTimer
from duetide_tools.manifests import (
    Delivery,
    KafkaSourceSpec,
    PingSourceSpec,
    SinkRef,
    TopicSpec,
)
from tests.support import wait_for

WAIT_S = 15.0  # a group join takes ~3 s on the embedded broker
JSON = {"content-type": "application/json"}


# ------------------------------------------------------------------ the sink


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: bytes


class RecordingSink:
    """An HTTP/1.1 server that records each POST and answers the next scripted status.

    `on_request` (if set) runs in the request's thread before the answer, so a test can
    block a delivery there; `peak` is the most requests in progress at once, per key
    of `classify`.
    """

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.on_request: Callable[[Received], None] | None = None
        self.classify: Callable[[Received], Any] = lambda _received: "all"
        self.peak: Counter[Any] = Counter()
        self._active: Counter[Any] = Counter()
        self._statuses: list[int] = []
        self._then = 200
        self._error_body = b""
        self._released = threading.Event()
        self._released.set()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}/events"

    def script(self, *statuses: int, then: int = 200, error_body: bytes = b"") -> None:
        with self._lock:
            self._statuses, self._then, self._error_body = list(statuses), then, error_body

    def hold(self) -> None:
        """Leave every request unanswered until `release()` (a hung function)."""
        self._released.clear()

    def release(self) -> None:
        self._released.set()

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def _answer(self, received: Received) -> tuple[int, bytes]:
        with self._lock:
            self.requests.append(received)
            status = self._statuses.pop(0) if self._statuses else self._then
            return status, (b"" if 200 <= status < 300 else self._error_body)

    def _enter(self, received: Received) -> Any:
        key = self.classify(received)
        with self._lock:
            self._active[key] += 1
            self.peak[key] = max(self.peak[key], self._active[key])
        return key

    def _leave(self, key: Any) -> None:
        with self._lock:
            self._active[key] -= 1

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                received = Received(self.path, headers, body)
                key = sink._enter(received)
                try:
                    status, reply = sink._answer(received)
                    if sink.on_request is not None:
                        sink.on_request(received)
                    sink._released.wait(WAIT_S)
                    self.send_response(status)
                    self.send_header("Content-Length", str(len(reply)))
                    self.end_headers()
                    self.wfile.write(reply)
                finally:
                    sink._leave(key)

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> RecordingSink:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def sink() -> Iterator[RecordingSink]:
    with RecordingSink() as running:
        yield running


# ------------------------------------------------------------ Kafka helpers


@pytest.fixture(scope="module")
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
    yield client
    client.close(timeout=5)


@dataclass
class Wiring:
    topic: str
    dead_letters: str
    spec: KafkaSourceSpec


@pytest.fixture
def wiring(broker: EmbeddedBroker, unique_topic: Callable[[str], str]) -> Wiring:
    topic, dead_letters = unique_topic("events"), unique_topic("dead")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(topic), TopicSpec(dead_letters)])
    return Wiring(topic, dead_letters, source_spec(topic))


def source_spec(topic: str, retry: int = 3, timeout_s: float = 2.0) -> KafkaSourceSpec:
    return KafkaSourceSpec(
        name="notify-reminders",
        topics=(topic,),
        consumer_group=f"{topic}-group",
        sink=SinkRef("Service", "notify"),
        delivery=Delivery(
            retry=retry,
            backoff_delay_s=0.01,
            timeout_s=timeout_s,
            dead_letter_sink=SinkRef("KafkaSink", "dead-letters"),
        ),
        initial_offset="earliest",
    )


def dispatcher(
    broker: EmbeddedBroker,
    spec: KafkaSourceSpec,
    sink_url: str,
    dead_letters: str | None,
    consumer_config: dict[str, Any] | None = None,
    **options: Any,
) -> KafkaSourceDispatcher:
    return KafkaSourceDispatcher(
        spec,
        broker.bootstrap_servers,
        sink_url,
        dead_letter_topic=dead_letters,
        consumer_config={**consumer_settings(), **(consumer_config or {})},
        **options,
    )


def produce(
    producer: KafkaProducer, topic: str, value: bytes, key: bytes | None = None, /, **headers: str
) -> None:
    wire = [(name, text.encode()) for name, text in headers.items()]
    producer.send(topic, value=value, key=key, headers=wire).get(timeout=10)


def read_all(broker: EmbeddedBroker, topic: str, count: int) -> list[Any]:
    """The first `count` records of partition 0, read without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        records: list[Any] = []

        def enough() -> bool:
            for batch in consumer.poll(timeout_ms=100).values():
                records.extend(batch)
            return len(records) >= count

        wait_for(enough, f"{count} records on {topic}")
        return records
    finally:
        consumer.close()


def committed_offset(
    broker: EmbeddedBroker, spec: KafkaSourceSpec, partition: int = 0
) -> int | None:
    """The group's committed offset on `partition` (an offset fetch; it joins no group)."""
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=spec.consumer_group,
        enable_auto_commit=False,
    )
    try:
        return consumer.committed(TopicPartition(spec.topics[0], partition))
    finally:
        consumer.close(autocommit=False)


def produce_plain(
    producer: KafkaProducer, topic: str, partition: int, count: int, *, one_by_one: bool = False
) -> None:
    """`count` plain records onto `partition` (each becomes `partition:N/offset:M`);
    `one_by_one` waits for each, so that each record is a batch of its own."""
    for n in range(count):
        sent = producer.send(topic, value=f"p{partition}-{n}".encode(), partition=partition)
        if one_by_one:
            sent.get(timeout=10)
    producer.flush(timeout=10)


_POSITION = re.compile(r"partition:(\d+)/offset:(\d+)")


def position(request: Received) -> tuple[int, int]:
    """(partition, offset) of a delivered plain record, from its CloudEvent id."""
    match = _POSITION.fullmatch(request.headers["ce-id"])
    assert match is not None, request.headers["ce-id"]
    return int(match[1]), int(match[2])


def offsets_by_partition(requests: list[Received]) -> dict[int, list[int]]:
    delivered: dict[int, list[int]] = {}
    for request in requests:
        partition, offset = position(request)
        delivered.setdefault(partition, []).append(offset)
    return delivered


def ce_headers(**attributes: str) -> dict[str, str]:
    return {f"ce_{name}": value for name, value in attributes.items()}


# ------------------------------------------------------------------ KafkaSource


def test_cloudevent_records_binary_or_structured_pass_through_unchanged(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    headers = ce_headers(
        specversion="1.0",
        id="outbox-42",
        type="dev.duetide.reminder.due.v1",
        source="/duetide/sweep",
        subject="task/7",
        traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    )
    body = b'{"task_id": 7, "note": "caf\xc3\xa9"}'
    produce(producer, wiring.topic, body, b"task-7", **headers, **JSON)
    structured = {
        "specversion": "1.0",
        "id": "cmd-1",
        "type": "dev.duetide.task.create.v1",
        "source": "/ext/importer",
        "datacontenttype": "application/json",
        "data": {"title": "pay rent"},
    }
    envelope = json.dumps(structured).encode()
    produce(producer, wiring.topic, envelope, **{"content-type": "application/cloudevents+json"})

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        binary, from_structured = wait_for(
            lambda: len(sink.received()) >= 2 and sink.received(), "2 deliveries"
        )

    assert binary.path == "/events"
    assert binary.body == body
    assert binary.headers["ce-id"] == "outbox-42"
    assert binary.headers["ce-type"] == "dev.duetide.reminder.due.v1"
    assert binary.headers["ce-source"] == "/duetide/sweep"
    assert binary.headers["ce-subject"] == "task/7"
    assert binary.headers["ce-specversion"] == "1.0"
    assert binary.headers["ce-traceparent"] == headers["ce_traceparent"]
    assert binary.headers["content-type"] == "application/json"
    assert "ce-partitionkey" not in binary.headers
    assert "ce-time" not in binary.headers  # nothing is added to a passing-through event
    assert from_structured.headers["ce-id"] == "cmd-1"
    assert from_structured.headers["ce-type"] == "dev.duetide.task.create.v1"
    assert from_structured.headers["content-type"] == "application/json"
    assert json.loads(from_structured.body) == {"title": "pay rent"}


def test_plain_record_becomes_kafka_event_with_partition_and_offset(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    produce(producer, wiring.topic, b"first")
    produce(producer, wiring.topic, b"\x00\x01binary", b"k-2", origin="legacy")

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters) as running:
        assert running.wait_assigned(WAIT_S)
        first, second = wait_for(
            lambda: len(sink.received()) >= 2 and sink.received(), "2 deliveries"
        )

    source = f"/apis/v1/namespaces/default/kafkasources/notify-reminders#{wiring.topic}"
    assert [first.body, second.body] == [b"first", b"\x00\x01binary"]
    for offset, request in enumerate([first, second]):
        assert request.headers["ce-type"] == "dev.knative.kafka.event"
        assert request.headers["ce-id"] == f"partition:0/offset:{offset}"
        assert request.headers["ce-subject"] == f"partition:0#{offset}"
        assert request.headers["ce-source"] == source
        assert dt.datetime.fromisoformat(request.headers["ce-time"]).tzinfo is not None
    assert second.headers["ce-key"] == "k-2"
    assert second.headers["ce-kafkaheaderorigin"] == "legacy"


def test_header_values_go_as_they_are_and_one_knative_would_change_dead_letters_at_once(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    """Knative's dispatcher writes attribute values into headers as they are (sdk-java,
    cloudevents/sdk-java#748): printable ASCII arrives unchanged, `%` escapes included,
    for the sink to decode; anything else arrives changed or not at all. This one
    percent-encoded such values and delivered them intact, so a record that worked
    locally was dead-lettered on a cluster (a review against eventing-kafka-broker,
    2026-12-07). Now it dead-letters them at once, saying why. Before that, a value HTTP
    cannot carry stopped the whole dispatcher (issue 10)."""
    produce(producer, wiring.topic, b"one", b'a "quoted" 100%41', origin="sent\tas is")
    produce(producer, wiring.topic, b"two", b"line\nbreak")
    produce(producer, wiring.topic, b"three", "caf\u00e9".encode())
    produce(producer, wiring.topic, b"four", b"k", origin="\x08")
    produce(producer, wiring.topic, b"five", None, **{"content-type": "text/plain\r\nx: y"})
    produce(producer, wiring.topic, b"six")

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters) as running:
        dead = read_all(broker, wiring.dead_letters, 4)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 6, "all six committed")
        assert running.running  # a record it cannot send does not stop the dispatcher

    first, last = sink.received()  # the others never reached the sink, not even retried
    assert first.headers["ce-key"] == 'a "quoted" 100%41'
    assert first.headers["ce-kafkaheaderorigin"] == "sent\tas is"
    assert last.body == b"six"
    assert [letter.value for letter in dead] == [b"two", b"three", b"four", b"five"]
    for letter in dead:
        attributes = {name: value.decode() for name, value in letter.headers}
        assert attributes["ce_knativeerrordest"] == sink.url
        assert "ce_knativeerrorcode" not in attributes


def test_a_structured_record_with_a_lone_surrogate_is_dead_lettered_at_once(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    """JSON can say "\\ud800", which no UTF-8 carries: encoding its header raised outside
    every handler and stopped the dispatcher, and the record, never committed, stopped
    it again after each restart."""
    event = b'{"specversion":"1.0","id":"\\ud800","source":"/s","type":"t","data":{}}'
    produce(producer, wiring.topic, event, **{"content-type": "application/cloudevents+json"})
    well_formed = ce_headers(specversion="1.0", id="ok", type="t", source="/s")
    produce(producer, wiring.topic, b"after", **well_formed)

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters) as running:
        [dead] = read_all(broker, wiring.dead_letters, 1)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 2, "both committed")
        assert running.running

    [after] = sink.received()
    assert after.headers["ce-id"] == "ok"
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "\ufffd" and "ce_knativeerrorcode" not in attributes


STRUCTURED = {"content-type": "application/cloudevents+json"}


def test_records_of_odd_attribute_types_neither_stop_the_dispatcher_nor_its_dead_letters(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    """A structured record whose `datacontenttype` is 5 raised while it was read, and a
    dead letter of an event with `"type": 5` or an integer extension (which the JSON
    format allows) raised while it was encoded: each stopped the dispatcher, and each
    restart stopped on the same uncommitted record (an audit, 2026-12-07). Knative reads
    the first two as plain records and keeps the integer extension."""
    envelope = {"specversion": "1.0", "id": "e", "source": "/s", "type": "t", "data": {}}
    odd = [
        {**envelope, "id": "odd-content-type", "datacontenttype": 5},
        {**envelope, "id": "odd-type", "type": 5},
        {**envelope, "id": "int-extension", "attempt": 3, "urgent": True},
    ]
    for event in odd:
        produce(producer, wiring.topic, json.dumps(event).encode(), **STRUCTURED)
    produce(
        producer,
        wiring.topic,
        b"after",
        **ce_headers(specversion="1.0", id="ok", type="t", source="/s"),
    )
    sink.script(200, 200, 400, then=200)  # the third refused for good: dead-lettered

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters) as running:
        [dead] = read_all(broker, wiring.dead_letters, 1)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 4, "all four committed")
        assert running.running and running.failure is None

    got = sink.received()
    assert [r.headers["ce-type"] for r in got[:2]] == ["dev.knative.kafka.event"] * 2
    assert got[2].headers["ce-attempt"] == "3" and got[2].headers["ce-id"] == "int-extension"
    assert got[3].headers["ce-id"] == "ok"
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "int-extension" and attributes["ce_knativeerrorcode"] == "400"
    assert (attributes["ce_attempt"], attributes["ce_urgent"]) == ("3", "true")


def test_a_dead_letter_too_large_for_kafka_goes_without_its_data(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    """A record that fits Kafka's 1 MiB made a letter that did not once the error
    extensions were added: the producer refused it, the dispatcher retried every 5 s for
    good and its partition never moved on (an audit, 2026-12-07)."""
    big = b"x" * 1_047_000
    headers = ce_headers(specversion="1.0", id="big", type="t", source="/s")
    produce(producer, wiring.topic, big, **headers, **JSON)
    produce(
        producer,
        wiring.topic,
        b"after",
        **ce_headers(specversion="1.0", id="ok", type="t", source="/s"),
    )
    sink.script(400, then=200, error_body=b"too big for me")

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        [dead] = read_all(broker, wiring.dead_letters, 1)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 2, "both committed")

    assert [r.headers["ce-id"] for r in sink.received()] == ["big", "ok"]
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "big" and attributes["ce_knativeerrorcode"] == "400"
    assert attributes["ce_duetidedatadropped"] == str(len(big)) and not dead.value


def test_a_record_the_dispatcher_fails_on_is_dead_lettered_and_the_partition_goes_on(
    broker: EmbeddedBroker,
    sink: RecordingSink,
    producer: KafkaProducer,
    wiring: Wiring,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whatever a record makes the dispatcher raise, Knative's goes on with the partition
    (`RecordDispatcherImpl` discards the record); this one dead-letters it as a plain
    record and goes on, where it stopped, and stopped again at every restart."""
    from duetide_tools.local import eventing

    readable = eventing.record_to_event

    def unreadable(record: Any, *args: Any) -> Any:
        if record.value == b"boom":
            raise RuntimeError("a bug this record finds")
        return readable(record, *args)

    monkeypatch.setattr(eventing, "record_to_event", unreadable)
    produce(
        producer,
        wiring.topic,
        b"boom",
        **ce_headers(specversion="1.0", id="b", type="t", source="/s"),
    )
    produce(
        producer,
        wiring.topic,
        b"after",
        **ce_headers(specversion="1.0", id="ok", type="t", source="/s"),
    )

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters) as running:
        [dead] = read_all(broker, wiring.dead_letters, 1)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 2, "both committed")
        assert running.running

    assert [r.headers["ce-id"] for r in sink.received()] == ["ok"]
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_type"] == "dev.knative.kafka.event" and dead.value == b"boom"
    assert "ce_knativeerrorcode" not in attributes


def test_sink_failing_k_times_then_succeeding_is_called_k_plus_one_times(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    sink.script(503, 503, 503)
    produce(
        producer,
        wiring.topic,
        b"retry me",
        **ce_headers(specversion="1.0", id="r-1", type="t", source="/s"),
    )

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        wait_for(lambda: committed_offset(broker, wiring.spec) == 1, "the commit")

    assert [r.headers["ce-id"] for r in sink.received()] == ["r-1"] * 4
    assert record_count(broker, wiring.dead_letters) == 0


def record_count(broker: EmbeddedBroker, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap_servers, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        return consumer.end_offsets([partition])[partition]
    finally:
        consumer.close()


def test_sink_always_failing_ends_in_dead_letter_topic_with_error_code_and_data(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    sink.script(then=500, error_body=b'{"error": "database down"}')
    headers = ce_headers(
        specversion="1.0", id="d-1", type="dev.duetide.task.completed.v1", source="/tasks"
    )
    produce(producer, wiring.topic, b'{"task": 1}', b"task-1", **headers, **JSON)

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        [dead] = read_all(broker, wiring.dead_letters, 1)
        wait_for(lambda: committed_offset(broker, wiring.spec) == 1, "the commit")

    assert len(sink.received()) == 1 + wiring.spec.delivery.retry
    # Knative's dead-letter sink keys a letter by its partitionkey extension alone: this
    # event has none, so its letter has no key, whatever the record's was
    assert dead.key is None
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "d-1"
    assert attributes["ce_type"] == "dev.duetide.task.completed.v1"
    assert attributes["ce_source"] == "/tasks"
    assert attributes["content-type"] == "application/json"
    assert attributes["ce_knativeerrorcode"] == "500"
    assert attributes["ce_knativeerrordest"] == sink.url
    assert base64.b64decode(attributes["ce_knativeerrordata"]) == b'{"error": "database down"}'
    assert dead.value == b'{"task": 1}'


def test_client_error_goes_to_dead_letter_topic_without_retries(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    sink.script(then=400, error_body=b"bad event")
    produce(
        producer,
        wiring.topic,
        b"not json",
        **ce_headers(specversion="1.0", id="b-1", type="t", source="/s"),
    )

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        [dead] = read_all(broker, wiring.dead_letters, 1)

    assert len(sink.received()) == 1
    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_knativeerrorcode"] == "400"
    assert base64.b64decode(attributes["ce_knativeerrordata"]) == b"bad event"


def test_unreachable_sink_dead_letters_without_an_error_code(
    broker: EmbeddedBroker, producer: KafkaProducer, wiring: Wiring
) -> None:
    nobody = f"http://127.0.0.1:{free_loopback_port()}/"
    spec = source_spec(wiring.topic, retry=1)
    produce(
        producer,
        wiring.topic,
        b"lost",
        **ce_headers(specversion="1.0", id="u-1", type="t", source="/s"),
    )

    with dispatcher(broker, spec, nobody, wiring.dead_letters):
        [dead] = read_all(broker, wiring.dead_letters, 1)

    attributes = {name: value.decode() for name, value in dead.headers}
    assert attributes["ce_id"] == "u-1"
    assert attributes["ce_knativeerrordest"] == nobody
    assert "ce_knativeerrorcode" not in attributes
    assert "ce_knativeerrordata" not in attributes


def test_record_from_librdkafka_producer_with_binary_headers_is_delivered(
    broker: EmbeddedBroker, sink: RecordingSink, wiring: Wiring
) -> None:
    rdkafka = confluent_kafka.Producer({"bootstrap.servers": broker.bootstrap_servers})
    headers = ce_headers(
        specversion="1.0", id="rd-1", type="dev.duetide.task.command.v1", source="/ext"
    )
    rdkafka.produce(
        wiring.topic,
        value=b'{"title": "from librdkafka"}',
        key=b"ext-1",
        headers=[*headers.items(), ("content-type", "application/json")],
    )
    assert rdkafka.flush(10) == 0

    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        [request] = wait_for(sink.received, "the delivery")

    assert request.headers["ce-id"] == "rd-1"
    assert request.headers["ce-type"] == "dev.duetide.task.command.v1"
    assert request.headers["content-type"] == "application/json"
    assert request.body == b'{"title": "from librdkafka"}'


def test_stop_interrupts_a_hung_delivery_and_leaves_the_record_uncommitted(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    sink.hold()
    spec = source_spec(wiring.topic, timeout_s=600.0)  # stop() must not wait that out
    produce(
        producer,
        wiring.topic,
        b"slow",
        **ce_headers(specversion="1.0", id="h-1", type="t", source="/s"),
    )
    running = dispatcher(broker, spec, sink.url, wiring.dead_letters).start()
    try:
        wait_for(sink.received, "the delivery to start")
    finally:
        started = time.monotonic()
        running.stop()
        stopped_in = time.monotonic() - started

    assert stopped_in < 3
    assert not running.running
    assert committed_offset(broker, spec) is None
    assert record_count(broker, wiring.dead_letters) == 0


# --------------------------------------------- KafkaSource ordering and offsets


@pytest.fixture
def two_partitions(broker: EmbeddedBroker, unique_topic: Callable[[str], str]) -> Wiring:
    topic, dead_letters = unique_topic("events"), unique_topic("dead")
    ensure_topics(
        broker.bootstrap_servers, [TopicSpec(topic, partitions=2), TopicSpec(dead_letters)]
    )
    return Wiring(topic, dead_letters, source_spec(topic))


def test_ordered_source_runs_partitions_in_parallel_each_in_order_and_resumes_after_restart(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, two_partitions: Wiring
) -> None:
    wiring = two_partitions
    produce_plain(producer, wiring.topic, 0, 4)
    produce_plain(producer, wiring.topic, 1, 4)
    # Each partition's first record waits for the other's: serial dispatch cannot pass.
    both_started = threading.Barrier(2, timeout=5)
    unblocked = threading.Event()
    broken: list[tuple[int, int]] = []

    def hook(request: Received) -> None:
        partition, offset = position(request)
        if offset == 0:
            try:
                both_started.wait()
            except threading.BrokenBarrierError:
                broken.append((partition, offset))
        if (partition, offset) == (0, 2):
            unblocked.wait(WAIT_S)  # a hung delivery: cut off by stop()

    sink.on_request = hook
    sink.classify = lambda request: position(request)[0]
    running = dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters).start()
    try:
        wait_for(
            lambda: offsets_by_partition(sink.received()) == {0: [0, 1, 2], 1: [0, 1, 2, 3]},
            "partition 1 done and partition 0 stuck at offset 2",
        )
        wait_for(
            lambda: (
                committed_offset(broker, wiring.spec, 1) == 4
                and committed_offset(broker, wiring.spec, 0) == 2
            ),
            "the commits of the done prefixes",
        )
    finally:
        running.stop()
        unblocked.set()

    assert not broken, f"partitions were not delivered in parallel: {broken}"
    assert sink.peak == {0: 1, 1: 1}  # one record at a time per partition
    assert committed_offset(broker, wiring.spec, 0) == 2  # offset 2 was cut off

    sink.on_request = None
    before = len(sink.received())
    with dispatcher(broker, wiring.spec, sink.url, wiring.dead_letters):
        wait_for(lambda: committed_offset(broker, wiring.spec, 0) == 4, "the commit after restart")
    # Only the uncommitted tail comes again: nothing is lost, nothing else repeated.
    assert offsets_by_partition(sink.received()[before:]) == {0: [2, 3]}
    assert committed_offset(broker, wiring.spec, 1) == 4


def test_unordered_source_delivers_concurrently_and_commits_only_a_done_prefix(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, wiring: Wiring
) -> None:
    spec = dataclasses.replace(wiring.spec, ordering="unordered")
    produce_plain(producer, wiring.topic, 0, 6)
    first_four = threading.Barrier(4, timeout=5)
    arrivals: list[int] = []
    arrivals_lock = threading.Lock()
    unblocked = threading.Event()
    broken: list[int] = []

    def hook(request: Received) -> None:
        _, offset = position(request)
        with arrivals_lock:
            arrivals.append(offset)
            arrival = len(arrivals)
        if arrival <= 4:
            try:
                first_four.wait()  # four deliveries under way at once
            except threading.BrokenBarrierError:
                broken.append(offset)
        if offset == 0:
            unblocked.wait(WAIT_S)  # the oldest record hangs; later ones are done

    sink.on_request = hook
    running = dispatcher(broker, spec, sink.url, wiring.dead_letters, max_in_flight=4).start()
    try:
        wait_for(
            lambda: len(sink.received()) == 6 and running.in_flight() == 1,
            "offsets 1-5 done while offset 0 hangs",
        )
    finally:
        running.stop()
        unblocked.set()

    assert not broken, f"deliveries were not concurrent: {broken}"
    assert sink.peak["all"] == 4  # bounded by max_in_flight
    assert committed_offset(broker, spec) is None  # 1-5 are done, but 0 is not

    sink.on_request = None
    before = len(sink.received())
    with dispatcher(broker, spec, sink.url, wiring.dead_letters):
        wait_for(lambda: committed_offset(broker, spec) == 6, "the commit after restart")
    assert sorted(offsets_by_partition(sink.received()[before:])[0]) == list(range(6))


def test_slow_sink_pauses_partitions_instead_of_buffering_and_all_arrive_once_resumed(
    broker: EmbeddedBroker, sink: RecordingSink, producer: KafkaProducer, two_partitions: Wiring
) -> None:
    wiring, count, limit = two_partitions, 100, 4
    for partition in (0, 1):
        produce_plain(producer, wiring.topic, partition, count, one_by_one=True)
    partitions = {TopicPartition(wiring.topic, p) for p in (0, 1)}
    sink.hold()

    with dispatcher(
        broker,
        wiring.spec,
        sink.url,
        wiring.dead_letters,
        # Small fetches: a poll then adds a few records, not the whole partition.
        consumer_config={"fetch_max_bytes": 256},  # the embedded broker honours this one
        max_buffered_per_partition=limit,
    ) as running:
        wait_for(lambda: running.paused_partitions() == partitions, "both paused")
        # Paused, it goes on polling (heartbeats, commits) without taking in more records.
        samples: list[int] = []

        def sampled() -> bool:
            samples.append(running.buffered())
            return len(samples) >= 10

        wait_for(sampled, "10 samples of the buffer")
        assert len(set(samples)) == 1, samples  # nothing more was taken in
        assert samples[0] < count  # far from the whole backlog (2 x count)
        assert len(sink.received()) == 2  # ordered: one in flight per partition
        # Released, the partitions are paused and resumed many times over; none stalls.
        sink.release()
        wait_for(
            lambda: (
                committed_offset(broker, wiring.spec, 0) == count
                and committed_offset(broker, wiring.spec, 1) == count
            ),
            "all records committed",
        )
        assert running.paused_partitions() == set()

    expected = list(range(count))
    assert offsets_by_partition(sink.received()) == {0: expected, 1: expected}


# ------------------------------------------------------------------- PingSource


def test_ping_timer_posts_ping_events_with_distinct_ids_and_stops_cleanly(
    sink: RecordingSink,
) -> None:
    spec = PingSourceSpec(
        name="sweep-every-minute",
        schedule="* * * * *",
        sink=SinkRef("Service", "sweep"),
        data='{"sweep": true}',
        content_type="application/json",
    )
    timer = PingTimer(spec, sink.url, interval_s=0.2).start()
    try:
        pings = wait_for(lambda: len(sink.received()) >= 3 and sink.received(), "3 pings")
    finally:
        started = time.monotonic()
        timer.stop()
        assert time.monotonic() - started < 2

    assert len({p.headers["ce-id"] for p in pings}) == len(pings)
    for ping in pings:
        assert ping.headers["ce-type"] == "dev.knative.sources.ping"
        assert (
            ping.headers["ce-source"]
            == "/apis/v1/namespaces/default/pingsources/sweep-every-minute"
        )
        assert ping.headers["content-type"] == "application/json"
        assert ping.body == b'{"sweep": true}'
    assert not timer.running


def test_ping_timer_on_a_cron_schedule_with_seconds_ticks_each_second(sink: RecordingSink) -> None:
    spec = PingSourceSpec(name="fast", schedule="* * * * * *", sink=SinkRef("Service", "sweep"))
    with PingTimer(spec, sink.url):
        first, second = wait_for(lambda: len(sink.received()) >= 2 and sink.received(), "2 pings")

    assert first.headers["ce-id"] != second.headers["ce-id"]
    assert first.body == b"" and "content-type" not in first.headers  # no data in the spec


def test_cron_schedule_takes_an_optional_seconds_field_first_and_a_time_zone() -> None:
    now = dt.datetime(2026, 3, 29, 0, 59, 50, tzinfo=dt.UTC)
    assert CronSchedule("*/15 * * * * *").next_after(now) == now.replace(second=0, minute=0, hour=1)
    assert CronSchedule("* * * * *").next_after(now) == dt.datetime(
        2026, 3, 29, 1, 0, tzinfo=dt.UTC
    )
    berlin = CronSchedule("0 9 * * *", "Europe/Berlin").next_after(now)  # DST starts at 01:00 UTC
    assert berlin == dt.datetime(2026, 3, 29, 7, 0, tzinfo=dt.UTC)
    with pytest.raises(ValueError):
        CronSchedule("@every 1m")
