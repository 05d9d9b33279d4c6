"""A user's open tasks as an iCalendar (RFC 5545) VCALENDAR of VTODOs, for calendar apps.

- A one-off task is one VTODO (UID `<task id>@duetide`), its DUE in UTC.
- An active series is one recurring VTODO (UID `series-<series id>@duetide`, stable as
  the series moves on) holding the series' template, DTSTART = DUE = its open occurrence
  and the rule from there (`rules.ical_recurrence`), with a VTIMEZONE for its zone, so
  09:00 stays 09:00 across DST. The open occurrence itself is that VTODO's instance with
  RECURRENCE-ID: its own title, due time (it may have been moved) and reminders.
  Skipped and missed occurrences are behind DTSTART, so no EXDATE is needed for them.
  Nor for the ones an overdue series that catches up to the future will skip: its
  recurrence starts after them and its open occurrence is a one-off VTODO
  (`ical_recurrence`), as of the export's time rounded down to `AS_OF_STEP`.
- The occurrence of a paused or ended series is a one-off VTODO: nothing follows it
  until the series is resumed.
- Reminders are VALARMs: `before_due` ones relative to DUE (TRIGGER;RELATED=END),
  `at` and snoozed ones at their absolute time. Only pending reminders are exported.

Bounded: at most `MAX_EXPORTED_TASKS` open tasks, soonest due first (tasks without a due
time last); the rest are left out. Each series costs one bounded step of its rule
(`ical_recurrence`) out of `RECURRENCE_WORK` for the whole export, and its zone a
VTIMEZONE, of which there are at most `MAX_CALENDAR_ZONES`: series past either bound
show their open occurrence alone, as a paused one does. The
output is deterministic (DTSTAMP is the item's last change), and its ETag is a hash of
what it is rendered from (`Snapshot`), so a polling calendar app that is up to date gets
a 304 without the calendar being rendered.

icalendar is imported when a calendar is rendered, not with this module: the tasks
function's cold start does not pay for it (tests/unit/test_startup_imports.py).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from duetide.errors import ValidationFailed
from duetide.logs import log_event
from duetide.rules import ical_recurrence
from duetide.rules.recurrence import RecurrenceError
from duetide.rules.reminders import fire_time
from duetide.rules.rrule_meter import Meter
from duetide.services import series as series_rules
from duetide.storage.models import Reminder, Series, Task

if TYPE_CHECKING:
    from icalendar import Todo

log = logging.getLogger("duetide.services.calendar_export")

MAX_EXPORTED_TASKS = 500
"""Open tasks in one export, soonest due first; the rest are left out."""
PRODID = "-//duetide//calendar export//EN"
REFRESH = timedelta(hours=1)
"""What the calendar suggests as its polling interval (REFRESH-INTERVAL, X-PUBLISHED-TTL)."""
MAX_CALENDAR_ZONES = 10
"""Zones with a recurring VTODO, and so a VTIMEZONE, in one export. icalendar builds a
VTIMEZONE in about 11 ms (15 over a century of transitions): a calendar whose 500
series were in 500 zones took 9 s to render, on a poll that counts as one request."""
RECURRENCE_WORK = 4_000_000
"""What working out the series' recurrences may cost in one export (`rrule_meter` units,
about 0.4 s): each took a bounded step of its rule, but 500 series of a rule of many
times a day took 14 s. A series is worked out while its worst case
(`ical_recurrence.SERIES_WORK`, 840,000) is left, so 3,160,000 are spent at least. A
rule an RRULE can say costs next to nothing; a clamped one (its RDATEs) 2,080 units
when monthly, 10,920 when yearly, 19,300 when hourly on the 31st: 170 to 1,600 of
those, and every ordinary one, of the 500 tasks an export holds."""
ICAL_PRIORITY = (0, 9, 5, 3, 1)
"""RFC 5545 PRIORITY by duetide rank (none, low, medium, high, urgent): 0 is undefined,
1 the highest, 9 the lowest, 5 the middle."""


@dataclass(frozen=True)
class Snapshot:
    """What one export renders, read in one go, and its version (`etag`).

    The ETag is a hash of every stored value the rendering reads (the tasks' and series'
    columns, tags, reminders) and of the versions of the code that renders them, so a
    poll that has the current version is answered 304 without rendering at all: with
    icalendar, rendering is most of an export's cost (about 0.3 s for 500 tasks).
    """

    tasks: list[Task]
    series: dict[str, Series]
    truncated: bool
    etag: str
    as_of: datetime

    def render(self) -> bytes:
        return render(self.tasks, self.series, self.as_of)


FORMAT_VERSION = "3"
"""Bump when the rendering changes, so that calendar apps fetch it again."""


AS_OF_STEP = timedelta(minutes=5)
"""The time an export is rendered as of is now rounded down to this (the feed's max-age),
or to `AS_OF_STEP_DAILY` where every overdue series that catches up to the future comes
at most once a day: the rendering of such a series depends on it, so its ETag names it,
and a poll gets a 304 within the step (every 5 minutes it re-rendered a calendar whose
daily series changed once a day)."""
AS_OF_STEP_DAILY = timedelta(hours=1)
_SUB_DAILY = re.compile(r"FREQ\s*=\s*(MINUTELY|HOURLY)|BYHOUR|BYMINUTE", re.IGNORECASE)
"""A rule that may come more than once a day (hours or minutes of its own)."""


def snapshot(session: Session, owner: str, now: datetime) -> Snapshot:
    """`owner`'s open tasks as the calendar shows them at `now` (see the module's
    docstring)."""
    # Dated ones, then undated ones if there is room: each by its owner-status-due index.
    # One ORDER BY (due_at IS NULL, due_at, id) sorted every task in the table (0.27 s).
    wanted = MAX_EXPORTED_TASKS + 1
    open_tasks = select(Task).where(Task.owner == owner, Task.status == "open")
    due = col(Task.due_at)
    rows = list(
        session.exec(
            open_tasks.where(due.is_not(None)).order_by(due, col(Task.id)).limit(wanted)
        ).all()
    )
    if len(rows) < wanted:
        undated = open_tasks.where(due.is_(None)).order_by(col(Task.id))
        rows += session.exec(undated.limit(wanted - len(rows))).all()
    tasks, truncated = rows[:MAX_EXPORTED_TASKS], len(rows) > MAX_EXPORTED_TASKS
    series_ids = {t.series_id for t in tasks if t.series_id is not None}
    found = {s.id: s for s in session.exec(select(Series).where(col(Series.id).in_(series_ids)))}
    timed = [
        found[t.series_id]
        for t in tasks
        if t.series_id in found and _skips_to_the_future(found[t.series_id], t, now)
    ]
    step = AS_OF_STEP if any(_SUB_DAILY.search(s.rrule) for s in timed) else AS_OF_STEP_DAILY
    as_of = now - (now - datetime.min.replace(tzinfo=now.tzinfo)) % step
    etag = _etag(tasks, found, as_of if timed else None)
    return Snapshot(tasks, found, truncated, etag, as_of)


def _skips_to_the_future(found: Series, task: Task, now: datetime) -> bool:
    """Whether `task` is the overdue occurrence of a series whose export then starts
    after it (`ical_recurrence.export`)."""
    return (
        (found.mode, found.catch_up) == ("schedule", "next_future")
        and task.scheduled_at is not None
        and task.scheduled_at <= now
    )


def _etag(tasks: list[Task], series: dict[str, Series], as_of: datetime | None) -> str:
    digest = hashlib.sha256(f"{FORMAT_VERSION} {_renderer_versions()} {as_of}".encode())
    for task in tasks:
        digest.update(repr(sorted(task.model_dump().items())).encode())
        digest.update(repr(task.tags).encode())
        for reminder in task.reminders:
            digest.update(repr(sorted(reminder.model_dump().items())).encode())
    for key in sorted(series):
        digest.update(repr(sorted(series[key].model_dump().items())).encode())
    return digest.hexdigest()[:32]


@functools.cache
def _renderer_versions() -> str:
    """icalendar's and the time zone data's (VTIMEZONEs) versions: an upgrade of either
    may change the output."""
    versions = []
    for name in ("icalendar", "tzdata"):
        try:
            versions.append(f"{name}={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{name}=?")
    return " ".join(versions)


def render(tasks: Iterable[Task], series: dict[str, Series], as_of: datetime) -> bytes:
    """The VCALENDAR of `tasks` (open ones, with their tags and reminders loaded), and of
    `series`, the series some of them are occurrences of, at `as_of`.

    Each VTODO is written out as soon as it is built, and only its text kept: the whole
    tree of a calendar of 500 long tasks (35 MB written) raised the process's peak memory
    by 227 MiB, and two such exports at once neared the tasks pod's 512 MiB (an audit,
    2026-12-07)."""
    from icalendar import Calendar, Timezone  # see the module's docstring

    recurring = _recurring_occurrences(tasks, series)
    starts: list[datetime] = []
    zones: set[str] = set()
    used_tzids: set[str] = set()
    written: list[bytes] = []
    work = Meter(RECURRENCE_WORK)
    beyond_zones = beyond_work = 0
    for task in tasks:
        found = series.get(task.series_id) if task.series_id else None
        todos: list[Todo] = []
        if found is not None and recurring.get(found.id) is task:
            allowed = _zone_allowed(found, zones)
            affordable = work.left >= ical_recurrence.SERIES_WORK
            beyond_zones += not allowed
            beyond_work += allowed and not affordable
            todos = _series_todos(found, task, work, as_of) if allowed and affordable else []
            if todos:
                # The instance too: an occurrence moved before the series' start fell
                # before the VTIMEZONE's first onset, which readers take an hour off.
                starts.extend(todo.decoded("dtstart") for todo in todos if "dtstart" in todo)
                zones.add(found.timezone)
        for todo in todos or [_task_todo(task, f"{task.id}@duetide")]:
            alone = Calendar()  # icalendar's own account of the TZIDs a component uses
            alone.add_component(todo)
            used_tzids |= alone.get_used_tzids()
            written.append(todo.to_ical())
    if beyond_zones or beyond_work:
        log_event(
            log,
            "calendar.series_limit",
            zones=beyond_zones,
            work=beyond_work,
            zones_written=len(zones),
        )
    calendar = Calendar()
    calendar.add("prodid", PRODID)
    calendar.add("version", "2.0")
    calendar.add("calscale", "GREGORIAN")
    calendar.add("x-wr-calname", "duetide")
    calendar.add("refresh-interval", REFRESH, parameters={"VALUE": "DURATION"})
    calendar.add("x-published-ttl", "PT1H")
    if starts:
        first, last = timezone_window([s.date() for s in starts])
        for tzid in sorted(used_tzids):
            with contextlib.suppress(ValueError):  # not a zone icalendar knows: left out
                calendar.add_component(Timezone.from_tzid(tzid, first_date=first, last_date=last))
    head = bytes(calendar.to_ical())
    end = b"END:VCALENDAR\r\n"
    assert head.endswith(end)
    return b"".join([head[: -len(end)], *written, end])


def _zone_allowed(found: Series, zones: set[str]) -> bool:
    """Whether `found` may be exported recurring: its zone is among those already
    written, or there is room for one more (`MAX_CALENDAR_ZONES`)."""
    return found.timezone in zones or len(zones) < MAX_CALENDAR_ZONES


TIMEZONE_YEARS = 100
"""The most years of DST transitions a VTIMEZONE lists. icalendar writes one observance
per transition, so a calendar whose series start 8,000 years apart cost 0.5 s and
250 KB per zone; calendar apps resolve a TZID that is an IANA name from their own
database anyway."""
LAST_TIMEZONE_DAY = date(9998, 12, 31)
"""icalendar's transitions overflow `datetime` at the end of year 9999."""


