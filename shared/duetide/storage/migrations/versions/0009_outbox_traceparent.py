"""outbox traceparent

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 13:30:00.000000

The W3C `traceparent` of the span that recorded an event (the API request, the event a
function handled, the sweep), sent as the event's CloudEvents `traceparent` extension so
the functions that consume it continue the trace. Version 00 values only: 55 characters.
Rows before it have none: their events go out without the extension, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("traceparent", sqlmodel.sql.sqltypes.AutoString(length=55), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("traceparent")
