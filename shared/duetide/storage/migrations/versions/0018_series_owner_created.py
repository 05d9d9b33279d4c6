"""an index for the series list's keyset pages

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 00:30:00.000000

`GET /series` pages by (created_at, id) from where the last page ended instead of by
offset; this index serves each page from its cursor, for an owner of any number of series.
"""

from collections.abc import Sequence

from alembic import op

from duetide.storage.migrate import create_index_concurrently

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_index_concurrently("ix_series_owner_created", "series", ["owner", "created_at", "id"])


def downgrade() -> None:
    op.drop_index("ix_series_owner_created", "series")
