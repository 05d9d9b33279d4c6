"""Alembic environment: runs the migrations on the URL given by duetide.storage.migrate.

Each migration in a transaction of its own (`transaction_per_migration`): in one for the
whole run, a table one migration altered stayed locked while the next waited for
another, so requests waited past the 10 s each lock wait is bounded by (an audit,
2026-12-07). On PostgreSQL a run holds an advisory lock from start to end: two at once
(two deploys, two `duetide migrate`) failed on each other's half-made types, or
deadlocked; the second now waits for the first, then finds nothing to do.
"""

import sys
import time

from alembic import context
from sqlalchemy import Connection
from sqlmodel import SQLModel

import duetide.storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from duetide.storage.db import make_engine

config = context.config
target_metadata = SQLModel.metadata
MIGRATION_LOCK = 0x6475657469646521
"""The advisory lock key of a migration run (PostgreSQL), any constant of our own."""
LOCK_RETRY_S = 0.5


def _take_lock(connection: Connection) -> None:
    """Session-level, so it holds across the migrations' transactions and their
    autocommit blocks. Tried again every half second, each try a transaction of its
    own: a waiting `pg_advisory_lock` holds a snapshot, which the other run's CREATE
    INDEX CONCURRENTLY waits for, a deadlock."""
    said = False
    while True:
        taken = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({MIGRATION_LOCK})")
        got = bool(taken.scalar())
        connection.commit()
        if got:
            return
        if not said:
            print("duetide migrate: another migration is running; waiting for it", file=sys.stderr)
            said = True
        time.sleep(LOCK_RETRY_S)


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no sqlalchemy.url: run the migrations through duetide.storage.migrate")
    engine = make_engine(url, long_statements=True)
    with engine.connect() as connection:
        postgresql = connection.dialect.name == "postgresql"
        if postgresql:
            _take_lock(connection)
        try:
            context.configure(
                connection=connection,
                target_metadata=target_metadata,
                render_as_batch=connection.dialect.name == "sqlite",
                compare_type=True,
                transaction_per_migration=True,
            )
            with context.begin_transaction():
                context.run_migrations()
        finally:
            if postgresql:
                connection.rollback()
                connection.exec_driver_sql(f"SELECT pg_advisory_unlock({MIGRATION_LOCK})")
                connection.commit()
    engine.dispose()


run_migrations_online()
