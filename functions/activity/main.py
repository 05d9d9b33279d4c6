"""activity: append each task event to its owner's activity log, once."""

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import events
from duetide.services import activity as log
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint, exactly_once

entry.start("activity")


def on_task_event(session: Session, event: Incoming) -> list[str]:
    log.record(
        session,
        event_type=event.type,
        event_id=event.id,
        source=event.source,
        time=log.event_time(event.time),
        data=events.TaskEvent.model_validate(event.data),
    )
    return []


_endpoint = event_endpoint(log.TASK_TYPES, exactly_once("activity", on_task_event))


@functions_framework.http
def activity(request: Request) -> Response:
    return _endpoint(request)
