"""CloudEvent types, their payload models, and encoding/decoding with the CloudEvents SDK.

Types are versioned reverse-DNS names; a payload model per type gives both the
validation of incoming events and the published JSON Schema (`duetide schemas`, and the
AsyncAPI document of `web.asyncapi`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, NamedTuple
from urllib.parse import quote

from cloudevents.conversion import to_binary as to_http_binary
from cloudevents.http import CloudEvent
from cloudevents.kafka import to_binary as to_kafka_binary
from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field

from duetide.vocabulary import Priority, TaskStatus

PREFIX = "dev.duetide."
TASK_CREATED = "dev.duetide.task.created.v1"
TASK_UPDATED = "dev.duetide.task.updated.v1"
TASK_COMPLETED = "dev.duetide.task.completed.v1"
TASK_REOPENED = "dev.duetide.task.reopened.v1"
TASK_DELETED = "dev.duetide.task.deleted.v1"
TASK_EVENTS = (TASK_CREATED, TASK_UPDATED, TASK_COMPLETED, TASK_REOPENED, TASK_DELETED)
"""The task events, in a task's life order: what the activity log and the webhook
subscriptions take."""
REMINDER_DUE = "dev.duetide.reminder.due.v1"
REMINDER_DUE_BATCH = "dev.duetide.reminder.due.batch.v1"
REMINDER_MISSED = "dev.duetide.reminder.missed.v1"
WEBHOOK_DELIVERY = "dev.duetide.webhook.delivery.v1"
CMD_TASK_CREATE = "dev.duetide.task.create.v1"
CMD_TASK_COMPLETE = "dev.duetide.task.complete.v1"
PING = "dev.knative.sources.ping"

SOURCE_TASKS = "/duetide/tasks"
SOURCE_SWEEP = "/duetide/sweep"
SOURCE_RECURRENCE = "/duetide/recurrence"
SOURCE_ACTIVITY = "/duetide/activity"
SOURCE_NOTIFY = "/duetide/notify"


class Payload(BaseModel):
    model_config = ConfigDict(extra="ignore")


def _in_utc(value: datetime) -> datetime:
    """An event's time in UTC from here on. An offset can push a time past year 1 or
    9999 (`0001-01-01T00:00:00+23:59`), where it is no instant at all: refused as the
    event's content (400), where it would otherwise overflow in whatever reads it."""
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("is out of range in UTC") from None


Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]
Scalar = str | int | float | bool | None
# A field's value in a change: what `task_events.watched` reports (a text, a word, a
# time, a sorted list of tags). Two levels at most, so an event's nesting is bounded.
ChangeValue = Scalar | list[Scalar]


class FieldChange(Payload):
    """One changed field of a task: its value before and after (JSON: times as RFC 3339
    text, tags as a sorted list, priority as its word)."""

    before: ChangeValue = None
    after: ChangeValue = None


class TaskEvent(Payload):
    """The state of a task after the change the event type names.

    `actor`, `description`, `priority`, `tags` and `changes` were added later (all
    optional): events recorded before them lack them, and consumers must accept that.
    """

    task_id: str = Field(max_length=36)
    owner: str = Field(max_length=255)
    title: str
    status: TaskStatus
    due_at: Instant | None = None
    completed_at: Instant | None = None
    series_id: str | None = Field(None, max_length=36)
    scheduled_at: Instant | None = None
    occurrence_index: int | None = None
    description: str | None = None
    priority: Priority | None = None
    tags: list[str] | None = None
    actor: str | None = Field(
        None,
        max_length=300,
        description="Who made the change: `user:<id>` (the owner, by the API or their own "
        "command), `system:<name>` or `sender:<name>` (a registered system's command), "
        "`duetide:<function>` (recurrence, the sweep)",
    )
    changes: dict[str, FieldChange] | None = Field(
        None, description="task.updated: the fields that changed, before and after"
    )


class ReminderEvent(Payload):
    """A reminder that is due (or was missed): what notify needs to deliver it."""

    reminder_id: str = Field(max_length=36)
    task_id: str = Field(max_length=36)
    owner: str = Field(max_length=255)
    title: str
    due_at: Instant | None = None
    scheduled_at: Instant


MAX_BATCH = 100
"""The most reminders one `reminder.due.batch` carries: the largest, every title and owner
at its longest in characters JSON escapes to 12 bytes, stays under a request body
(DUETIDE_MAX_BODY_BYTES, 1 MiB) and a Kafka record (1 MiB by default); `test_events`."""


class ReminderBatchEvent(Payload):
    """Reminders that are due, several in one event: what the sweep sends when
    DUETIDE_REMINDERS_PER_EVENT is above 1.

    Each has the meaning of its own `reminder.due`; one event carries them because the
    transport's cost is per event (a Kafka record, the KafkaSource dispatcher's HTTP
    request, notify's request and its transaction): at a burst it was most of the CPU a
    reminder cost (issue 16). Knative's KafkaSource delivers one record per request, so
    the batch has to be in the event.
    """

    reminders: list[ReminderEvent] = Field(min_length=1, max_length=MAX_BATCH)


