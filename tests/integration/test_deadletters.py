"""`duetide deadletters list|replay` against the embedded broker.

Dead letters are made the way Knative makes them: the local KafkaSource dispatcher
gives up on a failing sink and writes the event, with its knativeerror* extensions,
to the dead-letter topic. The command is run through `duetide_tools.cli.main`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kafka import KafkaConsumer, KafkaProducer
from kafka.structs import TopicPartition

from duetide import events
from duetide.config import get_settings
from duetide_tools import deadletters, manifests
from duetide_tools.cli import main
from duetide_tools.local.broker import EmbeddedBroker, consumer_settings, ensure_topics
from duetide_tools.local.eventing import KafkaSourceDispatcher
from duetide_tools.local.stack import project_root
from duetide_tools.manifests import TopicSpec
from tests.integration.test_eventing import RecordingSink, source_spec
from tests.integration.test_reliability import read_topic
from tests.support import wait_for

SECRET = "card number 4111"  # a payload the listing must never show


@pytest.fixture
def kafka(broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", broker.bootstrap_servers)
    get_settings.cache_clear()
    yield broker.bootstrap_servers
    get_settings.cache_clear()


@pytest.fixture
def dead_topic(broker: EmbeddedBroker, unique_topic: Callable[[str], str]) -> str:
    name = unique_topic("dead")
    ensure_topics(broker.bootstrap_servers, [TopicSpec(name)])
    return name


@pytest.fixture(scope="module")
def producer(broker: EmbeddedBroker) -> Iterator[KafkaProducer]:
    client = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, linger_ms=0)
    yield client
    client.close(timeout=5)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    """`duetide deadletters ...`: (exit code, stdout lines, stderr)."""
    code = main(["deadletters", *argv])
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def dead_letter(
    producer: KafkaProducer, topic: str, event_id: str, destination: str, code: str = "500"
) -> None:
    """A dead letter as Knative writes it: the event plus knativeerror* extensions."""
    event = events.build(
        event_id=event_id, type=events.TASK_COMPLETED, source="/duetide/tasks",
        subject=f"task-{event_id}", data={"note": SECRET},
    )  # fmt: skip
    event["knativeerrordest"] = destination
    event["knativeerrorcode"] = code
    event["knativeerrordata"] = "eyJlcnJvciI6ICJkb3duIn0="
    message = events.to_kafka(event, f"task-{event_id}")
    headers = list(message.headers.items())
    producer.send(topic, value=message.value, key=message.key, headers=headers).get(timeout=10)


def headers_of(record: Any) -> dict[str, str]:
    return {name: value.decode() for name, value in record.headers}


def test_failed_event_is_listed_without_its_payload_and_replayed_with_the_same_id(
    broker, kafka, dead_topic, producer, unique_topic, capsys
):
    topic = unique_topic("events")
    ensure_topics(kafka, [TopicSpec(topic)])
    event = events.build(
        event_id="dl-1", type=events.TASK_COMPLETED, source="/duetide/tasks", subject="task-1",
        data={"note": SECRET},
    )  # fmt: skip
    message = events.to_kafka(event, "task-1")
    producer.send(
        topic, value=message.value, key=message.key, headers=list(message.headers.items())
    ).get(timeout=10)

    with RecordingSink() as sink:
        sink.script(then=500, error_body=json.dumps({"error": SECRET}).encode())
        spec = source_spec(topic, retry=1)
        with KafkaSourceDispatcher(
            spec, kafka, sink.url, dead_letter_topic=dead_topic,
            consumer_config=consumer_settings(),
        ):  # fmt: skip
            wait_for(lambda: len(read_topic(kafka, dead_topic)) == 1, "the dead letter")
            # Keyed as Knative's dead-letter sink keys it: by the event's partitionkey,
            # which duetide's events carry (without it, a cluster's letter had no key and
            # its replay went to any partition: a review, 2026-12-07)
            [letter] = read_topic(kafka, dead_topic)
            assert letter.key == b"task-1" == headers_of(letter)["ce_partitionkey"].encode()
            code, lines, _ = run(capsys, "list", "--topic", dead_topic)
            assert code == 0
            assert lines == [
                "offset=0:0 type=dev.duetide.task.completed.v1 id=dl-1 subject=task-1 "
                f"knativeerrorcode=500 knativeerrordest={sink.url}"
            ]
            assert SECRET not in "\n".join(lines)

            sink.script(then=200)  # the function is fixed
            # The sink is on loopback, where no Service names its source: the dispatcher
            # noted the topic (a recovery probe, 2026-12-06: every local dead letter
            # needed --to).
            code, lines, _ = run(capsys, "replay", "--id", "dl-1", "--topic", dead_topic)
            assert code == 0 and lines[0].startswith("replayed offset=0:0")
            assert lines[0].endswith(f"to={topic}")
            wait_for(lambda: len(sink.received()) == 3, "the replayed delivery")

    [original, again] = read_topic(kafka, topic)
    assert again.key == original.key == b"task-1"
    first, replayed = sink.received()[0], sink.received()[-1]
    assert replayed.headers["ce-id"] == "dl-1"
    assert not [name for name in replayed.headers if name.startswith("ce-knativeerror")]
    assert (replayed.headers, replayed.body) == (first.headers, first.body)


def test_every_kafkasources_dead_letters_on_a_cluster_lead_back_to_its_topic():
    """On a cluster a letter names its sink by URL alone (`knativeerrordest`): the two
    notify sources had the same one, so a replay with a notify letter in it stopped,
    asking for --to (a review against eventing-kafka-broker, 2026-12-07)."""
    wiring = manifests.load(project_root())
    for source in wiring.kafka_sources:
        url = f"http://{source.sink.name}.duetide.svc.cluster.local{source.sink.path}"
        assert deadletters.resolve_topic(url, wiring) == source.topics[0], source.name


def test_replay_finds_the_topic_of_the_kafkasource_whose_sink_failed(
    broker, kafka, dead_topic, producer, capsys
):
    ensure_topics(kafka, [TopicSpec("duetide-task-events", 6), TopicSpec("duetide-commands", 3)])
    recurrence = "http://duetide-recurrence.default.svc.cluster.local"
    dead_letter(producer, dead_topic, "to-recurrence", recurrence)
    dead_letter(producer, dead_topic, "to-recurrence", recurrence)  # dead-lettered twice
    # The local stack's sinks are on loopback: a unique sink path still names its source.
    dead_letter(producer, dead_topic, "to-commands", "http://127.0.0.1:8080/commands", "401")

    code, lines, err = run(capsys, "replay", "--all", "--topic", dead_topic)

    assert code == 0, err
    assert [line.rsplit(" ", 1)[1] for line in lines] == [
        "to=duetide-task-events",
        "to=duetide-commands",
    ]
    for topic, event_id in (("duetide-task-events", "to-recurrence"),
                            ("duetide-commands", "to-commands")):  # fmt: skip
        [record] = [r for r in read_topic(kafka, topic) if headers_of(r)["ce_id"] == event_id]
        headers = headers_of(record)
        assert not [name for name in headers if name.startswith("ce_knativeerror")]
        assert headers["ce_type"] == events.TASK_COMPLETED
        assert record.key == f"task-{event_id}".encode()
        assert json.loads(record.value) == {"note": SECRET}


def test_replay_without_a_known_destination_asks_for_to_and_sends_nothing(
    broker, kafka, dead_topic, producer, capsys
):
    ensure_topics(kafka, [TopicSpec("duetide-task-events", 6)])
    before = len(read_topic(kafka, "duetide-task-events"))
    dead_letter(producer, dead_topic, "ok", "http://duetide-recurrence.default.svc.cluster.local")
    dead_letter(producer, dead_topic, "where", "http://127.0.0.1:41234")  # recurrence or notify?

    code, lines, err = run(capsys, "replay", "--all", "--topic", dead_topic)

    assert code == 1 and lines == []
    assert "id=where" in err and "--to TOPIC" in err
    assert len(read_topic(kafka, "duetide-task-events")) == before  # not even the known one


def test_an_empty_list_says_so(broker, kafka, dead_topic, capsys):
    """It printed nothing at all, as if it had not run."""
    code, lines, err = run(capsys, "list", "--topic", dead_topic)
    assert (code, lines) == (0, []) and f"no dead letters on {dead_topic}" in err


def test_list_limit_shows_the_newest(broker, kafka, dead_topic, producer, capsys):
    for n in range(4):
        dead_letter(producer, dead_topic, f"e{n}", "http://x/")
    code, lines, _ = run(capsys, "list", "--topic", dead_topic, "--limit", "2")
    assert code == 0
    assert [line.split()[2] for line in lines] == ["id=e2", "id=e3"]


def test_unknown_id_and_unknown_topic_are_errors(broker, kafka, dead_topic, producer, capsys):
    dead_letter(producer, dead_topic, "known", "http://x/")
    code, _, err = run(capsys, "replay", "--id", "unknown", "--topic", dead_topic, "--to", "t")
    assert code == 1 and "no dead letter with id 'unknown'" in err
    code, _, err = run(capsys, "list", "--topic", "no-such-topic")
    assert code == 1 and "no topic 'no-such-topic'" in err


def test_without_kafka_bootstrap_servers_it_says_so(monkeypatch, capsys):
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    get_settings.cache_clear()
    try:
        code, _, err = run(capsys, "list")
    finally:
        get_settings.cache_clear()
    assert code == 2 and "KAFKA_BOOTSTRAP_SERVERS is not set" in err


def dead_letter_burst(
    servers: str, topic: str, event_ids: list[str], destination: str = "http://x/"
) -> list[int]:
    """Dead letters written within a millisecond or so, as one batch (a KafkaSource whose
    sink is down dead-letters a backlog this way); returns their offsets once acked."""
    client = KafkaProducer(bootstrap_servers=servers, linger_ms=20)  # one batch
    try:
        futures = []
        for event_id in event_ids:
            event = events.build(
                event_id=event_id, type=events.REMINDER_DUE, source="/duetide/sweep",
                subject=f"reminder-{event_id}", data={"note": SECRET},
            )  # fmt: skip
            event["knativeerrordest"] = destination
            event["knativeerrorcode"] = "503"
            message = events.to_kafka(event, event_id)
            headers = list(message.headers.items())
            sent = client.send(topic, value=message.value, key=message.key, headers=headers)
            futures.append(sent)
        return [future.get(timeout=10).offset for future in futures]
    finally:
        client.close(timeout=5)


def listed_end(servers: str, topic: str) -> int:
    """What a ListOffsets request says the end of partition 0 is."""
    consumer = KafkaConsumer(bootstrap_servers=servers, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        return consumer.end_offsets([partition])[partition]
    finally:
        consumer.close()


def test_a_burst_of_dead_letters_is_listed_and_replayed_whole(
    broker, kafka, dead_topic, producer, unique_topic, capsys
):
    """The incident: five dead letters, the last three within a millisecond; the broker's
    ListOffsets answered 3 and the listing and replay stopped there."""
    dead_letter(producer, dead_topic, "r0", "http://x/")
    dead_letter(producer, dead_topic, "r1", "http://x/")
    assert dead_letter_burst(kafka, dead_topic, ["r2", "r3", "r4"]) == [2, 3, 4]
    under = listed_end(kafka, dead_topic)  # Tansu: base offset of the last batch + 1

    code, lines, err = run(capsys, "list", "--topic", dead_topic)
    assert code == 0, err
    assert [line.split()[2] for line in lines] == [f"id=r{n}" for n in range(5)], under
    code, lines, _ = run(capsys, "list", "--topic", dead_topic, "--limit", "2")
    assert [line.split()[2] for line in lines] == ["id=r3", "id=r4"], under

    target = unique_topic("reminders")
    ensure_topics(kafka, [TopicSpec(target)])
    code, lines, err = run(capsys, "replay", "--all", "--topic", dead_topic, "--to", target)
    assert code == 0, err
    assert len(lines) == 5
    assert sorted(headers_of(r)["ce_id"] for r in read_topic(kafka, target)) == [
        f"r{n}" for n in range(5)
    ]


def test_dead_letters_written_during_a_listing_do_not_hide_the_earlier_ones(
    broker, kafka, dead_topic, capsys
):
    """Bursts keep arriving while the list runs: every letter acked before it started is
    listed, nothing twice, nothing that was never written, and the listing ends while
    the writes go on (it reads to the end as of its start, it does not chase the topic)."""
    acked = [f"a{n}" for n in range(10)]
    dead_letter_burst(kafka, dead_topic, acked[:5])
    dead_letter_burst(kafka, dead_topic, acked[5:])
    written: list[str] = list(acked)
    stop = threading.Event()

    def keep_writing() -> None:
        deadline = time.monotonic() + 60  # bounded even if the listing never returns
        round_ = 0
        while not stop.is_set() and time.monotonic() < deadline:
            round_ += 1
            ids = [f"c{round_}-{n}" for n in range(5)]
            dead_letter_burst(kafka, dead_topic, ids)
            written.extend(ids)

    writer = threading.Thread(target=keep_writing)
    writer.start()
    try:
        wait_for(lambda: len(written) > len(acked), "the concurrent writer's first burst")
        code, lines, err = run(capsys, "list", "--topic", dead_topic)
        still_writing = writer.is_alive()
    finally:
        stop.set()
        writer.join(timeout=30)
    assert code == 0, err
    assert still_writing
    listed = [line.split()[2].removeprefix("id=") for line in lines]
    assert len(listed) == len(set(listed))
    assert set(acked) <= set(listed)
    assert set(listed) <= set(written)
    # And read again once the writes are over: all of them.
    code, lines, _ = run(capsys, "list", "--topic", dead_topic)
    assert sorted(line.split()[2].removeprefix("id=") for line in lines) == sorted(written)


def test_replay_sends_each_events_newest_letter_in_order_without_holding_the_topic(
    broker, kafka, dead_topic, unique_topic, producer, monkeypatch
):
    """A replay held every letter of the topic in memory (600,000 letters, 1.3 GB); it
    now holds where each event's newest letter is, and sends as it reads the topic
    again, a few letters in flight."""
    monkeypatch.setattr(deadletters, "IN_FLIGHT", 7)
    target = unique_topic("reminders")
    ensure_topics(kafka, [TopicSpec(target)])
    for n in range(60):  # 40 events, the first 20 dead-lettered twice
        dead_letter(producer, dead_topic, f"e{n % 40}", "http://x/", code=str(500 + n))

    replayed = [
        (letter.event_id, letter.attribute("knativeerrorcode"), topic)
        for letter, topic in deadletters.replay(kafka, dead_topic, to=target)
    ]

    newest = [(f"e{n % 40}", str(500 + n), target) for n in range(20, 60)]
    assert replayed == newest
    assert [headers_of(r)["ce_id"] for r in read_topic(kafka, target)] == [e for e, _, _ in newest]
    one = list(deadletters.replay(kafka, dead_topic, event_id="e3", to=target))
    assert [(letter.event_id, letter.attribute("knativeerrorcode")) for letter, _ in one] == [
        ("e3", "543")
    ]


def test_a_dead_letter_over_a_mebibyte_is_replayed(broker, kafka, dead_topic, unique_topic, capsys):
    """The replay's producer refused what the broker had taken: the client's own limit
    is 1 MiB."""
    topic = unique_topic("events")
    ensure_topics(kafka, [TopicSpec(topic)])
    big = {"note": "x" * (3 << 19)}  # 1.5 MiB of data
    event = events.build(
        event_id="big", type=events.TASK_COMPLETED, source="/duetide/tasks", subject="t",
        data=big,
    )  # fmt: skip
    event["knativeerrordest"] = "http://x/"
    message = events.to_kafka(event, "task-big")
    writer = KafkaProducer(bootstrap_servers=kafka, linger_ms=0, max_request_size=4 << 20)
    try:
        writer.send(
            dead_topic, value=message.value, key=message.key,
            headers=list(message.headers.items()),
        ).get(timeout=10)  # fmt: skip
    finally:
        writer.close(timeout=5)

    code, _, err = run(capsys, "replay", "--id", "big", "--topic", dead_topic, "--to", topic)

    assert code == 0, err
    [record] = read_topic(kafka, topic)
    assert json.loads(record.value) == big and headers_of(record)["ce_id"] == "big"
