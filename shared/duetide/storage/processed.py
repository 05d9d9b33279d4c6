"""Which events a consumer has already handled: the record that makes an effect happen once.

Every consumer (the sinks, `/commands`, notify's per-channel deliveries) records the
event's key in the same transaction as its effect, so a redelivery finds it and changes
nothing, and a concurrent duplicate loses on the key's uniqueness.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from duetide.storage import db, outbox
from duetide.storage.models import ProcessedEvent


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

    def row(self) -> ProcessedEvent:
        return ProcessedEvent(
            consumer=self.consumer, scope=self.scope, source=self.source, event_id=self.event_id
        )


def already_processed(session: Session, key: EventKey) -> bool:
    found = session.get(ProcessedEvent, (key.consumer, key.scope, key.source, key.event_id))
    return found is not None


def mark_processed(session: Session, key: EventKey) -> None:
    """Record `key` in the caller's transaction (a no-op if it is there already)."""
    session.merge(key.row())


T = TypeVar("T")


def run_once(key: EventKey, work: Callable[[Session], tuple[T, list[str]]]) -> T | None:
    """Run `work` in one transaction with the record of `key`; None if it ran before.

    A redelivered event finds its key and changes nothing; a concurrent delivery of
    the same event loses on the key's uniqueness. `work` returns its answer and the ids
    of outbox rows to publish right after the commit.
    """
    try:
        with db.session_scope() as session:
            if already_processed(session, key):
                return None
            answer, published = work(session)
            session.add(key.row())
    except IntegrityError:
        return None  # a concurrent delivery of the same event committed first
    if published:
        outbox.publish_after_commit(published)
    return answer
