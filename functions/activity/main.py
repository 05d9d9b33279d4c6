"""activity: append each task event to its owner's activity log, once, and store its
deliveries to the owner's webhook subscriptions."""

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import events
from duetide.services import activity as log
from duetide.services import webhook_deliveries
from duetide.storage.models import utcnow
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint, exactly_once

entry.start("activity")


def on_task_event(session: Session, event: Incoming) -> list[str]:
    data = events.TaskEvent.model_validate(event.data)
    time = log.event_time(event.time)
    log.record(
        session,
        event_type=event.type,
        event_id=event.id,
        source=event.source,
        time=time,
        data=data,
    )
    return webhook_deliveries.fan_out(
        session,
        owner=data.owner,
        event_type=event.type,
        event_id=event.id,
        source=event.source,
        time=time,
        task_id=data.task_id,
        # As validated: a field the producer added beyond the model is not passed on to
        # subscribers under our signature.
        data=data.model_dump(mode="json"),
        now=utcnow(),
    )


_endpoint = event_endpoint(log.TASK_TYPES, exactly_once("activity", on_task_event))


@functions_framework.http
def activity(request: Request) -> Response:
    return _endpoint(request)
