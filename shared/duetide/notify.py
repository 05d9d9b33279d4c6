"""Deliver `reminder.due` on the user's channels and record each delivery once.

The record is unique per (reminder, scheduled time, channel): a redelivered event
finds it and does not notify again.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime

from sqlmodel import Session, select

from duetide import events
from duetide.models import Notification

log = logging.getLogger("duetide.notify")

DEFAULT_CHANNELS = ("log",)


def deliver_log(notification: Notification) -> None:
    """One structured line; ids only, no titles or other personal data."""
    log.info(
        json.dumps(
            {
                "event": "notification.delivered",
                "channel": notification.channel,
                "notification_id": notification.id,
                "reminder_id": notification.reminder_id,
                "task_id": notification.task_id,
                "scheduled_at": notification.scheduled_at.isoformat(),
            }
        )
    )


def deliver(session: Session, due: events.ReminderEvent, now: datetime) -> int:
    """Record and deliver on each channel not yet delivered; returns how many were new."""
    delivered = 0
    for channel in DEFAULT_CHANNELS:
        exists = session.exec(
            select(Notification.id).where(
                Notification.reminder_id == due.reminder_id,
                Notification.scheduled_at == due.scheduled_at,
                Notification.channel == channel,
            )
        ).first()
        if exists:
            continue
        notification = Notification(
            owner=due.owner,
            reminder_id=due.reminder_id,
            task_id=due.task_id,
            channel=channel,
            scheduled_at=due.scheduled_at,
            delivered_at=now,
        )
        session.add(notification)
        session.flush()
        deliver_log(notification)
        delivered += 1
    return delivered
