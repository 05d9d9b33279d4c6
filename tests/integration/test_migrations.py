"""Migrations that move data, on both backends: what was stored before keeps its meaning,
and each goes down again (SQLite through batch operations)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import OperationalError

from duetide.config import get_settings
from duetide.storage import migrate
from tests.integration.conftest import BACKENDS, POSTGRES_URL
from tests.support import libpq

NEW_COLUMNS = {
    "email_verified_at",
    "webhook_verified_at",
    "email_code_hash",
    "email_code_expires_at",
    "email_code_sent_at",
    "verification_sends",
}


@pytest.fixture(params=BACKENDS)
def empty_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'migration.db'}"
        return
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(POSTGRES_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        separator = "&" if "?" in POSTGRES_URL else "?"
        yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(libpq(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def test_targets_stored_before_0005_start_unverified_and_it_goes_down(empty_database: str):
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0004")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO preference (owner, timezone, default_reminders, channels,"
                    " webhook_url, webhook_secret, email, updated_at) VALUES ('alice', 'UTC',"
                    " '[]', '[\"email\", \"webhook\"]', 'https://example.org/hook', 's',"
                    " 'alice@example.org', CURRENT_TIMESTAMP)"
                )
            )

        command.upgrade(config, "0005")

        with engine.connect() as conn:
            row = conn.execute(text("SELECT * FROM preference")).mappings().one()
        assert row["email"] == "alice@example.org"
        assert row["email_verified_at"] is None and row["webhook_verified_at"] is None
        assert row["email_code_hash"] is None
        assert row["verification_sends"] in ({}, "{}")

        command.downgrade(config, "0004")

        columns = {column["name"] for column in inspect(engine).get_columns("preference")}
        assert not columns & NEW_COLUMNS and "email" in columns
    finally:
        engine.dispose()


def test_0006_splits_command_keys_into_user_and_source_and_goes_down(empty_database: str):
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0005")
    engine = create_engine(empty_database)
    insert = text(
        "INSERT INTO processed_event (consumer, source, event_id, processed_at) VALUES"
        " ('commands', 'team|alice|/shop', 'order-9', CURRENT_TIMESTAMP),"
        " ('notify', '/sweep', 'r-1', CURRENT_TIMESTAMP)"
    )
    select_all = text("SELECT consumer, scope, source, event_id FROM processed_event")
    try:
        with engine.begin() as conn:
            conn.execute(insert)

        command.upgrade(config, "0006")

        with engine.connect() as conn:
            rows = sorted(tuple(row) for row in conn.execute(select_all))
        assert rows == [
            ("commands", "team", "alice|/shop", "order-9"),
            ("notify", "", "/sweep", "r-1"),
        ]
        key = inspect(engine).get_pk_constraint("processed_event")["constrained_columns"]
        assert key == ["consumer", "scope", "source", "event_id"]

        command.downgrade(config, "0005")

        with engine.connect() as conn:
            old = sorted(
                tuple(row) for row in conn.execute(text("SELECT source FROM processed_event"))
            )
        assert old == [("/sweep",), ("team|alice|/shop",)]
        key = inspect(engine).get_pk_constraint("processed_event")["constrained_columns"]
        assert key == ["consumer", "source", "event_id"]
    finally:
        engine.dispose()


def test_the_migrations_build_exactly_the_tables_the_models_declare(empty_database: str):
    """A column, index or constraint added to storage/models.py without its migration (or
    the other way round) shows here, not in production."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    import duetide.storage.models  # noqa: F401  (the tables, registered on SQLModel.metadata)

    migrate.upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection)
            assert compare_metadata(context, SQLModel.metadata) == []
    finally:
        engine.dispose()


