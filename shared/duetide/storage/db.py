"""Engine and session factory for SQLite (embedded default) or PostgreSQL (psycopg 3).

The engine is created lazily on first use, never at import: gunicorn forks after the
function module is imported, and a connection pool must not cross a fork.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc, make_url, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session, create_engine

from duetide.config import HOME_MODE, get_settings, publish_send_bound_s
from duetide.errors import Unavailable
from duetide.once import once
from duetide.storage.watchdog import HoldWatch

log = logging.getLogger("duetide.storage.db")


def make_engine(url: str, *, long_statements: bool = False) -> Engine:
    """An engine tuned per backend: WAL and a busy timeout on SQLite, a small pool on PG.

    `hide_parameters` keeps row values (titles, e-mail addresses) out of error messages
    and logs. `long_statements` (the migrations) lifts the bounds on how long a
    statement may run and a connection may be held.
    """
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
            hide_parameters=True,
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        # pysqlite's own BEGIN handling defers locks; we issue BEGIN ourselves so a
        # writer can ask for BEGIN IMMEDIATE (see session_scope).
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # A pool as large as the requests a process runs at once: an overflow connection is
    # closed when returned, and under load each one was a new connection (a TLS handshake
    # and a server process) per request.
    settings = get_settings()
    timeout_s = settings.duetide_db_timeout_s
    engine = create_engine(
        url,
        pool_size=settings.duetide_db_pool_size,
        max_overflow=5,
        pool_timeout=timeout_s,
        connect_args=_bounded_connections(url, timeout_s),
        hide_parameters=True,
    )
    hold_s = hold_limit_s(timeout_s, settings.duetide_publish_timeout_s)
    watch = None if long_statements else HoldWatch(hold_s)
    event.listen(engine, "checkin", functools.partial(_checked_in, watch))
    event.listen(engine, "detach", functools.partial(_detached, watch))
    event.listen(engine, "checkout", functools.partial(_checked_out, engine, watch))
    bounds = _session_bounds(url, timeout_s, hold_s, long_statements=long_statements)
    if bounds:
        event.listen(engine, "connect", functools.partial(_set_session_bounds, bounds))
    return engine


def _bounded_connections(url: str, timeout_s: float) -> dict[str, int]:
    """libpq's bounds for a server that stops answering: without them a connection to a
    server that accepted and then froze, or across a network cut, waited as long as the
    server did (requests hung 15 s through a 15 s freeze, where a refusal is a 503 in
    milliseconds). Keepalives find a dead peer of an idle connection in about a minute.
    What the URL sets itself is kept."""
    bounds = {
        "connect_timeout": max(2, round(timeout_s)),  # whole seconds; libpq's least is 2
        "tcp_user_timeout": round(timeout_s * 1000),
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    }
    named = make_url(url).query
    return {name: value for name, value in bounds.items() if name not in named}


HOLD_LIMIT_FACTOR = 3
"""A transaction may stay open this many times DUETIDE_DB_TIMEOUT_S (`hold_limit_s`)."""


def hold_limit_s(db_timeout_s: float, publish_timeout_s: float) -> float:
    """How long a connection may stay checked out (then `watchdog` cuts it) and a
    transaction idle (then the server ends it): three times DUETIDE_DB_TIMEOUT_S, and
    never less than the relay's longest send plus that timeout, since on PostgreSQL the
    relay keeps its rows locked through the send (`config.publish_send_bound_s`: 9 s
    by default, under the 30 s this gives)."""
    return max(
        HOLD_LIMIT_FACTOR * db_timeout_s, publish_send_bound_s(publish_timeout_s) + db_timeout_s
    )


STATEMENT_LIMIT_FACTOR = 2
"""The server cancels a statement running this many times DUETIDE_DB_TIMEOUT_S: below
the watchdog's bound, so a server that is merely slow ends the statement itself (and
stops its work) before the client gives up on it."""


def _session_bounds(
    url: str, timeout_s: float, hold_s: float, *, long_statements: bool = False
) -> dict[str, int]:
    """The server's bounds on what one session may hold up, in milliseconds.

    `lock_timeout`: a statement waiting for a row another transaction holds gives up
    after `timeout_s` (a 503, which the client or the KafkaSource retries) instead of
    holding its request, its thread and its connection as long as the other does.
    `idle_in_transaction_session_timeout`: the server ends a transaction whose client
    has sent nothing for `hold_s` (`hold_limit_s`), and so frees its locks. No
    transaction here waits on the network but the relay's (deliveries and the fast
    path publish after the commit), so only a client that is gone (a pod on a node
    cut off) stays that long; the server's keepalives would have kept its locks two
    hours. `statement_timeout`: a statement that runs longer than any here should is
    ended by the server (a 503). Settings the URL's `options` names win."""
    named = str(make_url(url).query.get("options", ""))
    bounds = {
        "lock_timeout": round(timeout_s * 1000),
        "idle_in_transaction_session_timeout": round(hold_s * 1000),
    }
    if not long_statements:
        bounds["statement_timeout"] = round(timeout_s * STATEMENT_LIMIT_FACTOR * 1000)
    return {name: value for name, value in bounds.items() if name not in named}


