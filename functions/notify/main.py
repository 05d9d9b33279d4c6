"""notify: deliver reminder.due on the user's channels, once per reminder firing, and
each try of a webhook subscription's delivery, once."""

import functions_framework
from flask import Request, Response

from duetide import events, telemetry
from duetide.services import webhook_deliveries
from duetide.services.notify import deliver
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


def on_delivery(event: Incoming) -> str:
    """2xx whatever the receiver answered: its failures are recorded and retried by the
    sweep, never by holding this partition (`webhook_deliveries`)."""
    return webhook_deliveries.send(events.WebhookDeliveryEvent.model_validate(event.data), utcnow())


def on_event(event: Incoming) -> str:
    return on_delivery(event) if event.type == events.WEBHOOK_DELIVERY else on_due(event)


_endpoint = event_endpoint(frozenset({events.REMINDER_DUE, events.WEBHOOK_DELIVERY}), on_event)


@functions_framework.http
def notify(request: Request) -> Response:
    return _endpoint(request)
