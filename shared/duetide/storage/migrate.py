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


def drop_index_concurrently(name: str, table: str) -> None:
    """In a migration: drop an index of a table the functions keep writing, on PostgreSQL
    CONCURRENTLY (a plain DROP INDEX waits for, then blocks, every reader and writer)."""
    from alembic import op

    if op.get_context().dialect.name != "postgresql":
        op.drop_index(name, table, if_exists=True)
        return
    with op.get_context().autocommit_block():
        op.drop_index(name, table, postgresql_concurrently=True, if_exists=True)


def upgrade(url: str | None = None) -> None:
    """Bring the database at `url` (default: the configured one) to the newest schema."""
    command.upgrade(alembic_config(url), "head")


def revision(message: str, url: str) -> None:
    """Autogenerate a migration by comparing the models with the database at `url`."""
    command.revision(alembic_config(url), message=message, autogenerate=True)


def main() -> int:
    """`duetide-migrate`: the production image's migration command (the Job's)."""
    upgrade()
    print("database schema is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
