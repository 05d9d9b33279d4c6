"""Webhook subscription deliveries: each task event once per subscription, stored, sent
as a signed binary-mode CloudEvent, retried with backoff, logged.

The path, and why each step is where it is:

- The activity function, which already takes each task event exactly once and in order
  per task, stores a delivery for each active subscription of the event's owner that
  wants its type (`fan_out`), in the same transaction as the activity entry, with one
  outbox event `webhook.delivery` (attempt 1) per delivery. A redelivered task event
  stores nothing twice.
- notify, the one function with egress to user-chosen hosts, takes that event from its
  own topic (`send`): it marks the try started, POSTs through the one webhook client
  (`webhook.post_signed`: SSRF guard, pinned address, bounded answer), and records the
  outcome. It answers 2xx whatever the receiver did: a failing receiver never holds a
  partition or spends the KafkaSource's retries, which are for duetide's own trouble
  (a database error is still a 503).
- The sweep claims what is due again (`claim_retries`): a failed try's retry after its
  backoff, or a try whose sender died before recording it (after the lease), as the
  next attempt, with a new outbox event. A try whose event was never taken (a backlog,
  notify or the broker down past the lease) is published again as the same attempt: it
  counted as one, and an outage of eight leases failed every delivery made at its start
  without one POST. At most `MAX_REPUBLISHES` times, backed off: a try notify can never
  take is given up rather than published until the purge.
- A due delivery of a subscription that is not active is `parked` by the same claim:
  out of the due range every ping reads (left due, each ping read past all of them),
  until the subscription is enabled or verified (`resume`), or a day has passed (the
  net under a `resume` that never ran).

Each try is numbered (`attempt`), and notify starts a try only once (`started`): a
stale or repeated event for a try already started changes nothing. A receiver sees a
delivery more than once only when a try was sent and its outcome was lost (notify died
between the POST and the record): the `Idempotency-Key` header, the delivery id, is the
same on every try of one delivery, and receivers deduplicate on it (or on `ce-source` +
`ce-id`, which is the task event's).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, update
from sqlmodel import Session, col, select

from duetide import events, telemetry
from duetide.channels import webhook
from duetide.channels.delivery import DeliveryResult
from duetide.config import Settings, get_settings
from duetide.logs import log_event
from duetide.rules import webhook_retry
from duetide.storage import db, outbox
from duetide.storage.models import Subscription, WebhookDelivery

log = logging.getLogger("duetide.services.webhook_deliveries")

MAX_TRIES_KEPT = 20  # the delivery log keeps this many tries per delivery, the last ones
DELIVERY_TIMEOUT_S = 5.0
MAX_RETRY_BATCHES = 20  # per ping: 10,000 retries at the default batch
MAX_PARK_BATCHES = 100  # per ping: 50,000 parked, or looked at again, at the default batch
PARKED = timedelta(days=1)
"""How long a parked delivery waits before the sweep looks at its subscription again,
in case the `resume` of its enabling never ran (its process died after the commit)."""
REPUBLISH_CAP = timedelta(hours=1)
"""The longest wait before a try whose event was never taken is published again; until
then it waits as long as its delivery has (at least a lease), so a long backlog is not
fed one more event per delivery every lease."""
MAX_REPUBLISHES = 30
"""Publications of one try, never taken, before the delivery is given up: about a day
of waits growing to `REPUBLISH_CAP`."""


_ACTIVE = (
    select(col(Subscription.id), col(Subscription.types))
    .where(col(Subscription.owner) == bindparam("owner"), col(Subscription.status) == "active")
    .order_by(col(Subscription.created_at))
)
"""The owner's active subscriptions, built once: the activity function asks for every
task event."""


def fan_out(
    session: Session,
    *,
    owner: str,
    event_type: str,
    event_id: str,
    source: str,
    time: datetime | None,
    task_id: str,
    data: dict[str, Any],
    now: datetime,
) -> list[str]:
    """Store a delivery of the event for each active subscription of `owner` that wants
    it, in the caller's transaction; the ids of their outbox events."""
    wanting = [
        subscription_id
        for subscription_id, types in session.connection().execute(_ACTIVE, {"owner": owner})
        if types is None or event_type in types
    ]
    if not wanting:  # most users: one indexed read per event, no ORM object
        return []
    lease = _lease()
    published: list[str] = []
    for subscription_id in wanting:
        delivery = WebhookDelivery(
            subscription_id=subscription_id,
            owner=owner,
            event_id=event_id,
            event_source=source,
            event_type=event_type,
            event_time=time,
            task_id=task_id,
            data=data,
            next_attempt_at=now + lease,
            created_at=now,
        )
        session.add(delivery)
        published.append(_try_event(session, delivery, 1, events.SOURCE_ACTIVITY))
    return published


