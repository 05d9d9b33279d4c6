"""notify: deliver reminder.due on the user's channels, once per reminder firing."""

import functions_framework
from flask import Request, Response

from duetide import events
from duetide.services.notify import deliver
from duetide.storage.models import utcnow
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint

entry.start("notify")


def on_due(event: Incoming) -> str:
    due = events.ReminderEvent.model_validate(event.data)
    return deliver(event.source, event.id, due, utcnow())


_endpoint = event_endpoint(frozenset({events.REMINDER_DUE}), on_due)


@functions_framework.http
def notify(request: Request) -> Response:
    return _endpoint(request)
