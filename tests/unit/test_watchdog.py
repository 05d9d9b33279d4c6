"""The watchdog cuts a connection held past its bound, and only that one."""

from __future__ import annotations

import socket
import time
from types import SimpleNamespace

import pytest

from duetide.storage import watchdog
from duetide.storage.watchdog import HoldWatch


def connection_of(sock: socket.socket) -> SimpleNamespace:
    """Enough of a psycopg connection: the descriptor of its socket."""
    return SimpleNamespace(pgconn=SimpleNamespace(socket=sock.fileno()))


def test_a_connection_held_past_the_bound_is_shut_down_and_one_within_it_is_not(
    monkeypatch: pytest.MonkeyPatch,
):
    clock = [1000.0]
    monkeypatch.setattr(
        watchdog, "time", SimpleNamespace(monotonic=lambda: clock[0], sleep=time.sleep)
    )
    watch = HoldWatch(limit_s=10)
    stuck_ours, stuck_server = socket.socketpair()
    busy_ours, busy_server = socket.socketpair()
    stuck, busy = object(), object()
    try:
        watch.held(connection_of(stuck_ours), stuck)
        clock[0] += 5
        watch.held(connection_of(busy_ours), busy)
        assert watch.expire(1009.9) == 0

        assert watch.expire(1010.0) == 1
        assert stuck_ours.recv(1) == b""  # what a blocked libpq read now gets
        assert stuck_server.recv(1) == b""  # and the server sees the client gone
        busy_server.sendall(b"x")
        assert busy_ours.recv(1) == b"x"
        assert watch.expire(1014.9) == 0  # cut once, and the other within its bound

        watch.released(stuck)
        watch.released(busy)
        assert watch.watched == 0
    finally:
        for sock in (stuck_ours, stuck_server, busy_ours, busy_server):
            sock.close()


def test_released_closes_the_duplicate_so_the_socket_closes_with_its_connection():
    watch = HoldWatch(limit_s=10)
    ours, server = socket.socketpair()
    record = object()
    watch.held(connection_of(ours), record)
    watch.released(record)
    ours.close()  # the driver closes its descriptor; no duplicate keeps the socket open
    assert server.recv(1) == b""
    server.close()


def test_a_connection_without_a_socket_is_not_watched():
    watch = HoldWatch(limit_s=10)
    watch.held(SimpleNamespace(), object())
    assert watch.watched == 0
