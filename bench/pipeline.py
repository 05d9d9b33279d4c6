"""Issue 12: the event pipeline on the local stack, at fixed completion rates, beside the
raw Kafka round trip on the same broker.

A completion of a recurring task's occurrence (POST /tasks/{id}/complete) leads, through
the outbox, Kafka, the KafkaSource dispatcher and the recurrence function, to the
series' next occurrence. Measured: from the moment the completion's 200 reached the
client to the next occurrence's `created_at` (the recurrence function's commit; 0 when
it was stored before the answer arrived). The baseline is the floor the broker and the
consumer settings allow: a record produced as the outbox does it (acks=all, linger 0,
acknowledged) to a record polled by a consumer configured as the stack's dispatchers are,
at the same rate on the same broker.

`duetide up`'s stack as a user runs it: its default database (SQLite in DUETIDE_HOME),
then PostgreSQL; the manifests' ping schedule (once a minute: the relay only catches up
what the fast path left); the default write limit (each series has its own user, so it
never refuses), in its own process. SERIES recurring series (FREQ=DAILY) are created
through the API first, then completed at WARM_UP_RATE for WARM_UP_S unmeasured (a stack
just started opens its connections and producers and imports what a first event needs:
the first seconds at 50/s had p99 near 1 s on PostgreSQL, then 25 ms). Then each rate
runs ROUNDS times for SECONDS each with an open-loop schedule (the i-th completion is
sent at i / rate s, whatever the answers do), round robin over the series whose open
occurrence is known. Rates go up until one misses in any of its rounds (p99 >= 250 ms,
or any refused or lost completion, or any skipped): the rate before it is the highest
sustained. Rounds, because on a shared machine two runs of 30 s a minute apart have
differed by almost ten times in p99 (79 and 615 ms at 20/s, 2026-12-03): one round
is one draw. Each rate runs on the broker the rates before it filled, and the embedded
broker's fetches cost more the more batches a partition holds (its CPU a completion at
50/s was 7.7-9.1 ms after rounds at 40 and 45/s, 4.3-4.7 on a stack just started,
2026-12-04): BENCH_PIPELINE_RATES with one rate measures it on a young stack.

Columns: p50/p99/max, answer -> next occurrence stored; `skipped (behind)`, sends that
found no series with its next occurrence in place (the stack fell behind); `answer p99`,
from the moment a completion was due to be sent to its answer (the client's view, its
queue included); `client lag p99`, how late the load generator sent.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text

from bench import stack_cpu
from duetide.config import get_settings
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import consumer_settings, free_loopback_port
from duetide_tools.local.eventing import dispatcher_fetch_settings

SERIES = int(os.environ.get("BENCH_PIPELINE_SERIES", "1000"))
SECONDS = float(os.environ.get("BENCH_PIPELINE_SECONDS", "30"))
ROUNDS = int(os.environ.get("BENCH_PIPELINE_ROUNDS", "3"))
RATES = [int(r) for r in os.environ.get("BENCH_PIPELINE_RATES", "10,50,75,100,150,200").split(",")]
DATABASES = os.environ.get("BENCH_PIPELINE_DATABASES", "sqlite,postgresql").split(",")
SUSTAINED_P99_S = 0.250
GOAL_P99_S = 0.100
WARM_UP_RATE = 20
WARM_UP_S = 10.0
SETTLE_S = 15.0  # after the last completion, how long next occurrences may still come
CLIENT_THREADS = 48
# How often the watcher looks for next occurrences. The latency is taken from the row's
# created_at, not from when the watcher saw it, so this only bounds how soon a series is
# ready for its next completion (each one's turn comes every SERIES / rate s). It re-reads
# the last 5 s of rows each time: at 20 polls a second that cost the load generator
# about 1 ms of CPU per completion at 20/s, on the 2 cores the stack shares.
WATCH_POLL_S = 0.25
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
PG_DATABASE = "duetide_bench_pipeline"

_rows: list[dict[str, object]] = []
_cpu: dict[tuple[str, int], dict[str, float]] = {}
"""ms of CPU per completion by process kind, for each (database, rate) measured."""


def _progress(message: str) -> None:
    print(f"  pipeline: {message}", flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, int(len(ordered) * q + 0.999999) - 1)]


def summary(latencies: list[float]) -> dict[str, object]:
    if not latencies:
        return {"p50 ms": None, "p99 ms": None, "max ms": None}
    ms = [v * 1000 for v in latencies]
    return {
        "p50 ms": round(statistics.median(ms), 1),
        "p99 ms": round(percentile(ms, 0.99), 1),
        "max ms": round(max(ms), 1),
    }


# the raw Kafka round trip: the floor


def kafka_round_trip(bootstrap: str, rate: int, seconds: float) -> dict[str, object]:
    """Records produced at `rate` as the outbox produces them; time to a consumer set up
    as the dispatchers are."""
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.admin import KafkaAdminClient, NewTopic

    topic = f"bench-round-trip-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=0)
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-{topic}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **consumer_settings(),
        **dispatcher_fetch_settings(),
    )
    acked: dict[int, float] = {}
    polled: dict[int, float] = {}  # a record can be polled before its ack is noted
    total = int(rate * seconds)
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set() and len(polled) < total:
            for records in consumer.poll(timeout_ms=100).values():
                now = time.monotonic()
                for record in records:
                    polled.setdefault(int(record.value), now)

    try:
        while not consumer.assignment():  # joined: the floor excludes the group join
            consumer.poll(timeout_ms=100)
        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        start = time.monotonic()
        for n in range(total):
            _sleep_until(start + n / rate)
            producer.send(topic, str(n).encode()).get(timeout=10)
            acked[n] = time.monotonic()
        reader.join(timeout=SETTLE_S)
        stop.set()
        reader.join()
    finally:
        producer.close()
        consumer.close()
    latencies = [max(0.0, polled[n] - at) for n, at in acked.items() if n in polled]
    return {"sent": total, "refused": 0, "lost": total - len(latencies), **summary(latencies)}


def _sleep_until(moment: float) -> None:
    delay = moment - time.monotonic()
    if delay > 0:
        time.sleep(delay)


# the stack's pipeline


_pairing = threading.Lock()


@dataclass
class Series:
    """One series, its owner, and its completion under way (if any).

    The answer to a completion and the next occurrence's row can arrive in either order;
    whichever comes second closes the pair and records the latency.
    """

    user: str
    token: str
    open_task: str | None = None
    answered: float | None = None  # wall clock (epoch s) of the completion's 200
    arrived: float | None = None  # the next occurrence's created_at (epoch s)

    def pair(self, latencies: list[float], *, answered: float | None = None,
             arrived: float | None = None) -> None:  # fmt: skip
        with _pairing:
            self.answered = answered if answered is not None else self.answered
            self.arrived = arrived if arrived is not None else self.arrived
            if self.answered is not None and self.arrived is not None:
                latencies.append(max(0.0, self.arrived - self.answered))
                self.answered = self.arrived = None


@dataclass
class Watch:
    """Next occurrences as the recurrence function stores them, by series."""

    engine: Any
    series: dict[str, Series]
    seen: set[str] = field(default_factory=set)
    latencies: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        since = datetime.now(UTC) - timedelta(minutes=1)
        query = text(
            "SELECT id, series_id, created_at FROM task "
            "WHERE created_at > :since AND status = 'open' AND series_id IS NOT NULL"
        )
        while not self.stop.wait(WATCH_POLL_S):
            with self.engine.connect() as connection:
                rows = connection.execute(query, {"since": since}).all()
            newest = since
            for task_id, series_id, created in rows:
                created = _aware(created)
                newest = max(newest, created)
                if task_id in self.seen or series_id not in self.series:
                    continue
                self.seen.add(task_id)
                series = self.series[series_id]
                series.pair(self.latencies, arrived=created.timestamp())
                series.open_task = task_id
            # rows commit out of created_at order: look back a little
            since = max(since, newest - timedelta(seconds=5))


def _aware(value: Any) -> datetime:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def create_series(base: str, count: int) -> dict[str, Series]:
    """One daily series per user, created through the API, all at once (8 clients)."""
    due = (datetime.now(UTC) + timedelta(hours=1)).replace(microsecond=0).isoformat()
    made: dict[str, Series] = {}

    def create(n: int) -> None:
        user = f"pipe{n:05d}"
        token = issue_local_token(user)
        body = {"title": f"chore {n}", "due_at": due, "recurrence": {"rrule": "FREQ=DAILY"}}
        answer = requests.post(
            f"{base}/tasks", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        answer.raise_for_status()
        task = answer.json()
        made[task["series_id"]] = Series(user, token, open_task=task["id"])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    return made


def drive(
    base: str, series: dict[str, Series], watch: Watch, rate: int, seconds: float
) -> dict[str, object]:
    """Complete open occurrences at `rate` for `seconds`; wait for their next ones."""
    ready: deque[Series] = deque(s for s in series.values() if s.open_task)
    statuses: dict[int, int] = {}
    sent = skipped = 0
    lag: list[float] = []
    answered: list[float] = []  # from the moment a completion was due to be sent
    watch.latencies.clear()
    local = threading.local()
    lock = threading.Lock()

    def complete(one: Series, task_id: str, moment: float) -> None:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            answer = session.post(
                f"{base}/tasks/{task_id}/complete",
                headers={"Authorization": f"Bearer {one.token}"},
                timeout=30,
            )
            status = answer.status_code
        except requests.RequestException:
            status = 0
        if status == 200:
            one.pair(watch.latencies, answered=time.time())
        with lock:
            statuses[status] = statuses.get(status, 0) + 1
            answered.append(time.monotonic() - moment)

    total = int(rate * seconds)
    with ThreadPoolExecutor(CLIENT_THREADS) as pool:
        start = time.monotonic()
        for n in range(total):
            moment = start + n / rate
            _sleep_until(moment)
            lag.append(time.monotonic() - moment)
            one = _next_ready(ready, series)
            if one is None or one.open_task is None:
                skipped += 1  # no series has its next occurrence yet: the stack fell behind
                continue
            task_id, one.open_task = one.open_task, None
            pool.submit(complete, one, task_id, moment)
            sent += 1
    ok = statuses.get(200, 0)
    deadline = time.monotonic() + SETTLE_S
    while len(watch.latencies) < ok and time.monotonic() < deadline:
        time.sleep(0.1)
    refused = sent - ok
    return {
        "sent": sent,
        "refused": refused,
        "lost": ok - len(watch.latencies),
        **summary(list(watch.latencies)),
        "skipped (behind)": skipped,
        "statuses": {str(k): v for k, v in sorted(statuses.items()) if k != 200},
        "answer p99 ms": round(percentile(answered, 0.99) * 1000, 1) if answered else None,
        "client lag p99 ms": round(percentile(lag, 0.99) * 1000, 1) if lag else None,
    }


def _next_ready(ready: deque[Series], series: dict[str, Series]) -> Series | None:
    """Round robin over the series; a series whose next occurrence is not here yet waits."""
    for _ in range(len(ready)):
        one = ready.popleft()
        ready.append(one)
        if one.open_task is not None:
            return one
    return None


@dataclass
class Up:
    """`duetide up` running in its own process, as a user runs it."""

    port: int
    broker: str
    database_url: str
    home: Path


@contextmanager
def stack_on(database: str) -> Iterator[Up]:
    """`duetide up` on a fresh DUETIDE_HOME: its default SQLite, or a new PostgreSQL
    database. Its own process, so the load generator does not share the dispatchers'
    interpreter (and its GIL)."""
    home = Path(tempfile.mkdtemp(prefix="duetide-bench-pipeline-"))
    url = "" if database == "sqlite" else _fresh_postgres()
    env = dict(os.environ, DUETIDE_HOME=str(home), DATABASE_URL=url, KAFKA_BOOTSTRAP_SERVERS="")
    os.environ.update(DUETIDE_HOME=str(home))  # the tokens this process signs
    get_settings.cache_clear()
    port = free_loopback_port()
    command = [sys.executable, "-c", "from duetide_tools.cli import main; main()",
               "up", "--port", str(port), "--quiet"]  # fmt: skip
    up = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner: dict[str, str] = {}
        assert up.stdout is not None
        for line in up.stdout:
            words = line.split()
            if len(words) == 2 and words[0] == "broker":
                banner[words[0]] = words[1]
            if line.startswith("Ctrl-C"):
                break
        if "broker" not in banner:
            raise RuntimeError(f"duetide up did not start (exit code {up.poll()})")
        threading.Thread(target=up.stdout.read, daemon=True).start()  # keep the pipe drained
        # The banner names the database without its password (or SQLite's by its path).
        yield Up(port, banner["broker"], url or f"sqlite:///{home / 'duetide.db'}", home)
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=30)
        except subprocess.TimeoutExpired:
            up.kill()


def _fresh_postgres() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{PG_DATABASE}"')
    return PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + (
        f"/{PG_DATABASE}"
    )


COLUMNS = ["database", "rate /s", "path", "round", "sent", "refused", "lost", "p50 ms", "p99 ms",
           "max ms", "skipped (behind)", "statuses", "answer p99 ms",
           "client lag p99 ms"]  # fmt: skip


def _row(
    database: str, rate: int, path: str, got: dict[str, object], round_: int | None = None
) -> dict[str, object]:
    row = {"database": database, "rate /s": rate, "path": path, "round": round_ or "", **got}
    return {column: row.get(column, "") for column in COLUMNS}


def _sustained(got: dict[str, object]) -> bool:
    p99 = got["p99 ms"]
    return (
        not got["refused"] and not got["lost"] and not got["skipped (behind)"]
        and p99 is not None and float(p99) < SUSTAINED_P99_S * 1000  # type: ignore[arg-type]
    )  # fmt: skip


def measure(database: str, rates: list[int]) -> None:
    """The stack on `database`, each rate in turn with the raw round trip before it,
    until a rate is not sustained."""
    _progress(f"{database}: starting the stack")
    with stack_on(database) as up:
        base = f"http://127.0.0.1:{up.port}"
        engine = create_engine(up.database_url)
        _progress(f"{database}: creating {SERIES} series")
        series = create_series(base, SERIES)
        watch = Watch(engine, series, seen={s.open_task for s in series.values() if s.open_task})
        watcher = threading.Thread(target=watch.run, daemon=True)
        watcher.start()
        try:
            # A stack just started spends its first seconds opening database connections
            # and the producers, and importing what a first event needs; steady state is
            # what is measured (the cold start has its own benchmark).
            _progress(f"{database}: warming up, {WARM_UP_RATE}/s for {WARM_UP_S:.0f} s")
            drive(base, series, watch, WARM_UP_RATE, WARM_UP_S)
            for rate in rates:
                floor = kafka_round_trip(up.broker, rate, min(SECONDS, 10))
                _progress(f"{database} {rate}/s: raw Kafka p99 {floor['p99 ms']} ms")
                _rows.append(_row(database, rate, "raw Kafka round trip", floor))
                before, client = stack_cpu.snapshot(up.home), time.process_time()
                rounds = []
                for round_ in range(1, ROUNDS + 1):
                    rounds.append(drive(base, series, watch, rate, SECONDS))
                    _progress(f"{database} {rate}/s, round {round_}/{ROUNDS}: {rounds[-1]}")
                    _rows.append(_row(database, rate, "complete -> next occurrence",
                                      rounds[-1], round_))  # fmt: skip
                    if not _sustained(rounds[-1]):
                        break
                _cpu[database, rate] = stack_cpu.per_unit(
                    before, stack_cpu.snapshot(up.home),
                    ("load generator", time.process_time() - client),
                    sum(int(got["sent"]) for got in rounds),  # type: ignore[call-overload]
                )  # fmt: skip
                if not all(_sustained(got) for got in rounds):
                    break
        finally:
            watch.stop.set()
            watcher.join()
            engine.dispose()


def run() -> list[dict[str, object]]:
    _rows.clear()
    _cpu.clear()
    for database in DATABASES:
        measure(database, RATES)
    return list(_rows)


def details() -> dict[str, Any]:
    runs: dict[tuple[str, int], list[dict[str, object]]] = {}
    for row in _rows:
        if row["path"] != "raw Kafka round trip":
            runs.setdefault((str(row["database"]), int(row["rate /s"])), []).append(row)  # type: ignore[call-overload]
    sustained: dict[str, int | None] = {}
    for database in DATABASES:
        ok = [
            rate
            for (db, rate), rounds in runs.items()
            if db == database and len(rounds) == ROUNDS and all(map(_sustained, rounds))
        ]
        sustained[database] = max(ok) if ok else None
    p99s = {f"{db} {rate}/s": [r["p99 ms"] for r in rounds] for (db, rate), rounds in runs.items()}
    cpu = {f"{db} {rate}/s": per for (db, rate), per in _cpu.items()}
    return {"highest rate sustained (p99 < 250 ms, none refused or lost)": sustained,
            "seconds per round": SECONDS, "rounds per rate": ROUNDS, "series": SERIES,
            "p99 ms by round": p99s, "CPU ms per completion": cpu}  # fmt: skip


def describe() -> str:
    found = details()
    highest = found["highest rate sustained (p99 < 250 ms, none refused or lost)"]
    sustained = ", ".join(
        f"{database}: {f'{rate}/s' if rate else 'none'}" for database, rate in highest.items()
    )
    rounds = "; ".join(
        f"{run}: {', '.join(map(str, p99s))}" for run, p99s in found["p99 ms by round"].items()
    )
    return (__doc__ or "").split("\n\n", 1)[1].strip() + (
        f"\n\nHighest rate sustained for {SECONDS:.0f} s with p99 under 250 ms in each of"
        f" {ROUNDS} rounds: {sustained}"
        f"\n\np99 (ms) of each round: {rounds}"
        "\n\nWhere the CPU goes: milliseconds of CPU (user + system, /proc/<pid>/stat) each "
        "process of the stack spent per completion sent, over each rate's rounds; on this "
        "machine 2 cores give 2,000 ms a second, so `all` times the rate must stay below "
        "that (and PostgreSQL's figure counts every backend on the machine).\n\n"
        + stack_cpu.table(found["CPU ms per completion"])
    )
