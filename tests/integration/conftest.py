"""Integration fixtures: the functions against SQLite and PostgreSQL, real connections.

PostgreSQL comes from DUETIDE_TEST_POSTGRES_URL (scripts/test defaults it to the
local server). When it is set and the server is not there, the tests fail loudly;
only an explicitly empty value leaves PostgreSQL out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import functions_framework
import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlmodel import SQLModel

from duetide.config import get_settings
from duetide.storage import db
from duetide.web.auth import issue_local_token
from tests.support import migrated_database

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("DUETIDE_TEST_POSTGRES_URL", "")
BACKENDS = ["sqlite", "postgresql"] if POSTGRES_URL else ["sqlite"]


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A migrated database per backend for the session; PostgreSQL in its own schema."""
    postgres = POSTGRES_URL if request.param == "postgresql" else None
    with migrated_database(postgres, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture
def env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Configure the process as a function would be, on empty tables."""
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DUETIDE_JWT_SECRET", "integration-test-secret-of-enough-length")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    _reset_caches()
    with db.session_scope() as session:
        for table in reversed(SQLModel.metadata.sorted_tables):
            session.execute(text(f"DELETE FROM {table.name}"))
    yield database_url
    db.get_engine().dispose()
    _reset_caches()


def _reset_caches() -> None:
    from duetide.services import ratelimit
    from duetide.storage import outbox
    from duetide.web import auth

    get_settings.cache_clear()
    ratelimit.read_budget.cache_clear()
    auth.api_verifier.cache_clear()
    auth.event_verifier.cache_clear()
    db.get_engine.cache_clear()
    outbox._publisher = None


@pytest.fixture
def topics(
    env: str, unique_topic: Callable[[str], str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Topics of this test's own for the task events and the reminders."""
    names = {"tasks": unique_topic("tasks"), "reminders": unique_topic("reminders")}
    monkeypatch.setenv("DUETIDE_TOPIC_TASK_EVENTS", names["tasks"])
    monkeypatch.setenv("DUETIDE_TOPIC_REMINDERS", names["reminders"])
    _reset_caches()
    return names


def use_broker(monkeypatch: pytest.MonkeyPatch, servers: str, timeout_s: float = 1.0) -> None:
    """Point this process's publisher at `servers`: a fresh publisher, the only reset here."""
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", servers)
    monkeypatch.setenv("DUETIDE_PUBLISH_TIMEOUT_S", str(timeout_s))
    _reset_caches()


def function_client(name: str) -> FlaskClient:
    """The real functions-framework app of one function, driven through WSGI."""
    app = functions_framework.create_app(name, str(ROOT / "functions" / name / "main.py"))
    return app.test_client()


@pytest.fixture
def client(env: str) -> FlaskClient:
    return function_client("tasks")


def auth_headers(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {issue_local_token(user)}"}


@pytest.fixture
def alice(env: str) -> dict[str, str]:
    return auth_headers("alice")


@pytest.fixture
def bob(env: str) -> dict[str, str]:
    return auth_headers("bob")