def _try_event(session: Session, delivery: WebhookDelivery, attempt: int, source: str) -> str:
    row = outbox.record(
        session,
        type=events.WEBHOOK_DELIVERY,
        key=delivery.subscription_id,
        data=_try_data(delivery.id, delivery.subscription_id, delivery.owner, attempt),
        source=source,
        subject=delivery.id,
    )
    return row.id


def _try_data(delivery_id: str, subscription_id: str, owner: str, attempt: int) -> dict[str, Any]:
    return events.WebhookDeliveryEvent(
        delivery_id=delivery_id, subscription_id=subscription_id, owner=owner, attempt=attempt
    ).model_dump(mode="json")


# --- sending (notify) -------------------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """What one try sends, read under the lock and sent after the commit."""

    delivery_id: str
    url: str
    secrets: tuple[str, ...]
    headers: dict[str, str]
    body: bytes
    bound: tuple[str, str]


def send(event: events.WebhookDeliveryEvent, now: datetime) -> str:
    """Run try `event.attempt` of its delivery, once; the status word for the sink:
    `delivered`, `retry` (a later try is due), `failed` (given up), `duplicate` (this
    try was started before, or another replaced it), `obsolete` (the delivery or its
    subscription is gone, or the subscription is not active: the try waits for it)."""
    with db.session_scope() as session:
        delivery = _locked(session, event.delivery_id)
        if delivery is None:
            return "obsolete"
        if (
            delivery.status != "pending"
            or delivery.attempt != event.attempt
            or delivery.started >= event.attempt
        ):
            return "duplicate"
        subscription = session.get(Subscription, delivery.subscription_id)
        if subscription is None or subscription.status != "active":
            return "obsolete"  # kept pending: the sweep sends it once the user enables it
        # The lease runs from the start of the try, not from its claim: a try taken late
        # (notify's backlog) was claimed again by a ping while its POST ran, sent twice,
        # and its own outcome dropped as an older attempt's (an audit, 2026-12-07).
        lease = _lease()
        delivery.started = event.attempt
        delivery.next_attempt_at = max(delivery.next_attempt_at or now, now + lease)
        session.add(delivery)
        request = _request(delivery, subscription, now)
    started = time.monotonic()
    result = _post(request)
    elapsed_ms = round((time.monotonic() - started) * 1000)
    status = _record(
        event, request, result, elapsed_ms, now, now + timedelta(milliseconds=elapsed_ms)
    )
    outcome = "delivered" if result.ok else "retry" if status == "retry" else "failed"
    log_event(
        log,
        "subscription.attempted",
        level=logging.INFO if result.ok else logging.WARNING,
        delivery_id=event.delivery_id,
        subscription_id=event.subscription_id,
        attempt=event.attempt,
        outcome=outcome,
        status=result.status,
    )
    telemetry.count_delivery("subscription", outcome)
    return status


def _locked(session: Session, delivery_id: str) -> WebhookDelivery | None:
    query = select(WebhookDelivery).where(WebhookDelivery.id == delivery_id).with_for_update()
    return session.exec(query).one_or_none()


def _request(delivery: WebhookDelivery, subscription: Subscription, now: datetime) -> _Request:
    cloudevent = events.build(
        event_id=delivery.event_id,
        type=delivery.event_type,
        source=delivery.event_source,
        subject=delivery.task_id,
        data=delivery.data,
        time=delivery.event_time,
    )
    headers, body = events.to_http(cloudevent)
    return _Request(
        delivery_id=delivery.id,
        url=subscription.url,
        secrets=signing_secrets(subscription, now),
        # The ce-* attributes; Content-Type and the rest are the client's.
        headers={k: v for k, v in headers.items() if k.lower().startswith("ce-")},
        body=body,
        bound=(delivery.event_id, delivery.event_type),
    )


