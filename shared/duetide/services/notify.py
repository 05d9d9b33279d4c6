"""Deliver `reminder.due` on the user's channels and record each delivery once.

Each channel's delivery is recorded in its own transaction, unique per (reminder,
scheduled time, channel): a redelivered event skips the channels already done and
retries only the ones that failed for a transient reason. A webhook receiver can
deduplicate the remaining window (sent, then crashed before the record) by the
`Idempotency-Key` header. The database transaction never spans a network call.

Failures are classified by cause. Only transient trouble on the wire (the SMTP relay
down or busy, a webhook's 5xx, 429, timeout or broken connection) answers 503 so the
event is retried. A failure caused by the event's content or the user's settings (an
address that fails the channel's check, a target not yet verified, a URL no longer
allowed, a refusal by the receiver) is permanent: recorded as a `failed` notification
with a detail that names the cause (never the address or the title), and answered
2xx, so a poison event never holds its partition for the retry budget. A title is the
user's content: it is folded into one subject line, never a reason to fail.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from duetide import channels, events
from duetide.config import get_settings
from duetide.errors import Unavailable
from duetide.services import preferences
from duetide.storage import db
from duetide.storage.models import Notification, Preference, Reminder
from duetide.storage.processed import EventKey, already_processed, mark_processed
from duetide.vocabulary import Channel

log = logging.getLogger("duetide.services.notify")

CONSUMER = "notify"


def deliver_log(due: events.ReminderEvent) -> None:
    """One structured line; ids only, no titles or other personal data."""
    log.info(
        json.dumps(
            {
                "event": "notification.delivered",
                "channel": "log",
                "reminder_id": due.reminder_id,
                "task_id": due.task_id,
                "scheduled_at": due.scheduled_at.isoformat(),
            }
        )
    )


def _payload(due: events.ReminderEvent) -> dict[str, Any]:
    return {
        "type": events.REMINDER_DUE,
        "reminder_id": due.reminder_id,
        "task_id": due.task_id,
        "title": due.title,
        "due_at": due.due_at.isoformat() if due.due_at else None,
        "scheduled_at": due.scheduled_at.isoformat(),
    }


SUBJECT_CHARS = 200


def send(channel: Channel, due: events.ReminderEvent, pref: Preference) -> channels.DeliveryResult:
    """Deliver on one network channel; content a channel cannot send is a permanent
    failure (a `ValueError` from the channel never escapes as a 500)."""
    try:
        if channel == "webhook":
            return _send_webhook(due, pref)
        if channel == "email":
            return _send_email(due, pref)
    except ValueError as exc:
        log.warning("content refused", extra={"channel": channel, "error": type(exc).__name__})
        return refused(f"the {channel} channel cannot send this reminder's content")
    return refused(f"{channel} channel is not configured")


def refused(detail: str) -> channels.DeliveryResult:
    """A permanent failure caused by the event or the user's settings, not the wire."""
    return channels.DeliveryResult(ok=False, status=None, attempts=0, error=detail)


def _send_webhook(due: events.ReminderEvent, pref: Preference) -> channels.DeliveryResult:
    if not pref.webhook_url or not pref.webhook_secret:
        return refused("no webhook URL is set")
    if pref.webhook_verified_at is None:
        return refused("webhook not verified")
    return channels.deliver_webhook(
        pref.webhook_url,
        _payload(due),
        secret=pref.webhook_secret.encode(),
        idempotency_key=f"{due.reminder_id}:{due.scheduled_at.isoformat()}",
        allow_loopback=get_settings().duetide_allow_loopback_webhooks,
        hosts=get_settings().webhook_hosts,
        # One attempt: the KafkaSource is the one retry layer (backoff, then the dead-letter
        # topic), and its redelivery sends only to the channels not yet recorded. Retrying
        # here too would hold the ordered partition for both budgets at once.
        attempts=1,
    )


def _send_email(due: events.ReminderEvent, pref: Preference) -> channels.DeliveryResult:
    settings = get_settings()
    if not settings.duetide_smtp_host:
        return refused("email channel is not configured")
    if not pref.email:
        return refused("no email address is set")
    try:
        address = channels.validate_address(pref.email)  # the check PATCH /preferences uses
    except ValueError:
        return refused("email address is not valid")
    if pref.email_verified_at is None:
        return refused("email not verified")
    due_text = due.due_at.isoformat() if due.due_at else "no due time"
    return channels.deliver_email(
        host=settings.duetide_smtp_host,
        port=settings.duetide_smtp_port,
        sender=settings.duetide_smtp_sender,
        to=address,
        subject=channels.header_text(f"Reminder: {due.title}", SUBJECT_CHARS),
        body=f"{due.title}\n\nDue: {due_text}\n",
        starttls=settings.duetide_smtp_starttls,
        username=settings.duetide_smtp_username or None,
        password=settings.duetide_smtp_password or None,
    )


def _current(reminder: Reminder | None, due: events.ReminderEvent) -> bool:
    """Is this firing still wanted? Not if dismissed, snoozed since, or gone with its task."""
    if reminder is None or reminder.owner != due.owner or reminder.state == "dismissed":
        return False
    return reminder.fire_at == due.scheduled_at


def deliver(event_source: str, event_id: str, due: events.ReminderEvent, now: datetime) -> str:
    """Deliver on every channel not yet done; 503 (retry) if one failed transiently.

    The log channel needs no network, so it is recorded in the same transaction as the
    checks (and logged after the commit); network channels each get their own record.
    """
    key = EventKey(CONSUMER, event_source, event_id)
    with db.session_scope() as session:
        if already_processed(session, key):
            return "duplicate"
        if not _current(session.get(Reminder, due.reminder_id), due):
            return "obsolete"
        pref = preferences.load(session, due.owner)
        done = set(
            session.exec(
                select(Notification.channel).where(
                    Notification.reminder_id == due.reminder_id,
                    Notification.scheduled_at == due.scheduled_at,
                )
            ).all()
        )
        pending = [channel for channel in pref.channels if channel not in done]
        local = "log" in pending
        if local:
            session.add(_notification(due, "log", OK, now))
        remote = [channel for channel in pending if channel != "log"]
        if not remote:
            mark_processed(session, key)
    if local:
        deliver_log(due)
    if not remote:
        return "processed"
    transient = []
    for channel in remote:
        result = send(channel, due, pref)
        if not result.ok and result.retryable:
            transient.append(channel)
            continue
        _record(due, channel, result, now)
    if transient:
        raise Unavailable(f"delivery failed on {', '.join(transient)}; retry later")
    with db.session_scope() as session:
        mark_processed(session, key)
    return "processed"


OK = channels.DeliveryResult(ok=True, status=None, attempts=1)


def _notification(
    due: events.ReminderEvent, channel: Channel, result: channels.DeliveryResult, now: datetime
) -> Notification:
    return Notification(
        owner=due.owner,
        reminder_id=due.reminder_id,
        task_id=due.task_id,
        channel=channel,
        scheduled_at=due.scheduled_at,
        delivered_at=now,
        status="delivered" if result.ok else "failed",
        detail=(result.error or "")[:255],
    )


def _record(
    due: events.ReminderEvent, channel: Channel, result: channels.DeliveryResult, now: datetime
) -> None:
    if not result.ok:
        log.warning(
            "delivery failed for good",
            extra={"channel": channel, "reminder_id": due.reminder_id, "status": result.status},
        )
    try:
        with db.session_scope() as session:
            session.add(_notification(due, channel, result, now))
    except IntegrityError:
        pass  # a concurrent delivery of the same firing recorded it first
