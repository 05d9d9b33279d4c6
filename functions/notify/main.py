"""notify: deliver reminder.due (and each reminder of a reminder.due.batch) on the user's
channels, once per reminder firing, and each try of a webhook subscription's delivery,
once."""

import functions_framework
from flask import Request, Response

from duetide import events, telemetry
from duetide.services import webhook_deliveries
from duetide.services.notify import deliver, deliver_batch
from duetide.storage.models import utcnow
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint

entry.start("notify")


def on_due(event: Incoming) -> str:
    due = events.ReminderEvent.model_validate(event.data)
    now = utcnow()
    status = deliver(event.source, event.id, due, now)
    telemetry.record_lateness((now - due.scheduled_at).total_seconds(), status)
    return status


def on_due_batch(event: Incoming) -> str:
    """The first of `processed` (a reminder delivered now), `duplicate`, `deferred`
    (quiet hours) and `missed` (past its grace) that any reminder had, else `obsolete`."""
    batch = events.ReminderBatchEvent.model_validate(event.data).reminders
    now = utcnow()
    statuses = deliver_batch(event.source, event.id, batch, now)
    for due, status in zip(batch, statuses, strict=True):
        telemetry.record_lateness((now - due.scheduled_at).total_seconds(), status)
    chosen = ("processed", "duplicate", "deferred", "missed")
    return next((s for s in chosen if s in statuses), "obsolete")


def on_delivery(event: Incoming) -> str:
    """2xx whatever the receiver answered: its failures are recorded and retried by the
    sweep, never by holding this partition (`webhook_deliveries`)."""
    return webhook_deliveries.send(events.WebhookDeliveryEvent.model_validate(event.data), utcnow())


_HANDLERS = {
    events.REMINDER_DUE: on_due,
    events.REMINDER_DUE_BATCH: on_due_batch,
    events.WEBHOOK_DELIVERY: on_delivery,
}


def on_event(event: Incoming) -> str:
    return _HANDLERS[event.type](event)


_endpoint = event_endpoint(frozenset(_HANDLERS), on_event)


@functions_framework.http
def notify(request: Request) -> Response:
    return _endpoint(request)
