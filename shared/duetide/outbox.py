"""Transactional outbox: events commit with the change they report, and are sent later.

`record` adds the event row inside the caller's transaction. Publishing happens
right after the commit (`publish_after_commit`, best effort and bounded in time)
and, for anything still unsent, on every sweep (`relay_pending`). A row is marked
sent only after the broker acknowledged it, so a broker outage delays events but
loses none; a crash between the ack and the mark re-sends with the same `ce_id`,
which consumers deduplicate.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Session, col, select, update

from duetide import db, events
from duetide.config import get_settings
from duetide.models import Outbox, utcnow

log = logging.getLogger("duetide.outbox")

# After a failed send the fast path stays off this long; the sweep still relays.
BREAKER_S = 10.0


def topic_for(event_type: str) -> str:
    settings = get_settings()
    if event_type.startswith("dev.duetide.reminder."):
        return settings.duetide_topic_reminders
    return settings.duetide_topic_task_events


def record(
    session: Session, *, type: str, key: str, data: dict[str, Any], source: str, subject: str = ""
) -> Outbox:
    """Add an event to the caller's transaction; `key` is the aggregate id (Kafka key)."""
    row = Outbox(
        topic=topic_for(type),
        key=key,
        type=type,
        source=source,
        subject=subject or key,
        data=data,
    )
    session.add(row)
    return row


def to_cloudevent(row: Outbox) -> Any:
    return events.build(
        event_id=row.id,
        type=row.type,
        source=row.source,
        subject=row.subject,
        data=row.data,
        time=row.created_at,
    )


class Publisher:
    """One idempotent producer per process (acks=all), created lazily, with a breaker."""

    def __init__(self, bootstrap_servers: str, timeout_s: float):
        self.bootstrap_servers = bootstrap_servers
        self.timeout_s = timeout_s
        self._producer: Any = None
        self._open_until = 0.0
        self._lock = threading.Lock()

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    def _connect(self) -> Any:
        from kafka import KafkaProducer  # imported on first publish: a cold start need not

        timeout_ms = int(self.timeout_s * 1000)
        return KafkaProducer(
            bootstrap_servers=self.bootstrap_servers.split(","),
            acks="all",
            enable_idempotence=True,
            linger_ms=0,
            max_block_ms=timeout_ms,
            bootstrap_timeout_ms=timeout_ms,
            request_timeout_ms=max(timeout_ms, 1000),
            delivery_timeout_ms=max(timeout_ms * 2, 5000),
        )

    def send(self, rows: Iterable[Outbox]) -> list[str]:
        """Send rows in order; return the ids the broker acknowledged."""
        rows = list(rows)
        if not rows:
            return []
        futures: list[tuple[str, Any]] = []
        with self._lock:
            try:
                if self._producer is None:
                    self._producer = self._connect()
                for row in rows:
                    message = events.to_kafka(to_cloudevent(row), row.key)
                    future = self._producer.send(
                        row.topic, message.value, message.key, list(message.headers.items())
                    )
                    futures.append((row.id, future))
                self._producer.flush(timeout=self.timeout_s)
                for _, future in futures:
                    future.get(timeout=self.timeout_s)
            except Exception as exc:  # any broker trouble: unacked rows stay for the relay
                self._open_until = time.monotonic() + BREAKER_S
                log.warning("publish failed, events stay pending: %s", type(exc).__name__)
            return [row_id for row_id, future in futures if future.is_done and future.succeeded()]

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.close(timeout=self.timeout_s)
                self._producer = None


_publisher: tuple[int, Publisher | None] | None = None


def get_publisher() -> Publisher | None:
    """The process's publisher; None when KAFKA_BOOTSTRAP_SERVERS is unset (rows wait)."""
    global _publisher
    if _publisher is None or _publisher[0] != os.getpid():  # a producer must not cross a fork
        settings = get_settings()
        servers = settings.kafka_bootstrap_servers
        _publisher = (
            os.getpid(),
            Publisher(servers, settings.duetide_publish_timeout_s) if servers else None,
        )
    return _publisher[1]


def mark_sent(session: Session, ids: list[str]) -> None:
    if ids:
        session.exec(
            update(Outbox)
            .where(col(Outbox.id).in_(ids), col(Outbox.sent_at).is_(None))
            .values(sent_at=utcnow())
        )


def publish_after_commit(ids: list[str]) -> int:
    """The fast path: send just-committed rows now, unless the broker is known down.

    Best effort: the change is committed and its answer must say so, so database
    trouble here (reading the rows, marking them sent) is logged and left to the relay,
    which re-sends any row not marked, with the same `ce_id`.
    """
    publisher = get_publisher()
    if publisher is None or not publisher.available or not ids:
        return 0
    try:
        with db.session_scope() as session:
            rows = session.exec(
                select(Outbox)
                .where(col(Outbox.id).in_(ids), col(Outbox.sent_at).is_(None))
                .order_by(col(Outbox.created_at))
            ).all()
            acked = publisher.send(rows)
            mark_sent(session, acked)
    except SQLAlchemyError as exc:
        log.warning("fast-path publish left events for the relay: %s", type(exc).__name__)
        return 0
    return len(acked)


def relay_pending(limit: int = 500) -> int:
    """The catch-up path (each sweep): send unsent rows, oldest first, once per relay.

    On PostgreSQL rows are locked with SKIP LOCKED, so concurrent relays share the
    work instead of sending the same rows twice; SQLite takes its write lock at BEGIN
    (a read that later writes would fail once another writer committed in between).
    """
    publisher = get_publisher()
    if publisher is None:
        return 0
    with db.session_scope() as session:
        rows = session.exec(
            select(Outbox)
            .where(col(Outbox.sent_at).is_(None))
            .order_by(col(Outbox.created_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        acked = publisher.send(rows)
        if len(acked) < len(rows):
            session.exec(
                update(Outbox)
                .where(col(Outbox.id).in_([r.id for r in rows if r.id not in set(acked)]))
                .values(attempts=Outbox.attempts + 1)
            )
        mark_sent(session, acked)
    return len(acked)