def timezone_window(starts: list[date]) -> tuple[date, date]:
    """The days the VTIMEZONEs cover: from the day before the first series starts to ten
    years after the last, at most `TIMEZONE_YEARS` and not past `LAST_TIMEZONE_DAY`."""
    first, last = min(starts) - timedelta(days=1), max(starts)
    end = min(_years_after(last, 10), _years_after(first, TIMEZONE_YEARS), LAST_TIMEZONE_DAY)
    return min(first, end), end


def _recurring_occurrences(tasks: Iterable[Task], series: dict[str, Series]) -> dict[str, Task]:
    """Per active series, its open occurrence that carries the rule: the latest one."""
    latest: dict[str, Task] = {}
    for task in tasks:
        found = series.get(task.series_id) if task.series_id else None
        if found is None or found.status != "active" or task.occurrence_index is None:
            continue
        if task.scheduled_at is None:
            continue
        current = latest.get(found.id)
        if current is None or (current.occurrence_index or 0) < task.occurrence_index:
            latest[found.id] = task
    return latest


def _series_todos(found: Series, task: Task, work: Meter, as_of: datetime) -> list[Todo]:
    """The series' recurring VTODO and its open instance (or the open occurrence as a
    one-off after it, `ExportedRecurrence.open_apart`), or [] to export the task alone (an
    occurrence from before a "this and future" change, or a rule that cannot go on); what
    its rule's step cost is charged to `work`."""
    assert task.scheduled_at is not None and task.occurrence_index is not None
    local_index = task.occurrence_index - found.rule_base
    if local_index < 0 or task.scheduled_at < found.dtstart:
        return []
    try:
        rule = series_rules.rule_of(found)
        plan = ical_recurrence.export(rule, task.scheduled_at, local_index, as_of, task.due_at)
    except (RecurrenceError, ValidationFailed) as exc:
        log_event(log, "calendar.series_not_exported", series_id=found.id, error=str(exc)[:200])
        return []
    work.charge(plan.work)
    if plan.alone:
        return []
    uid = f"series-{found.id}@duetide"
    master = _open_todo(uid, found, list(found.tags))
    master.add("dtstart", plan.dtstart)
    master.add("due", plan.dtstart)
    if plan.rrule is not None:
        from icalendar import vRecur

        master.add("rrule", vRecur.from_ical(plan.rrule))
    if plan.rdates:
        master.add("rdate", list(plan.rdates))
    for offset in found.reminder_offsets:
        master.add_component(_relative_alarm(found.title, offset))
    if plan.open_apart:
        return [master, _task_todo(task, f"{task.id}@duetide", zone=plan.dtstart.tzinfo)]
    instance = _task_todo(task, uid, zone=plan.dtstart.tzinfo)
    instance.add("recurrence-id", plan.dtstart)
    return [master, instance]


