"""reminder task index

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 11:00:00.000000

Every read of a task loads its reminders by `task_id` (a page of 50 tasks: one query
for all of them), and a task's deletion cascades to them by it; without an index each
was a scan of the whole reminder table, which grows with every user.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_reminder_task_id", "reminder", ["task_id"])


def downgrade() -> None:
    op.drop_index("ix_reminder_task_id", table_name="reminder")
