"""Transactional outbox: events commit with the change they report, and are sent later.

`record` adds the event row inside the caller's transaction. Publishing happens
right after the commit (`publish_after_commit`, best effort and bounded in time)
and, for anything still unsent, on every sweep (`relay_pending`). A row is marked
sent only after the broker acknowledged it, so a broker outage delays events but
loses none; a crash between the ack and the mark re-sends with the same `ce_id`,
which consumers deduplicate.

The publisher recovers from broker loss (a broker restarted or replaced at the same
address, a producer id it does not know, stale connections or metadata) without a
process restart:

- The producer is not idempotent. kafka-python's idempotent producer keeps a producer
  id, an epoch and sequence numbers per partition. A broker that lost its state (the
  embedded Tansu keeps everything in memory, so a restart is an empty broker) answers
  the next produce with UnknownProducerId; kafka-python 3.0 then bumps the epoch
  (KIP-360: InitProducerId carrying the old id), which that broker refuses (Tansu:
  UnknownError), and the producer turns fatal: every later send fails at once with
  KafkaError until the process restarts. What idempotence adds, no duplicate from a
  retry inside the producer, the consumers already give: they deduplicate by `ce_id`,
  as they must anyway for the re-send after a crash between ack and mark. Order per key
  holds without it: acks=all and one request in flight per connection (kafka-python then
  mutes a partition while its batch is out and puts a retried batch back at the head).
  Across a failure a re-sent row can land after a later one of the same key; consumers
  are order-tolerant by design (RELIABILITY.md, scenarios 4 and 5).
- A send that fails in any way discards its producer, so the next one starts fresh
  (connections, metadata, no state from the lost broker). The discarded one is closed on
  a daemon thread: `close(timeout)` flushes first, and a flush that times out raises and
  leaves the producer's I/O thread running; given the delivery timeout, every pending
  record has completed (acked or expired) and the close finishes.
- Sends share the process's one producer and run side by side, each on a short-lived
  worker thread (kafka-python's producer is thread-safe): with `linger_ms=0` and one
  request in flight per connection, what requests send while a produce request is out
  goes in the next one, so concurrent requests batch themselves instead of waiting in
  line. (One send at a time made every request that found a send under way leave its
  events to the next sweep, a minute later on the default schedule: at 50 completions/s
  that was most of them, `scripts/bench pipeline`.) The fast path waits for its own
  send at most `duetide_publish_timeout_s` and holds no database connection meanwhile;
  it never waits behind a producer being built (a broker that does not answer its
  bootstrap) nor while the breaker is open: it returns at once and leaves its rows to
  the relay. Rows skipped while a producer was being built (the concurrent first
  requests of a process started from zero) are sent by the next fast path that
  succeeds, not left for the next sweep. The relay waits for a producer being built
  and ignores the breaker: it is the probe that finds the broker back, and a send that
  succeeds closes the breaker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import JSON, Insert, bindparam, column, func, insert, literal, null
from sqlalchemy import select as select_columns
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select, update
from sqlmodel.sql.expression import SelectOfScalar

from duetide import events, tracecontext
from duetide.config import get_settings, publish_send_bound_s
from duetide.logs import log_event
from duetide.storage import db
from duetide.storage.models import Outbox, new_id, utcnow

log = logging.getLogger("duetide.storage.outbox")

# After a failed send the fast path stays off this long (or until a relay succeeds);
# the sweep relays regardless.
BREAKER_S = 10.0
# Row ids kept for the next fast path while a producer is being built; more wait for
# the relay.
MAX_DEFERRED = 1000


def topic_for(event_type: str) -> str:
    settings = get_settings()
    if event_type.startswith("dev.duetide.reminder."):
        return settings.duetide_topic_reminders
    if event_type.startswith("dev.duetide.webhook."):
        return settings.duetide_topic_webhooks
    return settings.duetide_topic_task_events


def record(
    session: Session, *, type: str, key: str, data: dict[str, Any], source: str, subject: str = ""
) -> Pending:
    """Add an event to the caller's transaction; `key` is the aggregate id (Kafka key).

    One Core INSERT on the session's connection, at once: an ORM object would be
    validated by SQLModel and written by the unit of work at the flush, which cost more
    than the statement (`scripts/bench api_mix`). The row has no foreign key, so it need
    not wait for the flush of the change it reports."""
    (row,) = pending_rows([Event(type, key, data, subject)], source=source)
    session.connection().execute(_INSERT_ONE, row._asdict())
    _remember(row)
    return row


_recorded = threading.local()
MAX_REMEMBERED = 1000


def _remember(row: Pending) -> None:
    """Keep the row for this thread's fast path after the commit, which then need not
    read back what it has just written (a query and a round trip per publish). Rows of
    a transaction that rolled back are never asked for and go with the next publish."""
    rows: dict[str, Pending] | None = getattr(_recorded, "rows", None)
    if rows is None or len(rows) >= MAX_REMEMBERED:
        rows = _recorded.rows = {}
    rows[row.id] = row


def _recall(ids: list[str]) -> tuple[list[Pending], list[str]]:
    """The rows this thread recorded among `ids`, and the ids it did not; forgets all."""
    rows: dict[str, Pending] = getattr(_recorded, "rows", None) or {}
    _recorded.rows = {}
    found = sorted((rows[i] for i in ids if i in rows), key=lambda row: row.created_at)
    return found, [i for i in ids if i not in rows]


class Event(NamedTuple):
    """One event to record: its type, aggregate id (Kafka key), payload, and subject
    (empty: the key)."""

    type: str
    key: str
    data: dict[str, Any]
    subject: str = ""


class Pending(NamedTuple):
    """An outbox row as `record` and `record_many` write it, kept by the writer to send
    after its commit without reading it back (`publish_after_commit`, `publish_claimed`)."""

    id: str
    topic: str
    key: str
    type: str
    source: str
    subject: str
    data: dict[str, Any]
    created_at: datetime
    traceparent: str | None


def record_many(session: Session, items: Iterable[Event], *, source: str) -> int:
    """Add events to the caller's transaction in one statement, no ORM objects.

    For the sweep, which writes hundreds per batch: the rows are those `record` would
    add (subject = key, an id and `created_at` each, the current span's `traceparent`, in
    the order given), written on the caller's connection, so they commit with the change
    they report. `pending_rows` and `insert_pending` are its two halves, for a caller
    that sends the rows itself after the commit.
    """
    return insert_pending(session, pending_rows(items, source=source))


def pending_rows(items: Iterable[Event], *, source: str) -> list[Pending]:
    """The rows `record_many` would write for `items` (new ids, now, the current span)."""
    traceparent = tracecontext.current_traceparent()
    return [
        Pending(
            new_id(),
            topic_for(event.type),
            event.key,
            event.type,
            source,
            event.subject or event.key,
            event.data,
            utcnow(),
            traceparent,
        )
        for event in items
    ]


def insert_pending(session: Session, pending: list[Pending]) -> int:
    """Write `pending` in the caller's transaction, one statement.

    PostgreSQL gets the rows as one JSON document (`_INSERT_JSON`): an executemany is an
    INSERT per row, and multi-row VALUES or one array per column cost more to encode in
    the driver than the insert itself. The document is encoded by the JSON column type's
    serializer, and PostgreSQL's `json` keeps a nested value's text as given, so `data`
    is stored as the same text as `record` stores. SQLite's executemany runs in its C
    module and needs nothing else.
    """
    if not pending:
        return 0
    rows = [row._asdict() for row in pending]
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        for row in rows:  # as text in the document, read back as timestamptz
            row["created_at"] = row["created_at"].isoformat()
        connection.execute(_INSERT_JSON, {"rows": rows})
    else:
        connection.execute(_INSERT_ONE, rows)
    return len(rows)


_INSERT_ONE = insert(Outbox).values(sent_at=None, attempts=0)


def _insert_json() -> Insert:
    """INSERT INTO outbox (...) SELECT ... FROM json_to_recordset(:rows) AS r(id varchar, ...)."""
    table = Outbox.metadata.tables["outbox"]
    names = ["id", "topic", "key", "type", "source", "subject", "data", "created_at", "traceparent"]
    given = (
        func.json_to_recordset(bindparam("rows", type_=JSON()))
        .table_valued(*(column(name, table.c[name].type) for name in names))
        .render_derived(with_types=True)
    )
    return insert(table).from_select(
        [*names, "sent_at", "attempts"],
        select_columns(*(given.c[name] for name in names), null(), literal(0)),
    )


_INSERT_JSON = _insert_json()


def to_cloudevent(row: Outbox | Pending) -> Any:
    return events.build(
        event_id=row.id,
        type=row.type,
        source=row.source,
        subject=row.subject,
        data=row.data,
        time=row.created_at,
        traceparent=row.traceparent,
    )


class _Record(NamedTuple):
    """One row as a Kafka record, built on the caller's thread (ORM rows stay there)."""

    row_id: str
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


