"""The event catalog: an AsyncAPI 3.0 document of duetide's Kafka topics, the CloudEvent
types on each and the JSON Schema of each type's data.

Built from the declarations the code runs on: the payload models of `events.PAYLOADS`
(what is published) and `web.command_events.DATA` (what other systems send), the topic
names of the settings, and `TOPICS` below, whose partitions and retention the manifests in
kafka/base/topics.yaml must match (tests/unit/test_asyncapi.py holds them together, and
the copy kept in the repository, docs/asyncapi.json, to the models). The tasks function
serves it at `GET /asyncapi.json`; `duetide asyncapi` writes the copy.

Every record is a binary-mode CloudEvent (CloudEvents Kafka binding): the attributes are
`ce_*` headers, the value is the JSON data, the key the aggregate id (the task's, or the
reminder's), so one aggregate's events keep their order on a partition.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

from duetide import events
from duetide.config import Settings
from duetide.web import command_events
from duetide.web.openapi import schema_ref

KAFKA_BINDING = "0.5.0"
BOOTSTRAP = "duetide-kafka-bootstrap.kafka:9092"


@dataclass(frozen=True)
class Topic:
    """A topic as the catalog shows it; `setting` names the setting holding its name
    (None: a fixed name, set in the manifests only)."""

    key: str
    default_name: str
    setting: str | None
    partitions: int
    retention_ms: int
    description: str
    types: tuple[str, ...]
    producers: str
    consumers: str


_TASK_TYPES = tuple(t for t in events.PAYLOADS if t.startswith(f"{events.PREFIX}task."))
_REMINDER_TYPES = tuple(t for t in events.PAYLOADS if t.startswith(f"{events.PREFIX}reminder."))
_WEBHOOK_TYPES = tuple(t for t in events.PAYLOADS if t.startswith(f"{events.PREFIX}webhook."))
_COMMAND_TYPES = tuple(command_events.DATA)
_WEEK_MS = 7 * 24 * 3600 * 1000

TOPICS: tuple[Topic, ...] = (
    Topic(
        "taskEvents",
        "duetide-task-events",
        "duetide_topic_task_events",
        6,
        _WEEK_MS,
        "Every change of a task, with the task's state after it; keyed by task id.",
        _TASK_TYPES,
        "the outbox of the tasks and recurrence functions",
        "the recurrence function (KafkaSource duetide-recurrence) and the activity function "
        "(KafkaSource duetide-activity)",
    ),
    Topic(
        "reminders",
        "duetide-reminders",
        "duetide_topic_reminders",
        6,
        _WEEK_MS,
        "Reminders that are due, or were missed; keyed by task id. A deployment with "
        "DUETIDE_REMINDERS_PER_EVENT above 1 sends due reminders in reminder.due.batch "
        "events (keyed by the first one's task), each reminder as its own reminder.due.",
        _REMINDER_TYPES,
        "the outbox of the sweep function",
        "the notify function (KafkaSource duetide-notify)",
    ),
    Topic(
        "webhooks",
        "duetide-webhooks",
        "duetide_topic_webhooks",
        6,
        _WEEK_MS,
        "Tries of webhook deliveries: each names a stored delivery (a task event for one "
        "subscription) and its attempt; keyed by subscription id.",
        _WEBHOOK_TYPES,
        "the outbox of the activity function (first tries) and of the sweep (retries)",
        "the notify function (KafkaSource duetide-notify-webhooks, unordered)",
    ),
    Topic(
        "commands",
        "duetide-commands",
        None,
        3,
        _WEEK_MS,
        "Commands from other systems, signed (`duetidesystem`, `duetidesig`) for the user "
        "named in `duetideuser`; delivered to the tasks function's POST /commands.",
        _COMMAND_TYPES,
        "other systems",
        "the tasks function (KafkaSource duetide-commands, POST /commands)",
    ),
    Topic(
        "deadLetters",
        "duetide-dead-letters",
        None,
        1,
        30 * 24 * 3600 * 1000,
        "Events a function refused or could not take after its retries, as they were, "
        "plus Knative's `knativeerrordest`, `knativeerrorcode` and `knativeerrordata` "
        "extensions; `duetide deadletters replay` puts them back on their topic.",
        (*_TASK_TYPES, *_REMINDER_TYPES, *_WEBHOOK_TYPES, *_COMMAND_TYPES),
        "Knative's KafkaSink duetide-dead-letters",
        "an operator (`duetide deadletters`)",
    ),
)


def data_models() -> dict[str, type[BaseModel]]:
    """The data model of every CloudEvent type, published or accepted, by type."""
    return dict(sorted({**events.PAYLOADS, **command_events.DATA}.items()))


def message_schemas() -> dict[str, dict[str, Any]]:
    """The JSON Schema of each type's data, standalone (`duetide schemas`)."""
    return {name: model.model_json_schema() for name, model in data_models().items()}


