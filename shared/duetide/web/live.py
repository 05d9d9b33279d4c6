"""Live activity: the long-poll (`GET /activity?wait=`) and the server-sent events stream
(`GET /activity/stream`).

The activity log is written by another function (another process, often another pod),
so nothing in this process learns of a new entry: a waiter or a stream reads the log
every DUETIDE_ACTIVITY_POLL_S with a short read of its own (`db.session_scope`), and
holds no connection and no transaction in between.

Each waiter and each stream holds one of the WSGI worker threads (duetide.web.serve runs
the app on THREADS threads, and the stream's iterator is pulled on them), so their
numbers per process are bounded (`Slots`) well below THREADS: one over the bound is a
503 with Retry-After, not a thread taken from everyone else.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from duetide.config import get_settings
from duetide.errors import ApiError, RateLimited, Unavailable
from duetide.once import once
from duetide.services import activity_feed, ratelimit
from duetide.services.responses import ActivityItem, ActivityPage
from duetide.storage import db
from duetide.storage.models import utcnow
from duetide.web.stopping import STOPPING, pause

HEARTBEAT_S = 15.0
"""A comment line this often keeps proxies and the client from timing the stream out."""
RETRY_MS = 2000
"""The `retry:` a stream names: how long EventSource waits before it reconnects."""
STREAM_BATCH = 100


class Slots:
    """At most `size` holders at once, and at most half of them (one at least) one owner's;
    one more is refused at once (never queued). Without the share, one user holding every
    slot (a stream lasts 5 minutes, and the client reconnects) locked out everyone else."""

    def __init__(self, size: int, what: str) -> None:
        self._free = threading.BoundedSemaphore(size) if size > 0 else None
        self._what = what
        self._share = max(1, size // 2)
        self._held: Counter[str] = Counter()
        self._lock = threading.Lock()

    def take(self, owner: str) -> Callable[[], None]:
        """Take a slot for `owner`, or raise 429 (its share is taken) or 503 (all are);
        the returned callable gives it back (once)."""
        with self._lock:
            if self._held[owner] >= self._share:
                raise RateLimited(
                    f"{self._share} of the {self._what} open on this server are yours "
                    "already: close one first",
                    headers={"Retry-After": "1"},
                )
            self._held[owner] += 1
        if self._free is None or not self._free.acquire(blocking=False):
            self._forget(owner)
            raise Unavailable(
                f"too many {self._what} are open on this server; retry",
                headers={"Retry-After": "1"},
            )
        free = self._free
        given_back = threading.Event()

        def give_back() -> None:
            if not given_back.is_set():
                given_back.set()
                free.release()
                self._forget(owner)

        return give_back

    def _forget(self, owner: str) -> None:
        with self._lock:
            self._held[owner] -= 1
            if self._held[owner] <= 0:
                del self._held[owner]


@once
def waiters() -> Slots:
    return Slots(get_settings().duetide_activity_max_waiters, "waiting requests")


@once
def streams() -> Slots:
    return Slots(get_settings().duetide_activity_max_streams, "activity streams")


def _retention() -> timedelta:
    return timedelta(days=get_settings().duetide_activity_retention_days)


# --- the long-poll ------------------------------------------------------------------------


def wait_for_page(
    owner: str,
    read: Callable[[], ActivityPage],
    wait_s: float,
    sleep: Callable[[float], object] = pause,
) -> ActivityPage:
    """`read()` until it has items or `wait_s` has passed, or the process is stopping;
    its last answer.

    The first read is answered at once when it has items (or `wait_s` is 0), so only a
    request that would wait takes a slot.
    """
    wait_s = min(wait_s, get_settings().duetide_activity_max_wait_s)
    page = read()
    if page.items or wait_s <= 0:
        return page
    give_back = waiters().take(owner)
    try:
        poll = get_settings().duetide_activity_poll_s
        deadline = time.monotonic() + wait_s
        while not page.items and (remaining := deadline - time.monotonic()) > 0:
            if sleep(min(poll, remaining)) or STOPPING.is_set():
                break
            page = read()
    finally:
        give_back()
    return page


# --- the stream ---------------------------------------------------------------------------


def sse_event(token: str, item: ActivityItem) -> bytes:
    """One entry as an event: its id resumes right after it, its name is the CloudEvent
    type, its data the feed's item (JSON has no raw newline, so one `data:` line)."""
    data = item.model_dump_json(exclude_unset=True)
    return f"id: {token}\nevent: {item.type}\ndata: {data}\n\n".encode()


