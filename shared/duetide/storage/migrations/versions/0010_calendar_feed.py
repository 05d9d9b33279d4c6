"""calendar feed

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02 14:00:00.000000

A user's calendar feed token, for `GET /calendar/{token}.ics`: calendar apps subscribe
by URL and cannot send a bearer token. Only the token's SHA-256 (hex) is stored, unique,
so a request finds its user by an index look-up on the hash.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

import duetide.storage.models

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calendar_feed",
        sa.Column("owner", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("token_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("created_at", duetide.storage.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("owner"),
        sa.UniqueConstraint("token_hash"),
    )


def downgrade() -> None:
    op.drop_table("calendar_feed")
