"""What the HTTP API answers: one pydantic model per response shape, and the functions
that render rows into them.

The models are the one declaration of each shape: the OpenAPI document is generated
from them (`web.openapi`), and every answer is built as one of them, so an answer that
strays from the document (a missing field, a word outside its set, an extra key) fails
where it is built, not in a client. A field with a default is left out of the JSON when
it was not set (`web.http.json_response`): a reminder shows `at` or `before_due`.
Times are RFC 3339 text, rendered here. Within one object every time has the same
offset: a series, its occurrences (tasks with a `series_id`) with their reminders, its
history and forecast are in the series' zone; everything else is in UTC.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, overload
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.engine import Row

from duetide.rules.durations import iso_duration
from duetide.storage import models
from duetide.vocabulary import (
    PRIORITIES,
    CatchUp,
    Channel,
    DeliveryStatus,
    Mode,
    MonthEnd,
    NotificationStatus,
    Priority,
    ReminderState,
    SeriesStatus,
    SubscriptionStatus,
    TaskStatus,
)

if TYPE_CHECKING:
    from duetide.services.task_rows import ShownReminder, TaskState


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorField(Out):
    field: str | None = Field(description="The field (`a.0.b`) at fault; null for the body")
    message: str


class ErrorDetail(Out):
    code: str
    message: str
    details: list[ErrorField] = Field(
        description="What was wrong, field by field (a 422); empty for every other error"
    )


class ErrorBody(Out):
    error: ErrorDetail


class ReminderOut(Out):
    id: str
    state: ReminderState
    at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    before_due: str | None = Field(
        None, description="ISO 8601 duration, in its readable form (PT15M, P1D, PT1H30M)"
    )
    fire_at: str | None = Field(json_schema_extra={"format": "date-time"})


class TaskOut(Out):
    id: str
    title: str
    description: str
    status: TaskStatus
    priority: Priority
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


class ActivityTask(Out):
    """A task as the event showed it after the change; fields an older event did not
    carry are left out. Times in UTC."""

    title: str
    status: TaskStatus
    description: str | None = None
    priority: Priority | None = None
    tags: list[str] | None = None
    due_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    completed_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    series_id: str | None = None
    scheduled_at: str | None = Field(None, json_schema_extra={"format": "date-time"})
    occurrence_index: int | None = None


class ActivityChange(Out):
    before: Any = None
    after: Any = None


class ActivityItem(Out):
    type: str = Field(description="The CloudEvent type, e.g. dev.duetide.task.updated.v1")
    task_id: str
    at: str = Field(
        description="When the change happened (the event's time)",
        json_schema_extra={"format": "date-time"},
    )
    event_id: str = Field(description="The CloudEvent id: the same change has the same id")
    actor: str = Field(
        description="Who made the change: `user:<id>`, `system:<name>` or `sender:<name>` "
        "(a registered system's command), `duetide:recurrence`"
    )
    series_id: str | None
    deleted: bool = Field(description="A tombstone: the task is gone (task.deleted)")
    task: ActivityTask | None = Field(description="The task after the change; null when deleted")
    superseded: bool = Field(
        description="A change that reached the log after a later change of the same task "
        "(`at` is earlier than an entry already there): history only. A client keeping "
        "the tasks' state skips it; the task is as its latest entry that is not superseded"
    )
    changes: dict[str, ActivityChange] | None = Field(
        description="task.updated: each changed field before and after; null otherwise"
    )


class ActivityPage(Out):
    items: list[ActivityItem] = Field(description="Changes in the order they happened")
    since: str = Field(description="Opaque: pass it as `since` next time")
    more: bool = Field(description="More changes are waiting: ask again at once")


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
    priority: Priority
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
    """Up to `count` occurrences still to come: the open occurrence (at its due time), then
    what will follow it, as the recurrence will create them. Schedule mode follows the
    rule (with `catch_up: next_future`, none already past); completion mode assumes the
    open occurrence is completed at its due time, or now if that has passed, and each one
    after it on its own date. An ended series has none. Each forecast has a work budget
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
    at: str | None = Field(description="When it was completed, skipped or found missed")
    task_id: str | None
    count: int = Field(
        description="How many consecutive occurrences the entry stands for: more than 1 "
        "for the ones a catch-up passed at once (`index` to `index + count - 1`)"
    )
    last_scheduled_at: str | None = Field(
        json_schema_extra={"format": "date-time"},
        description="The last of a run's occurrences (`count` > 1); null otherwise",
    )


class History(Out):
    items: list[HistoryEntry]
    next_cursor: str | None


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


class SubscriptionOut(Out):
    id: str
    url: str
    types: list[str] | None = Field(description="The task event types sent; null: all")
    description: str
    status: SubscriptionStatus = Field(
        description="`unverified` until the URL echoes the url_verification challenge "
        "(POST .../verify sends a new one); `active`; `disabled` by you or after failing "
        "too long (PATCH `active: true` enables it again)"
    )
    disabled_reason: str | None
    failures: int = Field(description="Tries failed in a row until now (0 after a success)")
    verified_at: str | None
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    updated_at: str = Field(json_schema_extra={"format": "date-time"})
    secret: str | None = Field(
        None,
        description="The HMAC key of Duetide-Signature: only in the answer that made the "
        "subscription or rotated its secret; keep it",
    )
    verification_error: str | None = Field(
        None, description="Why the challenge just sent was not echoed, when it was not"
    )


class SubscriptionPage(Out):
    items: list[SubscriptionOut]


class DeliveryTry(Out):
    attempt: int
    at: str = Field(json_schema_extra={"format": "date-time"})
    status: int | None = Field(description="The receiver's HTTP status; null: no answer")
    error: str = Field(description="Why the try failed; empty when it succeeded")
    ms: int


