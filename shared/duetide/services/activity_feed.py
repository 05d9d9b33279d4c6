"""The delta feed over the activity log (`GET /activity`, `GET /tasks/{id}/activity`).

The token. `since` is opaque to clients: the last `seq` they saw and a time no later
than that entry was logged. Entries are purged by `recorded_at`, so a token whose time
is past the retention may have lost entries after it: that is a 410, and the client
starts over (a full `GET /tasks`, then the feed without `since`). Entries are read in
`seq` order, which `activity.record` makes the commit order of each owner's entries.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import Session, col, select

from duetide.errors import BadRequest, Gone, NotFound
from duetide.services import opaque
from duetide.services.responses import ActivityItem, ActivityPage, ActivityTask
from duetide.storage.models import ActivityEntry, Task, utcnow

# A page that reaches the end of the log stamps its token this long before now: an entry
# still committing has a `recorded_at` no earlier than that (clocks of pods may differ).
END_MARGIN = timedelta(minutes=1)
_TOKEN_VERSION = "a1"


# --- the token ---------------------------------------------------------------------------


def encode_token(seq: int, stamp: datetime) -> str:
    return opaque.dump([_TOKEN_VERSION, seq, int(stamp.timestamp())])


def decode_token(token: str) -> tuple[int, datetime]:
    """(seq, stamp) of a token this service gave; anything else is a 400."""
    try:
        version, seq, stamp = opaque.load(token)
        if version != _TOKEN_VERSION or type(seq) is not int or type(stamp) is not int:
            raise ValueError("not a token")
        if not (0 <= seq < 2**63 and 0 <= stamp < 2**40):
            raise ValueError("out of range")
        return seq, datetime.fromtimestamp(stamp, UTC)
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise BadRequest("invalid `since`: pass back the `since` of a previous answer") from None


# --- reading -----------------------------------------------------------------------------


def feed(
    session: Session,
    owner: str,
    since: str | None,
    limit: int,
    retention: timedelta,
    task_id: str | None = None,
) -> ActivityPage:
    """Up to `limit` entries after the token, oldest first, and the token to go on from.

    410 when the token is older than the retention: entries after it may be purged.
    """
    now = utcnow()
    after, stamp = _start(since, now, retention)
    rows = _after(session, owner, after, limit + 1, now, retention, task_id)
    more = len(rows) > limit
    rows = rows[:limit]
    if rows:
        last = rows[-1]
        assert last.seq is not None
        after, stamp = last.seq, last.recorded_at
    if not more:
        stamp = max(stamp, now - END_MARGIN)
    return ActivityPage(
        items=[item_of(row) for row in rows], since=encode_token(after, stamp), more=more
    )


def entries(
    session: Session, owner: str, since: str | None, limit: int, retention: timedelta
) -> list[tuple[str, ActivityItem]]:
    """Up to `limit` entries after the token, each with the token that resumes right after
    it (the stream's event ids); 400 or 410 for a token `feed` would refuse."""
    now = utcnow()
    after, _ = _start(since, now, retention)
    rows = _after(session, owner, after, limit, now, retention, None)
    return [(encode_token(row.seq or 0, row.recorded_at), item_of(row)) for row in rows]


def caught_up(since: str | None, read_at: datetime) -> str:
    """The token of a reader that has every entry after `since` and whose read, begun at
    `read_at`, found no more: stamped as `feed` stamps a page that reaches the end. The
    stream sends it as an `id:` of its own, so a quiet user's EventSource reconnects with a
    fresh stamp, not its last entry's, which turned 410 once that entry aged past the
    retention though nothing after it had been missed."""
    fresh = read_at - END_MARGIN
    if not since:
        return encode_token(0, fresh)
    after, stamp = decode_token(since)
    return encode_token(after, max(min(stamp, read_at), fresh))


def _start(since: str | None, now: datetime, retention: timedelta) -> tuple[int, datetime]:
    after, stamp = decode_token(since) if since else (0, now - retention)
    stamp = min(stamp, now)  # a stamp from the future would never turn 410
    if since and stamp < now - retention:
        days = retention.days
        raise Gone(
            f"`since` is older than the activity log keeps ({days} days): read the tasks "
            "again (GET /tasks) and start the feed over without `since`"
        )
    return after, stamp


def _after(
    session: Session,
    owner: str,
    after: int,
    limit: int,
    now: datetime,
    retention: timedelta,
    task_id: str | None,
) -> list[ActivityEntry]:
    query = select(ActivityEntry).where(
        ActivityEntry.owner == owner,
        col(ActivityEntry.seq) > after,
        # Past the retention but not purged yet: left out, so no token is stamped expired.
        col(ActivityEntry.recorded_at) >= now - retention,
    )
    if task_id is not None:
        query = query.where(ActivityEntry.task_id == task_id)
    return list(session.exec(query.order_by(col(ActivityEntry.seq)).limit(limit)).all())


def task_feed(
    session: Session, owner: str, task_id: str, since: str | None, limit: int, retention: timedelta
) -> ActivityPage:
    """One task's history; 404 unless the owner has (or had) that task."""
    logged = session.exec(
        select(ActivityEntry.seq)
        .where(ActivityEntry.owner == owner, ActivityEntry.task_id == task_id)
        .limit(1)
    ).first()
    if logged is None:
        task = session.get(Task, task_id)
        if task is None or task.owner != owner:
            raise NotFound(f"no task {task_id}")
    return feed(session, owner, since, limit, retention, task_id=task_id)


def item_of(row: ActivityEntry) -> ActivityItem:
    state: dict[str, Any] | None = row.state
    return ActivityItem(
        type=row.type,
        task_id=row.task_id,
        at=row.at.isoformat(),
        event_id=row.event_id,
        actor=row.actor,
        series_id=row.series_id,
        deleted=state is None,
        task=ActivityTask.model_validate(state) if state is not None else None,
        changes=row.changes,  # validated into ActivityChange
        superseded=row.superseded,
    )
