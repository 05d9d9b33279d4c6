"""Which events a consumer has already handled: the record that makes an effect happen once.

Every consumer (the sinks, `/commands`, notify's per-channel deliveries) records the
event's key in the same transaction as its effect, so a redelivery finds it and changes
nothing, and a concurrent duplicate loses on the key's uniqueness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from duetide.errors import Unavailable
from duetide.storage import db, outbox
from duetide.storage.models import ProcessedEvent, utcnow


@dataclass(frozen=True)
class EventKey:
    """What makes two deliveries the same event for one consumer.

    `scope` is the user a command acts for ("" between the functions): the same
    (source, id) from two users is two commands. Each part is its own column, so no
    choice of values can make one key read as another.
    """

    consumer: str
    source: str
    event_id: str
    scope: str = ""

    def values(self, processed_at: datetime) -> dict[str, Any]:
        """The key's `processed_event` row, as a statement's parameters."""
        return {
            "consumer": self.consumer,
            "scope": self.scope,
            "source": self.source,
            "event_id": self.event_id,
            "processed_at": processed_at,
        }


def seen(key: EventKey) -> ProcessedEvent | None:
    """The record of `key`, if it was recorded already: a read of its primary key,
    outside any write, for a caller that must not charge a redelivery as new work (the
    command rate limit). A delivery racing this one is still caught by `run_once`."""
    with db.session_scope(read_only=True) as session:
        row = session.get(ProcessedEvent, (key.consumer, key.scope, key.source, key.event_id))
        if row is not None:
            session.expunge(row)
        return row


def note_result(session: Session, key: EventKey, result: str) -> None:
    """Keep what the event made with its record, in the transaction that claimed it."""
    session.connection().execute(
        update(ProcessedEvent)
        .where(
            col(ProcessedEvent.consumer) == key.consumer,
            col(ProcessedEvent.scope) == key.scope,
            col(ProcessedEvent.source) == key.source,
            col(ProcessedEvent.event_id) == key.event_id,
        )
        .values(result=result)
    )


def claim(session: Session, key: EventKey) -> bool:
    """Record `key` in the caller's transaction; False if it was recorded already."""
    connection = session.connection()
    parameters = key.values(utcnow())
    return connection.execute(_CLAIM[connection.dialect.name], parameters).first() is not None


def _claim_statement(insert: Any) -> Any:
    """INSERT ... ON CONFLICT DO NOTHING RETURNING, built once per dialect: building it per
    event was a fifth of an event's CPU. RETURNING says whether the row went in; the
    rowcount did not (0 for an inserted row on PostgreSQL through SQLAlchemy and
    psycopg, in the tests)."""
    table = ProcessedEvent.metadata.tables["processed_event"]
    return insert(table).on_conflict_do_nothing().returning(table.c.consumer)


_CLAIM = {"postgresql": _claim_statement(pg_insert), "sqlite": _claim_statement(sqlite_insert)}


T = TypeVar("T")


def run_once(key: EventKey, work: Callable[[Session], tuple[T, list[str]]]) -> T | None:
    """Run `work` in one transaction with the record of `key`; None if it ran before.

    The record is written first (`claim`): a redelivered event finds it there and
    changes nothing, and a concurrent delivery of the same event waits on the key's
    unique index until the first commits (then finds it) or rolls back (then runs).
    One statement where a read before and an ORM insert after were two, on the path of
    every event each function takes. `work` returns its answer and the ids of outbox
    rows to publish right after the commit.
    """
    try:
        with db.session_scope() as session:
            if not claim(session, key):
                return None
            answer, published = work(session)
    except IntegrityError as error:
        if db.is_unique_violation(error):
            return None  # the work lost a race on a unique key of its own: done by another
        # A row it refers to went away meanwhile (the owner deleted a subscription the
        # event was being fanned out to): "duplicate" would drop the event for good.
        raise Unavailable("a row this event refers to changed while it was applied") from None
    if published:
        outbox.publish_after_commit(published)
    return answer