def _message_key(event_type: str) -> str:
    """`dev.duetide.task.created.v1` -> `taskCreatedV1`."""
    words = event_type.removeprefix(events.PREFIX).replace(".", " ").split()
    return words[0] + "".join(word.capitalize() for word in words[1:])


_ATTRIBUTE = {"type": "string"}


def _headers(event_type: str) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "ce_specversion": {"const": "1.0"},
        "ce_id": {**_ATTRIBUTE, "description": "Unique per source; a retry keeps it."},
        "ce_source": {**_ATTRIBUTE, "description": "The producer, e.g. /duetide/tasks."},
        "ce_type": {"const": event_type},
        "ce_subject": {**_ATTRIBUTE, "description": "The aggregate, e.g. the task id."},
        "ce_time": {**_ATTRIBUTE, "format": "date-time"},
        "ce_traceparent": {
            **_ATTRIBUTE,
            "description": "W3C Trace Context of the change that produced the event.",
        },
        "content-type": {"const": "application/json"},
    }
    if event_type not in command_events.DATA:  # duetide's own events: their key again
        properties["ce_partitionkey"] = {
            **_ATTRIBUTE,
            "description": "The record's key again, by which a dead-letter KafkaSink keys "
            "the event if it fails.",
        }
    if event_type in command_events.DATA:
        properties.update(
            ce_duetideuser={**_ATTRIBUTE, "description": "The user the command acts for."},
            ce_duetidesystem={**_ATTRIBUTE, "description": "The registered system that signed."},
            ce_duetidesig={
                **_ATTRIBUTE,
                "description": "HMAC-SHA256 (hex) of the command's JCS form with the key.",
            },
        )
    required = ["ce_specversion", "ce_id", "ce_source", "ce_type"]
    return {"type": "object", "required": required, "properties": properties}


def _message(event_type: str, model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    command = event_type in command_events.DATA
    return {
        "name": event_type,
        "title": event_type,
        "summary": (model.__doc__ or "").strip().split("\n\n")[0].replace("\n", " "),
        "contentType": "application/json",
        "headers": _headers(event_type),
        "payload": schema_ref(model, schemas),
        "bindings": {
            "kafka": {
                "key": {
                    "type": "string",
                    "description": "Any key of the sender's choice"
                    if command
                    else events.KEYS[event_type],
                },
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _channel(topic: Topic, address: str) -> dict[str, Any]:
    return {
        "address": address,
        "title": address,
        "description": f"{topic.description} Produced by {topic.producers}; "
        f"read by {topic.consumers}.",
        "messages": {
            _message_key(t): {"$ref": f"#/components/messages/{_message_key(t)}"}
            for t in topic.types
        },
        "bindings": {
            "kafka": {
                "topic": address,
                "partitions": topic.partitions,
                "replicas": 1,
                "topicConfiguration": {"retention.ms": topic.retention_ms},
                "bindingVersion": KAFKA_BINDING,
            }
        },
    }


def _operation(topic: Topic, action: str, summary: str) -> dict[str, Any]:
    return {
        "action": action,
        "channel": {"$ref": f"#/channels/{topic.key}"},
        "summary": summary,
        "messages": [
            {"$ref": f"#/channels/{topic.key}/messages/{_message_key(t)}"} for t in topic.types
        ],
    }


def addresses(settings: Settings) -> tuple[str, ...]:
    """The name of each of `TOPICS` in a deployment with `settings`."""
    return tuple(getattr(settings, t.setting) if t.setting else t.default_name for t in TOPICS)


DEFAULT_ADDRESSES = tuple(t.default_name for t in TOPICS)
"""The topic names of the manifests, which the copy in the repository shows."""


@functools.cache
def document(topic_addresses: tuple[str, ...] = DEFAULT_ADDRESSES) -> dict[str, Any]:
    """The AsyncAPI 3.0 document, with the topics named `topic_addresses` (in the order
    of `TOPICS`). Cached: the schemas are generated once per process."""
    schemas: dict[str, Any] = {}
    messages = {_message_key(t): _message(t, model, schemas) for t, model in data_models().items()}
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for topic, address in zip(TOPICS, topic_addresses, strict=True):
        channels[topic.key] = _channel(topic, address)
        operations[f"{topic.key}Send"] = _operation(topic, "send", f"By {topic.producers}")
        operations[f"{topic.key}Receive"] = _operation(topic, "receive", f"By {topic.consumers}")
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "duetide events",
            "version": "1",
            "description": "The Kafka topics of duetide and the CloudEvents on them, each a "
            "binary-mode record (CloudEvents Kafka binding): attributes in `ce_*` headers, "
            "the JSON data as the value. The HTTP API is at /openapi.json.",
        },
        "defaultContentType": "application/json",
        "servers": {
            "cluster": {
                "host": BOOTSTRAP,
                "protocol": "kafka",
                "description": "The Strimzi cluster's plain listener (kafka/base/kafka.yaml).",
            }
        },
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": messages,
            "schemas": dict(sorted(schemas.items())),
        },
    }