def _records(rows: Iterable[Outbox | Pending]) -> list[_Record]:
    """The rows as records; a row that cannot be encoded is logged and stays pending."""
    records: list[_Record] = []
    for row in rows:
        try:
            message = events.to_kafka(to_cloudevent(row), row.key)
        except Exception as exc:  # the relay retries it; it must not take the batch down
            log_event(
                log,
                "outbox.unencodable",
                level=logging.ERROR,
                event_id=row.id,
                type=row.type,
                error=type(exc).__name__,
            )
            continue
        headers = list(message.headers.items())
        records.append(_Record(row.id, row.topic, message.key, message.value, headers))
    return records


def _close_quietly(producer: Any, timeout_s: float) -> None:
    try:
        producer.close(timeout=timeout_s)
    except Exception as exc:  # nothing left to save: its rows are pending for the relay
        log_event(log, "outbox.producer_close_failed", error=type(exc).__name__)


class Publisher:
    """One producer per process (acks=all, not idempotent), created lazily, with a breaker.

    `_connecting` is held while the producer is built; request threads only ever try it
    without waiting. `_active` counts the sends under way (their worker threads).
    """

    def __init__(self, bootstrap_servers: str, timeout_s: float):
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        timeout_ms = int(timeout_s * 1000)
        self._request_timeout_ms = max(timeout_ms, 1000)
        self._delivery_timeout_ms = max(timeout_ms * 2, 5000)
        self.send_bound_s = publish_send_bound_s(timeout_s)
        self._close_grace_s = (self._delivery_timeout_ms + self._request_timeout_ms) / 1000
        self._producer: Any = None
        self._open_until = 0.0
        self._connecting = threading.Lock()
        self._active = 0
        self._idle = threading.Condition()
        self._deferred: list[str] = []  # guarded by _idle's lock

    @property
    def available(self) -> bool:
        """False while the breaker is open (after a failed send)."""
        return time.monotonic() >= self._open_until

    @property
    def busy(self) -> bool:
        """A send is under way (its worker may be waiting for the broker)."""
        with self._idle:
            return self._active > 0

    def try_send(self, rows: Iterable[Outbox | Pending]) -> list[str]:
        """The fast path: send now unless the breaker is open or a producer is being
        built; wait <= timeout_s. Returns the ids the broker acknowledged in time; the
        others wait for the relay."""
        records = _records(rows)
        if not records or not self.available:
            return []
        if self._producer is None and self._connecting.locked():
            self._defer([record.row_id for record in records])
            return []
        return self._start(records, wait_s=self.timeout_s, wait_for_connect=False)

    def _defer(self, ids: list[str]) -> None:
        """Keep ids skipped while a producer is being built, for the next send (bounded)."""
        with self._idle:
            self._deferred.extend(ids[: max(0, MAX_DEFERRED - len(self._deferred))])

    def take_deferred(self) -> list[str]:
        """The ids `try_send` skipped while a producer was being built (and forgets them)."""
        with self._idle:
            ids, self._deferred = self._deferred, []
        return ids

    def send(self, rows: Iterable[Outbox | Pending]) -> list[str]:
        """The relay path: send even if the breaker is open, waiting for a producer
        being built."""
        records = _records(rows)
        if not records:
            return []
        return self._start(records, wait_s=self.send_bound_s, wait_for_connect=True)

    def close(self) -> None:
        """Close the producer (tests, shutdown) once the sends under way are over (bounded)."""
        with self._idle:
            self._idle.wait_for(lambda: self._active == 0, timeout=self.send_bound_s)
        producer, self._producer = self._producer, None
        if producer is not None:
            _close_quietly(producer, self._close_grace_s)

    def _start(self, records: list[_Record], wait_s: float, wait_for_connect: bool) -> list[str]:
        """Send on a worker thread; the caller waits at most `wait_s` for its acks."""
        done: Future[list[str]] = Future()
        worker = threading.Thread(
            target=self._work,
            args=(records, done, wait_for_connect),
            name="duetide-publish",
            daemon=True,
        )
        with self._idle:
            self._active += 1
        try:
            worker.start()
        except RuntimeError:  # no thread to be had: the rows wait for the relay
            self._ended()
            log_event(log, "outbox.publish_skipped", level=logging.WARNING, events=len(records))
            return []
        try:
            return done.result(timeout=wait_s)
        except FutureTimeout:  # its late acks are lost: the relay re-sends, same ce_id
            log_event(
                log,
                "outbox.publish_slow",
                level=logging.WARNING,
                events=len(records),
                wait_s=wait_s,
            )
            return []

    def _ended(self) -> None:
        with self._idle:
            self._active -= 1
            self._idle.notify_all()

    def _work(
        self, records: list[_Record], done: Future[list[str]], wait_for_connect: bool
    ) -> None:
        try:
            acked = self._deliver(records, wait_for_connect)
        finally:
            self._ended()
        done.set_result(acked)

    def _producer_for_send(self, wait_for_connect: bool) -> Any:
        """The standing producer, built first if there is none (None: another thread is
        building it and this send does not wait)."""
        producer = self._producer
        if producer is not None:
            return producer
        if not self._connecting.acquire(timeout=self.send_bound_s if wait_for_connect else 0):
            return None
        try:
            if self._producer is None:
                self._producer = self._connect()
            return self._producer
        finally:
            self._connecting.release()

    def _deliver(self, records: list[_Record], wait_for_connect: bool) -> list[str]:
        """Send and wait for this send's acks; any failure discards the producer."""
        futures: list[tuple[str, Any]] = []
        failure: BaseException | None = None
        producer: Any = None
        try:
            producer = self._producer_for_send(wait_for_connect)
            if producer is None:  # another send is building it: the next one takes these
                self._defer([record.row_id for record in records])
                return []
            for record in records:
                future = producer.send(record.topic, record.value, record.key, record.headers)
                futures.append((record.row_id, future))
            deadline = time.monotonic() + self.timeout_s
            for _, future in futures:
                future.get(timeout=max(0.0, deadline - time.monotonic()))
        except Exception as exc:  # any broker trouble: unacked rows stay for the relay
            failure = exc
        acked = [row_id for row_id, future in futures if future.succeeded()]
        if failure is None:
            with self._connecting:
                if producer is self._producer:  # a late success of a dropped one proves nothing
                    self._open_until = 0.0
        else:
            self._discard(producer, failure, len(records) - len(acked))
        return acked

    def _discard(self, producer: Any, failure: BaseException, unacked: int) -> None:
        """Open the breaker and drop the producer; the next send builds a fresh one.

        Sends that shared it fail too and come here with the same producer: only the
        first closes it, and a failure of a producer already replaced leaves the breaker
        to the current one. `producer` None: building it failed."""
        log_event(
            log,
            "outbox.publish_failed",
            level=logging.WARNING,
            events=unacked,
            error=type(failure).__name__,
        )
        with self._connecting:
            if producer is not None and producer is not self._producer:
                return
            self._open_until = time.monotonic() + BREAKER_S
            self._producer = None
        if producer is not None:
            with contextlib.suppress(RuntimeError):  # no thread to be had: it is dropped
                threading.Thread(
                    target=_close_quietly,
                    args=(producer, self._close_grace_s),
                    name="duetide-publish-close",
                    daemon=True,
                ).start()

    def _connect(self) -> Any:
        from kafka import KafkaProducer  # imported on first publish: a cold start need not

        timeout_ms = int(self.timeout_s * 1000)
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            acks="all",
            enable_idempotence=False,  # see the module docstring
            max_in_flight_requests_per_connection=1,  # order per partition without it
            linger_ms=0,
            max_block_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=self._request_timeout_ms,
            delivery_timeout_ms=self._delivery_timeout_ms,
            # kafka-python's own sensors, updated on every send and read by no one
            # (duetide's telemetry counts what it needs).
            metrics_enabled=False,
        )


