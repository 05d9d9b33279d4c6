"""One kafka-python client's CPU, run by `bench.kafka_client` in its own interpreter:
`python bench/kafka_probe.py consumer|producer BOOTSTRAP TOPIC SECONDS|COUNT`.

Only the standard library and kafka-python, so another interpreter with another
kafka-python version can run it (the benchmark's baseline). Prints one JSON object.

- consumer: joins a new group on TOPIC (nothing is produced to it) and polls for SECONDS
  with the dispatchers' settings while records flow (`fetch_max_wait_ms` 10, kafka-python's
  metrics off, polls of up to 100 ms): what a dispatcher pays whatever the rate, since the
  embedded broker holds a fetch for its whole wait. The fetch requests sent are counted
  by wrapping the connection's send (kafka-python 3: `kafka.net.connection`, 2:
  `kafka.conn`).
- producer: sends COUNT records of 300 bytes at 50/s, each acknowledged (acks=all,
  linger 0) before the next, as the outbox's fast path sends them.
"""

from __future__ import annotations

import collections
import importlib
import json
import os
import sys
import threading
import time
from importlib.metadata import version
from typing import Any

import kafka

FETCH_WAIT_MS = 10
POLL_MS = 100
RATE = 50
JOIN_TIMEOUT_S = 60.0

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


def consumer(bootstrap: str, topic: str, seconds: float) -> dict[str, object]:
    _count_requests()
    client = kafka.KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"probe-{time.time_ns()}",
        fetch_max_wait_ms=FETCH_WAIT_MS,
        enable_auto_commit=False,
        metrics_enabled=False,
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while not client.assignment():
        if time.monotonic() > deadline:
            raise SystemExit("no partitions assigned")
        client.poll(timeout_ms=POLL_MS)
    for _ in range(10):  # the positions looked up, the first fetches under way
        client.poll(timeout_ms=POLL_MS)
    _sent.clear()
    switches, cpu, start = _switches(), time.process_time(), time.monotonic()
    while time.monotonic() - start < seconds:
        client.poll(timeout_ms=POLL_MS)
    cpu, wall = time.process_time() - cpu, time.monotonic() - start
    switches = _switches() - switches
    fetches = _sent["FetchRequest"]
    threads = threading.active_count()
    client.close()
    return {
        "fetches/s": round(fetches / wall, 1),
        "CPU ms/s": round(cpu * 1000 / wall, 1),
        "CPU ms a fetch": round(cpu * 1000 / fetches, 2) if fetches else None,
        "switches a fetch": round(switches / fetches, 1) if fetches else None,
        "threads": threads,
    }


def producer(bootstrap: str, topic: str, count: int) -> dict[str, object]:
    client = kafka.KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, metrics_enabled=False
    )
    value = b"x" * 300
    for n in range(20):  # connected, metadata known
        client.send(topic, key=b"%d" % n, value=value).get(timeout=10)
    cpu, start = time.process_time(), time.monotonic()
    for n in range(count):
        wait = start + n / RATE - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        client.send(topic, key=b"%d" % n, value=value).get(timeout=10)
    cpu = time.process_time() - cpu
    client.close()
    return {"CPU ms a record": round(cpu * 1000 / count, 2)}


if __name__ == "__main__":
    role, bootstrap, topic, amount = sys.argv[1:5]
    found = (
        consumer(bootstrap, topic, float(amount))
        if role == "consumer"
        else producer(bootstrap, topic, int(amount))
    )
    print(json.dumps({"kafka-python": version("kafka-python"), **found}))