def _open_todo(uid: str, source: Task | Series, tags: list[str]) -> Todo:
    """The VTODO properties a task and a series' master share: identity, times, text,
    status, priority and categories."""
    from icalendar import Todo  # see the module's docstring

    todo = Todo()
    todo.add("uid", uid)
    todo.add("dtstamp", source.updated_at)
    todo.add("created", source.created_at)
    todo.add("last-modified", source.updated_at)
    todo.add("summary", _text(source.title))
    if source.description:
        todo.add("description", _text(source.description))
    todo.add("status", "NEEDS-ACTION")
    todo.add("priority", ICAL_PRIORITY[source.priority])
    if tags:
        todo.add("categories", [_text(tag) for tag in tags])
    return todo


_LINE_BREAKS = re.compile("\r\n?|[\x0b\x0c\x85\u2028\u2029]")
_CONTROLS = re.compile("[\x00-\x08\x0e-\x1f\x7f]")


def _text(value: str) -> str:
    """`value` as RFC 5545 TEXT holds it: no control character but a tab and the line
    breaks icalendar escapes as `\\n`. Titles and tags may hold an escape or a bell, which
    went out raw, and U+2028 or U+0085, which readers splitting lines took for a line's
    end (an audit, 2026-12-07)."""
    return _CONTROLS.sub("", _LINE_BREAKS.sub("\n", value))


