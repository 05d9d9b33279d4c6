"""an activity entry whose event arrived after a later one of its task

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-07 15:30:00.000000

An event older than an entry already logged for its task (a row the outbox sent late, a
replayed dead letter) is kept in the log as history but marked `superseded`, so that a
client applying the feed does not take it as the task's state (`services.activity`).
Entries before it were appended as they came: none is marked.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0022"
down_revision: str | None = "0021"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("activity", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("superseded", sa.Boolean(), nullable=False, server_default=sa.false())
        )


def downgrade() -> None:
    with op.batch_alter_table("activity", schema=None) as batch_op:
        batch_op.drop_column("superseded")
