"""notify: deliver reminder.due on the user's channels, once per reminder firing."""

import functions_framework
from flask import Request, Response

from duetide import events, telemetry
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


_endpoint = event_endpoint(frozenset({events.REMINDER_DUE}), on_due)


@functions_framework.http
def notify(request: Request) -> Response:
    return _endpoint(request)
