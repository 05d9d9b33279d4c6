"""Records lost to the embedded broker's produce/fetch race: the local KafkaSource
dispatcher, which fetches a hole in a partition's offsets again (RELIABILITY.md, scenario
7c), beside a plain kafka-python consumer with the same fetch settings, both reading one
partition while several producers race on it.

The embedded broker (Tansu 0.6) reserves a produced batch's offsets before it stores the
batch, so with producers on separate connections a fetch between the two steps can find
a later batch first; a Kafka client moves past the hole. PRODUCERS processes send RATE
records a second in all onto one partition (acks=all, linger 0, each send in a thread of
its own, as the outbox's Publisher sends) for SECONDS, ROUNDS times, while BUSY
processes spin: the race needs a broker thread descheduled between the two steps, and the
local stack under load keeps the 2 cores this busy. Both consumers read the same records
in the same run, the baseline in a process of its own.

Columns: `acked`, records the broker acknowledged; `skipped`, acked records the consumer
never received though it received a later one (lost to it); `not reached`, acked records
after the last one it received when SETTLE_S had passed since the last ack (the plain
consumer fetches with a 10 ms wait throughout, and once the partition holds some 20,000
batches this broker's fetches with that wait come back empty: see
`eventing.FLOWING_FETCH_WAIT_MS`); `filled` and `passed`, the holes the dispatcher
fetched again and got, and those it passed over.
"""

from __future__ import annotations

import multiprocessing
import os
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kafka import KafkaConsumer, KafkaProducer

from duetide_tools.local.broker import (
    EmbeddedBroker,
    consumer_settings,
    ensure_topics,
)
from duetide_tools.local.eventing import KafkaSourceDispatcher, dispatcher_fetch_settings
from duetide_tools.manifests import Delivery, KafkaSourceSpec, SinkRef, TopicSpec

SECONDS = float(os.environ.get("BENCH_HOLES_SECONDS", "60"))
ROUNDS = int(os.environ.get("BENCH_HOLES_ROUNDS", "3"))
RATE = int(os.environ.get("BENCH_HOLES_RATE", "400"))
PRODUCERS = int(os.environ.get("BENCH_HOLES_PRODUCERS", "4"))
BUSY = int(os.environ.get("BENCH_HOLES_BUSY", "2"))
SETTLE_S = 30.0
JOIN_S = 30.0
_OFFSET = re.compile(r"partition:0/offset:(\d+)")

_rows: list[dict[str, object]] = []


def _progress(message: str) -> None:
    print(f"  broker_holes: {message}", flush=True)


def _produce(bootstrap: str, topic: str, rate: float, seconds: float, acked: Any) -> None:
    """One producer process: `rate` records a second, each sent from its own thread."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    offsets: list[int] = []
    lock = threading.Lock()

    def send(n: int) -> None:
        offset = producer.send(topic, f"{n}".encode(), partition=0).get(timeout=10).offset
        with lock:
            offsets.append(offset)

    threads = []
    start = time.monotonic()
    for n in range(int(rate * seconds)):
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        thread = threading.Thread(target=send, args=(n,))
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    producer.close(timeout=5)
    acked.put(offsets)


def _spin() -> None:
    while True:
        pass


class _Sink:
    """An HTTP sink that notes the offset of each plain record the dispatcher posts."""

    def __init__(self) -> None:
        self.offsets: list[int] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                match = _OFFSET.fullmatch(self.headers.get("ce-id", ""))
                if match:
                    sink.offsets.append(int(match[1]))  # list.append is atomic
                self.send_response(202)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_port}/"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _read_plainly(bootstrap: str, topic: str, joined: Any, seen: Any, stop: Any, out: Any) -> None:
    """The baseline, in a process of its own (so that the dispatcher's deliveries do not
    starve it of the GIL): a kafka-python consumer set up as the dispatcher's."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{topic}-plain",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **consumer_settings(),
        **dispatcher_fetch_settings(),
    )
    offsets: list[int] = []
    while not stop.is_set():
        for records in consumer.poll(timeout_ms=100).values():
            offsets.extend(record.offset for record in records)
            seen.value = len(offsets)
        if consumer.assignment():
            joined.set()
    consumer.close()
    out.put(offsets)


