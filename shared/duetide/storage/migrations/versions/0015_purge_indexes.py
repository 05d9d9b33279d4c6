"""indexes for the sweep's purges

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 06:20:00.000000

The sweep purges processed-event ids older than 7 days and webhook deliveries older than
the retention every minute; with no index on their times each purge read the whole table
(0.1 s a minute for 2,000,000 processed ids, a day of 25 events a second; a week of them
is some 15,000,000).
"""

from collections.abc import Sequence

from alembic import op

from duetide.storage.migrate import create_index_concurrently

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_index_concurrently("ix_processed_at", "processed_event", ["processed_at"])
    create_index_concurrently("ix_delivery_created", "webhook_delivery", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_created", "webhook_delivery")
    op.drop_index("ix_processed_at", "processed_event")