def test_0014_builds_its_index_anew_after_a_lock_timeout_cut_it_off(
    empty_database: str, monkeypatch: pytest.MonkeyPatch
):
    """On PostgreSQL the index is built CONCURRENTLY, which waits for the transactions
    writing the table; `lock_timeout` cuts that wait off and leaves an invalid index, so
    the next attempt (deploying again) must drop it and build a valid one."""
    if not empty_database.startswith("postgresql"):
        pytest.skip("CREATE INDEX CONCURRENTLY")
    monkeypatch.setenv("DUETIDE_DB_TIMEOUT_S", "1")
    get_settings.cache_clear()
    config = migrate.alembic_config(empty_database)
    valid = text(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'ix_task_owner_priority'::regclass"
    )
    holder = create_engine(empty_database)
    try:
        command.upgrade(config, "0013")
        with holder.connect() as writing:
            writing.execute(text("UPDATE task SET priority = 0 WHERE false"))  # holds its lock
            with pytest.raises(OperationalError, match="lock timeout"):
                command.upgrade(config, "0014")
        with holder.connect() as connection:
            assert connection.execute(valid).scalar() is False  # what the cut-off build left
        command.upgrade(config, "0014")
        with holder.connect() as connection:
            assert connection.execute(valid).scalar() is True
            version = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar() == "0014"
    finally:
        holder.dispose()
        get_settings.cache_clear()


def test_0019_drops_the_indexes_others_lead_with_and_goes_down(empty_database: str):
    """Each dropped index's column is still the first of another index of its table, so a
    lookup by it alone (a user's series, a series' occurrences on its deletion) still
    reads an index; going down builds them again."""
    dropped = {"ix_task_owner", "ix_series_owner", "ix_notification_owner", "ix_task_series_id"}
    config = migrate.alembic_config(empty_database)
    engine = create_engine(empty_database)

    def indexes() -> dict[str, list[list[str | None]]]:
        found = inspect(engine)
        return {
            table: [list(i["column_names"]) for i in found.get_indexes(table)]
            + [list(u["column_names"]) for u in found.get_unique_constraints(table)]
            for table in ("task", "series", "notification")
        }

    def names() -> set[str | None]:
        found = inspect(engine)
        return {i["name"] for t in ("task", "series", "notification") for i in found.get_indexes(t)}

    try:
        command.upgrade(config, "0018")
        assert dropped <= names()
        command.upgrade(config, "0019")
        assert not dropped & names()
        left = indexes()
        for table, column in [("task", "owner"), ("series", "owner"), ("notification", "owner")]:
            assert any(columns[0] == column for columns in left[table])
        assert any(columns[0] == "series_id" for columns in left["task"])
        command.downgrade(config, "0018")
        assert dropped <= names()
    finally:
        engine.dispose()


def test_0024_brings_stored_text_to_nfc_and_merges_a_tag_stored_in_both_forms(
    empty_database: str,
):
    from datetime import UTC, datetime

    from sqlmodel import Session

    from duetide.storage.models import Series, Task, TaskTag

    nfc, nfd = "caf\u00e9", "cafe\u0301"
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0023")
    engine = create_engine(empty_database)
    at = datetime(2026, 12, 7, tzinfo=UTC)
    try:
        with Session(engine) as session:
            series = Series(
                owner="alice", rrule="FREQ=DAILY", timezone="UTC", dtstart=at, last_at=at,
                title=f"{nfd} weekly", description=nfd, tags=[nfd, nfc, "plain"],
            )  # fmt: skip
            task = Task(owner="alice", title=f"{nfd} run", description=f"a {nfd}")
            other = Task(owner="alice", title="ascii only")
            session.add_all([series, task, other])
            session.flush()
            session.add_all(
                [TaskTag(task_id=task.id, tag=t) for t in (nfd, nfc, f"{nfd}s")]
                + [TaskTag(task_id=other.id, tag=nfd)]
            )
            session.commit()
            ids = series.id, task.id, other.id

        command.upgrade(config, "0024")

        with engine.connect() as conn:
            texts = set(conn.execute(text("SELECT title, description FROM task")))
            texts |= set(conn.execute(text("SELECT title, description FROM series")))
            tags = sorted(conn.execute(text("SELECT task_id, tag FROM task_tag")))
            (stored,) = conn.execute(text("SELECT tags FROM series"))
        assert texts == {(f"{nfc} run", f"a {nfc}"), ("ascii only", ""), (f"{nfc} weekly", nfc)}
        assert tags == sorted([(ids[1], nfc), (ids[1], f"{nfc}s"), (ids[2], nfc)])
        series_tags = stored[0] if isinstance(stored[0], list) else json.loads(stored[0])
        assert series_tags == sorted([nfc, "plain"])
        command.downgrade(config, "0023")  # nothing to undo, and it goes down
    finally:
        engine.dispose()


