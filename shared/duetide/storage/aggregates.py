"""JSON aggregates that read a row's children in the row's own statement, on either backend.

A task is shown with its tags and reminders. Loaded as separate `IN (...)` queries they
were three round trips per read, and SQLAlchemy rendered the expanding `IN` list anew on
every request (a bind per id). As correlated subqueries aggregated to JSON they come
back with the task, in one statement whose text never changes (so psycopg prepares it
once). PostgreSQL spells these `json_agg` and `json_build_object`, SQLite
`json_group_array` and `json_object`; the values come back as JSON, so times are text
(`json_time` reads them back as the column type would).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, overload

from sqlalchemy import JSON
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement


class json_list(FunctionElement[Any]):
    """The aggregate of one value per row as a JSON array; NULL (PostgreSQL) or `[]`
    (SQLite) over no rows: read it with `or []`."""

    type = JSON()
    inherit_cache = True
    name = "json_list"


class json_row(FunctionElement[Any]):
    """Columns as a JSON object keyed by their names."""

    type = JSON()
    inherit_cache = True
    name = "json_row"


_SPELLING = {
    "postgresql": ("json_agg", "json_build_object"),
    "sqlite": ("json_group_array", "json_object"),
}


@compiles(json_list)
def _json_list(element: json_list, compiler: SQLCompiler, **kw: Any) -> str:
    aggregate = _SPELLING[compiler.dialect.name][0]
    return f"{aggregate}({compiler.process(element.clauses, **kw)})"


@compiles(json_row)
def _json_row(element: json_row, compiler: SQLCompiler, **kw: Any) -> str:
    columns: list[ColumnElement[Any]] = list(element.clauses)
    pairs = ", ".join(f"'{c.key}', {compiler.process(c, **kw)}" for c in columns)
    return f"{_SPELLING[compiler.dialect.name][1]}({pairs})"


@overload
def json_time(value: str) -> datetime: ...
@overload
def json_time(value: str | None) -> datetime | None: ...
def json_time(value: str | None) -> datetime | None:
    """A `UTCDateTime` column's value read back from JSON: PostgreSQL writes it with its
    offset, SQLite as the stored UTC text without one."""
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)
