"""recurrence: on task.completed, materialise the series' one next occurrence."""

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import events
from duetide.services import series
from duetide.storage.models import utcnow
from duetide.web import entry
from duetide.web.sink import Incoming, event_endpoint, exactly_once

entry.start("recurrence")


def on_completed(session: Session, event: Incoming) -> list[str]:
    return series.materialise_next(session, events.TaskEvent.model_validate(event.data), utcnow())


_endpoint = event_endpoint(
    frozenset({events.TASK_COMPLETED}), exactly_once("recurrence", on_completed)
)


@functions_framework.http
def recurrence(request: Request) -> Response:
    return _endpoint(request)