def signing_secrets(subscription: Subscription, now: datetime) -> tuple[str, ...]:
    """The current secret, and the one it replaced while that still holds (a rotation
    gives receivers time to switch: each try carries a signature by both)."""
    previous = subscription.previous_secret
    until = subscription.previous_secret_until
    if previous and until is not None and until > now:
        return (subscription.secret, previous)
    return (subscription.secret,)


def _post(request: _Request) -> DeliveryResult:
    settings = get_settings()
    first, *others = request.secrets
    return webhook.post_signed(
        request.url,
        request.body,
        secret=first.encode(),
        also_signed_by=[other.encode() for other in others],
        idempotency_key=request.delivery_id,
        headers=request.headers,
        bound=request.bound,
        allow_loopback=settings.duetide_allow_loopback_webhooks,
        hosts=settings.webhook_hosts,
        timeout_s=DELIVERY_TIMEOUT_S,
    )


def _record(
    event: events.WebhookDeliveryEvent,
    request: _Request,
    result: DeliveryResult,
    elapsed_ms: int,
    started: datetime,
    now: datetime,
) -> str:
    """Log the try (made at `started`), and move the delivery and its subscription on as
    of `now`, in one transaction."""
    settings = get_settings()
    with db.session_scope() as session:
        delivery = _locked(session, event.delivery_id)
        if delivery is None or delivery.attempt != event.attempt or delivery.status != "pending":
            return "obsolete"  # deleted meanwhile, or redelivered by its owner
        subscription = session.get(Subscription, delivery.subscription_id, with_for_update=True)
        _log_try(delivery, event.attempt, started, result.status, result.error, elapsed_ms)
        if result.ok:
            status = "delivered"
            _finish(delivery, "delivered", now)
        elif webhook_retry.retries(
            _in_round(delivery), result.retryable, settings.duetide_subscription_max_attempts
        ):
            status = "retry"
            delivery.next_attempt_at = now + webhook_retry.retry_wait(
                _in_round(delivery),
                settings.duetide_subscription_retry_base_s,
                settings.duetide_subscription_retry_cap_s,
            )
        else:
            status = "failed"
            _finish(delivery, "failed", now)
        session.add(delivery)
        if subscription is not None and subscription.url == request.url:
            _account(subscription, result.ok, now, settings)
            session.add(subscription)
    return status


def _lease() -> timedelta:
    """How long a claimed try, or one started, is its own before the sweep claims again."""
    return timedelta(seconds=get_settings().duetide_subscription_lease_s)


def _in_round(delivery: WebhookDelivery) -> int:
    """Which try of its round the delivery's `attempt` is (1 the first): what the retry
    policy counts, so a redelivery has the tries of a new delivery."""
    return delivery.attempt - delivery.round_start + 1


def _log_try(
    delivery: WebhookDelivery, attempt: int, at: datetime, status: int | None, error: str, ms: int
) -> None:
    """One entry of the delivery log's tries (the last MAX_TRIES_KEPT are kept)."""
    entry = {"attempt": attempt, "at": at.isoformat(), "status": status, "error": error, "ms": ms}
    delivery.tries = [*delivery.tries, entry][-MAX_TRIES_KEPT:]


def _finish(delivery: WebhookDelivery, status: Any, now: datetime) -> None:
    delivery.status = status
    delivery.finished_at = now
    delivery.next_attempt_at = None


def _account(subscription: Subscription, ok: bool, now: datetime, settings: Settings) -> None:
    """A success ends a run of failures; a failure extends it and may disable the
    subscription (`webhook_retry.disables`)."""
    if ok:
        subscription.failures = 0
        subscription.failing_since = None
        return
    subscription.failures += 1
    subscription.failing_since = subscription.failing_since or now
    if subscription.status == "active" and webhook_retry.disables(
        subscription.failures,
        subscription.failing_since,
        now,
        settings.duetide_subscription_max_attempts,
        timedelta(seconds=settings.duetide_subscription_disable_after_s),
    ):
        since = subscription.failing_since.isoformat(timespec="seconds")
        disable(subscription, f"{subscription.failures} tries in a row failed since {since}", now)
        log_event(
            log,
            "subscription.disabled",
            level=logging.WARNING,
            subscription_id=subscription.id,
            failures=subscription.failures,
        )


def disable(subscription: Subscription, reason: str, now: datetime) -> None:
    """Stop sending to the subscription until its owner enables it; `reason` is shown."""
    subscription.status = "disabled"
    subscription.disabled_at = now
    subscription.disabled_reason = reason
    subscription.updated_at = now


