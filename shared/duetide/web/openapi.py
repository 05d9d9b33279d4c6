"""The OpenAPI 3.1 document of the tasks function, built from `api.ENDPOINTS`.

Each operation is declared once, in `api.ENDPOINTS`, from which the router is built too;
request and query schemas come from the pydantic request models, response schemas from
the models in `services/responses.py`, which are what the handlers return and
`web.http.json_response` dumps, so the document and the answers share one declaration.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from duetide.events import CMD_TASK_COMPLETE, CMD_TASK_CREATE
from duetide.services import idempotency
from duetide.services.responses import ErrorBody
from duetide.web.preconditions import IF_MATCH_PATTERN
from duetide.web.sink import BATCH, MAX_ATTRIBUTE_CHARS, STRUCTURED

if TYPE_CHECKING:
    from duetide.web.api import Endpoint


@dataclass(frozen=True)
class Header:
    """A request header an operation reads, as an OpenAPI header parameter."""

    name: str
    description: str
    example: str
    pattern: str | None = None

    def parameter(self) -> dict[str, Any]:
        schema: dict[str, Any] = {"type": "string", "examples": [self.example]}
        if self.pattern is not None:
            schema["pattern"] = self.pattern
        return {
            "name": self.name,
            "in": "header",
            "required": False,  # which headers are needed depends on the media type
            "description": self.description,
            "schema": schema,
        }


_BINARY = (
    "Binary mode (the event's data as an application/json body): {need}. Ignored in "
    "structured mode, where the body holds every attribute, so the values are described "
    "here rather than constrained by the schema: {values}"
)
_MAX = MAX_ATTRIBUTE_CHARS
BINARY_MODE_HEADERS = (
    Header("ce-specversion", _BINARY.format(need="required", values="`1.0`."), "1.0"),
    Header(
        "ce-id",
        _BINARY.format(need="required", values=f"1 to {_MAX['id']} characters."),
        "order-42",
    ),
    Header(
        "ce-source",
        _BINARY.format(need="required", values=f"1 to {_MAX['source']} characters."),
        "/shop",
    ),
    Header(
        "ce-type",
        _BINARY.format(
            need="required",
            values=f'`{CMD_TASK_CREATE}` (data `{{"task": ...}}`) or `{CMD_TASK_COMPLETE}` '
            '(data `{"task_id": ...}`).',
        ),
        CMD_TASK_CREATE,
    ),
    Header(
        "ce-duetideuser",
        _BINARY.format(
            need="the user a registered system's command acts for",
            values="1 to 255 printable characters.",
        ),
        "me",
    ),
    Header(
        "ce-duetidesystem",
        _BINARY.format(need="the registered system that signed", values="its name."),
        "local",
    ),
    Header(
        "ce-duetidesig",
        _BINARY.format(
            need="the system's signature",
            values="64 lowercase hex digits, HMAC-SHA256 of the command's JCS form.",
        ),
        "0" * 64,
    ),
)
"""The CloudEvents HTTP binding's binary content mode: the attributes as `ce-*` headers."""

IF_MATCH = Header(
    "If-Match",
    "The ETag of the task or series as you last read it: the change is made only if it "
    "is still as it was then, else 412 and nothing changes (`*`: any version). Without "
    "it, the last change wins.",
    '"q2dyZb0mTfWlD4kN1yQzUA"',
    pattern=IF_MATCH_PATTERN,
)
IDEMPOTENCY_KEY = Header(
    idempotency.HEADER,
    "A key of yours for this request (a new UUID, say): sent again within 24 hours with "
    "the same method, path and body, the request is answered as the first time, with "
    f"`{idempotency.REPLAYED}: true`, and makes nothing again; with another request, 422. "
    "Remembered only once the write has succeeded.",
    "8e03978e-40d5-43e8-bc93-6894a57f9324",
    pattern=idempotency.KEY_PATTERN,
)
IF_NONE_MATCH = Header(
    "If-None-Match",
    "The ETag as you last read it: 304 without a body while it is unchanged.",
    '"q2dyZb0mTfWlD4kN1yQzUA"',
)
ETAG = {
    "description": "The entity tag of the task or series shown: a hash of this answer's "
    "body. Send it back as If-Match to change it only if no one else has meanwhile.",
    "required": True,
    "schema": {"type": "string"},
}

