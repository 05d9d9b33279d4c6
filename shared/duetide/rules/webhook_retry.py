"""Pure rules of webhook subscription deliveries: when to try again, when to give up a
delivery, when to stop a subscription.

Retries back off by 4x from a base (30 s, 2 min, 8 min, 32 min, ... up to a cap), as
Stripe's and GitHub Apps' deliveries do, so a receiver that is down for a deploy gets a
few quick tries and one that is down for a day is not hammered. A subscription is
disabled only when failures have lasted both long (`after`) and many tries in a row
(`min_failures`): a burst of events to a receiver down for a minute fails many tries
at once but not for long, and a receiver that fails once a day is not failing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

FACTOR = 4


def retry_wait(attempt: int, base_s: float, cap_s: float) -> timedelta:
    """The wait after failed try number `attempt` (1 is the first try)."""
    return timedelta(seconds=min(base_s * FACTOR ** max(attempt - 1, 0), cap_s))


def retries(attempt: int, retryable: bool, max_attempts: int) -> bool:
    """Whether a delivery whose try `attempt` failed is tried again: only a transient
    failure (a timeout, 429, 5xx), and only while tries are left."""
    return retryable and attempt < max_attempts


def disables(
    failures: int, failing_since: datetime, now: datetime, min_failures: int, after: timedelta
) -> bool:
    """Whether a subscription whose last `failures` tries all failed, the first of them
    at `failing_since`, is disabled."""
    return failures >= min_failures and now - failing_since >= after