def _differences(url: str) -> list:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlmodel import SQLModel

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return list(compare_metadata(MigrationContext.configure(connection), SQLModel.metadata))
    finally:
        engine.dispose()


def test_a_database_that_ran_the_first_versions_of_0012_and_0020_is_repaired(
    empty_database: str,
):
    """0012 and 0020 gained columns and indexes after they were committed: a database that
    ran their first versions was stamped past them without those, and the functions
    answered 503 "run the migrations" with none left to run (an audit, 2026-12-07)."""
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0024")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as conn:  # what the first versions left out
            for index in ("ix_delivery_parked", "ix_subscription_resuming"):
                conn.execute(text(f"DROP INDEX {index}"))
            for table, column in (
                ("subscription", "previous_secret"),
                ("subscription", "previous_secret_until"),
                ("subscription", "resuming"),
                ("processed_event", "result"),
            ):
                conn.execute(text(f"ALTER TABLE {table} DROP COLUMN {column}"))
        assert _differences(empty_database)  # as such a database was
        migrate.upgrade(empty_database)
        assert _differences(empty_database) == []
    finally:
        engine.dispose()


def test_0020_cut_off_after_its_columns_runs_again_to_the_end(empty_database: str):
    """Its concurrent index builds commit the columns added before them: one cut off (a
    lock timeout, a kill) left them with the version at 0019, and every run after failed
    on DuplicateColumn (an audit, 2026-12-07)."""
    config = migrate.alembic_config(empty_database)
    command.upgrade(config, "0019")
    engine = create_engine(empty_database)
    try:
        with engine.begin() as conn:  # what a run cut off in its first index build left
            conn.execute(
                text(
                    "ALTER TABLE webhook_delivery ADD COLUMN republished INTEGER DEFAULT 0 NOT NULL"
                )
            )
            conn.execute(text("ALTER TABLE processed_event ADD COLUMN result VARCHAR(36)"))
        migrate.upgrade(empty_database)
        assert migrate.current_revision(empty_database) == migrate.head()
        assert _differences(empty_database) == []
    finally:
        engine.dispose()


def test_a_schema_newer_than_the_code_is_nothing_to_do_not_a_failure(empty_database: str):
    """A rollback's migration Job (the previous image) met a revision it did not know,
    failed, and stopped the rollback at its first step (an audit, 2026-12-07)."""
    migrate.upgrade(empty_database)
    engine = create_engine(empty_database)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    finally:
        engine.dispose()
    with pytest.raises(migrate.SchemaNewer, match=r"\(9999\) is newer than this code's"):
        migrate.upgrade(empty_database)


@pytest.mark.skipif(not POSTGRES_URL, reason="PostgreSQL's advisory lock")
def test_two_migrations_at_once_on_postgresql_run_one_after_the_other(tmp_path: Path):
    """Two deploys' Jobs, or two `duetide migrate`, at once: one failed on the other's
    half-made types (UniqueViolation in pg_type) or both deadlocked (an audit, 2026-12-07).
    Two processes, as they are (alembic's context is one per process)."""
    schema = f"mig_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(libpq(POSTGRES_URL), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    env = {**os.environ, "DATABASE_URL": url, "DUETIDE_HOME": str(tmp_path)}
    command_line = [sys.executable, "-m", "duetide.storage.migrate"]
    try:
        runs = [
            subprocess.Popen(command_line, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            for _ in range(2)
        ]
        answers = [run.communicate(timeout=120) for run in runs]
        assert [run.returncode for run in runs] == [0, 0], answers
        assert migrate.current_revision(url) == migrate.head()
        assert _differences(url) == []
    finally:
        with psycopg.connect(libpq(POSTGRES_URL), autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
