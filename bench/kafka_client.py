"""What the Kafka client costs by itself on the embedded broker: a consumer polling a
6-partition topic with the dispatchers' settings while a feeder produces to it (100
records/s: the task events at 50 completions/s), and a producer sending records one
acknowledged at a time as the outbox does (`bench/kafka_probe.py` has the details), for
this project's kafka-python, librdkafka (confluent-kafka, in the development
environment for the tests) and, when given, another interpreter's kafka-python
(BENCH_KAFKA_BASELINE_PYTHON, e.g. a venv with kafka-python 2.2:
`python -m venv /tmp/kp2 && /tmp/kp2/bin/pip install 'kafka-python[crc32c]==2.2.15'`).

Why it matters: in the pipeline benchmark the dispatchers' process is the stack's
largest consumer of CPU after the functions, and most of it is kafka-python's fetch
loop (a flowing consumer fetches every few milliseconds); two consumer groups read the
task events, and two publishes (tasks', recurrence's) go out per completion. A client
that fetches differently can move cost into the broker, so the broker's CPU is measured
too, over what it spends with only the feeder (`feeding alone`, the same round). Every
probe runs on a new broker (the embedded broker's fetches cost more as a partition's
batches pile up), in its own process, one at a time, ROUNDS times, alternating the
clients; a client's CPU is its process's (all its threads, librdkafka's included),
from `time.process_time`."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from duetide_tools.local.broker import EmbeddedBroker, ensure_topics
from duetide_tools.manifests import TopicSpec

ROUNDS = int(os.environ.get("BENCH_KAFKA_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_KAFKA_SECONDS", "10"))
RECORDS = int(os.environ.get("BENCH_KAFKA_RECORDS", "500"))
FEED_RATE = int(os.environ.get("BENCH_KAFKA_FEED_RATE", "100"))
BASELINE_PYTHON = os.environ.get("BENCH_KAFKA_BASELINE_PYTHON", "")
PROBE = Path(__file__).with_name("kafka_probe.py")
TOPIC = "bench-kafka-client"
PARTITIONS = 6  # as duetide-task-events (kafka/base/topics.yaml)
FEEDING_ALONE = "feeding alone"
# The probes run on their interpreter's own packages, not this checkout's.
_OWN_PACKAGES = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}

COLUMNS = ["client", "library", "round", "fetches/s", "consumer CPU ms/s", "CPU ms a fetch",
           "switches a fetch", "threads", "broker CPU ms/s", "broker over feeding alone ms/s",
           "consumer + broker ms/s", "producer CPU ms a record"]  # fmt: skip


def _probe_command(
    python: str, role: str, client: str, broker: EmbeddedBroker, amount: int
) -> list[str]:
    """`bench/kafka_probe.py`'s command line (its docstring has the roles)."""
    return [python, str(PROBE), role, client, broker.bootstrap_servers, TOPIC, str(amount),
            str(broker.pid)]  # fmt: skip


def _probe(python: str, role: str, client: str, broker: EmbeddedBroker, amount: int) -> Any:
    answer = subprocess.run(
        _probe_command(python, role, client, broker, amount),
        capture_output=True,
        text=True,
        timeout=180,
        env=_OWN_PACKAGES,
        check=False,
    )
    if answer.returncode:
        raise RuntimeError(f"{python} {role} probe failed: {answer.stderr.strip()[-2000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1])


@contextlib.contextmanager
def _fed_broker() -> Iterator[EmbeddedBroker]:
    """A new broker for each probe (the embedded broker's fetches cost more as a
    partition's batches pile up), its topic fed at FEED_RATE while the probe runs."""
    with EmbeddedBroker() as broker:
        ensure_topics(broker.bootstrap_servers, [TopicSpec(TOPIC, PARTITIONS)])
        feeder = None
        if FEED_RATE:
            feeder = subprocess.Popen(
                _probe_command(sys.executable, "feed", "kafka-python", broker, FEED_RATE),
                env=_OWN_PACKAGES,
            )
        try:
            yield broker
        finally:
            if feeder is not None:
                feeder.kill()
                feeder.wait()


def run() -> list[dict[str, object]]:
    clients = [("this project", sys.executable, "kafka-python")]
    if BASELINE_PYTHON:
        clients.append(("baseline", BASELINE_PYTHON, "kafka-python"))
    clients.append(("librdkafka (confluent-kafka)", sys.executable, "librdkafka"))
    rows: list[dict[str, object]] = []
    for round_ in range(1, ROUNDS + 1):
        with _fed_broker() as broker:
            alone = _probe(sys.executable, "control", "kafka-python", broker, SECONDS)
        rows.append({"client": FEEDING_ALONE, "round": round_,
                     "broker CPU ms/s": alone["broker CPU ms/s"]})  # fmt: skip
        for name, python, client in clients:
            with _fed_broker() as broker:
                consumed = _probe(python, "consumer", client, broker, SECONDS)
            with _fed_broker() as broker:
                produced = _probe(python, "producer", client, broker, RECORDS)
            over = consumed["broker CPU ms/s"] - alone["broker CPU ms/s"]
            row = {
                "client": name,
                "library": consumed["library"],
                "round": round_,
                "fetches/s": consumed["fetches/s"],
                "consumer CPU ms/s": consumed["CPU ms/s"],
                "CPU ms a fetch": consumed["CPU ms a fetch"],
                "switches a fetch": consumed["switches a fetch"],
                "threads": consumed["threads"],
                "broker CPU ms/s": consumed["broker CPU ms/s"],
                "broker over feeding alone ms/s": round(over, 1),
                "consumer + broker ms/s": round(consumed["CPU ms/s"] + over, 1),
                "producer CPU ms a record": produced["CPU ms a record"],
            }
            print(f"  kafka_client: {row}", flush=True)
            rows.append(row)
    return [{column: row.get(column, "") for column in COLUMNS} for row in rows]


def describe() -> str:
    rounds = (
        f"{ROUNDS} rounds of a {SECONDS} s consumer while {FEED_RATE} records/s are fed to its "
        f"topic, and {RECORDS} records produced at 50/s"
    )
    baseline = (
        f"the baseline is `{BASELINE_PYTHON}`"
        if BASELINE_PYTHON
        else "no baseline interpreter (BENCH_KAFKA_BASELINE_PYTHON unset)"
    )
    return f"{__doc__.strip() if __doc__ else ''}\n\n{rounds}; {baseline}."
