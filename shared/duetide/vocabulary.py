"""The closed sets of words kept in string columns and spoken by the API.

One place for them, so a table, a request schema and the code that compares or passes
them agree, and mypy refuses a word outside its set: a typo in a comparison, or a
column of any text handed where a policy is expected. They are Literal types rather
than enums on purpose: the columns stay plain VARCHARs (no migration), a value read
back from the database already is one of them, and the JSON is unchanged. What the
database holds is still checked where it matters (`recurrence.Policy`), since a row
written by hand or by an older version is not bound by these types.
"""

from typing import Literal, get_args

Mode = Literal["schedule", "completion"]
"""How a series moves on: by its schedule, or from each completion."""
MonthEnd = Literal["skip", "clamp"]
"""What a series does with a day its month lacks (the 31st of April)."""
CatchUp = Literal["next_in_series", "next_future"]
"""Which occurrence follows one completed late: the next in the series, or the next future."""
SeriesStatus = Literal["active", "paused", "ended"]
TaskStatus = Literal["open", "done"]
ReminderState = Literal["pending", "fired", "missed", "dismissed"]
OccurrenceOutcome = Literal["skipped", "missed"]
"""Why an occurrence of a series never became a task to complete (`OccurrenceLog`)."""
NotificationStatus = Literal["delivered", "failed"]
Channel = Literal["log", "webhook", "email"]
SubscriptionStatus = Literal["unverified", "active", "disabled"]
"""A webhook subscription: waiting for its URL to echo the challenge, delivering, or
stopped (by its owner, or after failing for too long) until its owner enables it."""
DeliveryStatus = Literal["pending", "parked", "delivered", "failed"]
"""One event to one subscription: being tried (and retried), waiting for its
subscription to be enabled or verified, done, or given up."""
Priority = Literal["none", "low", "medium", "high", "urgent"]
PRIORITIES: tuple[Priority, ...] = get_args(Priority)
"""Priorities are stored as their rank here (an integer column, so that tasks sort by it)."""