def _task_todo(task: Task, uid: str, zone: tzinfo | None = None) -> Todo:
    """A task's VTODO: DUE in UTC; for an occurrence (`zone` given), DTSTART = DUE in its
    series' zone, where the user may have moved it from its scheduled time."""
    todo = _open_todo(uid, task, task.tags)
    if task.due_at is not None and zone is not None:
        todo.add("dtstart", _unambiguous(task.due_at, zone))
        todo.add("due", _unambiguous(task.due_at, zone))
    elif task.due_at is not None:
        todo.add("due", task.due_at.astimezone(UTC))
    for reminder in task.reminders:
        alarm = _alarm(task, reminder)
        if alarm is not None:
            todo.add_component(alarm)
    return todo


def _unambiguous(instant: datetime, zone: tzinfo) -> datetime:
    """`instant` in `zone`, or in UTC where the zone's wall time names two instants (the
    hour a fall-back repeats) and it is the second: a TZID time is read as the first
    (RFC 5545, 3.3.5), so 02:30 after the clocks went back was shown and alarmed an hour
    early (an audit, 2026-12-07). A master's RECURRENCE-ID stays local: the master's
    DTSTART is read the same way, so the two still match."""
    local = instant.astimezone(zone)
    if local.replace(fold=0).astimezone(UTC) != instant.astimezone(UTC):
        return instant.astimezone(UTC)
    return local


