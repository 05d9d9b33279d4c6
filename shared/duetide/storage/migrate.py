"""Schema migrations (Alembic), applied by the local stack at start and in production as a Job."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

from duetide.config import get_settings

SCRIPTS = Path(__file__).parent / "migrations"


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPTS))
    url = url or get_settings().effective_database_url
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # configparser escaping
    return config


def create_index_concurrently(
    name: str, table: str, columns: list[str], where: str | None = None
) -> None:
    """In a migration: an index on a table the functions keep writing (partial: `where`).
    On PostgreSQL it is built CONCURRENTLY, so writes go on meanwhile (a plain CREATE
    INDEX blocks them for the whole build). Such a build waits for the transactions
    writing the table, a wait that `lock_timeout` cuts off, leaving an invalid index:
    each attempt drops that first."""
    from alembic import op
    from sqlalchemy import text

    partial: dict[str, Any] = {}
    if where is not None:
        partial = {"postgresql_where": text(where), "sqlite_where": text(where)}
    if op.get_context().dialect.name != "postgresql":
        op.create_index(name, table, columns, **partial)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table, postgresql_concurrently=True, if_exists=True)
        op.create_index(name, table, columns, postgresql_concurrently=True, **partial)


def add_column_if_missing(table: str, column: Any) -> None:
    """In a migration: add `column` unless the table has it. A migration whose columns
    are committed before an autocommit block (a concurrent index) and that fails in the
    block is run again from its start: a plain add then failed for good (DuplicateColumn;
    an audit, 2026-12-07)."""
    from alembic import op
    from sqlalchemy import inspect

    present = {c["name"] for c in inspect(op.get_bind()).get_columns(table)}
    if column.name not in present:
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(column)


def create_index_if_missing(
    name: str, table: str, columns: list[str], where: str | None = None
) -> None:
    """`create_index_concurrently`, unless an index of that name is on the table."""
    from alembic import op
    from sqlalchemy import inspect

    if name not in {index["name"] for index in inspect(op.get_bind()).get_indexes(table)}:
        create_index_concurrently(name, table, columns, where)


def drop_index_concurrently(name: str, table: str) -> None:
    """In a migration: drop an index of a table the functions keep writing, on PostgreSQL
    CONCURRENTLY (a plain DROP INDEX waits for, then blocks, every reader and writer)."""
    from alembic import op

    if op.get_context().dialect.name != "postgresql":
        op.drop_index(name, table, if_exists=True)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table, postgresql_concurrently=True, if_exists=True)


class SchemaNewer(Exception):
    """The database is at a revision this code does not know: a newer release migrated it."""


def upgrade(url: str | None = None) -> None:
    """Bring the database at `url` (default: the configured one) to the newest schema.

    `SchemaNewer` when a newer release's migrations have run: every migration leaves the
    schema usable by the code before it (DEPLOY.md), so that is nothing to do, and a
    rollback's migration Job must not fail on it (alembic's "Can't locate revision"
    stopped the rollback at its first step; an audit, 2026-12-07)."""
    config = alembic_config(url)
    current = current_revision(url)
    if current is not None and current not in known_revisions():
        raise SchemaNewer(
            f"the database's schema ({current}) is newer than this code's ({head()}): nothing to do"
        )
    command.upgrade(config, "head")
    from duetide.storage.db import make_engine, reclaimable

    engine = make_engine(url or get_settings().effective_database_url, long_statements=True)
    try:
        reclaimable(engine)
    finally:
        engine.dispose()


def known_revisions() -> set[str]:
    return {revision.revision for revision in _scripts().walk_revisions()}


def head() -> str:
    return str(_scripts().get_current_head())


def _scripts() -> Any:
    """The migrations as Alembic reads them (no database needed)."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config("sqlite://"))


def current_revision(url: str | None = None) -> str | None:
    from alembic.runtime.migration import MigrationContext

    from duetide.storage.db import make_engine

    engine = make_engine(url or get_settings().effective_database_url)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()


def revision(message: str, url: str) -> None:
    """Autogenerate a migration by comparing the models with the database at `url`."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def main() -> int:
    """`duetide-migrate`: the production image's migration command (the Job's)."""
    try:
        upgrade()
    except SchemaNewer as newer:
        print(f"duetide-migrate: {newer}")
        return 0
    print("database schema is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
