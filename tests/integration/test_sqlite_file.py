"""The default database's files as a laptop's stack leaves them running for months: the
write-ahead log and the database file follow what they hold instead of keeping their
largest size (an audit, 2026-12-07: a 9.8 MB log kept after a stop, 70% of a 44 MB file
free pages after the sweep's purges)."""

from __future__ import annotations

import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from duetide.services import sweep
from duetide.storage import db, migrate
from duetide.storage.models import ProcessedEvent, utcnow


@pytest.fixture
def database(tmp_path: Path) -> Path:
    path = tmp_path / "duetide.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def test_the_write_ahead_log_is_cut_back_once_checkpointed(database: Path) -> None:
    engine = db.make_engine(f"sqlite:///{database}")
    log = database.with_name(database.name + "-wal")
    try:
        with engine.begin() as connection:  # one large write: the log holds all of it
            connection.execute(sa.text("CREATE TABLE filler (x TEXT)"))
            for _ in range(3_000):
                connection.execute(sa.text("INSERT INTO filler VALUES (:x)"), {"x": "y" * 4_000})
        assert log.stat().st_size > 2 * db.SQLITE_WAL_LIMIT_BYTES
        for _ in range(3):  # SQLite checkpoints at a commit, begins the log again at the next
            with engine.begin() as connection:
                connection.execute(sa.text("INSERT INTO filler VALUES ('z')"))
        assert log.stat().st_size <= db.SQLITE_WAL_LIMIT_BYTES
    finally:
        engine.dispose()


def test_the_sweeps_purge_gives_the_pages_it_freed_back_to_the_file_system(
    database: Path,
) -> None:
    engine = db.make_engine(f"sqlite:///{database}")
    old = utcnow() - sweep.PROCESSED_EVENT_TTL - timedelta(days=1)
    rows = [
        {"consumer": "notify", "scope": "", "source": "/s" * 100, "event_id": f"e-{n}"}
        for n in range(20_000)
    ]
    try:
        with engine.begin() as connection:
            connection.execute(sa.insert(ProcessedEvent).values(processed_at=old), rows)
        checkpointed(engine)
        grown = database.stat().st_size
        while sweep.purge_processed(utcnow(), engine):
            pass  # what one ping leaves (its budget) goes with the next
        for _ in range(20):  # each ping gives back SQLITE_SHRINK_PAGES at most
            if not db.shrink(engine):
                break
        checkpointed(engine)
        assert database.stat().st_size < grown / 4
        with engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
    finally:
        engine.dispose()


def checkpointed(engine: sa.Engine) -> None:
    """Pages written back into the database file (where its size is measured)."""
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def test_a_database_made_before_it_could_shrink_is_rewritten_once_by_migrate(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as made:  # as a database made by an earlier version
        made.execute("CREATE TABLE kept (x TEXT)")
        made.execute("INSERT INTO kept VALUES ('mine')")
    made.close()
    migrate.upgrade(f"sqlite:///{path}")
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA auto_vacuum").fetchone() == (2,)  # incremental
        assert connection.execute("SELECT x FROM kept").fetchall() == [("mine",)]
    connection.close()


def test_a_shrink_that_cannot_have_the_write_lock_waits_for_the_next_ping(
    database: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Best effort after the purges committed: a write lock held past the busy timeout
    (or a full disk) failed the sweep's ping with a 500, SQLite's own error escaping the
    error mapping (a review, 2026-12-07)."""
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_S", 0.3)
    engine = db.make_engine(f"sqlite:///{database}")
    try:
        with engine.begin() as connection:
            connection.execute(sa.text("CREATE TABLE filler (x TEXT)"))
            connection.execute(sa.text("INSERT INTO filler VALUES (:x)"), [{"x": "y" * 4_000}] * 50)
        with engine.begin() as connection:
            connection.execute(sa.text("DELETE FROM filler"))
        holder = sqlite3.connect(database, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")  # another process's writer, holding on
        try:
            assert db.shrink(engine) == 0
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert db.shrink(engine) > 0  # the next ping's
    finally:
        engine.dispose()
