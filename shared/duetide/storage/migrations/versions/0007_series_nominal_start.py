"""series nominal start

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00.000000

The wall time a re-based series' DTSTART stands for when that instant was adjusted
(clamped to a month's end, moved by a DST gap). Rows before it have none: their DTSTART
is its own nominal time, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("nominal_start", sqlmodel.sql.sqltypes.AutoString(length=19), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("series", schema=None) as batch_op:
        batch_op.drop_column("nominal_start")
