"""Request and response shapes of the HTTP API (pydantic), apart from the tables.

Request models forbid unknown fields (a typo is a 422, not silently dropped) but
ignore server-owned ones (`id`, `owner`, timestamps): the owner always comes from
the token, never from the body.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from pydantic.json_schema import JsonDict

from duetide.events import TASK_EVENTS
from duetide.rules.recurrence import FREQUENCIES
from duetide.rules.reminders import MIN_GRACE
from duetide.rules.text import BLANKS, CLOCK_TIME, NOT_BLANK, QUERY_INTEGER, nfc
from duetide.vocabulary import CatchUp, Channel, Mode, MonthEnd, Priority, TaskStatus

SERVER_OWNED = frozenset(
    {"id", "owner", "owner_id", "user_id", "created_at", "updated_at", "completed_at"}
)
MAX_REMINDERS_PER_TASK = 10
MAX_TAGS = 20
MAX_PAGE = 200
MAX_FORECAST = 500


# Text a user writes is kept, and compared, in one Unicode form (NFC): `café` typed on
# one device (é) and on another (e and a combining accent, as macOS often gives) were two
# tags on one task, and a filter or search in one form missed the other (an audit,
# 2026-12-07). A few characters grow in NFC: the bound is checked again after it.
def _in_nfc(max_chars: int, strip: bool = False) -> AfterValidator:
    def tidy(value: str) -> str:
        value = nfc(value)
        if strip:  # not blank, and stripped of blanks around it (`rules.text`)
            value = value.strip(BLANKS)
        if len(value) > max_chars:
            raise ValueError(f"String should have at most {max_chars} characters")
        return value

    return AfterValidator(tidy)


Tag = Annotated[str, StringConstraints(max_length=64, pattern=NOT_BLANK), _in_nfc(64, strip=True)]
MAX_TITLE_CHARS = 500
Title = Annotated[
    str,
    StringConstraints(max_length=MAX_TITLE_CHARS, pattern=NOT_BLANK),
    _in_nfc(MAX_TITLE_CHARS, strip=True),
]
Description = Annotated[str, StringConstraints(max_length=10_000), _in_nfc(10_000)]
MAX_CURSOR_CHARS = (6 * MAX_TITLE_CHARS + 256) * 4 // 3
"""A page cursor's bound: one naming a title (`sort=title`) holds it whole, each character
at most six bytes of JSON (a control character's escape), and base64 makes three bytes
four characters. A bound of 1,000 refused the server's own cursor past a title of 141
CJK characters (an audit, 2026-12-07)."""


# Years 1900-8999: room for reminder offsets and recurrence maths within Python's years.
_YEAR = r"(19|[2-8][0-9])[0-9]{2}"
_DATE = _YEAR + r"-[0-9]{2}-[0-9]{2}"
_TIME = r"[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
_OFFSET = r"([Zz]|[+-][0-9]{2}:[0-9]{2})"
# The document pairs `format` (which says the rest) with the year range.
_IN_RANGE = {"type": "string", "pattern": f"^{_YEAR}-"}


def _text(kind: str, pattern: str, native: type) -> BeforeValidator:
    """Times and durations are JSON text of the one form the OpenAPI document names;
    pydantic alone would also read `0` as 1970, `false` as no time and "900" as 15
    minutes. `native` values come from our own code."""
    shape = re.compile(pattern)

    def check(value: Any) -> Any:
        if isinstance(value, native):
            return value
        if not isinstance(value, str) or not shape.fullmatch(value):
            if isinstance(value, str) and shape.fullmatch(value.replace(" ", "+")):
                raise ValueError(f"must be {kind}: a `+` in a URL's query is a space, send %2B")
            raise ValueError(f"must be {kind}")
        if re.fullmatch(_DATE, value):
            return date.fromisoformat(value)  # a date UNTIL is inclusive: keep it a date
        return value

    return BeforeValidator(check)


Instant = Annotated[
    AwareDatetime,
    _text("an RFC 3339 date-time from year 1900 to 8999", _DATE + _TIME + _OFFSET, datetime),
    WithJsonSchema({**_IN_RANGE, "format": "date-time"}),
]


def _whole_seconds(value: timedelta) -> timedelta:
    """Durations are stored in whole seconds: `PT0.5S` was stored, and shown, as `PT0S`."""
    if value % timedelta(seconds=1):
        raise ValueError("must be a whole number of seconds")
    return value


Duration = Annotated[
    timedelta,
    _text("an ISO 8601 duration such as PT15M", r"P[0-9A-Z.,]+", timedelta),
    AfterValidator(_whole_seconds),
]
Until = Annotated[
    datetime | date,
    _text("a date-time (UTC or local) or a date", f"{_DATE}({_TIME}{_OFFSET}?)?", date),
    WithJsonSchema(
        {
            "anyOf": [{**_IN_RANGE, "format": "date-time"}, {**_IN_RANGE, "format": "date"}],
            "description": "an RFC 3339 date-time or a date (inclusive); a local date-time "
            "without offset, such as 2027-06-30T09:00:00, is read in the series' zone",
        }
    ),
]


def _json_integer(value: Any) -> Any:
    if isinstance(value, bool | str):  # JSON Schema: an integer is a number (2 or 2.0)
        raise ValueError("must be an integer")
    return value


def _query_integer(value: Any) -> Any:
    """A query's integer is its digits: pydantic alone also read `+500`, `500.0`, `5_00`
    and ` 500`, which the document's `integer` does not allow, and which a read charge
    taken from the text before validation (`ratelimit.forecast_reads`) read as 1."""
    if isinstance(value, str) and not re.fullmatch(QUERY_INTEGER, value):
        raise ValueError("must be a whole number in digits, such as 10")
    return value


Int = Annotated[int, BeforeValidator(_json_integer)]
QueryInt = Annotated[int, BeforeValidator(_query_integer)]
# Bounds go before the validator, or pydantic writes them as `ge`/`le` into the document.
Count = Annotated[int, Field(ge=1), BeforeValidator(_json_integer)]
Interval = Annotated[int, Field(ge=1, le=1000), BeforeValidator(_json_integer)]


def exactly_one(*fields: str) -> dict[str, Any]:
    """JSON Schema for "exactly one of `fields` is given and not null"."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"not": {"type": "null"}}}} for name in fields
        ]
    }


