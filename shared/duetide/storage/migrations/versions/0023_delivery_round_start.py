"""the first try of a webhook delivery's current round

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-07 17:40:00.000000

A delivery its owner redelivers goes on numbering its tries, and each redelivery starts
a round with the retries of a new delivery: `round_start` is the round's first try. A
delivery that had spent its tries got one try from a redelivery, and a single 503 of a
receiver coming back failed it for good (an audit, 2026-12-07). Rows before it are in
their first round.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0023"
down_revision: str | None = "0022"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("round_start", sa.Integer(), nullable=False, server_default="1")
        )


def downgrade() -> None:
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_column("round_start")
