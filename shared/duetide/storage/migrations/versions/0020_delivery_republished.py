"""how often a delivery's current try was published without being taken; what a
processed event made

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-07 04:00:00.000000

A try whose event notify never took is published again as the same attempt (an outage
no longer spends a delivery's tries); `republished` bounds that, so a try notify can
never take is given up instead of published again until the retention purge. Rows
before it have not been published again. Deliveries of a subscription that is not
active now wait as `parked` (a word in the same VARCHAR column), found by subscription
through a partial index of the parked ones; `subscription.resuming` marks one whose
parked deliveries were more than its enabling request resumed, for the sweep to go on.

`processed_event.result` keeps what a create command made (its task id), so that the
command sent again is answered with the task, not a bare `duplicate`.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from duetide.storage.migrate import add_column_if_missing, create_index_concurrently

revision: str = "0020"
down_revision: str | None = "0019"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Each add skips a column there already: the concurrent index builds below commit
    # what came before them, and a build cut off (lock_timeout, a kill) left the columns
    # with the version still 0019, so every run after failed on them (an audit,
    # 2026-12-07).
    add_column_if_missing(
        "webhook_delivery",
        sa.Column("republished", sa.Integer(), nullable=False, server_default="0"),
    )
    add_column_if_missing("processed_event", sa.Column("result", sa.String(length=36)))
    create_index_concurrently(
        "ix_delivery_parked", "webhook_delivery", ["subscription_id"], "status = 'parked'"
    )
    add_column_if_missing(
        "subscription",
        sa.Column("resuming", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    create_index_concurrently("ix_subscription_resuming", "subscription", ["id"], "resuming")


def downgrade() -> None:
    op.drop_index("ix_subscription_resuming", "subscription")
    with op.batch_alter_table("subscription", schema=None) as batch_op:
        batch_op.drop_column("resuming")
    op.drop_index("ix_delivery_parked", "webhook_delivery")
    with op.batch_alter_table("processed_event", schema=None) as batch_op:
        batch_op.drop_column("result")
    op.execute("UPDATE webhook_delivery SET status = 'pending' WHERE status = 'parked'")
    with op.batch_alter_table("webhook_delivery", schema=None) as batch_op:
        batch_op.drop_column("republished")
