"""What a process makes one of (its engine and pool, its publisher), however its first
requests arrive."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.pool import Pool

from duetide.config import get_settings
from duetide.storage import db, outbox

THREADS = 16


def test_threads_opening_their_first_sessions_at_once_share_one_engine(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold process given 16 requests at once made an engine, and so a pool, per
    thread, and kept them all: 28 PostgreSQL connections where the bound was 15.

    Making an engine waits up to 0.5 s for a second maker, so the threads' race does
    not depend on how fast one is made."""
    made: list[str] = []
    second_maker = threading.Barrier(2)
    make_engine = db.make_engine

    def slow_make_engine(url: str) -> Engine:
        made.append(url)
        with contextlib.suppress(threading.BrokenBarrierError):
            second_maker.wait(timeout=0.5)
        return make_engine(url)

    monkeypatch.setattr(db, "make_engine", slow_make_engine)
    db.get_engine.cache_clear()
    start = threading.Barrier(THREADS)

    def first_session(_: int) -> Pool:
        start.wait(timeout=10)
        with db.session_scope() as session:
            session.execute(text("SELECT 1"))
            bind = session.get_bind()
            assert isinstance(bind, Engine)
            return bind.pool

    with ThreadPoolExecutor(THREADS) as pool:
        pools = set(pool.map(first_session, range(THREADS)))
    assert len(made) == 1
    assert pools == {db.get_engine().pool}


def test_threads_publishing_first_at_once_share_one_publisher(
    env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each publisher starts a producer of its own (connections, a sender thread) at its
    first send: one per thread that asked first would be kept for good."""
    made: list[outbox.Publisher] = []
    second_maker = threading.Barrier(2)

    class SlowPublisher(outbox.Publisher):
        def __init__(self, bootstrap_servers: str, timeout_s: float) -> None:
            made.append(self)
            with contextlib.suppress(threading.BrokenBarrierError):
                second_maker.wait(timeout=0.5)
            super().__init__(bootstrap_servers, timeout_s)

    monkeypatch.setattr(outbox, "Publisher", SlowPublisher)
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9")  # never reached: no send
    get_settings.cache_clear()
    monkeypatch.setattr(outbox, "_publisher", None)
    start = threading.Barrier(THREADS)

    def first_publisher(_: int) -> outbox.Publisher | None:
        start.wait(timeout=10)
        return outbox.get_publisher()

    with ThreadPoolExecutor(THREADS) as pool:
        publishers = set(pool.map(first_publisher, range(THREADS)))
    assert len(made) == 1
    assert publishers == set(made)
