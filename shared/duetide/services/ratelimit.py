"""A per-user limit on writes: a fixed one-minute window counted in the database, so
every replica of the tasks function shares it (an in-memory bucket would multiply the
limit by the number of replicas Knative runs).

The charge commits on its own, whatever becomes of the write it pays for: a write that
fails (a wrong confirmation code, a conflict) still counts, so the budget bounds
guessing too. It is one autocommit statement on PostgreSQL, one round trip, holding the
counter's row lock only while it runs (on SQLite a write unit of its own: `db.autocommit`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from duetide.config import get_settings
from duetide.errors import RateLimited
from duetide.storage import db
from duetide.storage.models import RateWindow, utcnow


def charge(connection: Connection, owner: str, now: datetime) -> int:
    """Count one write for `owner` in the current minute; the count so far."""
    window = int(now.timestamp() // 60)
    statement = _CHARGE[connection.dialect.name]
    return int(connection.execute(statement, {"owner": owner, "window": window}).scalar_one())


def _charge_statement(insert: Any) -> Any:
    """The upsert of a window's count, built once per dialect (every write runs it)."""
    return (
        insert(RateWindow)
        .values(owner=bindparam("owner"), window=bindparam("window"), count=1)
        .on_conflict_do_update(
            index_elements=["owner", "window"], set_={"count": col(RateWindow.count) + 1}
        )
        .returning(col(RateWindow.count))
    )


_CHARGE = {"postgresql": _charge_statement(pg_insert), "sqlite": _charge_statement(sqlite_insert)}


def charge_write(owner: str) -> None:
    """Charge one write on its own, with the configured budget; 429 with Retry-After
    once the minute's budget is spent (the refused write counts too: the charge has
    committed before the refusal is raised)."""
    per_minute = get_settings().duetide_write_rate_per_minute
    if per_minute <= 0:
        return
    now = utcnow()
    with db.autocommit() as connection:
        used = charge(connection, owner, now)
    if used > per_minute:
        retry_after = 60 - int(now.timestamp()) % 60
        raise RateLimited(
            f"more than {per_minute} writes in a minute; retry later",
            headers={"Retry-After": str(retry_after)},
        )


def expired(now: datetime) -> Any:
    """Windows older than the current minute: the sweep purges them."""
    return col(RateWindow.window) < int(now.timestamp() // 60)
