"""idempotent requests

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 21:40:00.000000

A write sent with an `Idempotency-Key` and the answer it got, kept a day
(`duetide.services.idempotency`): a client that lost the answer to a POST can send it
again without making a second task.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    text = sqlmodel.sql.sqltypes.AutoString
    op.create_table(
        "idempotent_request",
        sa.Column("owner", text(length=255), primary_key=True),
        sa.Column("key", text(length=255), primary_key=True),
        sa.Column("fingerprint", text(length=64), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", duetide.storage.models.UTCDateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotent_created", "idempotent_request", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotent_created", "idempotent_request")
    op.drop_table("idempotent_request")
