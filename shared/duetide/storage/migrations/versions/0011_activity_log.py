"""activity log

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02 14:00:00.000000

The per-user activity log the activity function writes from the task events (issue 15):
append-only, ordered by `seq`, read by `GET /activity` and `GET /tasks/{id}/activity`,
purged by the sweep after DUETIDE_ACTIVITY_RETENTION_DAYS.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "activity",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("owner", text(length=255), nullable=False),
        sa.Column("type", text(length=255), nullable=False),
        sa.Column("event_id", text(length=255), nullable=False),
        sa.Column("source", text(length=512), nullable=False),
        sa.Column("task_id", text(length=36), nullable=False),
        sa.Column("series_id", text(length=36), nullable=True),
        sa.Column("actor", text(length=300), nullable=False),
        sa.Column("at", duetide.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_at", duetide.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("state", sa.JSON(), nullable=True),
        sa.Column("changes", sa.JSON(), nullable=True),
        sqlite_autoincrement=True,  # never reuse a purged `seq` (models.ActivityEntry)
    )
    op.create_index("ix_activity_owner_seq", "activity", ["owner", "seq"])
    op.create_index("ix_activity_owner_task_seq", "activity", ["owner", "task_id", "seq"])
    op.create_index("ix_activity_recorded", "activity", ["recorded_at"])


def downgrade() -> None:
    op.drop_index("ix_activity_recorded", table_name="activity")
    op.drop_index("ix_activity_owner_task_seq", table_name="activity")
    op.drop_index("ix_activity_owner_seq", table_name="activity")
    op.drop_table("activity")
