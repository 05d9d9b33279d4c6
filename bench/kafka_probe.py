"""One Kafka client's CPU, run by `bench.kafka_client` in its own interpreter:
`python bench/kafka_probe.py ROLE CLIENT BOOTSTRAP TOPIC AMOUNT BROKER_PID`.

ROLE is consumer, producer, feed or control; CLIENT is kafka-python or librdkafka
(confluent-kafka). Only the standard library and the client named, so another
interpreter with another kafka-python version can run it (the benchmark's baseline).
Prints one JSON object (feed prints nothing and runs until killed).

- consumer: joins a new group on TOPIC at its end and polls for AMOUNT seconds with the
  dispatchers' settings while records flow (a feeder produces to the topic meanwhile):
  `fetch_max_wait_ms` 10, kafka-python's metrics off, polls of up to 100 ms. kafka-python's
  fetch requests are counted by wrapping the connection's send (kafka-python 3:
  `kafka.net.connection`, 2: `kafka.conn`); librdkafka's from its statistics.
- producer: sends AMOUNT records of 300 bytes at 50/s, each acknowledged (acks=all,
  linger 0) before the next, as the outbox's fast path sends them.
- feed: produces records of 300 bytes at AMOUNT a second, one a batch (linger 0), as
  the functions' outboxes do at 50 completions/s (two events a completion).
- control: nothing for AMOUNT seconds; the broker's CPU meanwhile, with only the feeder.

BROKER_PID's CPU (/proc) over the measured window is reported beside the client's: a
client that fetches differently can move cost into the broker.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from typing import Any

FETCH_WAIT_MS = 10
POLL_MS = 100
RATE = 50
VALUE = b"x" * 300
JOIN_TIMEOUT_S = 60.0
STATISTICS_MS = 1000  # librdkafka's statistics: how its fetches are counted
SETTLE_POLLS = 10  # after the join: positions looked up, the first fetches under way
CONTROL_SETTLE_S = 4.0  # a consumer's join and settling on the embedded broker

_sent: collections.Counter[str] = collections.Counter()


def _count_requests() -> None:
    try:  # kafka-python 3
        module, name, method = "kafka.net.connection", "KafkaConnection", "send_request"
        connection = getattr(importlib.import_module(module), name)
    except ImportError:  # kafka-python 2
        module, name, method = "kafka.conn", "BrokerConnection", "send"
        connection = getattr(importlib.import_module(module), name)
    original = getattr(connection, method)

    def counted(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        _sent[type(request).__name__.split("_v")[0]] += 1
        return original(self, request, *args, **kwargs)

    setattr(connection, method, counted)


def _switches() -> int:
    """Context switches of this process's threads so far (Linux)."""
    total = 0
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/status") as status:
            for line in status:
                if "ctxt_switches:" in line:  # voluntary and involuntary
                    total += int(line.split()[-1])
    return total


