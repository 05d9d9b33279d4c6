"""Tables. Request and response shapes live in schemas.py: tables never leak out unfiltered.

Times are stored in UTC (`UTCDateTime`) and converted at the edges: SQLite drops
offsets, so every stored value is UTC and reads back aware.
"""

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.types import TypeDecorator
from sqlmodel import AutoString, Field, Relationship, SQLModel

from duetide.vocabulary import (
    CatchUp,
    Channel,
    DeliveryStatus,
    Mode,
    MonthEnd,
    NotificationStatus,
    OccurrenceOutcome,
    ReminderState,
    SeriesStatus,
    SubscriptionStatus,
    TaskStatus,
)


def new_id() -> str:
    return str(uuid.uuid4())


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on every backend."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _utc(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=Column(UTCDateTime(), nullable=nullable, index=index))


def _word(length: int, default: str | None = None) -> Any:
    """A column holding one word of a closed set (`vocabulary`): a plain VARCHAR.

    The field's type is a Literal, which SQLModel cannot map, so the column type is given.
    """
    if default is None:
        return Field(sa_type=AutoString(length=length))
    return Field(default=default, sa_type=AutoString(length=length))


def _created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


def _owner(index: bool = True) -> Any:
    """The owning user. A table whose own indexes all lead with `owner` takes no index
    of the column alone (`index=False`): it would only cost its writes."""
    return Field(sa_column=Column(String(255), nullable=False, index=index))