# --- retries (sweep) --------------------------------------------------------------------


def claim_retries(now: datetime, batch: int, max_batches: int = MAX_RETRY_BATCHES) -> int:
    """Claim every delivery whose next try is due, of active subscriptions, as its next
    attempt with its outbox event (park those of the others), batch after batch until
    one comes back short (at most `max_batches` that claim something per ping, and
    `MAX_PARK_BATCHES` that only park: the next ping goes on); give up the ones out of
    tries. The number claimed."""
    _go_on_resuming(now)
    claimed = spent = claiming = 0
    for _ in range(max_batches + MAX_PARK_BATCHES):
        seen, handled, tried, given_up = _claim_batch(now, batch)
        claimed, spent = claimed + tried, spent + given_up
        claiming += bool(tried or given_up)
        # `handled` 0: all of them wait for their subscriptions' locks; the next ping
        if seen < batch or not handled or claiming >= max_batches:
            break
    for _ in range(MAX_PARK_BATCHES):
        if _recheck_parked(now, batch) < batch:
            break
    if claimed or spent:
        log_event(log, "subscription.retries_claimed", claimed=claimed, given_up=spent)
    return claimed


def _claim_batch(now: datetime, limit: int) -> tuple[int, int, int, int]:
    """One transaction: up to `limit` due deliveries, oldest first; (seen, handled,
    claimed, given up). Their subscriptions are then locked FOR SHARE (after them: the order a try's
    record takes), so one being enabled meanwhile is skipped, left for the next ping,
    or its enabling waits for this commit, and never has a delivery parked after its
    `resume` looked; FOR SHARE, not FOR UPDATE, lets the activity function go on adding
    deliveries (their foreign key's lock). PostgreSQL skips rows another sweep or change
    holds (SKIP LOCKED); SQLite's write lock at BEGIN serialises two sweeps."""
    settings = get_settings()
    lease = _lease()
    with db.session_scope() as session:
        picked = session.exec(
            select(WebhookDelivery)
            .where(
                col(WebhookDelivery.status) == "pending",
                col(WebhookDelivery.next_attempt_at) <= now,
            )
            .order_by(col(WebhookDelivery.next_attempt_at))
            .limit(limit)
            .with_for_update(skip_locked=True)
        ).all()
        statuses = dict(
            session.exec(
                select(Subscription.id, Subscription.status)
                .where(col(Subscription.id).in_({d.subscription_id for d in picked}))
                .with_for_update(read=True, skip_locked=True)
            ).all()
        )
        due = [(d, statuses[d.subscription_id]) for d in picked if d.subscription_id in statuses]
        claimed: list[WebhookDelivery] = []
        spent = 0
        for delivery, status in due:
            if status != "active":
                delivery.status, delivery.next_attempt_at = "parked", now + PARKED
            elif delivery.started < delivery.attempt:  # never taken: the same try again
                if delivery.republished >= MAX_REPUBLISHES:
                    spent += 1
                    _never_taken(delivery, now)
                else:
                    waited = max(lease, now - delivery.created_at)
                    delivery.next_attempt_at = now + min(waited, REPUBLISH_CAP)
                    delivery.republished += 1
                    claimed.append(delivery)
            elif _in_round(delivery) >= settings.duetide_subscription_max_attempts:
                spent += 1  # its last try was started and never recorded
                _finish(delivery, "failed", now)
            else:
                delivery.attempt, delivery.republished = delivery.attempt + 1, 0
                delivery.next_attempt_at = now + lease
                claimed.append(delivery)
            session.add(delivery)
        outbox.record_many(
            session,
            [
                outbox.Event(
                    events.WEBHOOK_DELIVERY,
                    d.subscription_id,
                    _try_data(d.id, d.subscription_id, d.owner, d.attempt),
                )
                for d in claimed
            ],
            source=events.SOURCE_SWEEP,
        )
    return len(picked), len(due), len(claimed), spent


def _never_taken(delivery: WebhookDelivery, now: datetime) -> None:
    """Give up a delivery whose try notify never took, however often it was published
    (its event refused, say): logged and shown in its tries."""
    error = f"try {delivery.attempt} was published {delivery.republished + 1} times, never taken"
    _log_try(delivery, delivery.attempt, now, None, error, 0)
    _finish(delivery, "failed", now)
    log_event(
        log,
        "subscription.never_taken",
        level=logging.WARNING,
        delivery_id=delivery.id,
        subscription_id=delivery.subscription_id,
        attempt=delivery.attempt,
    )