def _cpu_s(pid: int) -> float:
    """User + system CPU of process `pid` so far, all its threads."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measure(seconds: float, broker_pid: int, step: Callable[[], object]) -> dict[str, float]:
    """Run `step` for `seconds`: this process's CPU and switches, the broker's CPU."""
    switches, cpu, broker = _switches(), time.process_time(), _cpu_s(broker_pid)
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        step()
    wall = time.monotonic() - start
    return {
        "start": start,
        "wall": wall,
        "cpu_ms": (time.process_time() - cpu) * 1000,
        "switches": _switches() - switches,
        "broker_cpu_ms": (_cpu_s(broker_pid) - broker) * 1000,
    }


def _per_fetch(window: dict[str, float], fetches_per_s: float) -> dict[str, object]:
    wall = window["wall"]
    fetches = fetches_per_s * wall
    return {
        "fetches/s": round(fetches_per_s, 1),
        "CPU ms/s": round(window["cpu_ms"] / wall, 1),
        "CPU ms a fetch": round(window["cpu_ms"] / fetches, 2) if fetches else None,
        "switches a fetch": round(window["switches"] / fetches, 1) if fetches else None,
        "threads": len(os.listdir("/proc/self/task")),
        "broker CPU ms/s": round(window["broker_cpu_ms"] / wall, 1),
    }


def _await(condition: Callable[[], bool], poll: Callable[[], object]) -> None:
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit("no partitions assigned")
        poll()
    for _ in range(SETTLE_POLLS):
        poll()


def kafka_python_consumer(bootstrap: str, topic: str, seconds: float, broker_pid: int) -> Any:
    import kafka

    _count_requests()
    client = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"probe-{time.time_ns()}",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        enable_auto_commit=False,
        metrics_enabled=False,
    )
    _await(lambda: bool(client.assignment()), lambda: client.poll(timeout_ms=POLL_MS))
    _sent.clear()
    window = _measure(seconds, broker_pid, lambda: client.poll(timeout_ms=POLL_MS))
    found = _per_fetch(window, _sent["FetchRequest"] / window["wall"])
    client.close()
    return found


def librdkafka_consumer(bootstrap: str, topic: str, seconds: float, broker_pid: int) -> Any:
    import confluent_kafka

    reports: list[tuple[float, int]] = []  # (when, fetch requests sent so far)

    def statistics(report: str) -> None:
        brokers = json.loads(report)["brokers"].values()
        sent = sum(b.get("req", {}).get("Fetch", 0) for b in brokers)
        reports.append((time.monotonic(), sent))

    client = confluent_kafka.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"probe-{time.time_ns()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": FETCH_WAIT_MS,
            "isolation.level": "read_uncommitted",  # kafka-python's default
            "session.timeout.ms": 6000,  # the embedded broker's join waits half of it
            "heartbeat.interval.ms": 2000,
            "statistics.interval.ms": STATISTICS_MS,
            "stats_cb": statistics,
        }
    )
    assigned: list[object] = []
    client.subscribe([topic], on_assign=lambda _c, partitions: assigned.extend(partitions))
    _await(lambda: bool(assigned), lambda: client.poll(POLL_MS / 1000))
    window = _measure(seconds, broker_pid, lambda: client.poll(POLL_MS / 1000))
    client.poll(2 * STATISTICS_MS / 1000)  # one more report after the window
    # The fetch rate between the first and the last report from the window on (the
    # statistics come once a second, so this spans the window within a second).
    inside = [r for r in reports if r[0] >= window["start"]]
    (first_at, first), (last_at, last) = inside[0], inside[-1]
    found = _per_fetch(window, (last - first) / (last_at - first_at))
    client.close()
    return found


def kafka_python_producer(bootstrap: str, topic: str) -> Callable[[int], None]:
    import kafka

    client = kafka.KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, metrics_enabled=False
    )

    def send(n: int) -> None:
        client.send(topic, key=b"%d" % n, value=VALUE).get(timeout=10)

    return send


def librdkafka_producer(bootstrap: str, topic: str) -> Callable[[int], None]:
    import confluent_kafka

    client = confluent_kafka.Producer(
        {"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 0}
    )

    def send(n: int) -> None:
        outcome: list[object] = []
        client.produce(
            topic, key=b"%d" % n, value=VALUE, on_delivery=lambda e, _m: outcome.append(e)
        )
        while not outcome:
            client.poll(0.01)
        if outcome[0] is not None:
            raise SystemExit(f"produce failed: {outcome[0]}")

    return send


def producer(send: Callable[[int], None], count: int) -> dict[str, object]:
    for n in range(20):  # connected, metadata known
        send(n)
    cpu, start = time.process_time(), time.monotonic()
    for n in range(count):
        wait = start + n / RATE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        send(n)
    cpu = time.process_time() - cpu
    return {"CPU ms a record": round(cpu * 1000 / count, 2)}


def feed(bootstrap: str, topic: str, rate: int) -> None:
    import kafka

    client = kafka.KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    start, n = time.monotonic(), 0
    while True:
        wait = start + n / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        client.send(topic, key=b"%d" % n, value=VALUE)
        n += 1


def control(seconds: float, broker_pid: int) -> dict[str, object]:
    # As long as a consumer's join takes, so the feeder's connecting is outside the
    # window here too.
    time.sleep(CONTROL_SETTLE_S)
    return _per_fetch(_measure(seconds, broker_pid, lambda: time.sleep(0.1)), 0.0)


def _library(client: str) -> str:
    if client == "librdkafka":
        import confluent_kafka

        return f"librdkafka {confluent_kafka.libversion()[0]}"
    return f"kafka-python {version('kafka-python')}"


if __name__ == "__main__":
    role, client, bootstrap, topic, amount, broker_pid = sys.argv[1:7]
    consumers = {"kafka-python": kafka_python_consumer, "librdkafka": librdkafka_consumer}
    producers = {"kafka-python": kafka_python_producer, "librdkafka": librdkafka_producer}
    if role == "feed":
        feed(bootstrap, topic, int(amount))  # until killed
    elif role == "control":
        found = control(float(amount), int(broker_pid))
    elif role == "consumer":
        found = consumers[client](bootstrap, topic, float(amount), int(broker_pid))
    else:
        found = producer(producers[client](bootstrap, topic), int(amount))
    print(json.dumps({"library": _library(client), **found}))
