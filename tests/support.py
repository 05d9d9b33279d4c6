"""Helpers the test layers share: awaiting a condition, a fresh migrated database, a
response's JSON body, a function served as the image serves it, a peer that answers a
byte at a time."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from werkzeug.test import TestResponse

from duetide.storage import migrate
from duetide_tools.local.broker import free_loopback_port


def wait_for(
    condition: Callable[[], Any], what: str, timeout_s: float = 30.0, interval_s: float = 0.05
) -> Any:
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(interval_s)
    pytest.fail(f"timed out after {timeout_s:g} s waiting for {what}")


def json_of(response: TestResponse) -> Any:
    """The JSON body of a test client's response; the test fails when it is not JSON."""
    assert response.is_json, (response.status_code, response.get_data(as_text=True)[:200])
    return response.json


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


@contextmanager
def migrated_database(postgres_url: str | None, folder: Path) -> Iterator[str]:
    """A fresh database at the newest schema: a PostgreSQL schema of its own when
    `postgres_url` is given (a server that is not there fails the test), else SQLite."""
    if not postgres_url:
        url = f"sqlite:///{folder / 'duetide.db'}"
        migrate.upgrade(url)
        yield url
        return
    schema = f"test_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(libpq(postgres_url), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.OperationalError as exc:
        pytest.fail(f"DUETIDE_TEST_POSTGRES_URL={postgres_url} is not reachable: {exc}")
    separator = "&" if "?" in postgres_url else "?"
    url = f"{postgres_url}{separator}options=-csearch_path%3D{schema}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(libpq(postgres_url), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def processes_with_home(home: Path) -> list[int]:
    """Pids whose environment names this stack's DUETIDE_HOME (the stack and its children)."""
    marker = f"DUETIDE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@contextmanager
def serving_function(home: Path, env: Mapping[str, str], function: str = "tasks") -> Iterator[int]:
    """`function` under duetide.web.serve (as the image runs it) on a free loopback port,
    with `env` as its whole environment and its output in `home/serve.log`; stopped after."""
    with served_process(home, env, function) as (port, _):
        yield port


def serve_command(function: str, port: int) -> list[str]:
    """`function` under duetide.web.serve on loopback `port`, as the image runs it."""
    source = Path(__file__).resolve().parents[1] / "functions" / function / "main.py"
    return [
        *(sys.executable, "-m", "duetide.web.serve"),
        *("--source", str(source), "--target", function),
        *("--host", "127.0.0.1", "--port", str(port)),
    ]


@contextmanager
def served_process(
    home: Path, env: Mapping[str, str], function: str = "tasks"
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`serving_function`'s port and its process, for a test that signals it."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_loopback_port()
    command = serve_command(function, port)
    log_path = home / "serve.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, env=dict(env), stdout=log, stderr=subprocess.STDOUT)
    try:

        def healthy() -> bool:
            assert process.poll() is None, log_path.read_text()[-3000:]
            try:
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(healthy, "duetide.web.serve to answer /healthz")
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def dribbling_server(
    drip: bytes, every_s: float, head: bytes = b"", reads_request: bool = False
) -> Iterator[tuple[int, threading.Event]]:
    """A loopback peer for one connection: it reads the request first if `reads_request`,
    sends `head`, then `drip` a byte every `every_s` (each well inside a socket timeout),
    and closes. Yields its port and an event set once it has sent everything: a client
    cut off at its deadline leaves it unset."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop, sent_all = threading.Event(), threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            if reads_request:
                connection.recv(65536)
            connection.sendall(head)
            for byte in drip:
                if stop.wait(every_s):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return
            sent_all.set()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1], sent_all
    finally:
        stop.set()
        listener.close()
        server.join(timeout=10)


def pipe(
    source: socket.socket, target: socket.socket, flowing: threading.Event | None = None
) -> None:
    """Pass what `source` sends on to `target` until either closes (a loopback proxy's
    one direction), each chunk once `flowing` is set if given; then close both."""
    try:
        while data := source.recv(65536):
            if flowing is not None:
                flowing.wait()
            target.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (source, target):
            sock.close()
