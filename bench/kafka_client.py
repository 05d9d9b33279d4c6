"""What the Kafka client costs by itself on the embedded broker: a consumer polling a
6-partition topic with the dispatchers' settings while records flow, and a producer
sending records one acknowledged at a time as the outbox does (`bench/kafka_probe.py`
has the details), for this project's kafka-python and, beside it in the same rounds,
another interpreter's (BENCH_KAFKA_BASELINE_PYTHON, e.g. a venv with kafka-python 2.2:
`python -m venv /tmp/kp2 && /tmp/kp2/bin/pip install 'kafka-python[crc32c]==2.2.15'`).

Why it matters: in the pipeline benchmark the dispatchers' process is the stack's
largest consumer of CPU after the functions, and most of it is kafka-python's fetch
loop, paid per fetch whether or not a record comes (the embedded broker holds a fetch
for its whole wait, so a flowing consumer fetches about every 10 ms); two consumer
groups read the task events, and two publishes (tasks', recurrence's) go out per
completion. Each probe runs in its own process, one at a time, ROUNDS times,
alternating the clients; CPU is the probe process's (all its threads), from
`time.process_time`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from duetide_tools.local.broker import EmbeddedBroker, ensure_topics
from duetide_tools.manifests import TopicSpec

ROUNDS = int(os.environ.get("BENCH_KAFKA_ROUNDS", "3"))
SECONDS = int(os.environ.get("BENCH_KAFKA_SECONDS", "10"))
RECORDS = int(os.environ.get("BENCH_KAFKA_RECORDS", "500"))
BASELINE_PYTHON = os.environ.get("BENCH_KAFKA_BASELINE_PYTHON", "")
PROBE = Path(__file__).with_name("kafka_probe.py")
TOPIC = "bench-kafka-client"
PARTITIONS = 6  # as duetide-task-events (kafka/base/topics.yaml)

COLUMNS = ["client", "kafka-python", "round", "fetches/s", "consumer CPU ms/s",
           "CPU ms a fetch", "switches a fetch", "threads", "producer CPU ms a record"]  # fmt: skip


def _probe(python: str, role: str, bootstrap: str, amount: int) -> dict[str, object]:
    answer = subprocess.run(
        [python, str(PROBE), role, bootstrap, TOPIC, str(amount)],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},  # its own packages
        check=False,
    )
    if answer.returncode:
        raise RuntimeError(f"{python} {role} probe failed: {answer.stderr.strip()[-2000:]}")
    found: dict[str, object] = json.loads(answer.stdout.strip().splitlines()[-1])
    return found


def run() -> list[dict[str, object]]:
    clients = [("this project", sys.executable)]
    if BASELINE_PYTHON:
        clients.append(("baseline", BASELINE_PYTHON))
    rows: list[dict[str, object]] = []
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        ensure_topics(bootstrap, [TopicSpec(TOPIC, PARTITIONS)])
        for round_ in range(1, ROUNDS + 1):
            for name, python in clients:
                consumed = _probe(python, "consumer", bootstrap, SECONDS)
                produced = _probe(python, "producer", bootstrap, RECORDS)
                row = {
                    "client": name,
                    "kafka-python": consumed["kafka-python"],
                    "round": round_,
                    "fetches/s": consumed["fetches/s"],
                    "consumer CPU ms/s": consumed["CPU ms/s"],
                    "CPU ms a fetch": consumed["CPU ms a fetch"],
                    "switches a fetch": consumed["switches a fetch"],
                    "threads": consumed["threads"],
                    "producer CPU ms a record": produced["CPU ms a record"],
                }
                print(f"  kafka_client: {row}", flush=True)
                rows.append(row)
    return rows


def describe() -> str:
    rounds = f"{ROUNDS} rounds of a {SECONDS} s consumer and {RECORDS} records produced at 50/s"
    baseline = (
        f"the baseline is `{BASELINE_PYTHON}`"
        if BASELINE_PYTHON
        else "no baseline interpreter (BENCH_KAFKA_BASELINE_PYTHON unset)"
    )
    return f"{__doc__.strip() if __doc__ else ''}\n\n{rounds}; {baseline}."
