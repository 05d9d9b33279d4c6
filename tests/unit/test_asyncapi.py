"""The event catalog (issue 14): the AsyncAPI 3.0 document is valid, covers every CloudEvent
type with its model's schema and every topic as the manifests declare it, and the copy
in the repository (docs/asyncapi.json) is what the models generate."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import referencing.jsonschema
import yaml
from referencing import Registry, Resource

from duetide import events
from duetide.config import Settings
from duetide.services.schemas import TaskCreate
from duetide.storage import outbox
from duetide.web import asyncapi, command_events
from duetide_tools.cli import asyncapi_text

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "asyncapi.json"
METASCHEMA = ROOT / "tests" / "specs" / "asyncapi-3.0.0.json"


def asyncapi_validator() -> jsonschema.Draft7Validator:
    """The official AsyncAPI 3.0.0 JSON Schema (tests/specs/README.md), its definitions
    resolved from the file itself: nothing is fetched."""
    schema = json.loads(METASCHEMA.read_text())
    draft7 = referencing.jsonschema.DRAFT7
    registry: Registry[Any] = Registry().with_resources(
        (part["$id"], Resource.from_contents(part, default_specification=draft7))
        for part in schema["definitions"].values()
        if "$id" in part
    )
    return jsonschema.Draft7Validator(schema, registry=registry)


def test_the_committed_document_is_what_the_models_generate() -> None:
    assert COMMITTED.read_text() == asyncapi_text(), (
        "docs/asyncapi.json is out of date: run `duetide asyncapi` and commit it"
    )


def test_the_document_is_valid_asyncapi_3() -> None:
    validator = asyncapi_validator()
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(
        asyncapi.document())]  # fmt: skip
    assert errors == []


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["operations"]["taskEventsSend"].update(action="publish"),  # AsyncAPI 2's word
        lambda d: d["channels"]["commands"].update(address=3),
        lambda d: d["components"]["messages"]["taskCreatedV1"].update(payload={"type": 5}),
    ],
)
def test_the_validator_refuses_a_broken_document(breakage: Any) -> None:
    broken = copy.deepcopy(asyncapi.document())
    breakage(broken)
    assert list(asyncapi_validator().iter_errors(broken)) != []


def _constants() -> set[str]:
    return {
        value
        for name, value in vars(events).items()
        if name.isupper() and isinstance(value, str) and value.startswith(events.PREFIX)
    }


def test_every_event_and_command_type_is_a_message_with_its_models_schema() -> None:
    document = asyncapi.document()
    messages = document["components"]["messages"]
    by_type = {message["name"]: message for message in messages.values()}
    assert set(by_type) == _constants() - {events.PREFIX} == set(asyncapi.data_models())
    for event_type, model in asyncapi.data_models().items():
        message = by_type[event_type]
        assert message["headers"]["properties"]["ce_type"] == {"const": event_type}
        reference = message["payload"]["$ref"]
        name = reference.removeprefix("#/components/schemas/")
        assert name == model.__name__
        schema = document["components"]["schemas"][name]
        assert set(schema["properties"]) == set(model.model_fields)


def test_the_create_commands_task_is_the_task_create_schema_not_an_open_object() -> None:
    schemas = asyncapi.document()["components"]["schemas"]
    task = schemas["CreateCommandData"]["properties"]["task"]
    assert task == {"$ref": "#/components/schemas/TaskCreate"}
    assert set(schemas["TaskCreate"]["properties"]) == set(TaskCreate.model_fields)
    assert schemas["TaskCreate"]["additionalProperties"] is False
    standalone = asyncapi.message_schemas()[events.CMD_TASK_CREATE]  # `duetide schemas`
    assert standalone["properties"]["task"] == {"$ref": "#/$defs/TaskCreate"}
    assert command_events.DATA[events.CMD_TASK_CREATE] is command_events.CreateCommandData


def test_every_type_is_on_the_topic_it_is_published_to_and_on_the_dead_letters() -> None:
    channels = asyncapi.document()["channels"]
    by_address = {
        channel["address"]: {ref["$ref"].rsplit("/", 1)[1] for ref in channel["messages"].values()}
        for channel in channels.values()
    }
    key = asyncapi._message_key
    for event_type in events.PAYLOADS:
        assert key(event_type) in by_address[outbox.topic_for(event_type)], event_type
    for command in command_events.DATA:
        assert key(command) in by_address["duetide-commands"]
    assert by_address["duetide-dead-letters"] == set().union(*by_address.values())


def test_the_topics_are_the_manifests_topics() -> None:
    manifests = {
        doc["metadata"]["name"]: doc["spec"]
        for doc in yaml.safe_load_all((ROOT / "kafka" / "base" / "topics.yaml").read_text())
    }
    channels = asyncapi.document()["channels"].values()
    declared = {
        channel["address"]: {
            "partitions": channel["bindings"]["kafka"]["partitions"],
            "replicas": channel["bindings"]["kafka"]["replicas"],
            "config": channel["bindings"]["kafka"]["topicConfiguration"],
        }
        for channel in channels
    }
    assert declared == manifests


def test_the_served_document_names_the_configured_topics() -> None:
    settings = Settings.model_construct(duetide_topic_task_events="tenant-a-tasks")
    channels = asyncapi.document(asyncapi.addresses(settings))["channels"]
    assert channels["taskEvents"]["address"] == "tenant-a-tasks"
    assert channels["taskEvents"]["bindings"]["kafka"]["topic"] == "tenant-a-tasks"
    assert channels["reminders"]["address"] == "duetide-reminders"