def _dispatcher(bootstrap: str, topic: str, sink_url: str) -> KafkaSourceDispatcher:
    spec = KafkaSourceSpec(
        name="bench-holes",
        topics=(topic,),
        consumer_group=f"{topic}-dispatcher",
        sink=SinkRef("Service", "bench"),
        delivery=Delivery(retry=3, backoff_delay_s=0.01, timeout_s=5),
        initial_offset="earliest",
    )
    return KafkaSourceDispatcher(spec, bootstrap, sink_url, consumer_config=consumer_settings())


def _round(number: int) -> None:
    with EmbeddedBroker() as broker:
        bootstrap = broker.bootstrap_servers
        topic = f"bench-holes-{uuid.uuid4().hex[:8]}"
        ensure_topics(bootstrap, [TopicSpec(topic)])
        sink = _Sink()
        dispatcher = _dispatcher(bootstrap, topic, sink.url).start()
        joined, stop, seen = (
            multiprocessing.Event(),
            multiprocessing.Event(),
            multiprocessing.Value("i"),
        )
        plain_out: Any = multiprocessing.Queue()
        plain = multiprocessing.Process(
            target=_read_plainly, args=(bootstrap, topic, joined, seen, stop, plain_out)
        )
        plain.start()
        if not (dispatcher.wait_assigned(JOIN_S) and joined.wait(JOIN_S)):
            raise RuntimeError("a consumer was not assigned its partition")
        spinners = [multiprocessing.Process(target=_spin, daemon=True) for _ in range(BUSY)]
        acked_queue: Any = multiprocessing.Queue()
        producers = [
            multiprocessing.Process(
                target=_produce, args=(bootstrap, topic, RATE / PRODUCERS, SECONDS, acked_queue)
            )
            for _ in range(PRODUCERS)
        ]
        for process in spinners + producers:
            process.start()
        _progress(f"round {number}: {PRODUCERS} producers at {RATE}/s for {SECONDS:.0f} s")
        acked: set[int] = set()
        for _ in producers:
            acked.update(acked_queue.get(timeout=SECONDS + 120))
        for process in producers:
            process.join()
        for process in spinners:
            process.terminate()
            process.join()
        deadline = time.monotonic() + SETTLE_S
        shown = 0.0
        while time.monotonic() < deadline and (
            acked - set(sink.offsets) or seen.value < len(acked)
        ):
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                _progress(f"round {number}: waiting; {len(acked)} acked, the dispatcher has "
                          f"{len(set(sink.offsets))}, the plain consumer {seen.value}")  # fmt: skip
            time.sleep(0.2)
        stop.set()
        readers = {
            "dispatcher (hole check)": sink.offsets,
            "kafka-python consumer": plain_out.get(),
        }
        plain.join()
        dispatcher.stop()
        sink.close()
        for reader, got in readers.items():
            received = set(got)
            last = max(received, default=-1)
            skipped = sorted(offset for offset in acked - received if offset < last)
            is_dispatcher = reader.startswith("dispatcher")
            _rows.append({
                "round": number, "consumer": reader, "acked": len(acked),
                "skipped": len(skipped), "skipped offsets": ", ".join(map(str, skipped[:5])) or "-",
                "not reached": sum(1 for offset in acked if offset > last),
                "received twice": len(got) - len(received),
                "filled": len(dispatcher.holes_filled) if is_dispatcher else "-",
                "passed": len(dispatcher.holes_passed) if is_dispatcher else "-",
            })  # fmt: skip
            _progress(f"round {number}: {reader}: {len(skipped)} of {len(acked)} skipped")


def run() -> list[dict[str, object]]:
    _rows.clear()
    for number in range(1, ROUNDS + 1):
        _round(number)
    return list(_rows)


def details() -> dict[str, Any]:
    totals: dict[str, dict[str, int]] = {}
    for row in _rows:
        total = totals.setdefault(str(row["consumer"]), {"acked": 0, "skipped": 0})
        total["acked"] += int(row["acked"])  # type: ignore[call-overload]
        total["skipped"] += int(row["skipped"])  # type: ignore[call-overload]
    return {"totals": totals, "rounds": ROUNDS, "seconds per round": SECONDS, "rate /s": RATE,
            "producers": PRODUCERS, "busy processes": BUSY}  # fmt: skip


def describe() -> str:
    totals = details()["totals"]
    summary = "; ".join(
        f"{reader}: {total['skipped']} of {total['acked']} skipped"
        for reader, total in totals.items()
    )
    return (__doc__ or "").split("\n\n", 1)[1].strip() + f"\n\nOver {ROUNDS} rounds: {summary}."
