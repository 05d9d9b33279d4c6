"""Calendar feed tokens: a per-user secret in a URL, for calendar apps that subscribe by
URL and cannot send a bearer token (`GET /calendar/{token}.ics`).

The token is 256 random bits (URL-safe base64, 43 characters), shown once when made.
Only its SHA-256 is stored, so a copy of the database reads no calendar; a lookup is by
that hash (an index), and the stored hash is compared to it in constant time as well.
Making a new token replaces the old one, which then finds nothing; revoking deletes it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlmodel import Session, select

from duetide.storage.models import CalendarFeed

TOKEN_BYTES = 32
_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{43}")


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("ascii")).hexdigest()


def issue(session: Session, owner: str, now: datetime) -> tuple[str, CalendarFeed]:
    """A new token for `owner`, replacing any earlier one (whose URL stops working).

    One upsert: read first and inserted when missing, a first token racing a revoke
    found its conflicting row gone when it read it again, a 500 (an audit, 2026-12-07)."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    values = {"token_hash": _hash(token), "created_at": now}
    session.execute(
        insert(CalendarFeed)
        .values(owner=owner, **values)
        .on_conflict_do_update(index_elements=["owner"], set_=values)
    )
    query = select(CalendarFeed).where(CalendarFeed.owner == owner)
    return token, session.exec(query.execution_options(populate_existing=True)).one()


def revoke(session: Session, owner: str) -> bool:
    """Forget `owner`'s token; whether there was one."""
    feed = session.get(CalendarFeed, owner, with_for_update=True)
    if feed is None:
        return False
    session.delete(feed)
    return True


def owner_of(session: Session, token: str) -> str | None:
    """The user whose current token `token` is, or None (unknown, replaced or revoked).

    A malformed token is refused before any query: it cannot be one of ours."""
    if not _TOKEN_RE.fullmatch(token):
        return None
    wanted = _hash(token)
    feed = session.exec(select(CalendarFeed).where(CalendarFeed.token_hash == wanted)).first()
    if feed is None or not hmac.compare_digest(feed.token_hash, wanted):
        return None
    return feed.owner
