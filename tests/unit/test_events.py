"""The bounds of the event payloads: the largest `reminder.due.batch` still travels."""

from __future__ import annotations

from datetime import UTC, datetime

from annotated_types import Le

from duetide import events
from duetide.config import Settings
from duetide.services.schemas import MAX_TITLE_CHARS

KAFKA_MAX_MESSAGE_BYTES = 1_048_588  # the broker's default message.max.bytes
ASTRAL = "\U0001f600"  # escaped by JSON as a surrogate pair: 12 bytes a character


def largest_batch() -> events.ReminderBatchEvent:
    at = datetime(2026, 11, 23, 9, tzinfo=UTC)
    worst = events.ReminderEvent(
        reminder_id="r" * 36,
        task_id="t" * 36,
        owner=ASTRAL * 255,
        title=ASTRAL * MAX_TITLE_CHARS,
        due_at=at,
        scheduled_at=at,
    )
    return events.ReminderBatchEvent(reminders=[worst] * events.MAX_BATCH)


def test_the_largest_batch_fits_a_request_body_and_a_kafka_record():
    event = events.build(
        event_id="e" * 36,
        type=events.REMINDER_DUE_BATCH,
        source=events.SOURCE_SWEEP,
        subject="t" * 36,
        data=largest_batch().model_dump(mode="json"),
        traceparent="00-" + "a" * 32 + "-" + "b" * 16 + "-01",
    )
    _, body = events.to_http(event)
    assert len(body) > 100 * 12 * MAX_TITLE_CHARS  # every title escaped at its longest
    assert len(body) < Settings.model_fields["duetide_max_body_bytes"].default
    record = events.to_kafka(event, key="t" * 36)
    size = (
        len(record.key)
        + len(record.value)
        + sum(len(k) + len(v) for k, v in record.headers.items())
    )
    assert size < KAFKA_MAX_MESSAGE_BYTES


def test_the_setting_allows_no_larger_batch_than_notify_takes():
    field = Settings.model_fields["duetide_reminders_per_event"]
    assert [m.le for m in field.metadata if isinstance(m, Le)] == [events.MAX_BATCH]
