"""Pure reminder rules: when a reminder fires, and whether a late one is still worth it."""

from __future__ import annotations

from datetime import datetime, timedelta


def fire_time(
    at: datetime | None, before_due_s: int | None, due_at: datetime | None
) -> datetime | None:
    """When a reminder fires: its `at`, or `before_due` ahead of the due time (None: no due)."""
    if at is not None:
        return at
    if before_due_s is None or due_at is None:
        return None
    return due_at - timedelta(seconds=before_due_s)


def is_missed(fire_at: datetime, now: datetime, grace: timedelta) -> bool:
    """A reminder claimed later than `grace` after its time is reported missed, not sent."""
    return now - fire_at > grace
