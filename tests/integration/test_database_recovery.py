"""A lost PostgreSQL connection costs at most one 503, never a restart.

The pool pings a connection only after it sat idle (`db.PING_AFTER_IDLE_S`), not on
every checkout. These tests cut the function's own connections on the server
(`pg_terminate_backend`, as a database restart or a proxy's idle timeout would) and
check what the next requests see.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from duetide import events
from duetide.storage import db
from duetide.storage.models import ProcessedEvent, utcnow
from tests.integration.conftest import POSTGRES_URL, _reset_caches, function_client
from tests.integration.test_event_functions import due_reminder_event, post
from tests.support import pipe, wait_for


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


class FreezableProxy:
    """A loopback TCP proxy to PostgreSQL that can stop passing bytes on, connections
    left open: what a client sees of a server that froze (SIGSTOP, a storage stall),
    whose kernel goes on acknowledging what it is sent."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._flowing = threading.Event()
        self._flowing.set()
        self._sockets: list[socket.socket] = []
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def freeze(self) -> None:
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._flowing.set()
        for sock in [self._server, *self._sockets]:
            sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                return
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, target in ((client, upstream), (upstream, client)):
                passing = (source, target, self._flowing)
                threading.Thread(target=pipe, args=passing, daemon=True).start()


def test_a_server_that_freezes_mid_query_costs_a_503_at_the_bound_then_recovers(
    env, client, alice, monkeypatch: pytest.MonkeyPatch
):
    """A statement the server had accepted before it froze waited for it as long as the
    freeze lasted (its kernel acknowledges every byte, so no TCP bound fires, and libpq
    has no statement timeout of its own), holding its request and its thread."""
    if not env.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection's bounds")
    url = make_url(env)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        monkeypatch.setenv("DATABASE_URL", url.set(port=proxy.port).render_as_string(False))
        monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "1")  # a connection is cut after 3 s,
        monkeypatch.setenv("DUETIDE_PUBLISH_TIMEOUT_S", "0.25")  # over the relay's send's 2
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # straight to the statement
        _reset_caches()
        assert create(client, alice, "before") == 201
        proxy.freeze()
        answers: list[Any] = []
        request = threading.Thread(target=lambda: answers.append(create(client, alice, "x")))
        request.start()
        request.join(timeout=30)
        waited = request.is_alive()
        proxy.thaw()
        request.join()
        assert not waited, "the request still waited for the frozen server after 30 s"
        assert answers == [503]
        assert create(client, alice, "after") == 201
        assert "after" in titles(client, alice)
    finally:
        db.get_engine().dispose()
        proxy.close()


def test_the_ping_of_an_idle_connection_to_a_frozen_server_is_cut_short(
    env, client, alice, monkeypatch: pytest.MonkeyPatch
):
    """The ping of a connection that sat idle waited on a frozen server for the
    watchdog's whole bound (30 s by default) before the pool gave up on it, the request
    and its thread held all the while (a review, 2026-12-07). It has `PING_LIMIT_S`; the
    request then fails as connecting does, at the connect timeout."""
    if not env.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection's bounds")
    url = make_url(env)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        monkeypatch.setenv("DATABASE_URL", url.set(port=proxy.port).render_as_string(False))
        monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "4")  # connect 4 s, a connection cut at 12
        monkeypatch.setenv("DUETIDE_PUBLISH_TIMEOUT_S", "0.25")
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 0.0)  # every checkout pings
        monkeypatch.setattr(db, "PING_LIMIT_S", 0.5)
        _reset_caches()
        assert create(client, alice, "before") == 201
        proxy.freeze()
        answers: list[Any] = []
        request = threading.Thread(target=lambda: answers.append(create(client, alice, "x")))
        request.start()
        request.join(timeout=9)  # the ping's 0.5 s and a connect's 4: 12 s and 4 before
        waited = request.is_alive()
        proxy.thaw()
        request.join()
        assert not waited, "the ping waited for the watchdog's bound"
        assert answers == [503]
        assert create(client, alice, "after") == 201
    finally:
        db.get_engine().dispose()
        proxy.close()