def _set_session_bounds(bounds: dict[str, int], dbapi_connection: Any, _record: Any) -> None:
    """Set once per new connection, one round trip. `SET`, not the `options` startup
    parameter: PgBouncer refuses a connection that sends `options` unless told to ignore it."""
    autocommit = dbapi_connection.autocommit
    dbapi_connection.autocommit = True
    try:
        dbapi_connection.execute("; ".join(f"SET {name} = {ms}" for name, ms in bounds.items()))
    finally:
        dbapi_connection.autocommit = autocommit


PING_AFTER_IDLE_S = 1.0
"""A pooled connection idle longer than this is pinged before use. Not every checkout:
`pool_pre_ping` costs a round trip per transaction, a third of a simple request's. A
connection in steady use has just worked; one that sat idle may have been cut (the
database restarted, a proxy's idle timeout) and is replaced before anyone sees it. A
connection cut while in use fails its request with 503, and SQLAlchemy then discards
the whole pool, so the next request connects afresh."""


def _checked_in(watch: HoldWatch | None, _dbapi_connection: Any, record: Any) -> None:
    record.info["checked_in"] = time.monotonic()
    if watch is not None:
        watch.released(record)


def _detached(watch: HoldWatch | None, _dbapi_connection: Any, record: Any) -> None:
    """A connection leaving the pool for good is no longer the pool's to watch."""
    if watch is not None:
        watch.released(record)


PING_LIMIT_S = 2.0
"""How long the ping of an idle connection may wait for the server: it waited for the
watchdog's whole bound (30 s), so with the server frozen (accepting, never answering)
each request began by holding its thread that long before its 503 (a review,
2026-12-07). A server that cannot answer `SELECT 1` in 2 s is not one to send work to."""


_HOLD_LIMIT: ContextVar[float | None] = ContextVar("duetide_hold_limit", default=None)


@contextmanager
def hold_limit(seconds: float) -> Iterator[None]:
    """Connections checked out in the block are cut after `seconds` (not the pool's
    `hold_limit_s`): for best-effort work on a request's time, such as the fast path's
    marking of what it sent, which during a database freeze held a committed write's
    answer 30 s (a review, 2026-12-07)."""
    token = _HOLD_LIMIT.set(seconds)
    try:
        yield
    finally:
        _HOLD_LIMIT.reset(token)


