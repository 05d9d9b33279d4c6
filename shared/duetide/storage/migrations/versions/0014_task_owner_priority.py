"""an index for the task list sorted by priority

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 05:30:00.000000

`GET /tasks?sort=priority` read the owner's tasks in (priority, id) order with nothing to
read them from: every page sorted all of them (150 ms a page for 200,000 tasks).
"""

from collections.abc import Sequence

from alembic import op

from duetide.storage.migrate import create_index_concurrently

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    create_index_concurrently("ix_task_owner_priority", "task", ["owner", "priority", "id"])


def downgrade() -> None:
    op.drop_index("ix_task_owner_priority", "task")
