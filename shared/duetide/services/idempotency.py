"""`Idempotency-Key` on the API's creating writes: the same key again gets the answer
the first request got, and no second effect (draft-ietf-httpapi-idempotency-key-header,
as Stripe and others do it). A client whose connection dropped after sending
`POST /tasks` cannot know whether the task was made; with a key it can send it again.

The key is claimed in the write's own transaction, before its work, and the answer is
recorded in it after: a key has an answer exactly when its effect has committed, and a
write that fails leaves no trace of its key (sending it again runs it again). A second
request with the key while the first is still running waits for the first's commit on
PostgreSQL (the claim's insert waits on the row the first inserted, as a unique index
makes it) and is then answered from it; on SQLite the write lock orders them anyway.

Keys are the user's, kept `TTL`; the same key with another method, path or body is a
422, as the draft asks: it names another request, and answering it with the first's
answer would be wrong."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlmodel import col

from duetide.errors import ValidationFailed
from duetide.storage.models import IdempotentRequest

HEADER = "Idempotency-Key"
KEY_PATTERN = r"^[\x21-\x7e]{1,255}$"
"""Visible ASCII, 1 to 255 characters (a UUID, as the draft suggests, or any other);
compared as sent, quotes included."""
TTL = timedelta(hours=24)
REPLAYED = "Idempotent-Replayed"
"""Set on an answer that was recorded for an earlier request with the key."""
KEPT_HEADERS = ("Location", "ETag")


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    headers: dict[str, str]


def fingerprint(method: str, path: str, body: bytes) -> str:
    """What a key's requests must agree on: the same method, path and body (the body as
    validated and rendered again: its spacing and the order of its fields do not count)."""
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), body):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return digest.hexdigest()


def claim(
    connection: Connection, owner: str, key: str, request_fingerprint: str, now: datetime
) -> Answer | None:
    """Claim `key` for this request (None: go on, and `record` the answer), or the
    answer recorded for it. A key whose answer is older than TTL is claimed anew, whether
    or not the sweep has purged it yet."""
    statement = _CLAIM[connection.dialect.name]
    values = {"owner": owner, "key": key, "fingerprint": request_fingerprint, "now": now}
    if connection.execute(statement, values | {"stale": now - TTL}).first() is not None:
        return None
    found = _recorded(connection, owner, key, request_fingerprint)
    assert found is not None  # the claim found the key: its row is there
    return found


def recorded(
    connection: Connection, owner: str, key: str, request_fingerprint: str, now: datetime
) -> Answer | None:
    """The answer recorded for `key` within TTL, read without claiming it: a request
    whose checks cost more than a read (a URL's look-up) is answered from it before
    they run; None, and it goes on to `claim`."""
    found = _recorded(connection, owner, key, request_fingerprint, since=now - TTL)
    return found if found is not None and found.status != 0 else None


def _recorded(
    connection: Connection,
    owner: str,
    key: str,
    request_fingerprint: str,
    since: datetime | None = None,
) -> Answer | None:
    query = select(
        col(IdempotentRequest.fingerprint),
        col(IdempotentRequest.status),
        col(IdempotentRequest.body),
        col(IdempotentRequest.headers),
    ).where(col(IdempotentRequest.owner) == owner, col(IdempotentRequest.key) == key)
    if since is not None:
        query = query.where(col(IdempotentRequest.created_at) >= since)
    row = connection.execute(query).first()
    if row is None:
        return None
    if row.fingerprint != request_fingerprint:
        raise ValidationFailed.of(
            HEADER,
            "this key was sent with another request in the last 24 hours: a new request "
            "needs a new key",
        )
    return Answer(row.status, row.body, dict(row.headers))


def _claim_statement(insert: Any) -> Any:
    """Insert the key, or take over a stale one; returns a row only when claimed."""
    fresh: dict[str, Any] = {
        "fingerprint": bindparam("fingerprint"),
        "created_at": bindparam("now"),
        "status": 0,  # no answer yet: `record` writes it in the same transaction
        "body": "",
        "headers": {},
    }
    statement = insert(IdempotentRequest).values(
        owner=bindparam("owner"), key=bindparam("key"), **fresh
    )
    return statement.on_conflict_do_update(
        index_elements=["owner", "key"],
        set_=fresh,
        where=col(IdempotentRequest.created_at) < bindparam("stale"),
    ).returning(col(IdempotentRequest.key))


_CLAIM = {"postgresql": _claim_statement(pg_insert), "sqlite": _claim_statement(sqlite_insert)}


def answered(connection: Connection, owner: str, key: str, now: datetime) -> bool:
    """Whether `key` has an answer within TTL: a request sent again with it is answered
    from that, not run again, so it is charged to no write limit. Charged, a client that
    sent a request once more because the answer was lost, near its minute's budget, got
    429 instead of the answer it was owed."""
    found = connection.execute(
        select(col(IdempotentRequest.key)).where(
            col(IdempotentRequest.owner) == owner,
            col(IdempotentRequest.key) == key,
            col(IdempotentRequest.status) != 0,
            col(IdempotentRequest.created_at) >= now - TTL,
        )
    )
    return found.first() is not None


def record(connection: Connection, owner: str, key: str, answer: Answer) -> None:
    """The answer of the request that claimed `key`, in its transaction."""
    connection.execute(
        update(IdempotentRequest)
        .where(col(IdempotentRequest.owner) == owner, col(IdempotentRequest.key) == key)
        .values(status=answer.status, body=answer.body, headers=answer.headers)
    )


def expired(now: datetime) -> Any:
    """Keys past TTL: the sweep purges them."""
    return col(IdempotentRequest.created_at) < now - TTL
