"""A user's webhook subscriptions (`/subscriptions`): made, changed, verified, enabled
and disabled, removed, and their delivery log. Sending is `webhook_deliveries`.

A subscription's URL passes the webhook client's SSRF check when it is given (422
otherwise) and gets nothing but a url_verification challenge until it echoes it, as a
preferences webhook does (`channels.verification`, the same budget of challenges per
user and hour). Changes run under the owner's preference row lock, so the number of
subscriptions per user holds under concurrent requests.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta

from sqlalchemy import func
from sqlmodel import Session, col, delete, select

from duetide.channels import verification
from duetide.config import get_settings
from duetide.errors import Conflict, NotFound
from duetide.services import keyset, preferences, webhook_deliveries
from duetide.services.schemas import SubscriptionIn, SubscriptionUpdate
from duetide.storage.models import Preference, Subscription, WebhookDelivery

SECRET_PREFIX = "whsec_"
ROTATION_OVERLAP = timedelta(hours=24)
"""How long the secret a rotation replaced still signs each delivery, beside the new one:
time to deploy the new secret to the receiver without refusing a delivery."""


def validated(spec: SubscriptionIn | SubscriptionUpdate) -> None:
    """422 for a URL the webhook client would refuse; before any transaction."""
    if spec.url is not None:
        preferences.checked_webhook(spec.url, "url")


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def create(
    session: Session, owner: str, spec: SubscriptionIn, now: datetime
) -> tuple[Subscription, verification.WebhookChallenge]:
    """A new, unverified subscription and the challenge to send once this commits."""
    limit = get_settings().duetide_subscriptions_per_user
    preference = preferences.locked(session, owner)
    held = session.exec(
        select(func.count()).select_from(Subscription).where(Subscription.owner == owner)
    ).one()
    if held >= limit:
        raise Conflict(f"at most {limit} subscriptions per user; delete one first")
    subscription = Subscription(
        owner=owner,
        url=spec.url,
        secret=new_secret(),
        types=spec.types,
        description=spec.description,
        created_at=now,
        updated_at=now,
    )
    session.add(subscription)
    return subscription, _challenge(session, preference, subscription, now)


def read(session: Session, owner: str, subscription_id: str, *, lock: bool = False) -> Subscription:
    """The owner's subscription (404 for anyone else's), row-locked if `lock`: every
    change of its columns locks it. Read unlocked, a change raced the echo of the old
    URL recorded meanwhile (`verification._record_subscription`, which locks), and the
    ORM wrote the new URL but not `unverified`, which it took to be the value already
    there: a URL that never echoed ended up active, sent the user's signed events. A
    change racing a removal flushed into a row gone (a 500)."""
    subscription = session.get(Subscription, subscription_id, with_for_update=lock)
    if subscription is None or subscription.owner != owner:
        raise NotFound(f"no subscription {subscription_id!r}")
    return subscription


def listed(session: Session, owner: str) -> list[Subscription]:
    query = select(Subscription).where(Subscription.owner == owner)
    return list(session.exec(query.order_by(col(Subscription.created_at), col(Subscription.id))))


def update(
    session: Session, owner: str, subscription_id: str, spec: SubscriptionUpdate, now: datetime
) -> tuple[Subscription, verification.WebhookChallenge | None]:
    """Apply a `validated` change; a new URL yields its challenge to send after the commit."""
    preference = preferences.locked(session, owner)
    subscription = read(session, owner, subscription_id, lock=True)
    changes = spec.model_fields_set
    challenge = None
    if "types" in changes:
        subscription.types = spec.types
    if "description" in changes:
        subscription.description = spec.description or ""
    if spec.active is False and subscription.status != "disabled":
        webhook_deliveries.disable(subscription, "disabled by its owner", now)
    if spec.url is not None and spec.url != subscription.url:
        subscription.url = spec.url
        subscription.verified_at = None
        if subscription.status != "disabled":
            subscription.status = "unverified"
        challenge = _challenge(session, preference, subscription, now)
    if spec.active is True and subscription.status == "disabled":
        subscription.status = "active" if subscription.verified_at else "unverified"
        subscription.disabled_at = None
        subscription.disabled_reason = ""
        subscription.failures = 0
        subscription.failing_since = None
        if subscription.status == "unverified" and challenge is None:
            challenge = _challenge(session, preference, subscription, now)
    subscription.updated_at = now
    session.add(subscription)
    return subscription, challenge


def challenge(
    session: Session, owner: str, subscription_id: str, now: datetime
) -> tuple[Subscription, verification.WebhookChallenge]:
    """A new challenge for an unverified subscription (409 for any other)."""
    preference = preferences.locked(session, owner)
    subscription = read(session, owner, subscription_id, lock=True)
    if subscription.status != "unverified":
        raise Conflict(f"the subscription is {subscription.status}, not waiting for verification")
    return subscription, _challenge(session, preference, subscription, now)


def _challenge(
    session: Session, preference: Preference, subscription: Subscription, now: datetime
) -> verification.WebhookChallenge:
    """A challenge of the subscription's URL, charged to its owner's hourly budget."""
    challenge = verification.start_challenge(
        preference, subscription.url, subscription.secret, now, get_settings(), subscription.id
    )
    session.add(preference)
    return challenge


def rotate_secret(
    session: Session, owner: str, subscription_id: str, now: datetime
) -> Subscription:
    """A new secret; the one it replaces keeps signing for `ROTATION_OVERLAP` (a second
    `v1=` in `Duetide-Signature`), the one before that stops at once."""
    subscription = read(session, owner, subscription_id, lock=True)
    subscription.previous_secret = subscription.secret
    subscription.previous_secret_until = now + ROTATION_OVERLAP
    subscription.secret = new_secret()
    subscription.updated_at = now
    session.add(subscription)
    return subscription


def remove(session: Session, owner: str, subscription_id: str) -> None:
    """The subscription and its delivery log; a try in flight finds it gone. Read
    unlocked: its deletes lock the deliveries, then the subscription, the order a try's
    record takes them in (`webhook_deliveries._record`); locking the subscription first
    deadlocked with it. A change waiting on the row then finds it gone (404), and so does
    a removal racing this one: its DELETE finds no row (it answered 204 too, with
    SQLAlchemy's warning of a row it expected to delete)."""
    subscription = read(session, owner, subscription_id)
    session.exec(
        delete(WebhookDelivery).where(col(WebhookDelivery.subscription_id) == subscription.id)
    )
    removed = session.exec(delete(Subscription).where(col(Subscription.id) == subscription.id))
    if removed.rowcount == 0:
        raise NotFound(f"no subscription {subscription_id!r}")


def deliveries(
    session: Session,
    owner: str,
    subscription_id: str,
    cursor: tuple[datetime, str] | None,
    limit: int,
) -> list[WebhookDelivery]:
    """A page of the delivery log, newest first, after `cursor` (`limit` + 1 rows: is
    there more?)."""
    subscription = read(session, owner, subscription_id)
    query = select(WebhookDelivery).where(WebhookDelivery.subscription_id == subscription.id)
    if cursor is not None:
        created, delivery = col(WebhookDelivery.created_at), col(WebhookDelivery.id)
        query = query.where(keyset.after(created, delivery, *cursor, descending=True))
    newest_first = (col(WebhookDelivery.created_at).desc(), col(WebhookDelivery.id).desc())
    return list(session.exec(query.order_by(*newest_first).limit(limit + 1)))


def redeliver(
    session: Session, owner: str, subscription_id: str, delivery_id: str, now: datetime
) -> tuple[WebhookDelivery, str]:
    """Send a finished delivery again, with the same delivery id (409 while it is still
    being tried, or while the subscription is not active); the outbox event to publish.
    The subscription unlocked, as in `remove`: the delivery's lock comes first."""
    subscription = read(session, owner, subscription_id)
    query = select(WebhookDelivery).where(
        WebhookDelivery.id == delivery_id, WebhookDelivery.subscription_id == subscription.id
    )
    delivery = session.exec(query.with_for_update()).one_or_none()
    if delivery is None:
        raise NotFound(f"no delivery {delivery_id!r} of this subscription")
    if subscription.status != "active":
        raise Conflict(f"the subscription is {subscription.status}: enable or verify it first")
    if delivery.status == "pending":
        raise Conflict("the delivery is still being tried")
    event_id = webhook_deliveries.redeliver(session, delivery, now)
    return delivery, event_id