class DeliveryOut(Out):
    id: str = Field(description="The delivery id: the Idempotency-Key header of each try")
    event_id: str
    type: str
    task_id: str
    status: DeliveryStatus
    attempt: int = Field(description="The latest try, counting from 1")
    next_attempt_at: str | None = Field(description="When the next try is due, if pending")
    created_at: str = Field(json_schema_extra={"format": "date-time"})
    finished_at: str | None
    tries: list[DeliveryTry] = Field(description="The tries made, oldest first")


class DeliveryPage(Out):
    items: list[DeliveryOut] = Field(description="Newest first")
    next_cursor: str | None


def subscription_out(row: models.Subscription, **extra: Any) -> SubscriptionOut:
    return SubscriptionOut(
        id=row.id,
        url=row.url,
        types=row.types,
        description=row.description,
        status=row.status,
        disabled_reason=row.disabled_reason or None,
        failures=row.failures,
        verified_at=rfc3339(row.verified_at),
        created_at=rfc3339(row.created_at),
        updated_at=rfc3339(row.updated_at),
        **extra,
    )


def delivery_out(row: models.WebhookDelivery) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        event_id=row.event_id,
        type=row.event_type,
        task_id=row.task_id,
        status=row.status,
        attempt=row.attempt,
        next_attempt_at=rfc3339(row.next_attempt_at) if row.status == "pending" else None,
        created_at=rfc3339(row.created_at),
        finished_at=rfc3339(row.finished_at),
        tries=[DeliveryTry.model_validate(t) for t in row.tries],
    )


class UpcomingReminder(Out):
    id: str
    task_id: str
    title: str
    fire_at: str = Field(json_schema_extra={"format": "date-time"})
    due_at: str | None


class UpcomingPage(Out):
    items: list[UpcomingReminder]
    next_cursor: str | None


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


class CalendarFeedOut(Out):
    """A new calendar feed URL. It is a secret (whoever has it reads the calendar) and
    is shown only here: the server keeps its hash. A new one replaces it."""

    url: str = Field(description="The feed to subscribe to in a calendar app")
    created_at: str = Field(json_schema_extra={"format": "date-time"})


class Health(Out):
    status: str


class CommandResult(Out):
    status: Literal["processed", "duplicate"]
    task: TaskOut | None = None


@overload
def rfc3339(value: datetime, zone: Any = None) -> str: ...
@overload
def rfc3339(value: datetime | None, zone: Any = None) -> str | None: ...
def rfc3339(value: datetime | None, zone: Any = None) -> str | None:
    """RFC 3339 text in `zone`, or in UTC where the zone's offset then had seconds (LMT)."""
    if value is None:
        return None
    local = value.astimezone(zone or UTC)
    offset = local.utcoffset()
    if offset is not None and offset.seconds % 60:
        local = value.astimezone(UTC)
    return local.isoformat()


def reminder_out(
    reminder: models.Reminder | Row[Any] | ShownReminder, zone: Any = None
) -> ReminderOut:
    """A reminder in the zone of its task (`task_out`), so the two never differ."""
    if reminder.before_due_s is not None:
        return ReminderOut(
            id=reminder.id,
            state=reminder.state,
            before_due=iso_duration(reminder.before_due_s),
            fire_at=rfc3339(reminder.fire_at, zone),
        )
    return ReminderOut(
        id=reminder.id,
        state=reminder.state,
        at=rfc3339(reminder.at, zone),
        fire_at=rfc3339(reminder.fire_at, zone),
    )


def task_out(
    task: models.Task | Row[Any] | TaskState,
    tags: Iterable[str],
    reminders: Iterable[models.Reminder | Row[Any] | ShownReminder],
    zone: Any = None,
) -> TaskOut:
    """A task as the API shows it; all its times, its reminders' too, in the series' zone
    for an occurrence, else in UTC (one offset per object).

    From the model after a change, or from a plain row where a task is only read (no
    ORM object is built for a row that is only rendered); its tags and reminders come
    beside it, so a page of tasks loads each kind of row in one query."""
    return TaskOut(
        id=task.id,
        title=task.title,
        description=task.description,
        status=task.status,
        priority=PRIORITIES[task.priority],
        tags=sorted(tags),
        due_at=rfc3339(task.due_at, zone),
        completed_at=rfc3339(task.completed_at, zone),
        series_id=task.series_id,
        created_at=rfc3339(task.created_at, zone),
        updated_at=rfc3339(task.updated_at, zone),
        reminders=[reminder_out(r, zone) for r in reminders],
    )


def notification_out(notification: models.Notification) -> NotificationOut:
    return NotificationOut(
        id=notification.id,
        reminder_id=notification.reminder_id,
        task_id=notification.task_id,
        channel=notification.channel,
        scheduled_at=rfc3339(notification.scheduled_at),
        delivered_at=rfc3339(notification.delivered_at),
        status=notification.status,
        detail=notification.detail,
    )


def series_out(series: models.Series) -> SeriesOut:
    """A series as the API shows it; all its times in its own zone."""
    zone = ZoneInfo(series.timezone)
    return SeriesOut(
        id=series.id,
        rrule=series.rrule,
        timezone=series.timezone,
        start=rfc3339(series.dtstart, zone),
        mode=series.mode,
        month_end=series.month_end,
        catch_up=series.catch_up,
        status=series.status,
        title=series.title,
        description=series.description,
        priority=PRIORITIES[series.priority],
        tags=series.tags,
        last_index=series.last_index,
        last_scheduled_at=rfc3339(series.last_at, zone),
        created_at=rfc3339(series.created_at, zone),
        updated_at=rfc3339(series.updated_at, zone),
    )