def open_stream(owner: str, since: str | None) -> Iterator[bytes]:
    """The stream's bytes after `since`, checked (400, 410) and its slot taken (503) before
    the answer starts; the slot is given back when the server closes the iterator."""
    read_at = utcnow()
    first = _read(owner, since)  # a bad or expired token is an error answer, not a stream
    give_back = streams().take(owner)
    return _Held(_events(owner, since, first, read_at), give_back)


def _read(owner: str, since: str | None) -> list[tuple[str, ActivityItem]]:
    with db.session_scope(read_only=True) as session:
        return activity_feed.entries(session, owner, since, STREAM_BATCH, _retention())


def _events(
    owner: str, since: str | None, first: list[tuple[str, ActivityItem]], read_at: datetime
) -> Iterator[bytes]:
    """`retry:`, then each entry as it is logged, a heartbeat every HEARTBEAT_S, until
    DUETIDE_ACTIVITY_STREAM_LIFETIME_S, or the process is told to stop (it ends then as
    at its lifetime). Between reads an empty chunk is yielded, so the server can see a
    client that went away within one poll.

    A heartbeat, and the stream's end, carry an `id:` and no data when the last read
    found nothing more: EventSource takes it as the id to resume from without firing an
    event, and its stamp is fresh (`activity_feed.caught_up`)."""
    settings = get_settings()
    poll, lifetime = settings.duetide_activity_poll_s, settings.duetide_activity_stream_lifetime_s
    started = time.monotonic()
    deadline = started + lifetime
    yield f"retry: {RETRY_MS}\n: activity of one user; resume with Last-Event-ID\n\n".encode()
    last_sent = started
    batch = first
    while True:
        sent = 0
        for token, item in batch:
            since = token
            event = sse_event(token, item)
            sent += len(event)
            yield event
            last_sent = time.monotonic()
        # Charged for its size as a page of the feed is: a read a batch alone let a
        # stream of large entries send 7-10 times the bytes the same budget gives
        # `GET /activity` (100 MB in 1.7 s; an audit, 2026-12-07). The debt paces what
        # follows (`_read_wait`) and the user's other reads.
        ratelimit.charge_size(owner, sent)
        now = time.monotonic()
        at_end = len(batch) < STREAM_BATCH
        if now >= deadline or STOPPING.is_set():
            if at_end:
                yield f"id: {activity_feed.caught_up(since, read_at)}\n\n".encode()
            return
        if at_end:
            if now - last_sent >= HEARTBEAT_S:
                yield f": heartbeat\nid: {activity_feed.caught_up(since, read_at)}\n\n".encode()
                last_sent = now
            else:
                yield b""
            pause(min(poll, deadline - now))  # told to stop: the next turn ends it
        else:  # catching up: each batch after a full one is a read, as a page of the feed
            while (wait := _read_wait(owner)) > 0 and (left := deadline - time.monotonic()) > 0:
                if time.monotonic() - last_sent >= HEARTBEAT_S:  # a debt may last a minute
                    yield b": heartbeat\n\n"
                    last_sent = time.monotonic()
                else:
                    yield b""
                if pause(min(wait, poll, left)):
                    break
        try:
            read_at = utcnow()
            batch = _read(owner, since)
        except (ApiError, SQLAlchemyError):  # the pool's wait too
            return  # the client reconnects with the last id it saw


def _read_wait(owner: str) -> float:
    """Take one read from `owner`'s budget: 0, or the seconds until there is one. A
    stream catching up once sent a 30-day log at full speed for the request's one read
    (97,804 entries, 101 MB and 18 s of CPU in 20 s; a review, 2026-12-07); it now
    goes at the pace of the user's reads, as paging the feed would."""
    budget = ratelimit.read_budget()
    return 0.0 if budget is None else budget.take(owner)


class _Held:
    """An iterator whose close (by the WSGI server, even before the first item) gives
    back its slot: a generator's own `finally` would not run if it never started."""

    def __init__(self, inner: Iterator[bytes], give_back: Callable[[], None]) -> None:
        self._inner, self._give_back = inner, give_back

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._inner)

    def close(self) -> None:
        try:
            close = getattr(self._inner, "close", None)
            if close is not None:
                close()
        finally:
            self._give_back()
