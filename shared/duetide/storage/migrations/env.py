"""Alembic environment: runs the migrations on the URL given by duetide.storage.migrate."""

from alembic import context
from sqlmodel import SQLModel

import duetide.storage.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from duetide.storage.db import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no sqlalchemy.url: run the migrations through duetide.storage.migrate")
    engine = make_engine(url, long_statements=True)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
