"""drop the indexes another index of the same table already leads with

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07 03:30:00.000000

ix_task_owner, ix_series_owner and ix_notification_owner index `owner` alone, and every
one of their tables has indexes that start with `owner` (ix_task_owner_created,
ix_series_owner_created, ix_notification_owner_delivered); ix_task_series_id indexes
`series_id`, which uq_task_occurrence (series_id, scheduled_at) starts with, also for the
ON DELETE SET NULL of a deleted series. A query on the column alone uses the longer index
as well; each insert paid for one more index, the task table's (the hottest) for two.
"""

from collections.abc import Sequence

from duetide.storage.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0019"
down_revision: str | None = "0018"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DROPPED = {
    "ix_task_owner": ("task", ["owner"]),
    "ix_series_owner": ("series", ["owner"]),
    "ix_notification_owner": ("notification", ["owner"]),
    "ix_task_series_id": ("task", ["series_id"]),
}


def upgrade() -> None:
    for name, (table, _) in DROPPED.items():
        drop_index_concurrently(name, table)


def downgrade() -> None:
    for name, (table, columns) in DROPPED.items():
        create_index_concurrently(name, table, columns)
