"""Command intake: other systems create and complete tasks with CloudEvents.

Commands arrive at `POST /commands` directly (binary or structured mode) or are
produced onto the commands topic and delivered here by a KafkaSource. Who may act for
which user is `command_trust`'s decision: a user with their own bearer token, or a
registered system (a signature, or Knative's OIDC sender identity) naming the user in
`duetideuser`; no token rides in an event. The command's (source, id) makes a retried
command idempotent, per user acted for.
"""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from flask import Request, Response
from sqlmodel import Session

from duetide import events, telemetry
from duetide.config import get_settings
from duetide.errors import InvalidCloudEvent, NotFound, ValidationFailed
from duetide.logs import log_event
from duetide.services import ratelimit, task_events, tasks
from duetide.services.responses import CommandResult
from duetide.storage import db, processed
from duetide.storage.models import ProcessedEvent
from duetide.storage.processed import EventKey, run_once
from duetide.web import command_events, command_trust
from duetide.web.http import json_response, validation_failed
from duetide.web.sink import Incoming, decode, follow_trace

CONSUMER = "commands"
log = logging.getLogger("duetide.web.commands")


MAX_DATA_VALUES = 1_000
"""The most JSON values (objects, arrays, texts, numbers...) a command's data may hold. A
create command's holds about 100 at most (50 tags, 10 reminders, a recurrence); 1 MB of
empty texts is 340,000, and their canonical JSON for a claimed signature cost 1 s of CPU
before the signature was found wrong, for anyone who can reach `/commands`."""


def _bounded(data: Any) -> None:
    """400 for data of more than MAX_DATA_VALUES values, found without walking them all."""
    pending, seen = [data], 0
    while pending:
        value = pending.pop()
        seen += 1
        if seen > MAX_DATA_VALUES:
            raise InvalidCloudEvent(f"command data holds more than {MAX_DATA_VALUES} values")
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)


def _payload(event: Incoming) -> Any:
    """The command's data: 400 if it is not the type's shape, 422 (naming each field,
    as `POST /tasks` would) if only the task object of a create command is invalid."""
    model = command_events.DATA[event.type]
    try:
        return model.model_validate(event.data)
    except pydantic.ValidationError as exc:
        data = event.data
        task_object = isinstance(data, dict) and isinstance(data.get("task"), dict)
        if task_object and all(error["loc"][:1] == ("task",) for error in exc.errors()):
            raise validation_failed(exc) from None
        raise InvalidCloudEvent(f"invalid {event.type} data") from None


def actor_name(actor: command_trust.Actor) -> str:
    """The actor the events of a command name (`task_events`): `user:<id>` for a user's
    own command, `system:<name>` or `sender:<name>` for a registered system's."""
    kind, _, name = actor.via.partition(" ")
    return f"user:{actor.user}" if kind == "user" else f"{kind}:{name}"


def _log_handled(event: Incoming, actor: command_trust.Actor, status: str) -> None:
    log_event(
        log,
        "command.handled",
        type=event.type,
        event_id=event.id,
        source=event.source,
        user=actor.user,
        via=actor.via,
        status=status,
    )


def _complete(session: Session, user: str, task_id: str) -> tuple[Any, list[str]]:
    """A command naming no task of the user is a 422, not the API's 404: a KafkaSource
    retries a 404 (a subscriber that is not there yet), so an unknown id held its
    ordered partition through every retry (31 s then, 8.5 minutes now) before the dead letter."""
    try:
        return tasks.complete(session, user, task_id)
    except NotFound as exc:
        raise ValidationFailed.of("task_id", exc.message) from None


def _duplicate(record: ProcessedEvent | None, user: str) -> Response:
    """The answer to a command sent again (`record`, its key's): `duplicate`, with the
    task a create command made as it is now (and its Location), as `POST /tasks` replays
    its Idempotency-Key. A system holds only its signing key, so the first answer, lost,
    was its one way to learn the task's id, and it could never complete that task."""
    task = None
    if record is not None and record.result is not None:
        with db.session_scope(read_only=True) as session:
            try:
                task = tasks.read(session, user, record.result)
            except NotFound:  # deleted since
                task = None
    headers = {"Location": f"/tasks/{task.id}"} if task is not None else None
    return json_response(CommandResult(status="duplicate", task=task), 200, headers)


def handle(request: Request) -> Response:
    event = decode(request, get_settings().duetide_max_body_bytes)
    follow_trace(event)
    if event.type not in (events.CMD_TASK_CREATE, events.CMD_TASK_COMPLETE):
        raise InvalidCloudEvent(  # the sender's text, bounded (it echoed 900 KB)
            f"unknown command type {event.type[:255]!r}; expected "
            f"{events.CMD_TASK_CREATE} or {events.CMD_TASK_COMPLETE}"
        )
    telemetry.note(f"process {event.type}", **{"cloudevents.event_type": event.type})
    _bounded(event.data)  # before a signature is worked out over it
    actor = command_trust.actor(request, event)
    event = actor.event or event  # as it was signed
    user = actor.user
    payload = _payload(event)
    spec = payload.task if isinstance(payload, command_events.CreateCommandData) else None
    key = EventKey(CONSUMER, event.source, event.id, scope=user)
    record = processed.seen(key)
    if record is not None:  # a redelivery is no new write: it costs no budget
        _log_handled(event, actor, "duplicate")
        return _duplicate(record, user)
    if actor.own:
        # A registered system's commands are not charged to the user they act for: its
        # burst (an import, a backlog after an outage) came back 429, which a KafkaSource
        # retried (for 31 s then, less than the 60 s window) and then dead-lettered, each
        # retry charged again. Over Kafka its pace is its partition's, one command at a
        # time; over HTTP only its key limits it (SECURITY.md).
        ratelimit.charge_write(user)

    def work(session: Session) -> tuple[CommandResult, list[str]]:
        if spec is not None:
            task, ids = tasks.create(session, user, spec)
            processed.note_result(session, key, task.id)
        else:
            task, ids = _complete(session, user, payload.task_id)
        return CommandResult(status="processed", task=task), ids

    with task_events.acting_as(actor_name(actor)):
        body = run_once(key, work)
    _log_handled(event, actor, "duplicate" if body is None else "processed")
    if body is None:  # a copy that raced this one recorded it first
        return _duplicate(processed.seen(key), user)
    if spec is None:
        return json_response(body)
    assert body.task is not None
    return json_response(body, 201, {"Location": f"/tasks/{body.task.id}"})
