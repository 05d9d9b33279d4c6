"""webhook subscriptions

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-02 17:00:00.000000

Webhook subscriptions to a user's task events and their delivery log (issue 15): the
activity function stores a delivery per subscription and event, notify sends it, the
sweep claims the retries. Both are purged with the activity log.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    utc = duetide.storage.models.UTCDateTime
    op.create_table(
        "subscription",
        sa.Column("id", text(length=36), primary_key=True),
        sa.Column("owner", sa.String(length=255), nullable=False),
        sa.Column("url", text(length=2048), nullable=False),
        sa.Column("secret", text(length=128), nullable=False),
        sa.Column("previous_secret", text(length=128), nullable=True),
        sa.Column("previous_secret_until", utc(timezone=True), nullable=True),
        sa.Column("types", sa.JSON(), nullable=True),
        sa.Column("description", text(length=200), nullable=False),
        sa.Column("status", text(length=16), nullable=False),
        sa.Column("verified_at", utc(timezone=True), nullable=True),
        sa.Column("disabled_at", utc(timezone=True), nullable=True),
        sa.Column("disabled_reason", text(length=255), nullable=False),
        sa.Column("failing_since", utc(timezone=True), nullable=True),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("created_at", utc(timezone=True), nullable=False),
        sa.Column("updated_at", utc(timezone=True), nullable=False),
    )
    op.create_index("ix_subscription_owner", "subscription", ["owner"])
    op.create_table(
        "webhook_delivery",
        sa.Column("id", text(length=36), primary_key=True),
        sa.Column(
            "subscription_id",
            sa.String(length=36),
            sa.ForeignKey("subscription.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("owner", text(length=255), nullable=False),
        sa.Column("event_id", text(length=255), nullable=False),
        sa.Column("event_source", text(length=512), nullable=False),
        sa.Column("event_type", text(length=255), nullable=False),
        sa.Column("event_time", utc(timezone=True), nullable=True),
        sa.Column("task_id", text(length=36), nullable=False),
        sa.Column("data", sa.JSON(), nullable=False),
        sa.Column("status", text(length=16), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("started", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", utc(timezone=True), nullable=True),
        sa.Column("tries", sa.JSON(), nullable=False),
        sa.Column("created_at", utc(timezone=True), nullable=False),
        sa.Column("finished_at", utc(timezone=True), nullable=True),
        sa.UniqueConstraint("subscription_id", "event_source", "event_id", name="uq_delivery_once"),
    )
    op.create_index(
        "ix_delivery_subscription_created",
        "webhook_delivery",
        ["subscription_id", "created_at", "id"],
    )
    op.create_index("ix_delivery_due", "webhook_delivery", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_delivery_due", table_name="webhook_delivery")
    op.drop_index("ix_delivery_subscription_created", table_name="webhook_delivery")
    op.drop_table("webhook_delivery")
    op.drop_index("ix_subscription_owner", table_name="subscription")
    op.drop_table("subscription")