COMMANDS_DESCRIPTION = (
    "One command CloudEvent per request, in either content mode of the CloudEvents HTTP "
    f"binding. Structured: the whole event as `{STRUCTURED}` (`CommandEvent`), no `ce-*` "
    "headers. Binary: the attributes as `ce-specversion`, `ce-id`, `ce-source`, `ce-type` "
    "(and `ce-duetideuser`, `ce-duetidesystem`, `ce-duetidesig` for a registered system) "
    "headers, the event's data alone as `application/json` (`CommandData`). A batch "
    f"(`{BATCH}`) is refused with 415. (`source`, `id`) makes a retry a no-op: 200 "
    "`duplicate`. A command that can never succeed is a 400 or 422 (a complete command "
    "naming no task of the user: 422 on `task_id`), never a status a KafkaSource retries "
    "(404, 408, 409, 429, 5xx)."
)


LOCATION = {
    "description": "Where what was created can be read (`/tasks/{id}`, `/reminders/{id}`, "
    "a calendar feed's URL)",
    "required": True,
    "schema": {"type": "string", "format": "uri-reference"},
}

ERRORS = (400, 401, 404, 413, 415, 422, 429, 503)
"""What any secured operation may answer besides its own responses (503: the database
or the pool is unavailable, with Retry-After; it was left out, though any can)."""


def schema_ref(model: type[BaseModel], components: dict[str, Any]) -> dict[str, Any]:
    """A `$ref` to `model`'s schema, added with its definitions to `components` (the
    schemas of `#/components/schemas`, in OpenAPI and AsyncAPI documents alike)."""
    schema = without_null_defaults(
        model.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    components.update(schema.pop("$defs", {}))
    components[model.__name__] = schema
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _allows_null(schema: dict[str, Any]) -> bool:
    options = schema.get("anyOf", [schema])
    return any(option.get("type") == "null" for option in options)


def without_null_defaults(schema: Any) -> Any:
    """Drop `default: null` where null is not allowed: an update field left out means
    "unchanged", which JSON Schema cannot say, and a null default would be invalid."""
    if isinstance(schema, dict):
        if "default" in schema and schema["default"] is None and not _allows_null(schema):
            schema = {k: v for k, v in schema.items() if k != "default"}
        return {k: without_null_defaults(v) for k, v in schema.items()}
    if isinstance(schema, list):
        return [without_null_defaults(item) for item in schema]
    return schema


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = model.model_json_schema()
    required = set(schema.get("required", []))
    return [
        {
            "name": name,
            "in": "query",
            "required": name in required,
            "schema": without_null_defaults(prop),
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
    parameters += [header.parameter() for header in endpoint.headers]
    if parameters:
        operation["parameters"] = parameters
    if endpoint.description:
        operation["description"] = endpoint.description
    if endpoint.body is not None:
        bodies = {endpoint.media_type: endpoint.body, **endpoint.other_bodies}
        operation["requestBody"] = {
            "required": True,
            "content": {
                media: {"schema": schema_ref(model, components)} for media, model in bodies.items()
            },
        }
    for status, model in endpoint.responses.items():
        response: dict[str, Any] = {"description": str(status)}
        if model is not None:
            response["content"] = {"application/json": {"schema": schema_ref(model, components)}}
        elif status == 200 and endpoint.produces:
            kind = "object" if endpoint.produces == "application/json" else "string"
            response["content"] = {endpoint.produces: {"schema": {"type": kind}}}
        headers = {"Location": LOCATION} if status == 201 else {}
        if endpoint.etag and status in (200, 201):
            headers["ETag"] = ETAG
        if headers:
            response["headers"] = headers
        operation["responses"][str(status)] = response
    if IF_MATCH in endpoint.headers:
        operation["responses"]["412"] = _error("412", components)
    if IF_NONE_MATCH in endpoint.headers:
        operation["responses"]["304"] = {"description": "304", "headers": {"ETag": ETAG}}
    if endpoint.auth == "public":
        return operation
    for status in ERRORS:
        operation["responses"].setdefault(str(status), _error(str(status), components))
    # The routes that authenticate in their handler take a bearer token or none at all:
    # `/commands` a command a registered system signed (or Knative's OIDC sender sent),
    # `/activity/stream` its `access_token` (an EventSource sends no header).
    optional = endpoint.auth == "in_handler"
    operation["security"] = [{"bearer": []}, *([{}] if optional else [])]
    return operation


def _error(status: str, components: dict[str, Any]) -> dict[str, Any]:
    schema = schema_ref(ErrorBody, components)
    return {"description": status, "content": {"application/json": {"schema": schema}}}


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
