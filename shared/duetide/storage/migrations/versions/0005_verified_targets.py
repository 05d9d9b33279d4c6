"""verified notification targets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24 10:00:00.000000

Addresses and URLs stored before this revision start unverified: nothing but a
confirmation is sent to them until their owner confirms (the point of verifying).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("preference", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column(
                "email_verified_at",
                duetide.storage.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "webhook_verified_at",
                duetide.storage.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column("email_code_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "email_code_expires_at",
                duetide.storage.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "email_code_sent_at",
                duetide.storage.models.UTCDateTime(timezone=True),
                nullable=True,
            )
        )
        batch_op.add_column(
            sa.Column(
                "verification_sends", sa.JSON(), nullable=False, server_default=sa.text("'{}'")
            )
        )


def downgrade() -> None:
    with op.batch_alter_table("preference", schema=None) as batch_op:
        batch_op.drop_column("verification_sends")
        batch_op.drop_column("email_code_sent_at")
        batch_op.drop_column("email_code_expires_at")
        batch_op.drop_column("email_code_hash")
        batch_op.drop_column("webhook_verified_at")
        batch_op.drop_column("email_verified_at")