def test_work_on_a_requests_time_after_its_commit_is_cut_at_its_own_bound(
    env, monkeypatch: pytest.MonkeyPatch
):
    """The fast path marks what it sent after the write's commit, on the request's
    time: during a freeze that waited for the watchdog's 30 s, and a committed write was
    answered 30 s late, which a client takes for a timeout and sends again (a review,
    2026-12-07). Its database steps run under `db.hold_limit`, the relay doing what they
    leave."""
    if not env.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection's bounds")
    url = make_url(env)
    proxy = FreezableProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        monkeypatch.setenv("DATABASE_URL", url.set(port=proxy.port).render_as_string(False))
        monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "4")  # a connection cut after 12 s
        monkeypatch.setenv("DUETIDE_PUBLISH_TIMEOUT_S", "0.25")
        monkeypatch.setattr(db, "PING_AFTER_IDLE_S", 3600.0)  # straight to the statement
        _reset_caches()
        with db.autocommit() as connection:
            connection.execute(text("SELECT 1"))  # a pooled connection, in steady use
        proxy.freeze()
        failed: list[BaseException] = []

        def mark() -> None:
            try:
                with db.hold_limit(0.5), db.autocommit() as connection:
                    connection.execute(text("SELECT 1"))
            except DBAPIError as error:
                failed.append(error)

        marking = threading.Thread(target=mark)
        marking.start()
        marking.join(timeout=6)  # its 0.5 s and the watchdog's tick: 12 s before
        waited = marking.is_alive()
        proxy.thaw()
        marking.join()
        assert not waited, "the statement waited for the pool's bound"
        assert len(failed) == 1
        with db.autocommit() as connection:  # and the pool starts afresh
            assert connection.execute(text("SELECT 1")).scalar() == 1
    finally:
        db.get_engine().dispose()
        proxy.close()


def test_a_connection_lost_at_the_commit_says_the_change_may_have_been_saved(
    connection_name: str,
) -> None:
    """Lost at COMMIT, a create may or may not be saved: its 503 said only "retry", and a
    plain retry made a second task (a review, 2026-12-07: 4 tasks stored of requests
    answered 503 during a freeze). It now says so and names the Idempotency-Key."""
    with pytest.raises(db.CommitUnknown) as raised, db.session_scope() as session:
        session.execute(text("SELECT 1"))
        assert cut_connections(connection_name) == 1
    assert "may have been saved" in raised.value.message
    assert "Idempotency-Key" in raised.value.message
    with db.session_scope() as session:  # the pool starts afresh
        assert session.execute(text("SELECT 1")).scalar() == 1


def test_a_row_refused_at_the_end_of_a_unit_of_work_is_refused_not_unknown(env) -> None:
    """A unique key refused when the unit of work ends is known not to be saved: on SQLite
    (no SQLSTATE) it was taken for a lost connection, `CommitUnknown`, and the callers
    that take a duplicate for a concurrent delivery's win no longer saw it (a review of
    the change, 2026-12-07)."""
    values = {"consumer": "test", "scope": "", "source": "/s", "event_id": "e-1"}
    with db.session_scope() as session:
        session.add(ProcessedEvent(**values, processed_at=utcnow()))
    with pytest.raises(IntegrityError), db.session_scope() as session:
        session.add(ProcessedEvent(**values, processed_at=utcnow()))


def test_statements_are_bounded_on_the_server_except_the_migrations(env) -> None:
    if not env.startswith("postgresql"):
        pytest.skip("PostgreSQL's statement_timeout")
    for long_statements, shown in ((False, "20s"), (True, "0")):
        engine = db.make_engine(env, long_statements=long_statements)
        try:
            with engine.connect() as connection:
                assert connection.execute(text("SHOW statement_timeout")).scalar() == shown
        finally:
            engine.dispose()


def test_a_transaction_may_stay_open_three_timeouts_or_the_relays_send_and_one() -> None:
    """The relay keeps its rows locked through its send to the broker: a bound below
    that send's (9 s by default) would end the relay's transaction, or cut its
    connection, whenever the broker was slow."""
    assert db.hold_limit_s(10, 2) == 30  # the defaults
    assert db.hold_limit_s(2, 2) == 11  # 4 x 2 + 1, and the timeout


def test_connection_bounds_the_url_names_are_kept() -> None:
    named = db._bounded_connections("postgresql+psycopg://u@h/d?connect_timeout=30", 10)
    assert "connect_timeout" not in named and named["tcp_user_timeout"] == 10_000


def test_connection_bounds_the_url_names_are_kept_on_the_server_too() -> None:
    url = "postgresql+psycopg://u@h/d?options=-c%20lock_timeout%3D5s%20-csearch_path%3Dx"
    assert db._session_bounds(url, 10, 30) == {
        "idle_in_transaction_session_timeout": 30_000,
        "statement_timeout": 20_000,
    }