class WebhookDeliveryEvent(Payload):
    """One try of one stored delivery (a task event for a webhook subscription): notify
    sends it. `attempt` numbers the try, so a redelivered or superseded event is told
    apart from the one the delivery waits for."""

    delivery_id: str = Field(max_length=36)
    subscription_id: str = Field(max_length=36)
    owner: str = Field(max_length=255)
    attempt: int = Field(ge=1)


PAYLOADS: dict[str, type[Payload]] = {
    TASK_CREATED: TaskEvent,
    TASK_UPDATED: TaskEvent,
    TASK_COMPLETED: TaskEvent,
    TASK_REOPENED: TaskEvent,
    TASK_DELETED: TaskEvent,
    REMINDER_DUE: ReminderEvent,
    REMINDER_DUE_BATCH: ReminderBatchEvent,
    REMINDER_MISSED: ReminderEvent,
    WEBHOOK_DELIVERY: WebhookDeliveryEvent,
}
"""The data model of each event type duetide publishes. The commands' types (CMD_*) are
sent to it by other systems; their models are in `web.command_events`, since a create
command carries a whole task as `POST /tasks` takes it."""

KNOWN = frozenset({*PAYLOADS, CMD_TASK_CREATE, CMD_TASK_COMPLETE})
"""Every duetide event type this release knows: another `dev.duetide.` type is a newer
release's (`web.sink.event_endpoint`)."""

_TASK_KEY = "The task's id: a task's events stay in order (its topic's sources are ordered)."
_REMINDER_KEY = (
    "The task's id (of the first reminder, for a batch): it spreads the events over the "
    "partitions; the reminders' source is unordered, so no order is promised."
)
KEYS: dict[str, str] = {
    **dict.fromkeys(TASK_EVENTS, _TASK_KEY),
    REMINDER_DUE: _REMINDER_KEY,
    REMINDER_DUE_BATCH: _REMINDER_KEY,
    REMINDER_MISSED: _REMINDER_KEY,
    WEBHOOK_DELIVERY: "The subscription's id: it spreads the tries over the partitions; "
    "the webhook tries' source is unordered, so no order is promised.",
}
"""What the Kafka key (and `partitionkey`) of each event type duetide publishes is, for
its consumers (docs/asyncapi.json)."""


def build(
    *,
    event_id: str,
    type: str,
    source: str,
    subject: str,
    data: dict[str, Any],
    time: datetime | None = None,
    traceparent: str | None = None,
) -> CloudEvent:
    """A CloudEvent; `traceparent` is the distributed-tracing extension (W3C Trace
    Context), which the consuming function continues (`tracecontext`)."""
    attributes = {
        "id": event_id,
        "type": type,
        "source": source,
        "subject": subject,
        "datacontenttype": "application/json",
    }
    if time is not None:
        attributes["time"] = time.isoformat()
    if traceparent:
        attributes["traceparent"] = traceparent
    return CloudEvent(attributes, data)


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data, separators=(",", ":"), default=str).encode()


class KafkaRecord(NamedTuple):
    """The SDK's `KafkaMessage` as `to_kafka` builds it: key and value are bytes (the
    SDK's type also allows text and no key), as a producer wants them."""

    headers: dict[str, bytes]
    key: bytes
    value: bytes


PARTITION_KEY_HEADER = "ce_partitionkey"


def to_kafka(event: CloudEvent, key: str) -> KafkaRecord:
    """Binary-mode Kafka record: `ce_*` headers, JSON value, the aggregate id as key, and
    as the `partitionkey` extension too (the Kafka binding's key mapping).

    The SDK maps `partitionkey` to the key and drops its header; the header is what keeps
    the key past a failure on a cluster: Knative's dispatcher hands the failed event to
    the dead-letter KafkaSink, which produces it keyed by its `partitionkey` alone
    (eventing-kafka-broker, `IngressRequestHandlerImpl` and sdk-java's
    `PartitionKeyExtensionInterceptor`). Without it a dead letter had no key, and its
    replay landed on any partition, beside or behind later events of its task."""
    message = to_kafka_binary(event, data_marshaller=_json_bytes, key_mapper=lambda _: key.encode())
    assert isinstance(message.key, bytes) and isinstance(message.value, bytes)  # marshalled so
    headers = {**message.headers, PARTITION_KEY_HEADER: message.key}
    return KafkaRecord(headers, message.key, message.value)


def to_http(event: CloudEvent) -> tuple[dict[str, str], bytes]:
    """Binary-mode HTTP request headers and body.

    The SDK puts attribute values into headers as they are; the HTTP binding (3.1.3.2)
    has them percent-encoded, and receivers (duetide's sinks among them) decode them:
    an id holding `%41` or a non-ASCII subject would otherwise arrive as another value,
    and fail a signature over it."""
    headers, body = to_http_binary(event, data_marshaller=_json_bytes)
    encoded = {
        name: quote(str(value), safe=_HEADER_SAFE) if name.startswith("ce-") else value
        for name, value in headers.items()
    }
    return encoded, body


# What a `ce-*` header value may carry as it is: printable ASCII but `"` and `%`.
_HEADER_SAFE = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"%')