_publisher: tuple[int, Publisher | None] | None = None
_making_publisher = threading.Lock()


def get_publisher() -> Publisher | None:
    """The process's publisher; None when KAFKA_BOOTSTRAP_SERVERS is unset (rows wait).

    Made under a lock: threads that each made one would each start a producer, its
    connections and its sender thread, and keep them."""
    global _publisher
    made = _publisher
    if made is None or made[0] != os.getpid():  # a producer must not cross a fork
        with _making_publisher:
            made = _publisher
            if made is None or made[0] != os.getpid():
                settings = get_settings()
                servers = settings.kafka_bootstrap_servers
                publisher = (
                    Publisher(servers, settings.duetide_publish_timeout_s) if servers else None
                )
                _publisher = made = (os.getpid(), publisher)
    return made[1]


_MARK_UNSENT = (
    update(Outbox).where(col(Outbox.sent_at).is_(None)).values(sent_at=bindparam("sent_at"))
)
_MARK_ONE = _MARK_UNSENT.where(col(Outbox.id) == bindparam("row_id"))


def mark_sent(target: Session | Connection, ids: list[str]) -> None:
    """Mark rows sent: in the relay's session, or on a connection of its own.

    One row, the fast path's usual case, by a statement built once whose text never
    changes: an `IN` list is rendered on every call, which cost 0.8-0.95 ms of CPU a
    mark against 0.36-0.42 (PostgreSQL, 2026-12-03)."""
    if not ids:
        return
    if len(ids) == 1:
        statement, parameters = _MARK_ONE, {"row_id": ids[0], "sent_at": utcnow()}
    else:
        statement, parameters = _MARK_UNSENT.where(col(Outbox.id).in_(ids)), {"sent_at": utcnow()}
    if isinstance(target, Session):
        target.exec(statement, params=parameters)
    else:
        target.execute(statement, parameters)


