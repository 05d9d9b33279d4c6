"""an index of the outbox's unsent rows in the order the relay sends them

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07 21:00:00.000000

The relay's batch (`sent_at IS NULL ORDER BY created_at LIMIT 500 FOR UPDATE SKIP
LOCKED`) could not take rows in order from `ix_outbox_pending (sent_at, created_at)` on
PostgreSQL: each batch read and sorted every unsent row, 150-200 ms and 76-84 MB written
to disk a batch at 200,000 after a broker outage (an audit, 2026-12-07). A partial index
of the unsent rows by time gives the 500 at once.
"""

from collections.abc import Sequence

from duetide.storage.migrate import create_index_concurrently, drop_index_concurrently

revision: str = "0026"
down_revision: str | None = "0025"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_index_concurrently("ix_outbox_unsent", "outbox", ["created_at"], "sent_at IS NULL")


def downgrade() -> None:
    drop_index_concurrently("ix_outbox_unsent", "outbox")