def _recheck_parked(now: datetime, limit: int) -> int:
    """Parked deliveries a day old whose subscription is active again (its `resume`
    never ran) are due again; the others wait another day (each parked row is written
    once a day until it is purged). Read from the parked part of the due index alone;
    how many were looked at."""
    with db.session_scope() as session:
        parked = session.exec(
            select(WebhookDelivery, Subscription.status)
            .join(Subscription, col(Subscription.id) == col(WebhookDelivery.subscription_id))
            .where(
                col(WebhookDelivery.status) == "parked",
                col(WebhookDelivery.next_attempt_at) <= now,
            )
            .limit(limit)
            .with_for_update(skip_locked=True, of=WebhookDelivery)
        ).all()
        for delivery, status in parked:
            if status == "active":
                delivery.status, delivery.next_attempt_at = "pending", now
            else:
                delivery.next_attempt_at = now + PARKED
            session.add(delivery)
        return len(parked)


RESUME_BATCH = 5_000
MAX_RESUME_BATCHES = 10  # per ping


def resume(subscription_id: str, now: datetime) -> None:
    """Make the parked deliveries of an active subscription due now: a batch here (the
    request that enabled or verified it; 300,000 at once took 20 s), the rest by the
    sweep (`subscription.resuming`). Each batch is a transaction of its own, after the
    change that made the subscription active (in that one the deliveries' locks would
    come after the subscription's, the reverse of a try's record). A claim that parked
    one meanwhile held the subscription's lock, so that change waited for it, and this
    sees what it parked. Nothing to do for a subscription with none parked: safe to call
    again (a retried PATCH, a verify)."""
    if _unpark(subscription_id, now) == RESUME_BATCH:
        _mark_resuming(subscription_id, True)


def _mark_resuming(subscription_id: str, resuming: bool) -> None:
    with db.session_scope() as session:
        session.execute(
            update(Subscription)
            .where(col(Subscription.id) == subscription_id)
            .values(resuming=resuming)
        )


def _unpark(subscription_id: str, now: datetime) -> int:
    """One batch of a subscription's parked deliveries due now (`ix_delivery_parked`)."""
    parked = (
        select(WebhookDelivery.id)
        .where(
            col(WebhookDelivery.subscription_id) == subscription_id,
            col(WebhookDelivery.status) == "parked",
        )
        .limit(RESUME_BATCH)
    )
    with db.session_scope() as session:
        done = session.execute(
            update(WebhookDelivery)
            .where(col(WebhookDelivery.id).in_(parked), col(WebhookDelivery.status) == "parked")
            .values(status="pending", next_attempt_at=now)
            .execution_options(synchronize_session=False)
        )
        return int(done.rowcount)  # type: ignore[attr-defined]


def _go_on_resuming(now: datetime) -> None:
    """The sweep's part of `resume`: up to MAX_RESUME_BATCHES batches a ping, of the
    active subscriptions still marked (`ix_subscription_resuming`)."""
    with db.session_scope(read_only=True) as session:
        marked = session.exec(
            select(Subscription.id)
            .where(col(Subscription.resuming), col(Subscription.status) == "active")
            .limit(MAX_RESUME_BATCHES)
        ).all()
    batches = 0
    for subscription_id in marked:
        while batches < MAX_RESUME_BATCHES:
            batches += 1
            if _unpark(subscription_id, now) < RESUME_BATCH:
                _mark_resuming(subscription_id, False)
                break


def redeliver(session: Session, delivery: WebhookDelivery, now: datetime) -> str:
    """Try a delivered or failed delivery again (its owner asked), as its next attempt,
    the first of a round with the retries of a new delivery; the id of the outbox event.
    The caller holds the row's lock."""
    lease = _lease()
    delivery.status = "pending"
    delivery.attempt, delivery.republished = delivery.attempt + 1, 0
    delivery.round_start = delivery.attempt
    delivery.next_attempt_at = now + lease
    delivery.finished_at = None
    session.add(delivery)
    return _try_event(session, delivery, delivery.attempt, events.SOURCE_TASKS)


def expired(now: datetime, retention: timedelta) -> Any:
    """Deliveries made before the retention (the activity log's): the sweep purges them."""
    return col(WebhookDelivery.created_at) < now - retention
