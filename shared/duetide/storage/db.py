"""Engine and session factory for SQLite (embedded default) or PostgreSQL (psycopg 3).

The engine is created lazily on first use, never at import: gunicorn forks after the
function module is imported, and a connection pool must not cross a fork.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from duetide.config import get_settings


def make_engine(url: str) -> Engine:
    """An engine tuned per backend: WAL and a busy timeout on SQLite, a small pool on PG.

    `hide_parameters` keeps row values (titles, e-mail addresses) out of error messages
    and logs.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, hide_parameters=True
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own BEGIN handling defers locks; we issue BEGIN ourselves so a
        # writer can ask for BEGIN IMMEDIATE (see session_scope).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=5, max_overflow=5, pool_pre_ping=True, hide_parameters=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _sqlite_begin(connection) -> None:  # type: ignore[no-untyped-def]
    mode = connection.get_execution_options().get("sqlite_begin", "")
    connection.exec_driver_sql(f"BEGIN {mode}".strip())


@functools.cache
def get_engine() -> Engine:
    return make_engine(get_settings().effective_database_url)


@contextmanager
def session_scope(engine: Engine | None = None, *, read_only: bool = False) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    On SQLite a unit of work that may write takes the write lock at BEGIN (BEGIN
    IMMEDIATE): a deferred transaction that reads and later writes cannot wait for the
    lock (SQLite answers "database is locked" at once, whatever the busy timeout, when
    another writer committed in between), while BEGIN IMMEDIATE waits up to the busy
    timeout. It is also SQLite's counterpart of PostgreSQL's row locks for claims: two
    sweeps cannot read the same due rows and both update them. `read_only` units keep
    the deferred BEGIN, so readers never queue behind writers (WAL). Nothing changes on
    PostgreSQL, where writers lock rows, not the database.
    """
    bind = engine or get_engine()
    if not read_only:
        bind = bind.execution_options(sqlite_begin="IMMEDIATE")
    with Session(bind, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