def requeue_sent_since(since: datetime, engine: Engine | None = None) -> int:
    """Mark rows sent at or after `since` unsent again, so the relay sends them once more.

    For a broker that lost acknowledged records: an embedded broker restarted empty, or a
    cluster after an unclean leader election. Consumers see those events a second time
    with the same `ce_id` and drop them as duplicates, so erring early is harmless.
    Rows older than the sweep's purge (`sweep.SENT_OUTBOX_TTL`) are gone and cannot come back.
    """
    with db.session_scope(engine) as session:
        result = session.exec(
            update(Outbox).where(col(Outbox.sent_at) >= since).values(sent_at=None, attempts=0)
        )
        return int(result.rowcount or 0)


def publish_after_commit(ids: list[str]) -> int:
    """The fast path: send just-committed rows now, unless the breaker is open or the
    producer is being built by another request (`Publisher.try_send`).

    Best effort: the change is committed and its answer must say so, so database
    trouble here (reading the rows, marking them sent) is logged and left to the relay,
    which re-sends any row not marked, with the same `ce_id`. The broker is waited for
    at most `duetide_publish_timeout_s`, with no database connection held meanwhile.
    A send that succeeds also starts, in the background, the send of the rows skipped
    while the producer was being built.
    """
    recorded, others = _recall(ids)
    publisher = get_publisher()
    if publisher is None or not ids or not publisher.available:
        return 0
    sent = _publish(publisher, others, recorded)
    deferred = publisher.take_deferred() if sent else []
    if deferred:  # not on this request's time: it waits for its own send only
        with contextlib.suppress(RuntimeError):  # no thread: the relay sends them
            threading.Thread(
                target=_publish,
                args=(publisher, deferred),
                name="duetide-publish-deferred",
                daemon=True,
            ).start()
    return sent


