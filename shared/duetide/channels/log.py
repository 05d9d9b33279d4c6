"""The log channel: one structured line per reminder, for development and for users
who collect reminders from the function's logs. It needs no network, so `notify`
records it in the transaction that checks the event."""

from __future__ import annotations

import logging

from duetide import events
from duetide.channels.delivery import DELIVERED, DeliveryResult
from duetide.logs import log_event
from duetide.storage.models import Preference

NEEDS_NETWORK = False
LONGEST_S = 0.0

log = logging.getLogger("duetide.channels.log")


def send(due: events.ReminderEvent, pref: Preference) -> DeliveryResult:
    """One line; ids only, no titles or other personal data."""
    log_event(
        log,
        "notification.delivered",
        channel="log",
        reminder_id=due.reminder_id,
        task_id=due.task_id,
        scheduled_at=due.scheduled_at.isoformat(),
    )
    return DELIVERED
