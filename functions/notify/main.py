"""notify: deliver reminder.due on the user's channels, once per reminder firing."""

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import entry, events
from duetide import notify as notifier
from duetide.models import utcnow
from duetide.sink import Incoming, cloudevent_sink

entry.start("notify")


def on_due(session: Session | None, event: Incoming) -> None:
    assert session is not None
    notifier.deliver(session, events.ReminderEvent.model_validate(event.data), utcnow())


_sink = cloudevent_sink("notify", on_due, frozenset({events.REMINDER_DUE}))


@functions_framework.http
def notify(request: Request) -> Response:
    return _sink(request)