def _publish(
    publisher: Publisher, ids: list[str], recorded: Iterable[Outbox | Pending] = ()
) -> int:
    """Send `recorded` rows and the unsent rows of `ids` (read first); mark what was acked.
    Each database step is cut after FAST_PATH_HOLD_S: the relay does what this leaves."""
    try:
        with db.hold_limit(FAST_PATH_HOLD_S):
            return _publish_rows(publisher, ids, list(recorded))
    except SQLAlchemyError as exc:
        log_event(log, "outbox.fast_path_failed", level=logging.WARNING, error=type(exc).__name__)
        return 0


FAST_PATH_HOLD_S = 2.0
"""How long the fast path's read and mark may hold a connection (`db.hold_limit`)."""


def _publish_rows(publisher: Publisher, ids: list[str], rows: list[Outbox | Pending]) -> int:
    if ids:
        with db.session_scope(read_only=True) as session:
            rows += session.exec(
                select(Outbox)
                .where(col(Outbox.id).in_(ids), col(Outbox.sent_at).is_(None))
                .order_by(col(Outbox.created_at))
            ).all()
    acked = publisher.try_send(rows)
    if acked:
        with db.autocommit() as connection:  # one statement: one round trip
            mark_sent(connection, acked)
    return len(acked)


def publish_claimed(rows: list[Pending]) -> int:
    """The sweep's path: send rows it has just committed, in one produce call, and mark
    what the broker acknowledged sent in one statement.

    The relay's send (waits for a producer being built, ignores the breaker) without the
    relay's read: the sweep holds the rows it wrote. kafka-python gathers the records of
    one call into a produce request per partition leader, so a claimed batch of 500
    reminders is a request or two, not 500. A row the broker did not acknowledge stays
    pending for the relay (same `ce_id`); database trouble marking them is logged and
    re-sends them with the next relay, which consumers deduplicate.
    """
    publisher = get_publisher()
    if publisher is None or not rows:
        return 0
    acked = publisher.send(rows)
    if not acked:
        return 0
    try:
        with db.autocommit() as connection:  # one statement: one round trip
            mark_sent(connection, acked)
    except SQLAlchemyError as exc:
        log_event(log, "outbox.mark_failed", level=logging.WARNING, error=type(exc).__name__)
        return 0
    return len(acked)