def test_a_request_waiting_for_a_row_another_transaction_holds_is_a_503_at_the_timeout(
    env, client, alice, monkeypatch: pytest.MonkeyPatch
):
    """A statement waited for a row lock as long as its holder kept it (a transaction
    whose pod was cut off: the server's keepalives take two hours), holding its request,
    its thread and its connection all that time."""
    if not env.startswith("postgresql"):
        pytest.skip("PostgreSQL's lock_timeout")
    monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "1")
    _reset_caches()
    task_id = client.post("/tasks", json={"title": "held"}, headers=alice).get_json()["id"]
    answers: list[Any] = []

    def change() -> None:
        answers.append(client.patch(f"/tasks/{task_id}", json={"title": "x"}, headers=alice))

    holder = create_engine(env)  # no bounds of duetide's: it holds the row as long as it likes
    try:
        with holder.connect() as connection:
            connection.execute(
                text("SELECT id FROM task WHERE id = :id FOR UPDATE"), {"id": task_id}
            )
            waiter = threading.Thread(target=change)
            waiter.start()
            waiter.join(timeout=30)
            waited_on = waiter.is_alive()
            connection.rollback()
        waiter.join()
    finally:
        holder.dispose()
    assert not waited_on, "the request still waited for the row after 30 s"
    [answer] = answers
    assert answer.status_code == 503, answer.get_json()
    assert answer.headers["Retry-After"] == "1"
    again = client.patch(f"/tasks/{task_id}", json={"title": "changed"}, headers=alice)
    assert again.status_code == 200 and again.get_json()["title"] == "changed"


def test_a_transaction_whose_client_went_silent_is_ended_by_the_server(
    env, monkeypatch: pytest.MonkeyPatch
):
    """Its locks went with it; before, they stayed until the server's keepalives gave up
    on the client, two hours later."""
    if not env.startswith("postgresql"):
        pytest.skip("PostgreSQL's idle_in_transaction_session_timeout")
    monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "0.5")
    monkeypatch.setenv("DUETIDE_PUBLISH_TIMEOUT_S", "0.1")
    _reset_caches()
    engine = db.make_engine(env)
    admin = create_engine(POSTGRES_URL)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SHOW lock_timeout")).scalar() == "500ms"
            shown = connection.execute(text("SHOW idle_in_transaction_session_timeout"))
            assert shown.scalar() == "1900ms"  # the relay's longest send (1.4 s) + 0.5 s
            pid = connection.execute(text("SELECT pg_backend_pid()")).scalar()
            # In a transaction now, and the client says nothing more.

            def ended() -> bool:
                with admin.connect() as watching:
                    found = watching.execute(
                        text("SELECT count(*) FROM pg_stat_activity WHERE pid = :pid"),
                        {"pid": pid},
                    )
                    return found.scalar() == 0

            wait_for(ended, "the server to end the silent transaction", timeout_s=20)
            with pytest.raises(DBAPIError) as ended_session:  # a 503 in a request
                connection.execute(text("SELECT 1"))
            assert ended_session.value.connection_invalidated
    finally:
        engine.dispose()
        admin.dispose()


def test_notify_answers_503_once_its_group_finds_the_database_away(
    env, client, alice, monkeypatch: pytest.MonkeyPatch
):
    """notify's group commit, failed for the database (not on a duplicate's key), was
    made again event by event, each waiting its connect bound once more: a delivery
    took twice its bound (60-90 s on a locked SQLite, past the KafkaSource's 30 s
    timeout; an audit, 2026-12-07). Counted here as connections tried."""
    if not env.startswith("postgresql"):
        pytest.skip("a PostgreSQL connection's bounds")
    data = due_reminder_event(client, alice)
    notify = function_client("notify")
    tried: list[socket.socket] = []
    with socket.create_server(("127.0.0.1", 0)) as silent:

        def accept() -> None:  # and say nothing
            with contextlib.suppress(OSError):
                while True:
                    tried.append(silent.accept()[0])

        threading.Thread(target=accept, daemon=True).start()
        port = silent.getsockname()[1]
        monkeypatch.setenv("DATABASE_URL", f"postgresql+psycopg://duetide@127.0.0.1:{port}/x")
        monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "1")
        _reset_caches()
        answer = post(notify, events.REMINDER_DUE, data)
        assert answer.status_code == 503, answer.get_json()
        assert len(tried) == 1
    for sock in tried:
        sock.close()


def test_a_database_without_the_schema_is_a_503_that_says_to_migrate(
    env, alice, monkeypatch: pytest.MonkeyPatch, tmp_path
):
    """A function started before `duetide migrate` ran answered 500 (`relation "task"
    does not exist`; an audit, 2026-12-07): no bug of the request, and served as soon
    as the schema is there, so a 503 that says so (a redelivered event then succeeds)."""
    if env.startswith("postgresql"):  # the same server, where no table is visible
        empty = make_url(env).update_query_dict({"options": "-csearch_path=duetide_none"})
        url = empty.render_as_string(hide_password=False)
    else:
        url = f"sqlite:///{tmp_path / 'empty.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    _reset_caches()
    tasks = function_client("tasks")
    for answer in (
        tasks.post("/tasks", json={"title": "t"}, headers=alice),
        tasks.get("/tasks", headers=alice),
    ):
        assert answer.status_code == 503, answer.get_json()
        error = answer.get_json()["error"]
        assert error["code"] == "unavailable" and "duetide migrate" in error["message"]
