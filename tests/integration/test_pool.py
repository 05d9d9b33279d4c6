"""The process's one engine and pool, however its first requests arrive."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.pool import Pool

from duetide.storage import db

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
