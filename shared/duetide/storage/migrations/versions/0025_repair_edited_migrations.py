"""what 0012 and 0020 came to hold after databases had run their first versions

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07 18:10:00.000000

Two migrations were changed after they were committed: 0012 (`subscription`) gained
`previous_secret` and `previous_secret_until`, 0020 gained `processed_event.result`,
`subscription.resuming` and two partial indexes. A database that ran their first
versions was stamped past them without those, and the functions answered 503 "run the
migrations", which had nothing left to run (an audit, 2026-12-07). This adds whatever
of them is missing, and nothing on a database that has them all. (tests/unit/
test_migration_files.py now keeps committed migrations from being changed.)
"""

from collections.abc import Sequence

import sqlalchemy as sa

from duetide.storage.migrate import add_column_if_missing, create_index_if_missing
from duetide.storage.models import UTCDateTime

revision: str = "0025"
down_revision: str | None = "0024"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    add_column_if_missing("subscription", sa.Column("previous_secret", sa.String(length=128)))
    add_column_if_missing(
        "subscription", sa.Column("previous_secret_until", UTCDateTime(timezone=True))
    )
    add_column_if_missing("processed_event", sa.Column("result", sa.String(length=36)))
    add_column_if_missing(
        "subscription",
        sa.Column("resuming", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    create_index_if_missing(
        "ix_delivery_parked", "webhook_delivery", ["subscription_id"], "status = 'parked'"
    )
    create_index_if_missing("ix_subscription_resuming", "subscription", ["id"], "resuming")


def downgrade() -> None:
    """Nothing: what it adds belongs to 0012 and 0020, which take it down."""
