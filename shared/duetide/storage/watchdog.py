"""A bound on how long a PostgreSQL connection may stay checked out of the pool.

libpq bounds connecting (`connect_timeout`) and data the peer never acknowledges
(`tcp_user_timeout`), and the server bounds lock waits and idle transactions, but
nothing bounded a query a frozen server had already accepted: its kernel acknowledges
every byte, so TCP sees nothing wrong, and libpq has no client-side statement timeout.
A PostgreSQL stopped for 15 s (SIGSTOP, as a storage stall looks) held every request
already inside a statement for the whole 15 s, each holding a worker thread
(RELIABILITY.md). A server that works but is slow is bounded by its own
`statement_timeout` (`db._session_bounds`), which ends the statement cleanly first.

No unit of work here holds a connection for long: a request's or an event's transaction
is milliseconds, the sweep and the purge work in short batches, and nothing waits on the
network inside a transaction except the relay's send, whose bound the limit always
exceeds (`db.hold_limit_s`). So a connection checked out longer than the bound is
waiting for a server that is not answering, and the watchdog shuts its socket down: the
blocked call fails as a lost connection (a 503 the client or the KafkaSource retries),
SQLAlchemy discards the pool, and the next request connects afresh. Migrations, whose
statements may rightly run for minutes, make their engine without it.

It shuts down a duplicate of the socket's descriptor taken at checkout and closed at
checkin (as `duetide.deadline` does): the pool's connection may be closed and its
descriptor reused by the time the bound passes, and a duplicate cannot be.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from typing import Any

from duetide.logs import log_event

log = logging.getLogger(__name__)


class HoldWatch:
    """Shuts down the socket of any connection checked out longer than `limit_s`."""

    def __init__(self, limit_s: float) -> None:
        self.limit_s = limit_s
        self._held: dict[object, tuple[float, socket.socket]] = {}
        self._lock = threading.Lock()

    def held(self, dbapi_connection: Any, record: object, limit_s: float | None = None) -> None:
        """The connection of pool record `record` was checked out now, to be cut after
        `limit_s` (the watch's own limit unless given: `renew` restores it)."""
        try:
            duplicate = socket.socket(fileno=os.dup(dbapi_connection.pgconn.socket))
        except Exception:  # psycopg's error for a lost connection, OSError, ...
            return  # not a live psycopg connection: the pool finds out for itself
        bound = self.limit_s if limit_s is None else limit_s
        with self._lock:
            self._close(self._held.pop(record, None))
            self._held[record] = (time.monotonic() + bound, duplicate)
        _watching(self)

    def renew(self, record: object, limit_s: float | None = None) -> None:
        """The connection is cut `limit_s` (the watch's own limit unless given) from now,
        after a shorter bound of `held`."""
        bound = self.limit_s if limit_s is None else limit_s
        with self._lock:
            entry = self._held.get(record)
            if entry is not None and entry[0] != float("inf"):
                self._held[record] = (time.monotonic() + bound, entry[1])

    def released(self, record: object) -> None:
        with self._lock:
            self._close(self._held.pop(record, None))

    @property
    def watched(self) -> int:
        return len(self._held)

    def expire(self, now: float) -> int:
        """Shut down every connection held past its bound; how many."""
        with self._lock:
            overdue = [(record, entry) for record, entry in self._held.items() if entry[0] <= now]
            for record, (_, duplicate) in overdue:
                self._held[record] = (float("inf"), duplicate)  # closed at checkin
                with contextlib.suppress(OSError):
                    duplicate.shutdown(socket.SHUT_RDWR)
        if overdue:
            log_event(
                log,
                "database.connection_cut",
                level=logging.WARNING,
                connections=len(overdue),
                held_over_s=self.limit_s,
            )
        return len(overdue)

    @staticmethod
    def _close(entry: tuple[float, socket.socket] | None) -> None:
        if entry is not None:
            entry[1].close()


TICK_S = 0.5
"""How often the watchdog looks: a connection is cut at most this late."""

_watches: weakref.WeakSet[HoldWatch] = weakref.WeakSet()
_runner_pid: int | None = None
_runner_lock = threading.Lock()


def _watching(watch: HoldWatch) -> None:
    """One thread per process looks after every engine's watch (an engine made again,
    as tests do, adds no thread), started in the process that uses the pool: a thread
    does not cross a fork."""
    global _runner_pid
    if watch in _watches and _runner_pid == os.getpid():
        return
    with _runner_lock:
        _watches.add(watch)
        if _runner_pid != os.getpid():
            _runner_pid = os.getpid()
            threading.Thread(target=_run, name="db-watchdog", daemon=True).start()


def _run() -> None:
    """Never ends: a thread that died on one error would leave the process unwatched,
    and `_watching` starts one per process only."""
    while True:
        time.sleep(TICK_S)
        with _runner_lock:  # an engine made meanwhile adds to the set
            watches = list(_watches)
        for watch in watches:
            try:
                watch.expire(time.monotonic())
            except Exception:
                log.exception("database.watchdog_failed")
