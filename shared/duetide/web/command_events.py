"""The command CloudEvents other systems send (`POST /commands`, or the commands topic).

Declared once, here: `web.commands` validates a command's data with these models, the
OpenAPI document shows the envelope (`CommandEvent`) and the AsyncAPI document
(`web.asyncapi`) the data of each type, so the three cannot differ. They live in the web
layer, not in `events/`, because a create command carries a whole `TaskCreate`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, RootModel

from duetide import events
from duetide.services import schemas
from duetide.web.sink import MAX_ATTRIBUTE_CHARS


class CreateCommandData(BaseModel):
    """The data of `dev.duetide.task.create.v1`: the task, as `POST /tasks` takes it."""

    model_config = ConfigDict(extra="forbid")
    task: schemas.TaskCreate


class CompleteCommandData(BaseModel):
    """The data of `dev.duetide.task.complete.v1`."""

    model_config = ConfigDict(extra="forbid")
    task_id: str = Field(max_length=36)


class Command(BaseModel):
    """A command as a structured-mode CloudEvent; in binary mode the same attributes are
    `ce-*` headers and the body is the data alone (`CommandData`). A user sends it with their
    own bearer token and acts for themself; a registered system names the user in
    `duetideuser` and signs the command (`duetidesystem`, `duetidesig`) or is Knative's
    registered OIDC sender. Other attributes are passed over, except `authtoken`, which
    is refused (400): bearer tokens do not travel in events."""

    model_config = ConfigDict(
        extra="allow",
        # CloudEvents 1.0: attribute names are lower-case ASCII letters and digits.
        json_schema_extra={"propertyNames": {"pattern": "^([a-z0-9]+|data_base64)$"}},
    )
    specversion: Literal["1.0"]
    id: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["id"])
    source: str = Field(min_length=1, max_length=MAX_ATTRIBUTE_CHARS["source"])
    subject: str | None = None
    time: AwareDatetime | None = Field(None, description="RFC 3339")
    datacontenttype: Literal["application/json"] | None = None
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


class CommandData(RootModel[CreateCommandData | CompleteCommandData]):
    """A command in binary mode: the body is the event's data (application/json), its
    attributes are the `ce-*` headers; `ce-type` says which of the two the data is."""


DATA: dict[str, type[BaseModel]] = {
    events.CMD_TASK_CREATE: CreateCommandData,
    events.CMD_TASK_COMPLETE: CompleteCommandData,
}
"""The data model of each command type."""
