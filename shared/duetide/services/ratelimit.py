"""Per-user limits on requests: writes counted in the database, reads in the process.

Writes: a fixed one-minute window counted in the database, so every replica of the
tasks function shares it (an in-memory bucket would multiply the limit by the number of
replicas Knative runs).

The charge commits on its own, whatever becomes of the write it pays for: a write that
fails (a wrong confirmation code, a conflict) still counts, so the budget bounds
guessing too. It is one autocommit statement on PostgreSQL, one round trip, holding the
counter's row lock only while it runs (on SQLite a write unit of its own: `db.autocommit`).

Reads: a token bucket per user in each process (`ReadBudget`). A read is one statement
(a task, a page of tasks); a counter in the database would double its round trips, so
the bound is per replica instead, and the service's `max-scale` bounds the replicas. What
it is for is one user's cost: a client looping on a search or an export takes a share
of a pod and of the database that the limit fixes, whoever else is served."""

from __future__ import annotations

import functools
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from duetide.config import get_settings
from duetide.errors import RateLimited
from duetide.rules import recurrence
from duetide.rules.text import QUERY_INTEGER
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


SCAN_READS = 10
"""What a read of every task of a user counts (`tasks.reads_of`): at 200,000 tasks a
search took 82 ms and a title sort 22, a page read from an index 1.7
(bench/results/list_scaling.md). As search APIs limit searches below other reads."""
EXPORT_READS = 60
"""What a calendar export counts (also a 304, which loads and hashes what it would
render): up to 500 tasks with their reminders, 0.4 s rendered when plain, about 1 s for
500 series of clamped rules (their RDATEs; the series' rules share a work budget,
`calendar_export.RECURRENCE_WORK`), 0.36-0.9 s for the 304 alone at the fields' limits
(probes, 2026-12-06 and 07). Ten a minute by default; a
calendar app polls every few minutes at most (`Cache-Control: max-age=300`)."""


def forecast_reads(count: str | None) -> int:
    """What `GET /series/{id}/occurrences?count=` counts, read as validation will read
    it (`0000500` is 500); a count validation refuses counts one. One read for each
    base forecast's work its budget allows (`recurrence.forecast_budget`): the engine's
    whole budget (0.25 s of CPU) is 10 reads, and under the two-at-a-time bound of
    costly reads. It counted one read per 50 occurrences, while 90 already got the whole
    budget: a forecast of 99 on a sparse rule took 0.33 s of CPU for one read, outside
    that bound (an audit, 2026-12-07)."""
    if count is None or not re.fullmatch(QUERY_INTEGER, count):
        return 1
    budget = recurrence.forecast_budget(min(int(count), 10**6))
    return min(SCAN_READS, max(1, budget // recurrence.FORECAST_BASE_WORK))


class ReadBudget:
    """Token buckets of `per_minute` reads, refilled at `per_minute` a minute: a minute's
    reads may come at once (a client paging through a list), then one every
    60/`per_minute` s. Hand-written rather than taken from the `limits` library, whose
    import (with `deprecated` and `wrapt`) costs about 0.4 s of every cold start.

    At most `max_users` buckets are kept, the least recently used dropped first: a
    bucket untouched for a minute is full, as good as none, so dropping one forgets a
    debt only when more users than that read within a minute on one replica, and then
    errs on serving."""

    def __init__(
        self,
        per_minute: int,
        max_users: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = float(per_minute)
        self.per_second = per_minute / 60
        self.max_users = max_users
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, owner: str, reads: int = 1) -> float:
        """Take `reads` from `owner`'s bucket: 0 when served, else the seconds until
        they would be (a cost above the budget asks for a full bucket)."""
        cost = min(float(reads), self.capacity)
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(owner, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.per_second)
            served = tokens >= cost
            self._buckets[owner] = (tokens - cost if served else tokens, now)
            if len(self._buckets) > self.max_users:
                self._buckets.popitem(last=False)
        return 0.0 if served else (cost - tokens) / self.per_second

    def debit(self, owner: str, reads: int) -> None:
        """Take `reads` from `owner`'s bucket whatever it holds (a debt the refill pays):
        for what an answer turned out to cost, after it was served."""
        with self._lock:
            now = self.clock()
            tokens, then = self._buckets.pop(owner, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - then) * self.per_second)
            self._buckets[owner] = (max(tokens - reads, -self.capacity), now)
            if len(self._buckets) > self.max_users:
                self._buckets.popitem(last=False)


class InFlight:
    """At most `per_owner` of one owner's costly reads (those counting more than one
    read: a search, a tag filter, a title sort, an export, a long forecast) under way at
    once in this process; one more is a 429 at once. The read budget lets a minute's
    reads start together: 10 calendar exports of 1.8 s of CPU each, or 29 searches of
    3-6 s, held every worker thread and the database, and another user's list took up to
    21 s (a review, 2026-12-07)."""

    def __init__(self, per_owner: int) -> None:
        self.per_owner = per_owner
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    @contextmanager
    def held(self, owner: str) -> Iterator[None]:
        with self._lock:
            if self._held[owner] >= self.per_owner:
                raise RateLimited(
                    f"{self.per_owner} searches or exports of yours are under way on this "
                    "server; retry when one has answered",
                    headers={"Retry-After": "1"},
                )
            self._held[owner] += 1
        try:
            yield
        finally:
            with self._lock:
                self._held[owner] -= 1
                if self._held[owner] <= 0:
                    del self._held[owner]


COSTLY_READS_AT_ONCE = 2


@functools.cache
def costly_reads() -> InFlight:
    return InFlight(COSTLY_READS_AT_ONCE)


@functools.cache
def read_budget() -> ReadBudget | None:
    """This process's read budget, as configured (None: reads are not limited)."""
    per_minute = get_settings().duetide_read_rate_per_minute
    return ReadBudget(per_minute) if per_minute > 0 else None


BYTES_PER_READ = 256 * 1024
"""An answer counts one read more for each this many bytes it holds: a page of 200 tasks
at their longest (2.6 MB) cost 14 times a small page's CPU for the same one read, and
one user's such pages, within their budget, slowed another's lists from 7 ms to 0.35 s
(a review, 2026-12-07)."""


def charge_size(owner: str, size: int) -> None:
    """Charge an answer's size once it is known (`BYTES_PER_READ`), never refusing it:
    the reads it took beyond the first are a debt on the owner's later reads."""
    budget = read_budget()
    extra = size // BYTES_PER_READ
    if budget is not None and extra > 0:
        budget.debit(owner, extra)


def charge_read(owner: str, reads: int = 1) -> None:
    """Charge a request's reads; 429 with Retry-After when `owner`'s bucket has fewer
    (a refused request takes nothing, so a client that waits as told is served)."""
    budget = read_budget()
    if budget is None:
        return
    wait = budget.take(owner, reads)
    if wait > 0:
        raise RateLimited(
            f"more than {int(budget.capacity)} reads in a minute (a search, a title sort "
            f"or a tag filter counts {SCAN_READS}, a calendar export {EXPORT_READS}); "
            "retry later",
            headers={"Retry-After": str(math.ceil(wait))},
        )
