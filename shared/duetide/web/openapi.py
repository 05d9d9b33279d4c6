"""The OpenAPI 3.1 document of the tasks function, built from `api.ENDPOINTS`.

Each operation is declared once, in `api.ENDPOINTS`, from which the router is built too;
request and query schemas come from the pydantic request models, response schemas from
the models in `services/responses.py`, which are what the handlers return and
`web.http.json_response` dumps, so the document and the answers share one declaration.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel

from duetide.services import schemas
from duetide.services.responses import ErrorBody
from duetide.web.sink import MAX_ATTRIBUTE_CHARS

if TYPE_CHECKING:
    from duetide.web.api import Endpoint


class CreateCommandData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task: schemas.TaskCreate


class CompleteCommandData(BaseModel):
    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(max_length=36)


class Command(BaseModel):
    """A command as a structured-mode CloudEvent; binary mode (`ce-*` headers and the
    data as an application/json body) is accepted as well. A user sends it with their
    own bearer token and acts for themself; a registered system names the user in
    `duetideuser` and signs the command (`duetidesystem`, `duetidesig`) or is Knative's
    registered OIDC sender. Other attributes are passed over, except `authtoken`, which
    is refused (400): bearer tokens do not travel in events."""

    model_config = ConfigDict(extra="allow")
    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["id"])
    source: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["source"])
    duetideuser: str | None = Field(
        None,
        min_length=1,
        max_length=255,
        description="The user a system's command acts for; with a user's token, that user.",
    )
    duetidesystem: str | None = Field(None, description="The registered system that signed.")
    duetidesig: str | None = Field(
        None, description="HMAC-SHA256 (hex) of the command's JCS form with the system's key."
    )


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
        elif status == 200 and endpoint.produces != "application/json":
            response["content"] = {endpoint.produces: {"schema": {"type": "string"}}}
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