def _alarm(task: Task, reminder: Reminder) -> Any:
    """A pending reminder as a VALARM: relative to DUE while it fires `before_due` of it,
    else at its absolute time (an `at` reminder, or one snoozed)."""
    if reminder.state != "pending" or reminder.fire_at is None:
        return None
    offset = reminder.before_due_s
    due = task.due_at
    if offset is not None and due is not None and reminder.fire_at == fire_time(None, offset, due):
        return _relative_alarm(task.title, offset)
    return _absolute_alarm(task.title, reminder.fire_at)


def _relative_alarm(title: str, before_due_s: int) -> Any:
    from icalendar import Alarm  # see the module's docstring

    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", _text(title))
    before = _elapsed()(-timedelta(seconds=before_due_s))
    alarm.add("trigger", before, parameters={"RELATED": "END"})
    return alarm


@functools.cache
def _elapsed() -> type:
    """A duration written in hours, minutes and seconds (`PT24H`): RFC 5545 reads a day
    (`P1D`, what icalendar writes for 86,400 s) as a calendar day, 23 or 25 hours across
    a clock change, where duetide's day is 24 hours (an audit, 2026-12-07)."""
    from icalendar import vDuration  # see the module's docstring

    class Elapsed(vDuration):
        def to_ical(self) -> bytes:
            return _elapsed_text(self.td).encode()

    return Elapsed


def _elapsed_text(delta: timedelta) -> str:
    sign = "-" if delta < timedelta(0) else ""
    hours, rest = divmod(int(abs(delta).total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    units = [(hours, "H"), (minutes, "M"), (seconds, "S")]
    shown = [i for i, (value, _) in enumerate(units) if value]
    if not shown:
        return "PT0S"
    return sign + "PT" + "".join(f"{v}{u}" for v, u in units[shown[0] : shown[-1] + 1])


def _absolute_alarm(title: str, at: datetime) -> Any:
    from icalendar import Alarm  # see the module's docstring

    alarm = Alarm()
    alarm.add("action", "DISPLAY")
    alarm.add("description", _text(title))
    # VALUE is required: a TRIGGER's default type is a duration (RFC 5545, 3.8.6.3)
    alarm.add("trigger", at.astimezone(UTC), parameters={"VALUE": "DATE-TIME"})
    return alarm


def _years_after(day: date, years: int) -> date:
    year = min(day.year + years, date.max.year)
    try:
        return day.replace(year=year)
    except ValueError:  # February 29
        return day.replace(year=year, day=28)
