"""indexes for an owner's pending reminders and a series' occurrences in order

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-07 07:00:00.000000

A review measured, on PostgreSQL: `/reminders/upcoming` for an owner whose pending
reminders come after everyone else's read past all of theirs by the due index (0.7 s
among 660,000; `ix_reminder_owner_pending` makes it 7 ms); a series' latest occurrence,
its open one and its history's pages sorted the whole series' past (0.45 s at 200,000
occurrences; the two `*_series_index` indexes make them a few rows each).
"""

from collections.abc import Sequence

from alembic import op

from duetide.storage.migrate import create_index_concurrently

revision: str = "0021"
down_revision: str | None = "0020"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_index_concurrently(
        "ix_reminder_owner_pending", "reminder", ["owner", "fire_at", "id"], "state = 'pending'"
    )
    create_index_concurrently(
        "ix_task_series_index", "task", ["series_id", "occurrence_index", "scheduled_at"]
    )
    create_index_concurrently(
        "ix_occurrence_log_series_index",
        "occurrence_log",
        ["series_id", "occurrence_index", "scheduled_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_occurrence_log_series_index", "occurrence_log")
    op.drop_index("ix_task_series_index", "task")
    op.drop_index("ix_reminder_owner_pending", "reminder")