RELAY_BUDGET_S = 20.0
"""How long one relay goes on sending full batches: a backlog (the broker was away
through a burst) drains within a few pings instead of one batch per ping, and a ping's
work still ends well inside the sweep's minute."""


def relay_pending(limit: int = 500, budget_s: float = RELAY_BUDGET_S) -> int:
    """The catch-up path (each sweep): send unsent rows, oldest first, batch after batch
    while each batch is full and wholly acknowledged, for at most `budget_s`."""
    deadline = time.monotonic() + budget_s
    total = 0
    while True:
        read, acked = _relay_batch(limit)
        total += acked
        if read < limit or acked < read or time.monotonic() >= deadline:
            return total


def _relay_batch(limit: int) -> tuple[int, int]:
    """One batch: (rows read, rows acknowledged and marked sent).

    On PostgreSQL rows are locked with SKIP LOCKED through the send, so concurrent
    relays share the work instead of sending the same rows twice, and nothing else
    waits but a writer of those rows. SQLite's one lock is the whole database's: held
    through the send, every writer of every function waited for the broker (up to
    `send_bound_s` a ping while it was away), so there the rows are read, sent, and then
    marked in a short write of its own; a row another sender sent meanwhile goes twice,
    which the consumers' `ce_id` deduplication absorbs.
    """
    publisher = get_publisher()
    if publisher is None:
        return 0, 0
    pending = unsent(limit)
    if db.get_engine().dialect.name == "sqlite":
        with db.session_scope(read_only=True) as session:
            rows = session.exec(pending).all()
        acked = publisher.send(rows)
        with db.session_scope() as session:
            _note_relayed(session, rows, acked)
        return len(rows), len(acked)
    with db.session_scope() as session:
        rows = session.exec(pending.with_for_update(skip_locked=True)).all()
        acked = publisher.send(rows)
        _note_relayed(session, rows, acked)
    return len(rows), len(acked)


def unsent(limit: int) -> SelectOfScalar[Outbox]:
    """The oldest `limit` unsent rows, which `ix_outbox_unsent` holds in this order."""
    oldest = select(Outbox).where(col(Outbox.sent_at).is_(None)).order_by(col(Outbox.created_at))
    return oldest.limit(limit)


def _note_relayed(session: Session, rows: Sequence[Outbox], acked: list[str]) -> None:
    """Mark what the broker acknowledged sent; count a try on the rest."""
    if len(acked) < len(rows):
        acked_ids = set(acked)
        session.exec(
            update(Outbox)
            .where(col(Outbox.id).in_([r.id for r in rows if r.id not in acked_ids]))
            .values(attempts=Outbox.attempts + 1)
        )
    mark_sent(session, acked)


def backlog(now: datetime) -> tuple[int, float]:
    """How many rows wait to be sent, and the age in seconds of the oldest (for the
    `duetide.outbox.*` gauges; the pending index answers it)."""
    with db.session_scope(read_only=True) as session:
        count, oldest = session.exec(
            select(func.count(), func.min(Outbox.created_at)).where(col(Outbox.sent_at).is_(None))
        ).one()
    return int(count), 0.0 if oldest is None else max((now - oldest).total_seconds(), 0.0)
