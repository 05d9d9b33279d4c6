"""A lost PostgreSQL connection costs at most one 503, never a restart.

The pool pings a connection only after it sat idle (`db.PING_AFTER_IDLE_S`), not on
every checkout. These tests cut the function's own connections on the server
(`pg_terminate_backend`, as a database restart or a proxy's idle timeout would) and
check what the next requests see.
"""

from __future__ import annotations

import socket
import uuid

import pytest
from sqlalchemy import create_engine, text

from duetide.storage import db
from tests.integration.conftest import POSTGRES_URL, _reset_caches


@pytest.fixture
def connection_name(env: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The function's connections carry an application_name of this test's own."""
    if not env.startswith("postgresql"):
        pytest.skip("cutting server-side connections is a PostgreSQL test")
    name = f"duetide-recovery-{uuid.uuid4().hex[:12]}"
    separator = "&" if "?" in env else "?"
    monkeypatch.setenv("DATABASE_URL", f"{env}{separator}application_name={name}")
    _reset_caches()
    return name


def cut_connections(name: str) -> int:
    admin = create_engine(POSTGRES_URL)
    try:
        with admin.connect() as connection:
            cut = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            ).all()
        return len(cut)
    finally:
        admin.dispose()


def create(client, headers, title: str) -> int:
    return client.post("/tasks", json={"title": title}, headers=headers).status_code


def titles(client, headers) -> list[str]:
    listed = client.get("/tasks?sort=title", headers=headers)
    assert listed.status_code == 200
    return [item["title"] for item in listed.get_json()["items"]]


def test_a_connection_cut_while_idle_is_replaced_before_a_request_uses_it(
    client, alice, connection_name, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every pooled connection is idle now
    assert create(client, alice, "before") == 201

    assert cut_connections(connection_name) >= 1

    assert create(client, alice, "after") == 201
    assert titles(client, alice) == ["after", "before"]


def test_a_connection_cut_while_in_use_fails_one_request_with_503_and_the_next_reconnects(
    client, alice, connection_name, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # never pinged: as under load
    assert create(client, alice, "before") == 201

    assert cut_connections(connection_name) >= 1

    failed = client.post("/tasks", json={"title": "lost"}, headers=alice)
    assert failed.status_code == 503
    assert failed.get_json()["error"]["code"] and failed.headers["Retry-After"] == "1"
    assert create(client, alice, "after") == 201
    assert titles(client, alice) == ["after", "before"]


def test_a_server_that_accepts_and_never_answers_is_a_503_at_the_timeout(
    env, client, alice, monkeypatch: pytest.MonkeyPatch
):
    """A server that froze (or a network cut) held each request as long as it lasted:
    the engine had no connect timeout. Here a listener that completes TCP handshakes and
    never says a word stands in for it."""
    if not env.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection's bounds")
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://duetide@127.0.0.1:{port}/x")
        monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "2")
        _reset_caches()
        answer = client.get("/tasks", headers=alice)
    assert answer.status_code == 503, answer.get_json()
    assert answer.get_json()["error"]["code"] == "unavailable"


def test_connection_bounds_the_url_names_are_kept() -> None:
    named = db._bounded_connections("postgresql+psycopg://u@h/d?connect_timeout=30", 10)
    assert "connect_timeout" not in named and named["tcp_user_timeout"] == 10_000
