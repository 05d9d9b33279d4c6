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

import logging
from datetime import datetime

from sqlalchemy.exc import IntegrityError
from sqlmodel import select

from duetide import channels, events, telemetry
from duetide.channels.delivery import DELIVERED, DeliveryResult, refused
from duetide.errors import Unavailable
from duetide.logs import log_event
from duetide.services import preferences
from duetide.storage import db
from duetide.storage.models import Notification, Preference, Reminder
from duetide.storage.processed import EventKey, already_processed, mark_processed
from duetide.vocabulary import Channel

log = logging.getLogger("duetide.services.notify")

CONSUMER = "notify"


def send(channel: Channel, due: events.ReminderEvent, pref: Preference) -> DeliveryResult:
    """Deliver on one channel; content a channel cannot send is a permanent failure (a
    `ValueError` from the channel never escapes as a 500)."""
    try:
        result = channels.REGISTRY[channel].send(due, pref)
    except ValueError as exc:
        log_event(
            log,
            "notification.refused",
            level=logging.WARNING,
            channel=channel,
            reminder_id=due.reminder_id,
            error=type(exc).__name__,
        )
        result = refused(f"the {channel} channel cannot send this reminder's content")
    _observe(channel, due, result)
    return result


def _observe(channel: Channel, due: events.ReminderEvent, result: DeliveryResult) -> None:
    """One log line and one count per attempt, by channel and outcome (`delivered`,
    `failed` for good, `retry` for a transient failure); never the target or the title."""
    outcome = "delivered" if result.ok else "retry" if result.retryable else "failed"
    log_event(
        log,
        "notification.attempted",
        level=logging.INFO if outcome == "delivered" else logging.WARNING,
        channel=channel,
        outcome=outcome,
        reminder_id=due.reminder_id,
        task_id=due.task_id,
        status=result.status,
    )
    telemetry.count_delivery(channel, outcome)


def _current(reminder: Reminder | None, due: events.ReminderEvent) -> bool:
    """Is this firing still wanted? Not if dismissed, snoozed since, or gone with its task."""
    if reminder is None or reminder.owner != due.owner or reminder.state == "dismissed":
        return False
    return reminder.fire_at == due.scheduled_at


def deliver(event_source: str, event_id: str, due: events.ReminderEvent, now: datetime) -> str:
    """Deliver on every channel not yet done; 503 (retry) if one failed transiently.

    A channel that needs no network (the log) is recorded in the same transaction as
    the checks and sent after the commit; network channels each get their own record.
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
        local = [c for c in pending if not channels.REGISTRY[c].NEEDS_NETWORK]
        remote = [c for c in pending if channels.REGISTRY[c].NEEDS_NETWORK]
        for channel in local:
            session.add(_notification(due, channel, DELIVERED, now))
        if not remote:
            mark_processed(session, key)
    for channel in local:
        send(channel, due, pref)
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


def _notification(
    due: events.ReminderEvent, channel: Channel, result: DeliveryResult, now: datetime
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
    due: events.ReminderEvent, channel: Channel, result: DeliveryResult, now: datetime
) -> None:
    try:
        with db.session_scope() as session:
            session.add(_notification(due, channel, result, now))
    except IntegrityError:
        pass  # a concurrent delivery of the same firing recorded it first
