"""Pages of a log shown newest first, by (time, id): the cursor names the last row shown.

An offset cursor counted rows from the top, so a row written while a client paged (a
notification delivered, a webhook delivery made) pushed the next page down by one and
its first item repeated the previous page's last; and a deep page read every row above
it. A keyset page starts right below the row the cursor names, from the (owner, time,
id) index, whatever was written since. The task list pages the same way (`after`), in
the order its sort names, with a cursor of its own (`tasks.encode_cursor`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, or_

from duetide.errors import BadRequest
from duetide.rules.text import text_problem
from duetide.services import opaque

MAX_ID_CHARS = 64
"""The longest row id a cursor may name (ids are 36-character UUIDs): a cursor is read
before any query, so a forged one costs nothing to refuse."""


def encode(at: datetime, row_id: str) -> str:
    return opaque.dump([at.isoformat(), row_id])


def decode(cursor: str) -> tuple[datetime, str]:
    """The (time, id) a cursor of `encode` names; anything else is a 400, never a query."""
    try:
        at, row_id = opaque.load(cursor)
        when = datetime.fromisoformat(at)
        if when.tzinfo is None or not isinstance(row_id, str) or len(row_id) > MAX_ID_CHARS:
            raise ValueError("not a cursor")
        when = when.astimezone(UTC)  # an instant UTC cannot hold (year 1 at +14:00) is a 400
        if text_problem(row_id):
            raise ValueError("not storable text")
        return when, row_id
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest("invalid cursor: pass back `next_cursor`") from None


def after(column: Any, id_column: Any, value: Any, row_id: str, descending: bool) -> Any:
    """Rows strictly after (value, row_id) in (column, id) order, either way."""
    if descending:
        return or_(column < value, and_(column == value, id_column < row_id))
    return or_(column > value, and_(column == value, id_column > row_id))


def page(rows: list[Any], limit: int, key: Any) -> tuple[list[Any], str | None]:
    """The first `limit` of `rows` (read with one more, to know whether there is a next
    page) and the cursor after the last of them; `key(row)` is its (time, id)."""
    shown = rows[:limit]
    return shown, encode(*key(shown[-1])) if len(rows) > limit and shown else None