def _checked_out(
    engine: Engine, watch: HoldWatch | None, dbapi_connection: Any, record: Any, _proxy: Any
) -> None:
    """Watched from here (the ping too waits on the server); pinged if it sat idle."""
    bound = _HOLD_LIMIT.get()
    idle = time.monotonic() - record.info.get("checked_in", time.monotonic())
    if idle <= PING_AFTER_IDLE_S:
        if watch is not None:
            watch.held(dbapi_connection, record, bound)
        return
    if watch is not None:
        ping_bound = PING_LIMIT_S if bound is None else min(bound, PING_LIMIT_S)
        watch.held(dbapi_connection, record, ping_bound)
    try:
        engine.dialect.do_ping(dbapi_connection)
    except Exception as error:
        # The pool discards this connection and checks out (or opens) another.
        if watch is not None:
            watch.released(record)
        raise exc.DisconnectionError() from error
    if watch is not None:
        watch.renew(record, bound)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # A new file (no table yet) is made to give free pages back (`shrink`); an older one
    # waits for `reclaimable`. Only then: setting it takes the write lock, so every new
    # connection, a reader's too, waited behind whichever writer held it (a CI run,
    # 2026-12-08). A file opened read-only refuses it: its start refuses the file, named.
    new_file = cursor.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is None
    if new_file and cursor.execute("PRAGMA auto_vacuum").fetchone() == (0,):
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute(f"PRAGMA journal_size_limit={SQLITE_WAL_LIMIT_BYTES}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.close()
    # SQLite's lower() folds A-Z alone, so a search (`lower(title) LIKE lower(:q)`) for
    # "épée" missed "Épée"; Python's, like PostgreSQL's in a UTF-8 locale, folds all.
    dbapi_connection.create_function("lower", 1, _lower, deterministic=True)


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


SQLITE_WAL_LIMIT_BYTES = 4 * 1024 * 1024
"""What the write-ahead log is cut back to once it is checkpointed and begun again: it
kept the size of its largest moment for good (the default stack's grew to 9.8 MB while
readers of other processes held checkpoints back, and stayed so, after a stop too; an
audit, 2026-12-07). About SQLite's own checkpoint threshold (1,000 pages)."""

SQLITE_SHRINK_PAGES = 2_000
"""Free pages `shrink` gives back to the file system at most at a time (8 MB of 4 KiB
pages): a write unit of some milliseconds, however much a purge emptied."""


def reclaimable(engine: Engine) -> bool:
    """SQLite: make a database file that keeps its free pages (one made before
    `auto_vacuum` was set, NONE) one that can give them back, by rewriting it once
    (VACUUM: as long as the file takes to copy, so `duetide migrate` does it, before the
    functions start). Whether it did. A new file gets the setting at its first connect."""
    if engine.dialect.name != "sqlite":
        return False
    raw = engine.raw_connection()  # autocommit (`_sqlite_pragmas`): VACUUM refuses a transaction
    try:
        sqlite = raw.driver_connection
        if sqlite.execute("PRAGMA auto_vacuum").fetchone() != (0,):  # type: ignore[union-attr]
            return False
        sqlite.execute("PRAGMA auto_vacuum=INCREMENTAL")  # type: ignore[union-attr]
        sqlite.execute("VACUUM")  # type: ignore[union-attr]
    except sqlite3.OperationalError:  # in use past the busy timeout: the next migrate
        return False
    finally:
        raw.close()
    return True


def shrink(engine: Engine | None = None) -> int:
    """SQLite: give up to SQLITE_SHRINK_PAGES free pages back to the file system, so the
    file follows what it holds; the pages freed. Without it the file stayed at its
    largest for good: after the sweep's purges 70% of a 44 MB database was free pages
    (an audit, 2026-12-07). PostgreSQL's own vacuum does this there: 0."""
    bind = engine or get_engine()
    if bind.dialect.name != "sqlite":
        return 0
    with bind.connect() as connection:
        free = connection.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
    if not free:
        return 0
    try:
        with session_scope(bind) as session:  # a write unit, in its turn as any other
            connection = session.connection()
            # SQLite frees a page a step, and pysqlite steps a statement once: a page a call
            cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
            try:
                for _ in range(min(int(free), SQLITE_SHRINK_PAGES)):
                    cursor.execute("PRAGMA incremental_vacuum(1)")
            finally:
                cursor.close()
            left = connection.exec_driver_sql("PRAGMA freelist_count").scalar() or 0
    except (sqlite3.Error, exc.SQLAlchemyError) as error:  # best effort: the next ping
        log.warning(
            "sqlite.shrink_failed",
            extra={"event": "sqlite.shrink_failed", "error": str(error)[:200]},
        )
        return 0
    return int(free) - int(left)


SQLITE_BUSY_TIMEOUT_S = 30.0
"""How long a statement, or a writer's BEGIN IMMEDIATE, waits for SQLite's locks."""

_WRITE_LOCK_POLL_S = (0.0005, 0.002)
"""A writer waiting for the write lock tries again after a random pause in this range.
SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25, 25, 25, 50, 50, 100 ms between
tries: a writer that has waited a few tries sleeps 25-100 ms while locks held for a
millisecond or two change hands many times, so under several writing processes some
waited far longer than the work ahead of them (`scripts/bench pipeline`, SQLite: p99
0.87 s at 50 completions/s). Short random pauses keep every waiter close to the front."""


def _sqlite_begin(connection) -> None:  # type: ignore[no-untyped-def]
    options = connection.get_execution_options()
    if options.get("isolation_level") == "AUTOCOMMIT":
        return
    if options.get("sqlite_begin") != "IMMEDIATE":
        connection.exec_driver_sql("BEGIN")
        return
    cursor = connection.connection.dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=0")
    try:
        deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_S
        while True:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or time.monotonic() > deadline:
                    raise exc.OperationalError("BEGIN IMMEDIATE", (), error) from error
            time.sleep(random.uniform(*_WRITE_LOCK_POLL_S))
    finally:
        with contextlib.suppress(sqlite3.Error):  # a broken connection: its error is raised
            cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
        cursor.close()


def import_driver() -> None:
    """Import the database driver the configured URL names (psycopg: about 0.1 s) without
    creating the engine, which must wait for the server's fork (see the module's
    docstring). For a function whose every request uses the database, so its import is
    not paid inside the first requests, which the first burst of a new pod all wait for."""
    make_url(get_settings().effective_database_url).get_dialect().import_dbapi()


_UNIQUE_VIOLATIONS = {"23505", "SQLITE_CONSTRAINT_UNIQUE", "SQLITE_CONSTRAINT_PRIMARYKEY"}


def is_unique_violation(error: exc.IntegrityError) -> bool:
    """Whether a statement broke a unique key (a concurrent writer inserted the same row
    first), not a foreign key, NOT NULL or CHECK (a row it refers to went away, or a bug):
    psycopg's SQLSTATE, sqlite3's extended error name."""
    cause = error.orig
    code = getattr(cause, "sqlstate", None) or getattr(cause, "sqlite_errorname", None)
    return code in _UNIQUE_VIOLATIONS


def cancelled(error: exc.OperationalError) -> bool:
    """Whether PostgreSQL ended the statement at its `statement_timeout` (57014)."""
    return getattr(error.orig, "sqlstate", None) == "57014"


@once
def get_engine() -> Engine:
    """The process's one engine, and so its one pool (DUETIDE_DB_POOL_SIZE)."""
    return make_engine(get_settings().effective_database_url)


@contextmanager
def session_scope(
    engine: Engine | None = None, *, read_only: bool = False, statement_limit_s: float | None = None
) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception.

    On SQLite a unit of work that may write takes the write lock at BEGIN (BEGIN
    IMMEDIATE): a deferred transaction that reads and later writes cannot wait for the
    lock (SQLite answers "database is locked" at once, whatever the busy timeout, when
    another writer committed in between), while BEGIN IMMEDIATE waits up to the busy
    timeout. It is also SQLite's counterpart of PostgreSQL's row locks for claims: two
    sweeps cannot read the same due rows and both update them. `read_only` units keep
    the deferred BEGIN, so readers never queue behind writers (WAL).

    On PostgreSQL a `read_only` unit runs without a transaction (autocommit): under READ
    COMMITTED each statement sees its own snapshot whether or not a transaction wraps
    them, so BEGIN and the closing ROLLBACK were two round trips that bought nothing.

    `statement_limit_s`: on PostgreSQL each statement of the unit is ended after that
    long (`SET LOCAL statement_timeout`, so in a transaction, read-only or not; the
    connection's own bound comes back with its end); `cancelled` tells that error.
    """
    bind = engine or get_engine()
    postgres = bind.dialect.name == "postgresql"
    limited = statement_limit_s is not None and postgres
    if not read_only:
        bind = _variant(bind, "sqlite_begin", "IMMEDIATE")
    elif postgres and not limited:
        bind = _variant(bind, "isolation_level", "AUTOCOMMIT")
    with _write_turn(bind, read_only), Session(bind, expire_on_commit=False) as session:
        try:
            if limited:
                assert statement_limit_s is not None
                milliseconds = max(1, round(statement_limit_s * 1000))
                session.execute(text(f"SET LOCAL statement_timeout = {milliseconds}"))
            yield session
            session.flush()  # a refused row (a unique key) is refused here, not at COMMIT
        except BaseException:
            session.rollback()
            raise
        try:
            session.commit()
        except exc.DBAPIError as error:
            session.rollback()
            if read_only or not postgres or not _lost(error):
                raise
            raise CommitUnknown() from error
        except BaseException:
            session.rollback()
            raise


class CommitUnknown(Unavailable):
    """The connection was lost while a unit of work committed: it may have been saved.
    A 503, whose words say so: a plain retry of a create would make a second task."""

    def __init__(self) -> None:
        super().__init__(
            "the database connection was lost during the commit: the change may have been "
            "saved. Send it again with the same Idempotency-Key, or look it up first",
            headers={"Retry-After": "1"},
        )


def _lost(error: exc.DBAPIError) -> bool:
    """Whether PostgreSQL's COMMIT failed for the connection (invalidated, 08xxx, or
    psycopg's own error without a SQLSTATE), not for the transaction (a serialization
    failure, a deferred constraint), which is known not to be saved."""
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None)
    return isinstance(error, exc.OperationalError) and (
        sqlstate is None or sqlstate.startswith("08")
    )


@functools.lru_cache(maxsize=64)
def _variant(engine: Engine, option: str, value: str) -> Engine:
    """The engine with one execution option set, built once: `Engine.execution_options`
    makes a new engine object each call (a quarter of a millisecond, on every request)."""
    return engine.execution_options(**{option: value})


_turns: dict[str, threading.RLock] = {}
_turns_lock = threading.Lock()


@contextmanager
def _write_turn(bind: Engine, read_only: bool) -> Iterator[None]:
    """On SQLite, one writing unit per process at a time, the others queued in-process.

    SQLite has one write lock per database, and its waiters poll for it. With every
    thread of a process polling, the waiters kept taking the GIL from the thread that
    held the lock, which then held it longer: under a 30 completions/s load the
    recurrence function's threads spent most of their time waiting for the lock
    (py-spy). Queued on a lock of their own, they wait without running, and SQLite sees
    one writer per process. The queue is bounded in time like SQLite's own wait: after
    SQLITE_BUSY_TIMEOUT_S the unit fails as "database is locked" would (503), so an
    overloaded process sheds requests instead of stacking them. Reentrant, so a unit
    inside another on the same thread queues on SQLite's lock as before, not on this one.
    """
    if read_only or bind.dialect.name != "sqlite":
        yield
        return
    key = str(bind.url)
    with _turns_lock:
        turn = _turns.setdefault(key, threading.RLock())
    if not turn.acquire(timeout=SQLITE_BUSY_TIMEOUT_S):
        locked = sqlite3.OperationalError("database is locked (waited for this process's turn)")
        raise exc.OperationalError("BEGIN IMMEDIATE", (), locked)
    try:
        yield
    finally:
        turn.release()


@contextmanager
def autocommit(engine: Engine | None = None) -> Iterator[Connection]:
    """A connection whose every statement commits on its own: one round trip for a
    single-statement write that must hold whatever the caller's transaction does (a
    charge to the write limit), with no BEGIN or COMMIT of its own.

    On SQLite, where a statement costs no round trip, it is a write unit of its own
    instead (its turn, BEGIN IMMEDIATE, COMMIT), so it waits for the write lock as other
    writers do rather than in SQLite's busy handler."""
    bind = engine or get_engine()
    if bind.dialect.name == "sqlite":
        writer = _variant(bind, "sqlite_begin", "IMMEDIATE")
        with _write_turn(bind, False), writer.begin() as connection:
            yield connection
        return
    with _variant(bind, "isolation_level", "AUTOCOMMIT").connect() as connection:
        yield connection