class RequestModel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _drop_server_owned(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        if len(data) > 2 * len(cls.model_fields) + len(SERVER_OWNED):  # a name and an alias
            unknown = [str(k)[:64] for k in data if k not in cls.model_fields]
            raise ValueError(
                f"{len(unknown)} unknown fields ({', '.join(unknown[:5])}, ...): "
                f"{cls.__name__} has {len(cls.model_fields)}"
            )  # at once: one error each cost pydantic 0.2 s for 80,000 (a review, 2026-12-07)
        return {k: v for k, v in data.items() if k not in SERVER_OWNED}


FRIENDLY_FIELDS = (
    "interval", "weekdays", "month_days", "months", "set_positions", "count", "until"
)  # fmt: skip
"""What a rule given by `frequency` may add; RRULE text says all of it itself."""


class RecurrenceIn(RequestModel):
    """A rule as raw RRULE text, or in friendly fields turned into one."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "required": ["rrule"],
                    "properties": {
                        "rrule": {"not": {"type": "null"}},
                        **{name: {"type": "null"} for name in ("frequency", *FRIENDLY_FIELDS)},
                    },
                },
                {
                    "required": ["frequency"],
                    "properties": {
                        "frequency": {"not": {"type": "null"}},
                        "rrule": {"type": "null"},
                    },
                },
            ]
        }
    )

    rrule: Annotated[str, StringConstraints(strip_whitespace=True, max_length=500)] | None = Field(
        None, description=f"An RFC 5545 RRULE value; FREQ is one of {', '.join(FREQUENCIES)}"
    )
    frequency: Literal["minutely", "hourly", "daily", "weekly", "monthly", "yearly"] | None = None
    interval: Interval | None = None
    weekdays: list[str] | None = Field(None, max_length=7)
    month_days: list[Int] | None = Field(None, max_length=31)
    months: list[Int] | None = Field(None, max_length=12)
    set_positions: list[Int] | None = Field(None, max_length=10)
    count: Count | None = None
    until: Until | None = None
    timezone: Annotated[str, StringConstraints(max_length=64)] = "UTC"
    mode: Mode = "schedule"
    month_end: MonthEnd = "skip"
    catch_up: CatchUp = "next_in_series"

    @model_validator(mode="after")
    def _one_form(self) -> RecurrenceIn:
        if (self.rrule is None) == (self.frequency is None):
            raise ValueError("give either `rrule` or `frequency`, not both or neither")
        beside = [f"`{name}`" for name in FRIENDLY_FIELDS if getattr(self, name) is not None]
        if self.rrule is not None and beside:
            # They were ignored: `{"rrule": "FREQ=DAILY", "count": 3}` never ended.
            raise ValueError(
                f"{', '.join(beside)} only go with `frequency`: with `rrule`, put them in "
                "the RRULE text (COUNT=3, UNTIL=..., BYDAY=...)"
            )
        return self

    def friendly(self) -> dict[str, Any]:
        fields = ("frequency", "interval", "weekdays", "month_days", "months", "set_positions")
        spec = {k: getattr(self, k) for k in (*fields, "count") if getattr(self, k) is not None}
        if self.until is not None:
            spec["until"] = self.until.isoformat()
        return spec


class ReminderIn(RequestModel):
    model_config = ConfigDict(json_schema_extra=exactly_one("at", "before_due"))

    at: Instant | None = None
    before_due: Duration | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> ReminderIn:
        if (self.at is None) == (self.before_due is None):
            raise ValueError("give either `at` or `before_due`")
        if self.before_due is not None and not (
            timedelta(0) <= self.before_due <= timedelta(days=366)
        ):
            raise ValueError("`before_due` must be between PT0S and P366D")
        return self


# `due_at` (not null) is required by a recurrence and by a `before_due` reminder.
_NEEDS_DUE: JsonDict = {"required": ["due_at"], "properties": {"due_at": {"type": "string"}}}
_TASK_CREATE_RULES: JsonDict = {
    "allOf": [
        {
            "if": {"required": ["recurrence"], "properties": {"recurrence": {"type": "object"}}},
            "then": _NEEDS_DUE,
        },
        {
            "if": {
                "required": ["reminders"],
                "properties": {
                    "reminders": {
                        "contains": {
                            "required": ["before_due"],
                            "properties": {"before_due": {"type": "string"}},
                        }
                    }
                },
            },
            "then": _NEEDS_DUE,
        },
    ]
}


class TaskCreate(RequestModel):
    model_config = ConfigDict(json_schema_extra=_TASK_CREATE_RULES)

    title: Title
    description: Description = ""
    priority: Priority = "none"
    tags: list[Tag] = Field(default_factory=list, max_length=MAX_TAGS)
    due_at: Instant | None = None
    reminders: list[ReminderIn] = Field(default_factory=list, max_length=MAX_REMINDERS_PER_TASK)
    recurrence: RecurrenceIn | None = None

    @model_validator(mode="after")
    def _recurrence_needs_due(self) -> TaskCreate:
        if self.recurrence is not None and self.due_at is None:
            raise ValueError("a recurring task needs `due_at`: it is the first occurrence")
        if self.due_at is None and any(r.before_due is not None for r in self.reminders):
            raise ValueError("a `before_due` reminder needs the task to have `due_at`")
        return self


# Update models: a field left out is None (unchanged); only `due_at` accepts null (clear).
# The other fields are typed non-nullable so that a null is a 422 and the OpenAPI
# document says so.


class TaskUpdate(RequestModel):
    title: Title = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    priority: Priority = None  # type: ignore[assignment]
    tags: list[Tag] = Field(None, max_length=MAX_TAGS)  # type: ignore[arg-type]
    due_at: Instant | None = None


class SeriesUpdate(RequestModel):
    """A "this and future" change: a new rule and policies, and the occurrence template."""

    recurrence: RecurrenceIn = Field(  # type: ignore[assignment]
        None,
        description="The new rule; `timezone`, `mode`, `month_end` and `catch_up` left out "
        "keep the series' values",
    )
    title: Title = None  # type: ignore[assignment]
    description: Description = None  # type: ignore[assignment]
    priority: Priority = None  # type: ignore[assignment]
    tags: list[Tag] = Field(None, max_length=MAX_TAGS)  # type: ignore[arg-type]


ClockTime = Annotated[str, StringConstraints(pattern=CLOCK_TIME)]


class QuietHours(RequestModel):
    """In the user's zone; may cross midnight (22:00 to 07:00); `start` equal to `end`
    is no quiet hours."""

    start: ClockTime
    end: ClockTime


class PreferencesUpdate(RequestModel):
    """Reminder preferences; a field left out keeps its value, `null` clears it."""

    timezone: Annotated[str, StringConstraints(max_length=64)] | None = None
    default_reminders: list[Duration] | None = Field(None, max_length=MAX_REMINDERS_PER_TASK)
    channels: list[Channel] | None = Field(None, min_length=1, max_length=3)
    webhook_url: Annotated[str, StringConstraints(max_length=2048)] | None = None
    email: Annotated[str, StringConstraints(max_length=320)] | None = None
    quiet_hours: QuietHours | None = None
    grace: Duration | None = None

    @field_validator("default_reminders")
    @classmethod
    def _offsets_in_range(cls, value: list[timedelta] | None) -> list[timedelta] | None:
        for offset in value or []:
            if not timedelta(0) <= offset <= timedelta(days=366):
                raise ValueError("each default reminder must be between PT0S and P366D")
        return value

    @field_validator("grace")
    @classmethod
    def _grace_in_range(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and not MIN_GRACE <= value <= timedelta(days=7):
            raise ValueError(
                "grace must be between PT2M and P7D: the sweep claims due reminders once a "
                "minute, so a shorter grace would have reminders claimed on time missed"
            )
        return value


def _task_event_type(value: str) -> str:
    if value not in TASK_EVENTS:
        raise ValueError(f"not a task event type; one of {', '.join(TASK_EVENTS)}")
    return value


TaskEventType = Annotated[
    str,
    AfterValidator(_task_event_type),
    WithJsonSchema({"type": "string", "enum": list(TASK_EVENTS)}),
]
WebhookUrl = Annotated[str, StringConstraints(min_length=1, max_length=2048)]
SubscriptionTypes = Annotated[
    list[TaskEventType],
    Field(min_length=1, max_length=len(TASK_EVENTS)),
    AfterValidator(lambda types: list(dict.fromkeys(types))),
]


class SubscriptionIn(RequestModel):
    """A webhook for your task events. `types` left out or null: every task event."""

    url: WebhookUrl = Field(description="https:// (http:// allowed), a public host")
    types: SubscriptionTypes | None = None
    description: Annotated[str, StringConstraints(max_length=200)] = ""


class SubscriptionUpdate(RequestModel):
    """A field left out keeps its value. A new `url` is unverified until it echoes a new
    challenge; `active: true` enables a disabled subscription, `false` disables it."""

    url: WebhookUrl | None = None
    types: SubscriptionTypes | None = None
    description: Annotated[str, StringConstraints(max_length=200)] | None = None
    active: bool | None = None


class EmailCodeIn(RequestModel):
    """The code from the confirmation mail; dashes, spaces and case do not matter."""

    code: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class SnoozeIn(RequestModel):
    # By its alias alone: with `populate_by_name`, `{"for_": ...}` snoozed too, a field
    # the document does not have (it says `additionalProperties: false`).
    model_config = ConfigDict(extra="forbid", json_schema_extra=exactly_one("for", "until"))

    for_: Duration | None = Field(None, alias="for")
    until: Instant | None = None


class TaskQuery(RequestModel):
    status: TaskStatus | None = None
    priority: Priority | None = None
    tag: Tag | None = None
    due_before: Instant | None = None
    due_after: Instant | None = None
    q: Annotated[str, StringConstraints(min_length=1, max_length=200), _in_nfc(200)] | None = None
    series_id: Annotated[str, StringConstraints(max_length=36)] | None = None
    sort: Literal["created_at", "due_at", "priority", "title"] = "created_at"
    order: Literal["asc", "desc"] = "asc"
    limit: QueryInt = Field(50, ge=1, le=MAX_PAGE)
    cursor: Annotated[str, StringConstraints(max_length=MAX_CURSOR_CHARS)] | None = None


class KeysetPageQuery(RequestModel):
    """A page that starts right after the row the cursor names (`services.keyset`)."""

    limit: QueryInt = Field(50, ge=1, le=MAX_PAGE)
    # Where the previous page ended, as its `next_cursor` gave it (opaque). Any text up
    # to the bound, so that a cursor that is not one is the 400 every list gives.
    cursor: Annotated[str, StringConstraints(max_length=1000)] | None = None


# The opaque token a previous answer gave as `since`. Any text up to the bound, so that
# one that is not a token is the 400 `activity_feed.decode_token` gives (a pattern made
# `!!` a 422 and `abc` a 400), as a cursor is.
ActivityToken = Annotated[str, StringConstraints(max_length=1000)]


class ActivityQuery(RequestModel):
    limit: QueryInt = Field(100, ge=1, le=MAX_PAGE)
    # None: from the oldest kept entry.
    since: ActivityToken | None = None


MAX_WAIT_S = 25
"""The longest `GET /activity?wait=`: below every proxy's idle timeout we know of."""


class ActivityFeedQuery(ActivityQuery):
    # Seconds to wait for an entry when there is none after `since` (the long-poll).
    wait: QueryInt = Field(0, ge=0, le=MAX_WAIT_S)


class ActivityStreamQuery(RequestModel):
    # Where to start when there is no Last-Event-ID header (which wins).
    since: ActivityToken | None = None
    # The bearer token, for clients that cannot set headers (EventSource); never logged.
    # (The characters of a JWT or any RFC 6750 token; at most 4096, so a URL holding one
    # stays well within DUETIDE_HTTP_MAX_HEAD_BYTES.)
    access_token: (
        Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._~+/=-]{1,4096}$")] | None
    ) = None


class ForecastQuery(RequestModel):
    count: QueryInt = Field(10, ge=1, le=MAX_FORECAST)
