"""A per-user limit on writes: a fixed one-minute window counted in the database, so
every replica of the tasks function shares it (an in-memory bucket would multiply the
limit by the number of replicas Knative runs)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, col, delete

from duetide.config import get_settings
from duetide.errors import RateLimited
from duetide.storage import db
from duetide.storage.models import RateWindow, utcnow


def charge(session: Session, owner: str, now: datetime, per_minute: int) -> None:
    """Count one write for `owner`; 429 with Retry-After once the minute's budget is spent."""
    if per_minute <= 0:
        return
    window = int(now.timestamp() // 60)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    statement = (
        insert(RateWindow)
        .values(owner=owner, window=window, count=1)
        .on_conflict_do_update(
            index_elements=["owner", "window"], set_={"count": col(RateWindow.count) + 1}
        )
        .returning(col(RateWindow.count))
    )
    used = session.execute(statement).scalar_one()
    if used > per_minute:
        retry_after = 60 - int(now.timestamp()) % 60
        raise RateLimited(
            f"more than {per_minute} writes in a minute; retry later",
            headers={"Retry-After": str(retry_after)},
        )


def charge_write(owner: str) -> None:
    """Charge one write in its own transaction, with the configured budget."""
    with db.session_scope() as session:
        charge(session, owner, utcnow(), get_settings().duetide_write_rate_per_minute)


def purge(session: Session, now: datetime) -> None:
    """Drop windows older than the current minute."""
    session.exec(delete(RateWindow).where(col(RateWindow.window) < int(now.timestamp() // 60)))
