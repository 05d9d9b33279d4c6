"""Verified notification targets: an e-mail address or webhook URL gets nothing from
duetide but one confirmation until its owner has shown that it reaches them.

Without this, a user could point reminders (with a subject they choose) at anyone's
mailbox or endpoint. So:

- e-mail: setting an address sends one mail with a code. The code is random (60 bits),
  expires (`DUETIDE_EMAIL_CODE_TTL_S`), is bound to the user and the address and stored
  only as a hash; `POST /preferences/email/verify` with the code marks the address
  verified. The mail carries no user-chosen text, so it cannot carry spam either.
- webhook: setting a URL POSTs a signed `{"type": "url_verification", "challenge": ...}`
  (as Slack and Microsoft Graph do) through the one webhook client,
  `webhook.deliver_webhook` (its signing and SSRF guard, one attempt, a short timeout);
  the URL is verified when the answer echoes the challenge, as the body itself or as
  `{"challenge": "..."}`. `POST /preferences/webhook/verify` tries again.
- Both are sent by the tasks function right after the preferences commit (never inside
  a transaction), each bounded by `DUETIDE_VERIFICATION_TIMEOUT_S`, and each kind is
  limited per user to `DUETIDE_VERIFICATION_SENDS_PER_HOUR` in any hour (a sliding
  window kept on the preference row, charged under its row lock).

The functions on a `Preference` change the locked row inside the caller's transaction
and return what to send after the commit; `send` does the I/O and records the outcome
in its own transaction, only if the target is still the one it was sent for.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlmodel import Session, select

from duetide.channels import email, webhook
from duetide.channels.delivery import DeliveryResult, refused
from duetide.config import Settings, get_settings
from duetide.errors import Conflict, RateLimited, ValidationFailed
from duetide.logs import log_event
from duetide.storage import db
from duetide.storage.models import Preference, Subscription, utcnow

log = logging.getLogger("duetide.channels.verification")

EMAIL = "email"
WEBHOOK = "webhook"
WINDOW_S = 3600
CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # 32 symbols: no 0/O or 1/I to confuse
CODE_LENGTH = 12  # 60 bits: with the write limit per user, guessing is out of reach
CHALLENGE_KEEP_BYTES = 1024


@dataclass(frozen=True)
class EmailConfirmation:
    """A confirmation mail to send after the commit."""

    owner: str
    address: str
    code: str
    expires_at: datetime


@dataclass(frozen=True)
class WebhookChallenge:
    """A url_verification POST to send after the commit: for the preferences' webhook,
    or for the webhook subscription `subscription_id`."""

    owner: str
    url: str
    secret: str
    challenge: str
    subscription_id: str | None = None


Outgoing = EmailConfirmation | WebhookChallenge


# --- pure parts -------------------------------------------------------------------------


def new_code() -> str:
    return "".join(secrets.choice(CODE_ALPHABET) for _ in range(CODE_LENGTH))


def normalise_code(text: str) -> str:
    """What the user typed, without the grouping dashes, spaces and case."""
    return "".join(ch for ch in text.upper() if ch.isalnum())


def grouped(code: str) -> str:
    return "-".join(code[i : i + 4] for i in range(0, len(code), 4))


def code_hash(owner: str, address: str, code: str) -> str:
    """The stored form of a code: bound to the user and the address it was sent to."""
    material = json.dumps([owner, address, code], separators=(",", ":"))
    return hashlib.sha256(material.encode("utf-8")).hexdigest()


def charged(
    sends: dict[str, list[int]] | None, kind: str, now: datetime, per_hour: int
) -> dict[str, list[int]]:
    """The send log with one more `kind` send at `now`; RateLimited (with Retry-After)
    when `per_hour` were sent in the hour before `now`. A new dict, so the JSON column
    sees the change."""
    stamp = int(now.timestamp())
    recent = sorted(t for t in (sends or {}).get(kind, []) if t > stamp - WINDOW_S)
    if len(recent) >= per_hour:
        retry_after = max(1, recent[-per_hour] + WINDOW_S - stamp)
        raise RateLimited(
            f"at most {per_hour} {kind} confirmations an hour; retry later",
            headers={"Retry-After": str(retry_after)},
        )
    return {**(sends or {}), kind: [*recent, stamp]}


CHALLENGE_TYPE = "url_verification"


def echoes(body: bytes, challenge: str) -> bool:
    """Whether a webhook's answer echoes `challenge`: the body itself (Microsoft Graph's
    validationToken) or a JSON object `{"challenge": ...}` (Slack's url_verification)."""
    expected = challenge.encode("ascii")
    if hmac.compare_digest(body.strip(), expected):
        return True
    try:
        answer: Any = json.loads(body)
    except (ValueError, RecursionError):  # ValueError: also an integer past the digit limit
        return False
    if not isinstance(answer, dict) or answer.get("type") == CHALLENGE_TYPE:
        return False  # the request sent back as it came: any echo service would pass
    echoed = answer.get("challenge")
    return isinstance(echoed, str) and hmac.compare_digest(echoed.encode("utf-8"), expected)


def confirmation_mail(code: str, expires_at: datetime) -> tuple[str, str]:
    """Subject and body of the confirmation mail: fixed text and the code, nothing else."""
    subject = "Confirm your e-mail address for duetide reminders"
    body = (
        "Someone asked duetide to send task reminders to this address.\n\n"
        f"Confirmation code: {grouped(code)}\n"
        f"It expires at {expires_at.isoformat(timespec='seconds')}.\n\n"
        "To confirm, send the code to the duetide API:\n"
        '  POST /preferences/email/verify  {"code": "<the code>"}\n\n'
        "If this was not you, ignore this message: duetide sends nothing else to this\n"
        "address until it is confirmed.\n"
    )
    return subject, body


# --- changes to a locked preference row (inside the caller's transaction) ---------------


def start_email(preference: Preference, now: datetime, settings: Settings) -> EmailConfirmation:
    """Charge one confirmation mail and issue a new code for the current address."""
    if not preference.email:
        raise Conflict("there is no e-mail address to confirm")
    preference.verification_sends = charged(
        preference.verification_sends, EMAIL, now, settings.duetide_verification_sends_per_hour
    )
    code = new_code()
    expires_at = now + timedelta(seconds=settings.duetide_email_code_ttl_s)
    preference.email_verified_at = None
    preference.email_code_hash = code_hash(preference.owner, preference.email, code)
    preference.email_code_expires_at = expires_at
    preference.email_code_sent_at = None
    return EmailConfirmation(preference.owner, preference.email, code, expires_at)


def forget_email(preference: Preference) -> None:
    """The address changed or was removed: its verification and code no longer hold."""
    preference.email_verified_at = None
    preference.email_code_hash = None
    preference.email_code_expires_at = None
    preference.email_code_sent_at = None


def confirm_email(preference: Preference, code: str, now: datetime) -> None:
    """Mark the address verified if `code` is the current, unexpired one (422 otherwise).
    Confirming an address that is already verified changes nothing."""
    if not preference.email:
        raise Conflict("there is no e-mail address to confirm")
    if preference.email_verified_at is not None:
        return
    expected = preference.email_code_hash
    expires_at = preference.email_code_expires_at
    given = code_hash(preference.owner, preference.email, normalise_code(code))
    if expected is None or expires_at is None or expires_at <= now:
        raise _bad_code()
    if not hmac.compare_digest(given.encode("ascii"), expected.encode("ascii")):
        raise _bad_code()
    preference.email_verified_at = now
    preference.email_code_hash = None
    preference.email_code_expires_at = None


def _bad_code() -> ValidationFailed:
    message = "the code is wrong or has expired; POST /preferences/email/resend sends a new one"
    return ValidationFailed.of("code", message)


def start_webhook(preference: Preference, now: datetime, settings: Settings) -> WebhookChallenge:
    """Charge one challenge for the current URL (which stays unverified until echoed)."""
    if not preference.webhook_url or not preference.webhook_secret:
        raise Conflict("there is no webhook URL to verify")
    return start_challenge(
        preference, preference.webhook_url, preference.webhook_secret, now, settings
    )


def start_challenge(
    preference: Preference,
    url: str,
    secret: str,
    now: datetime,
    settings: Settings,
    subscription_id: str | None = None,
) -> WebhookChallenge:
    """Charge one challenge of `url` to its owner's hourly budget (the preferences' webhook
    and the subscriptions share it), on their locked preference row."""
    preference.verification_sends = charged(
        preference.verification_sends, WEBHOOK, now, settings.duetide_verification_sends_per_hour
    )
    return WebhookChallenge(
        preference.owner, url, secret, secrets.token_urlsafe(32), subscription_id
    )


# --- I/O after the commit ---------------------------------------------------------------


def send(item: Outgoing) -> DeliveryResult:
    """Send one confirmation and record its outcome. `ok` when it went: a mail accepted
    by the relay, a challenge echoed; otherwise `error` says why (never the target)."""
    result = send_mail(item) if isinstance(item, EmailConfirmation) else challenge(item)
    if result.ok:
        _record(item, utcnow())
    kind = EMAIL if isinstance(item, EmailConfirmation) else WEBHOOK
    log_event(log, "verification.sent", kind=kind, ok=result.ok)
    return result


def send_mail(item: EmailConfirmation) -> DeliveryResult:
    """The confirmation mail through the configured relay, bounded in time."""
    settings = get_settings()
    if not settings.duetide_smtp_host:  # the operator's to fix: worth a later retry
        return refused("email is not configured", retryable=True)
    subject, body = confirmation_mail(item.code, item.expires_at)
    try:
        return email.mail(
            to=item.address,
            subject=subject,
            body=body,
            timeout_s=settings.duetide_verification_timeout_s,
        )
    except ValueError:  # the stored address passed the same check; the sender is config
        return refused("the mail could not be built")


def challenge(item: WebhookChallenge) -> DeliveryResult:
    """POST the signed challenge once; `ok` only when the answer echoes it."""
    settings = get_settings()
    result = webhook.deliver_webhook(
        item.url,
        {"type": CHALLENGE_TYPE, "challenge": item.challenge},
        secret=item.secret.encode(),
        idempotency_key=f"url-verification-{item.challenge[:16]}",
        allow_loopback=settings.duetide_allow_loopback_webhooks,
        hosts=settings.webhook_hosts,
        timeout_s=settings.duetide_verification_timeout_s,
        capture_bytes=CHALLENGE_KEEP_BYTES,
    )
    if result.ok and not echoes(result.body, item.challenge):
        error = f"HTTP {result.status} without the challenge in the answer"
        return DeliveryResult(False, result.status, error)
    return result


def _record(item: Outgoing, now: datetime) -> None:
    """Note the outcome, unless the target changed meanwhile (a concurrent PATCH)."""
    if isinstance(item, WebhookChallenge) and item.subscription_id is not None:
        _record_subscription(item, now)
        return
    with db.session_scope() as session:
        query = select(Preference).where(Preference.owner == item.owner).with_for_update()
        preference = session.exec(query).one_or_none()
        if preference is not None:
            _apply(session, preference, item, now)


def _apply(session: Session, preference: Preference, item: Outgoing, now: datetime) -> None:
    if isinstance(item, EmailConfirmation):
        if preference.email_code_hash == code_hash(item.owner, item.address, item.code):
            preference.email_code_sent_at = now
            session.add(preference)
        return
    current = (preference.webhook_url, preference.webhook_secret)
    if current == (item.url, item.secret) and preference.webhook_verified_at is None:
        preference.webhook_verified_at = now
        session.add(preference)


def _record_subscription(item: WebhookChallenge, now: datetime) -> None:
    """The subscription's URL is verified once it echoed, if URL and secret are still the
    ones challenged: one waiting for that is active, and one its owner disabled stays
    so, verified for its enabling. (The echo of a URL changed while disabled was thrown
    away, and the enabling charged another challenge: two of the hourly five a fix, an
    audit, 2026-12-07.)"""
    with db.session_scope() as session:
        query = select(Subscription).where(Subscription.id == item.subscription_id)
        subscription = session.exec(query.with_for_update()).one_or_none()
        if subscription is None or (subscription.url, subscription.secret) != (
            item.url,
            item.secret,
        ):
            return
        if subscription.status == "unverified":
            subscription.status = "active"
        elif subscription.status != "disabled" or subscription.verified_at is not None:
            return
        subscription.verified_at = now
        subscription.updated_at = now
        session.add(subscription)
