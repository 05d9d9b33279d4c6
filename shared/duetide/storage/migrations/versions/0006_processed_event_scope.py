"""processed events keyed by a structured (consumer, scope, source, id) tuple

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-01 11:40:00.000000

Commands were deduplicated under the source `f"{user}|{source}"`, so user `team|alice`
with source `/shop` and user `team` with source `alice|/shop` shared one key. The user
moves to its own primary-key column. Rows written before keep working: each is split at
its first `|` only when that leaves a user part, which a command row always has.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = ["consumer", "scope", "source", "event_id"]


def upgrade() -> None:
    with op.batch_alter_table("processed_event") as batch_op:
        batch_op.add_column(
            sa.Column(
                "scope",
                sqlmodel.sql.sqltypes.AutoString(length=255),
                nullable=False,
                server_default="",
            )
        )
    # Old command rows: the user is everything before the first "|" (user ids from
    # tokens held no "|" in practice; a row split wrongly only forgets one duplicate).
    processed = sa.table(
        "processed_event", sa.column("consumer"), sa.column("scope"), sa.column("source")
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(processed.c.source).where(processed.c.consumer == "commands")
    ).all()
    for (source,) in rows:
        user, _, rest = source.partition("|")
        bind.execute(
            processed.update()
            .where(processed.c.consumer == "commands", processed.c.source == source)
            .values(scope=user, source=rest)
        )
    _primary_key(COLUMNS)


def _primary_key(columns: list[str]) -> None:
    """Replace the primary key: in place on PostgreSQL, by a table copy on SQLite."""
    if op.get_bind().dialect.name == "postgresql":
        op.drop_constraint("processed_event_pkey", "processed_event", type_="primary")
        op.create_primary_key("processed_event_pkey", "processed_event", columns)
        return
    # The copy is made from this shape (the reflected one would keep the old key flags).
    shape = sa.Table(
        "processed_event",
        sa.MetaData(),
        *(_COLUMN_TYPES[name]() for name in columns),
        sa.Column("processed_at", duetide.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(*columns, name="processed_event_pkey"),
    )  # fmt: skip
    with op.batch_alter_table("processed_event", copy_from=shape, recreate="always"):
        pass


_COLUMN_TYPES = {
    "consumer": lambda: sa.Column("consumer", sa.String(64), nullable=False),
    "scope": lambda: sa.Column("scope", sa.String(255), nullable=False, server_default=""),
    "source": lambda: sa.Column("source", sa.String(512), nullable=False),
    "event_id": lambda: sa.Column("event_id", sa.String(255), nullable=False),
}


def downgrade() -> None:
    processed = sa.table(
        "processed_event", sa.column("consumer"), sa.column("scope"), sa.column("source")
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(processed.c.scope, processed.c.source).where(processed.c.consumer == "commands")
    ).all()
    for scope, source in rows:
        bind.execute(
            processed.update()
            .where(processed.c.consumer == "commands", processed.c.scope == scope)
            .where(processed.c.source == source)
            .values(source=f"{scope}|{source}"[:512], scope="")
        )
    _primary_key(["consumer", "source", "event_id"])
    if op.get_bind().dialect.name == "postgresql":  # SQLite's copy left it out already
        op.drop_column("processed_event", "scope")
