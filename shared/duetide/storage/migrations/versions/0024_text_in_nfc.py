"""user text in one Unicode form (NFC)

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07 18:00:00.000000

Titles, descriptions and tags are now stored and compared in NFC (`rules.text.nfc`):
`café` typed as é and as e with a combining accent were two tags on one task, and a
filter or search in one form missed the other (an audit, 2026-12-07). Rows written
before are brought to it here; a task's tag that becomes one it already has is merged.
ASCII text is always NFC, so PostgreSQL reads only rows with other characters (or, in
a JSON column, their escapes); SQLite, a local database, reads them all.
"""

import json
import unicodedata
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0024"
down_revision: str | None = "0023"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _candidates(connection: sa.Connection, select: str, columns: Iterable[str]) -> list:
    if connection.dialect.name != "postgresql":
        return list(connection.execute(sa.text(select)))
    wider = " OR ".join(f"CAST({c} AS TEXT) ~ '[^[:ascii:]]|\\\\u'" for c in columns)
    return list(connection.execute(sa.text(f"{select} WHERE {wider}")))


def upgrade() -> None:
    connection = op.get_bind()
    for table in ("task", "series"):
        rows = _candidates(
            connection, f"SELECT id, title, description FROM {table}", ("title", "description")
        )
        for row_id, title, description in rows:
            if (_nfc(title), _nfc(description)) != (title, description):
                connection.execute(
                    sa.text(f"UPDATE {table} SET title = :t, description = :d WHERE id = :id"),
                    {"t": _nfc(title), "d": _nfc(description), "id": row_id},
                )
    for series_id, tags in _candidates(connection, "SELECT id, tags FROM series", ("tags",)):
        listed = json.loads(tags) if isinstance(tags, str) else tags
        normal = sorted({_nfc(tag) for tag in listed})
        if normal != listed:
            connection.execute(
                sa.text("UPDATE series SET tags = :tags WHERE id = :id"),
                {"tags": json.dumps(normal), "id": series_id},
            )
    for task_id, tag in _candidates(connection, "SELECT task_id, tag FROM task_tag", ("tag",)):
        if _nfc(tag) == tag:
            continue
        key = {"task": task_id, "tag": tag, "normal": _nfc(tag)}
        taken = connection.execute(
            sa.text("SELECT 1 FROM task_tag WHERE task_id = :task AND tag = :normal"), key
        ).first()
        if taken:  # the same tag twice on the task: one is kept
            connection.execute(
                sa.text("DELETE FROM task_tag WHERE task_id = :task AND tag = :tag"), key
            )
        else:
            connection.execute(
                sa.text("UPDATE task_tag SET tag = :normal WHERE task_id = :task AND tag = :tag"),
                key,
            )


def downgrade() -> None:
    """Nothing to undo: NFC text is the same text."""