class Series(SQLModel, table=True):
    """A recurring series: the rule, its policies, and the template for each occurrence."""

    __tablename__ = "series"
    __table_args__ = (Index("ix_series_owner_created", "owner", "created_at", "id"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    owner: str = _owner(index=False)
    rrule: str = Field(sa_column=Column(Text, nullable=False))
    timezone: str = Field(max_length=64)
    dtstart: datetime = _utc(nullable=False)
    mode: Mode = _word(16, "schedule")
    month_end: MonthEnd = _word(16, "skip")
    catch_up: CatchUp = _word(16, "next_in_series")
    status: SeriesStatus = _word(16, "active")
    title: str = Field(sa_column=Column(Text, nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    priority: int = 0
    tags: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    # Relative reminders (seconds before due), re-armed on every occurrence.
    reminder_offsets: list[int] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # The rule applies from `dtstart`, which is occurrence number `rule_base` of the
    # series: a "this and future" change re-anchors the rule without renumbering.
    rule_base: int = 0
    # The wall time `dtstart` stands for when it is an adjusted instant (clamped to a
    # month's end, or moved by a DST gap); see recurrence.SeriesRule.nominal.
    nominal_start: str | None = Field(default=None, max_length=19)
    last_index: int = 0
    last_at: datetime = _utc(nullable=False)
    created_at: datetime = _created()
    updated_at: datetime = _created()


class Task(SQLModel, table=True):
    """A task; in a series, one occurrence keyed by (series_id, scheduled_at)."""

    __tablename__ = "task"
    __table_args__ = (
        UniqueConstraint("series_id", "scheduled_at", name="uq_task_occurrence"),
        Index("ix_task_owner_created", "owner", "created_at", "id"),
        Index("ix_task_owner_due", "owner", "due_at", "id"),
        Index("ix_task_owner_priority", "owner", "priority", "id"),
        # The same orders within one status (`GET /tasks?status=open`): the three above
        # read past every done task of the owner to find the few open ones.
        Index("ix_task_owner_status_created", "owner", "status", "created_at", "id"),
        Index("ix_task_owner_status_due", "owner", "status", "due_at", "id"),
        Index("ix_task_owner_status_priority", "owner", "status", "priority", "id"),
        # A series' occurrences in order: its latest, its open one, its history's pages
        # (the unique key is by time, so each of those sorted the whole series' past).
        Index("ix_task_series_index", "series_id", "occurrence_index", "scheduled_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    owner: str = _owner(index=False)
    title: str = Field(sa_column=Column(Text, nullable=False))
    description: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    status: TaskStatus = _word(8, "open")
    priority: int = 0
    due_at: datetime | None = _utc()
    completed_at: datetime | None = _utc()
    series_id: str | None = Field(
        default=None,
        # No index of its own: uq_task_occurrence leads with it.
        sa_column=Column(String(36), ForeignKey("series.id", ondelete="SET NULL")),
    )
    occurrence_index: int | None = None
    scheduled_at: datetime | None = _utc()
    # The occurrence this one follows: unique, so one completed occurrence has at most
    # one successor even in completion mode, where the next time depends on when.
    previous_id: str | None = Field(default=None, max_length=36, unique=True)
    created_at: datetime = _created()
    updated_at: datetime = _created()

    tag_rows: list["TaskTag"] = Relationship(
        sa_relationship_kwargs={"cascade": "all, delete-orphan", "lazy": "selectin"}
    )
    reminders: list["Reminder"] = Relationship(
        sa_relationship_kwargs={
            "cascade": "all, delete-orphan",
            "lazy": "selectin",
            "order_by": "Reminder.created_at",
        }
    )

    @property
    def tags(self) -> list[str]:
        return sorted(row.tag for row in self.tag_rows)

    def set_tags(self, tags: list[str]) -> None:
        wanted = set(tags)
        self.tag_rows = [row for row in self.tag_rows if row.tag in wanted]
        have = {row.tag for row in self.tag_rows}
        self.tag_rows.extend(TaskTag(task_id=self.id, tag=tag) for tag in sorted(wanted - have))


class OccurrenceLog(SQLModel, table=True):
    """An occurrence that never became a task to complete: skipped by the user or missed.

    A catch-up that misses many occurrences at once (a minutely series after a week
    away) logs them as one run, `count` occurrences from `occurrence_index` at
    `scheduled_at` to the last at `last_scheduled_at`: one row per catch-up, however long
    the user was away, not one per occurrence."""

    __tablename__ = "occurrence_log"
    __table_args__ = (
        UniqueConstraint("series_id", "scheduled_at", name="uq_occurrence_log"),
        Index("ix_occurrence_log_series_index", "series_id", "occurrence_index", "scheduled_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    series_id: str = Field(
        sa_column=Column(String(36), ForeignKey("series.id", ondelete="CASCADE"), nullable=False)
    )
    occurrence_index: int
    scheduled_at: datetime = _utc(nullable=False)
    outcome: OccurrenceOutcome = _word(16)
    recorded_at: datetime = _created()
    count: int = 1
    last_scheduled_at: datetime | None = _utc()  # of a run (count > 1)


class TaskTag(SQLModel, table=True):
    __tablename__ = "task_tag"
    __table_args__ = (Index("ix_task_tag_tag", "tag"),)

    task_id: str = Field(
        sa_column=Column(String(36), ForeignKey("task.id", ondelete="CASCADE"), primary_key=True)
    )
    tag: str = Field(primary_key=True, max_length=64)


class Reminder(SQLModel, table=True):
    """A reminder of a task: absolute (`at`) or relative (`before_due_s`)."""

    __tablename__ = "reminder"
    __table_args__ = (
        Index("ix_reminder_due", "state", "fire_at"),
        Index("ix_reminder_task_id", "task_id"),
        # An owner's pending reminders, soonest first (`/reminders/upcoming`): by the due
        # index it read past every other owner's pending ones (0.7 s among 660,000).
        Index(
            "ix_reminder_owner_pending",
            "owner",
            "fire_at",
            "id",
            postgresql_where=text("state = 'pending'"),
            sqlite_where=text("state = 'pending'"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    owner: str = _owner()
    task_id: str = Field(
        sa_column=Column(String(36), ForeignKey("task.id", ondelete="CASCADE"), nullable=False)
    )
    at: datetime | None = _utc()
    before_due_s: int | None = None
    fire_at: datetime | None = _utc()
    state: ReminderState = _word(16, "pending")
    fired_at: datetime | None = _utc()
    created_at: datetime = _created()


class Preference(SQLModel, table=True):
    """A user's reminder preferences; no row means the defaults declared here."""

    __tablename__ = "preference"

    owner: str = Field(primary_key=True, max_length=255)
    timezone: str = Field(default="UTC", max_length=64)
    default_reminders: list[int] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    channels: list[Channel] = Field(
        default_factory=lambda: ["log"], sa_column=Column(JSON, nullable=False)
    )
    webhook_url: str | None = Field(default=None, max_length=2048)
    webhook_secret: str | None = Field(default=None, max_length=128)
    email: str | None = Field(default=None, max_length=320)
    quiet_start: str | None = Field(default=None, max_length=5)
    quiet_end: str | None = Field(default=None, max_length=5)
    grace_s: int | None = None
    updated_at: datetime = _created()
    # Targets are verified before anything but the confirmation is sent there (see
    # verification.py). Set when the current address or URL was confirmed; a new
    # address or URL clears it.
    email_verified_at: datetime | None = _utc()
    webhook_verified_at: datetime | None = _utc()
    # The pending e-mail code: SHA-256 of (owner, address, code), never the code itself.
    email_code_hash: str | None = Field(default=None, max_length=64)
    email_code_expires_at: datetime | None = _utc()
    email_code_sent_at: datetime | None = _utc()  # when its confirmation mail went out
    # {"email": [unix seconds, ...], "webhook": [...]}: confirmations sent in the last
    # hour, at most the hourly budget of entries per kind.
    verification_sends: dict[str, list[int]] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False, server_default=text("'{}'")),
    )


class Notification(SQLModel, table=True):
    """One delivery on one channel; unique per reminder firing so a redelivery is a no-op."""

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("reminder_id", "scheduled_at", "channel", name="uq_notification_once"),
        Index("ix_notification_owner_delivered", "owner", "delivered_at", "id"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    owner: str = _owner(index=False)
    reminder_id: str = Field(max_length=36)
    task_id: str = Field(max_length=36)
    channel: Channel = _word(16)
    scheduled_at: datetime = _utc(nullable=False)
    delivered_at: datetime = _created()
    # "delivered", or "failed" for good: the channel refused it (a 4xx, an unsafe URL), or
    # the event or the user's settings cannot be sent (an unverified or invalid target).
    status: NotificationStatus = _word(16, "delivered")
    detail: str = Field(default="", max_length=255)


class Outbox(SQLModel, table=True):
    """An event written in the same transaction as the change it reports."""

    __tablename__ = "outbox"
    __table_args__ = (
        Index("ix_outbox_pending", "sent_at", "created_at"),
        # The relay's batch in order: by the index above PostgreSQL sorted every unsent
        # row for each batch of 500 (migration 0026).
        Index(
            "ix_outbox_unsent",
            "created_at",
            postgresql_where=text("sent_at IS NULL"),
            sqlite_where=text("sent_at IS NULL"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    topic: str = Field(max_length=255)
    key: str = Field(max_length=255)
    type: str = Field(max_length=255)
    source: str = Field(max_length=255)
    subject: str = Field(default="", max_length=255)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()
    sent_at: datetime | None = _utc()
    attempts: int = 0
    # The span that recorded it (W3C, version 00), sent as the CloudEvents extension.
    traceparent: str | None = Field(default=None, max_length=55)


class CalendarFeed(SQLModel, table=True):
    """A user's calendar feed token (`GET /calendar/{token}.ics`), for calendar apps that
    cannot send a bearer token. Only its SHA-256 is kept: the token is shown once, when
    made; a new one replaces it (the old URL stops working) and deleting the row revokes it.
    """

    __tablename__ = "calendar_feed"

    owner: str = Field(primary_key=True, max_length=255)
    token_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _created()


class RateWindow(SQLModel, table=True):
    """Writes per user per minute: a fixed-window counter shared by every replica."""

    __tablename__ = "rate_window"

    owner: str = Field(primary_key=True, max_length=255)
    window: int = Field(primary_key=True)  # minutes since the epoch
    count: int = 0


class IdempotentRequest(SQLModel, table=True):
    """A write sent with an `Idempotency-Key` and the answer it got, kept a day: the same
    key again is answered the same, with no second effect (`services.idempotency`).
    Claimed and answered in the write's own transaction, so a key has an answer exactly
    when its effect has committed."""

    __tablename__ = "idempotent_request"
    __table_args__ = (Index("ix_idempotent_created", "created_at"),)  # the sweep's purge

    owner: str = Field(primary_key=True, max_length=255)
    key: str = Field(primary_key=True, max_length=255)
    fingerprint: str = Field(max_length=64)  # SHA-256 of the method, path and body
    status: int = 0
    body: str = Field(default="", sa_column=Column(Text, nullable=False))
    headers: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _created()


class ProcessedEvent(SQLModel, table=True):
    """(consumer, scope, source, id) of each CloudEvent whose effect has committed.

    `scope` is the user a command acts for ("" for events between the functions): two
    users may send the same (source, id), and each is its own command. Separate columns,
    not a joined string, so no choice of user and source can collide with another's.
    """

    __tablename__ = "processed_event"
    __table_args__ = (Index("ix_processed_at", "processed_at"),)  # the sweep's purge

    consumer: str = Field(primary_key=True, max_length=64)
    scope: str = Field(default="", primary_key=True, max_length=255)
    source: str = Field(primary_key=True, max_length=512)
    event_id: str = Field(primary_key=True, max_length=255)
    processed_at: datetime = _created()
    # What the event made, for the answer to its redelivery: a create command's task id
    # (a system that lost the first answer had no other way to learn it).
    result: str | None = Field(default=None, max_length=36)


class ActivityEntry(SQLModel, table=True):
    """One task event in its owner's activity log: append-only, purged after retention.

    `seq` is the log's order: the activity function assigns it under a per-owner lock
    (`services.activity`), so within one owner's log a higher `seq` never commits before
    a lower one and a reader that resumes after `seq` misses nothing. `at` is the event's
    own time; `recorded_at` the log's, which retention counts from.
    """

    __tablename__ = "activity"
    __table_args__ = (
        Index("ix_activity_owner_seq", "owner", "seq"),
        Index("ix_activity_owner_task_seq", "owner", "task_id", "seq"),
        Index("ix_activity_recorded", "recorded_at"),
        # SQLite would otherwise reuse the numbers of purged rows after the highest: a
        # reader's `since` would then skip the new entries that took them.
        {"sqlite_autoincrement": True},
    )

    seq: int | None = Field(
        default=None,
        sa_column=Column(
            BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
    )
    owner: str = Field(max_length=255)
    type: str = Field(max_length=255)
    event_id: str = Field(max_length=255)
    source: str = Field(max_length=512)
    task_id: str = Field(max_length=36)
    series_id: str | None = Field(default=None, max_length=36)
    actor: str = Field(max_length=300)
    at: datetime = _utc(nullable=False)
    recorded_at: datetime = _created()
    # The task as the event shows it after the change (null for a deletion: a tombstone).
    state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # task.updated: {field: {"before": ..., "after": ...}} when the event carries them.
    changes: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    # An event older than one already logged for its task, arrived late: history, not state.
    superseded: bool = False


class Subscription(SQLModel, table=True):
    """A user's webhook for their task events (`/subscriptions`).

    Nothing but the url_verification challenge goes to `url` until it is echoed
    (`unverified`). `secret` signs every delivery, so it is kept as given to the user
    (an HMAC key cannot be a hash); it is shown once, when made or rotated. `failing_since` and
    `failures` are the current run of failed tries, which disables the subscription
    when it lasts too long (`rules.webhook_retry`)."""

    __tablename__ = "subscription"
    __table_args__ = (  # the few still resuming, for the sweep (partial)
        Index(
            "ix_subscription_resuming",
            "id",
            postgresql_where=text("resuming"),
            sqlite_where=text("resuming"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    owner: str = _owner()
    url: str = Field(max_length=2048)
    secret: str = Field(max_length=128)
    # The secret a rotation replaced, which still signs (beside `secret`) until then.
    previous_secret: str | None = Field(default=None, max_length=128)
    previous_secret_until: datetime | None = _utc()
    # The task event types to send; null: all of them.
    types: list[str] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    description: str = Field(default="", max_length=200)
    status: SubscriptionStatus = _word(16, "unverified")
    verified_at: datetime | None = _utc()
    disabled_at: datetime | None = _utc()
    disabled_reason: str = Field(default="", max_length=255)
    failing_since: datetime | None = _utc()
    failures: int = 0
    # Parked deliveries are left to resume, more than one request's batch: the sweep's.
    resuming: bool = False
    created_at: datetime = _created()
    updated_at: datetime = _created()


class WebhookDelivery(SQLModel, table=True):
    """One task event for one subscription, and its tries: the delivery log.

    The event is kept as it will be sent (its CloudEvent attributes and data), so a
    retry or a redelivery sends the same request. `attempt` is the try the delivery
    waits for (claimed by the activity function or the sweep, sent by notify) and
    `started` the last try notify began: a try runs once even when its event comes
    twice. `next_attempt_at` is when the sweep may claim the next try (a retry, or a
    try whose sender died); null once it is delivered or failed. A delivery of a
    subscription that is not active is `parked` until it is enabled or verified."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        UniqueConstraint("subscription_id", "event_source", "event_id", name="uq_delivery_once"),
        Index("ix_delivery_subscription_created", "subscription_id", "created_at", "id"),
        Index("ix_delivery_due", "status", "next_attempt_at"),
        Index("ix_delivery_created", "created_at"),  # the sweep's purge
        # A subscription's parked deliveries, for `resume` (partial: parked ones only).
        Index(
            "ix_delivery_parked",
            "subscription_id",
            postgresql_where=text("status = 'parked'"),
            sqlite_where=text("status = 'parked'"),
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    subscription_id: str = Field(
        sa_column=Column(
            String(36), ForeignKey("subscription.id", ondelete="CASCADE"), nullable=False
        )
    )
    owner: str = Field(max_length=255)
    event_id: str = Field(max_length=255)
    event_source: str = Field(max_length=512)
    event_type: str = Field(max_length=255)
    event_time: datetime | None = _utc()
    task_id: str = Field(max_length=36)
    data: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: DeliveryStatus = _word(16, "pending")
    attempt: int = 1
    round_start: int = 1  # the first try of the round: a redelivery starts one with its tries
    started: int = 0
    republished: int = 0  # how often try `attempt` was published again, never taken
    next_attempt_at: datetime | None = _utc()
    # One entry per finished try: {"at", "status" (HTTP or null), "error", "ms"}.
    tries: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    created_at: datetime = _created()
    finished_at: datetime | None = _utc()
