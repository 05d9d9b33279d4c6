"""missed runs

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-05 08:30:00.000000

An occurrence_log row can stand for a run of consecutive missed occurrences (`count`,
and the last one's time): a catch-up wrote one row per occurrence it passed, 24,445 of
them for a daily series started in 1960. Rows before it are runs of one.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import duetide.storage.models

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("occurrence_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("count", sa.Integer(), nullable=False, server_default="1"))
        batch_op.add_column(
            sa.Column(
                "last_scheduled_at",
                duetide.storage.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("occurrence_log", schema=None) as batch_op:
        batch_op.drop_column("last_scheduled_at")
        batch_op.drop_column("count")
