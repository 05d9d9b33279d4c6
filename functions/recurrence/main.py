"""recurrence: on task.completed, materialise the series' one next occurrence."""

import functions_framework
from flask import Request, Response
from sqlmodel import Session

from duetide import entry, events, series
from duetide.models import utcnow
from duetide.sink import Incoming, cloudevent_sink

entry.start("recurrence")


def on_completed(session: Session | None, event: Incoming) -> list[str]:
    assert session is not None
    return series.materialise_next(session, events.TaskEvent.model_validate(event.data), utcnow())


_sink = cloudevent_sink("recurrence", on_completed, frozenset({events.TASK_COMPLETED}))


@functions_framework.http
def recurrence(request: Request) -> Response:
    return _sink(request)
