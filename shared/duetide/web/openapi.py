"""The OpenAPI 3.1 document of the tasks function, built from `api.ENDPOINTS`.

Each operation is declared once, in `api.ENDPOINTS`, from which the router is built too;
request and query schemas come from the pydantic request models, response schemas from
the response models below, which describe what the `*_out` functions return.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from duetide.services import schemas
from duetide.vocabulary import (
    CatchUp,
    Channel,
    Mode,
    MonthEnd,
    NotificationStatus,
    ReminderState,
    SeriesStatus,
    TaskStatus,
)
from duetide.web.sink import MAX_ATTRIBUTE_CHARS

if TYPE_CHECKING:
    from duetide.web.api import Endpoint

DateTime = str  # RFC 3339 with offset; described by `format: date-time` below


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Out):
    code: str
    message: str
    details: Any = None


class ErrorBody(Out):
    error: ErrorDetail


class ReminderOut(Out):
    id: str
    state: ReminderState
    at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    before_due: str | None = Field(None, description="ISO 8601 duration")
    fire_at: str | None = Field(json_schema_extra={"format": "date-time"})


class TaskOut(Out):
    id: str
    title: str
    description: str
    status: TaskStatus
    priority: schemas.Priority
    tags: list[str]
    due_at: str | None = Field(json_schema_extra={"format": "date-time"})
    completed_at: str | None = Field(json_schema_extra={"format": "date-time"})
    series_id: str | None
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})
    reminders: list[ReminderOut]


class TaskPage(Out):
    items: list[TaskOut]
    next_cursor: str | None


class SeriesOut(Out):
    id: str
    rrule: str
    timezone: str
    start: str = Field(json_schema_extra={"format": "date-time"})
    mode: Mode
    month_end: MonthEnd
    catch_up: CatchUp
    status: SeriesStatus
    title: str
    description: str
    priority: schemas.Priority
    tags: list[str]
    last_index: int
    last_scheduled_at: str = Field(json_schema_extra={"format": "date-time"})
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})


class SeriesPage(Out):
    items: list[SeriesOut]
    next_cursor: str | None


class OccurrenceDeleted(Out):
    """The answer to deleting an occurrence of a recurring series (a one-off task: 204).

    Deleting the open occurrence skips it, as in Todoist or Google Tasks: `outcome` is
    `skipped`, history records it so, and `open_occurrence` is the next one, now in
    place (null if the rule has no more: the series has then ended). To stop a series,
    end it with `DELETE /series/{series_id}`. Deleting a completed or an earlier
    occurrence, or any of an ended series, removes just that one (`deleted`). The
    latest occurrence of a paused series cannot be deleted (409): resume or end it."""

    deleted: str
    outcome: Literal["skipped", "deleted"]
    series: SeriesOut
    open_occurrence: TaskOut | None


class Forecast(Out):
    """Up to `count` occurrences from the rule's start. Each forecast has a work budget
    proportional to `count` (at most about a quarter second of CPU): `truncated` is true
    when it ran out before `count` occurrences were found; the items are then correct but
    fewer, and the series may go on after them (ask for fewer). A series that ends (COUNT,
    UNTIL) gives fewer items with `truncated: false`."""

    items: list[str]
    truncated: bool


class HistoryEntry(Out):
    index: int
    scheduled_at: str = Field(json_schema_extra={"format": "date-time"})
    outcome: Literal["completed", "open", "skipped", "missed"]
    at: str | None
    task_id: str | None


class History(Out):
    items: list[HistoryEntry]


class NotificationOut(Out):
    id: str
    reminder_id: str
    task_id: str
    channel: Channel
    scheduled_at: str = Field(json_schema_extra={"format": "date-time"})
    delivered_at: str = Field(json_schema_extra={"format": "date-time"})
    status: NotificationStatus
    detail: str = Field(description="Why a delivery failed for good; empty when delivered")


class NotificationPage(Out):
    items: list[NotificationOut]
    next_cursor: str | None


class UpcomingReminder(Out):
    id: str
    task_id: str
    title: str
    fire_at: str = Field(json_schema_extra={"format": "date-time"})
    due_at: str | None


class UpcomingPage(Out):
    items: list[UpcomingReminder]


class QuietHoursOut(Out):
    start: str
    end: str


class PreferencesOut(Out):
    timezone: str
    default_reminders: list[str]
    channels: list[Channel]
    webhook_url: str | None
    webhook_secret: str | None
    email: str | None
    email_verified: bool = Field(
        description="Nothing but the confirmation mail is sent until the code is confirmed"
    )
    email_confirmation_sent_at: str | None = Field(
        json_schema_extra={"format": "date-time"},
        description="When the relay took the confirmation mail of the current code; null if "
        "it could not be sent (POST /preferences/email/resend)",
    )
    webhook_verified: bool = Field(
        description="Nothing but url_verification challenges are sent until one is echoed"
    )
    quiet_hours: QuietHoursOut | None
    grace: str
    updated_at: str = Field(json_schema_extra={"format": "date-time"})


class Health(Out):
    status: str


class CommandResult(Out):
    status: Literal["processed", "duplicate"]
    task: TaskOut | None = None


class CreateCommandData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: schemas.TaskCreate


class CompleteCommandData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(max_length=36)


class Command(BaseModel):
    """A command as a structured-mode CloudEvent; binary mode (`ce-*` headers and the
    data as an application/json body) is accepted as well. Other attributes are passed
    over, except the extension `authtoken`: the producer's bearer token, used when the
    request has no Authorization header (commands relayed from Kafka)."""

    model_config = ConfigDict(extra="allow")
    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["id"])
    source: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["source"])


class CreateCommand(Command):
    type: Literal["dev.duetide.task.create.v1"]
    data: CreateCommandData


class CompleteCommand(Command):
    type: Literal["dev.duetide.task.complete.v1"]
    data: CompleteCommandData


class CommandEvent(RootModel[CreateCommand | CompleteCommand]):
    pass


ERRORS = (400, 401, 404, 413, 415, 422, 429)
"""What any secured operation may answer besides its own responses."""


def _ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    schema = _without_null_defaults(
        model.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _allows_null(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "null" for option in options)


def _without_null_defaults(schema: Any) -> Any:
    """Drop `default: null` where null is not allowed: an update field left out means
    "unchanged", which JSON Schema cannot say, and a null default would be invalid."""
    if isinstance(schema, dict):
        if "default" in schema and schema["default"] is None and not _allows_null(schema):
            schema = {k: v for k, v in schema.items() if k != "default"}
        return {k: _without_null_defaults(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [_without_null_defaults(item) for item in schema]
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": _without_null_defaults(prop),
        }
        for name, prop in schema["properties"].items()
    ]


def _operation(endpoint: Endpoint, components: dict[str, Any]) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": endpoint.operation_id,
        "summary": endpoint.summary,
        "responses": {},
    }
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in sorted(_PATH_ARGUMENT.findall(endpoint.path))
    ]
    if endpoint.query is not None:
        parameters += _query_parameters(endpoint.query)
    if parameters:
        operation["parameters"] = parameters
    if endpoint.body is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {endpoint.media_type: {"schema": _ref(endpoint.body, components)}},
        }
    for status, model in endpoint.responses.items():
        response: dict[str, Any] = {"description": str(status)}
        if model is not None:
            response["content"] = {"application/json": {"schema": _ref(model, components)}}
        operation["responses"][str(status)] = response
    if endpoint.auth == "public":
        return operation
    error = {"content": {"application/json": {"schema": _ref(ErrorBody, components)}}}
    for status in ERRORS:
        operation["responses"].setdefault(str(status), {"description": str(status), **error})
    operation["security"] = [{"bearer": []}]
    return operation


_PATH_ARGUMENT = re.compile(r"<(\w+)>")


@functools.cache
def document() -> dict[str, Any]:
    from duetide.web.api import ENDPOINTS  # the API imports these models

    components: dict[str, Any] = {}
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in ENDPOINTS:
        path = _PATH_ARGUMENT.sub(r"{\1}", endpoint.path)
        paths.setdefault(path, {})[endpoint.method.lower()] = _operation(endpoint, components)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "duetide tasks API",
            "version": "1",
            "description": "Tasks, recurring series, reminders. Errors are "
            '`{"error": {"code", "message", "details"}}`. Text anywhere in a request '
            "must not hold NUL (U+0000): 422 in a body or query, 404 in a path.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
        },
    }
