"""Task operations: state change and outbox event in the caller's one transaction.

Every query is scoped to `owner`; another user's id is simply not found (404).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa
from sqlalchemy import bindparam, or_
from sqlalchemy.engine import Row
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import joinedload
from sqlmodel import Session, col, select

from duetide import events
from duetide.errors import BadRequest, Conflict, NotFound, QueryTooBroad, ValidationFailed
from duetide.rules import reminders
from duetide.rules.text import text_problem
from duetide.services import keyset, opaque, preferences, ratelimit, task_rows
from duetide.services import series as series_rules
from duetide.services.responses import ReminderOut, TaskOut, TaskPage, reminder_out, task_out
from duetide.services.schemas import (
    MAX_REMINDERS_PER_TASK,
    MAX_TITLE_CHARS,
    ReminderIn,
    TaskCreate,
    TaskQuery,
    TaskUpdate,
)
from duetide.services.task_events import changes_between, emit, watched
from duetide.services.task_rows import (
    READ,
    TASK,
    VIEW,
    ShownReminder,
    TaskState,
    new_reminder,
    new_task,
)
from duetide.storage import db
from duetide.storage.aggregates import json_time
from duetide.storage.models import (
    OccurrenceLog,
    Reminder,
    Series,
    Task,
    TaskTag,
    utcnow,
)
from duetide.vocabulary import PRIORITIES


def zone_of(session: Session, task: Task) -> ZoneInfo | None:
    if task.series_id is None:
        return None
    series = session.get(Series, task.series_id)
    return ZoneInfo(series.timezone) if series else None


def show(session: Session, task: Task) -> TaskOut:
    """A task just changed, from its model (already loaded with its tags and reminders)."""
    return task_out(task, task.tags, task.reminders, zone_of(session, task))


def show_reminder(session: Session, reminder: Reminder) -> ReminderOut:
    """A reminder alone, in the zone its task shows it in."""
    task = session.get(Task, reminder.task_id)
    return reminder_out(reminder, zone_of(session, task) if task is not None else None)


def _shown(row: Row[Any]) -> TaskOut:
    """A row of `VIEW` as the API shows it."""
    attached = [
        ShownReminder(
            item["id"],
            item["state"],
            json_time(item["at"]),
            item["before_due_s"],
            json_time(item["fire_at"]),
            json_time(item["created_at"]),
        )
        for item in row.reminder_list or ()
    ]
    attached.sort(key=lambda reminder: reminder.created_at)
    zone = ZoneInfo(row.zone_name) if row.zone_name is not None else None
    return task_out(row, row.tag_list or (), attached, zone)


def _state(row: Row[Any]) -> TaskState:
    """A `VIEW` row as the task's state (for its event)."""
    values = {name: row._mapping[name] for name in TaskState._fields if name != "tags"}
    return TaskState(**values, tags=sorted(row.tag_list or ()))


def read(session: Session, owner: str, task_id: str) -> TaskOut:
    found = session.connection().execute(READ, {"task_id": task_id, "owner": owner}).first()
    if found is None:
        raise NotFound(f"no task {task_id}")
    return _shown(found)


def get_owned(session: Session, owner: str, task_id: str) -> Task:
    task = session.get(Task, task_id)
    if task is None or task.owner != owner:
        raise NotFound(f"no task {task_id}")
    return task


def lock_task(session: Session, owner: str, task_id: str) -> tuple[Task, Series | None]:
    """The task and, for an occurrence, its series, both locked and read fresh.

    A task outside a series is locked first, then read with its tags and reminders by a
    statement of its own: at READ COMMITTED a statement that waited for the lock re-reads
    the locked row only, and the rows it joins are those from before the wait (in one
    statement, 16 concurrent adds stored 16 reminders of at most 10, and concurrent tag
    changes answered 500 or left tags none of them set). It never joins a series (one
    is created with its first task). For an occurrence, the series first, then the task
    (the lock order of `series.lock`): a change to an occurrence waits for any other
    change to the same series, then sees its result (a task completed, reopened,
    withdrawn or skipped meanwhile is read as it is now, or not found).
    """
    ids = {"task_id": task_id, "owner": owner}
    if session.exec(_LOCK_SINGLE, params=ids).first() is not None:
        return session.exec(_LOCK_ANY, params=ids).unique().one(), None
    series_id = session.exec(_SERIES_OF, params=ids).first()
    if series_id is None:
        raise NotFound(f"no task {task_id}")
    series = series_rules.lock(session, series_id, owner)
    task = session.exec(_LOCK_ANY, params=ids).unique().first()
    if task is None:
        raise NotFound(f"no task {task_id}")
    return task, series


# Built once (every change of a task runs them). Read with its tags and reminders (the
# change and its answer need both) once its lock is held (see `lock_task`); FOR UPDATE OF
# the task alone, as the joined rows may be absent. (SQLModel types a relationship as its
# list, hence the ignore.)
_YOURS = (col(Task.id) == bindparam("task_id"), col(Task.owner) == bindparam("owner"))
_LOCK_ANY = (
    select(Task)
    .where(*_YOURS)
    .options(joinedload(Task.tag_rows), joinedload(Task.reminders))  # type: ignore[arg-type]
    .with_for_update(of=Task)
    .execution_options(populate_existing=True)
)
_LOCK_SINGLE = select(Task.id).where(*_YOURS, col(Task.series_id).is_(None)).with_for_update()
_SERIES_OF = select(Task.series_id).where(*_YOURS)


def _add_reminder(task: Task, spec: ReminderIn) -> Reminder:
    shown = new_reminder(task.due_at, spec.at, _seconds(spec.before_due))
    reminder = Reminder(**shown._asdict(), owner=task.owner, task_id=task.id)
    task.reminders.append(reminder)
    return reminder


def create(session: Session, owner: str, spec: TaskCreate) -> tuple[TaskOut, list[str]]:
    """Insert a task, its tags, its reminders and its event; with `recurrence`, its series
    first (the task is the series' first occurrence).

    Core INSERTs on the session's connection, not models: building and flushing four
    SQLModel objects cost more than the statements (`bench/results/api_mix.md`)."""
    asked = _reminders_of(session, owner, spec)
    series = _new_series(session, owner, spec, asked)
    task = new_task(
        owner,
        spec.title,
        spec.description,
        PRIORITIES.index(spec.priority),
        spec.due_at,
        spec.tags,
        series_id=series.id if series is not None else None,
        occurrence_index=0 if series is not None else None,
    )
    attached = [new_reminder(task.due_at, r.at, _seconds(r.before_due)) for r in asked]
    task_rows.insert(session, task, attached)
    zone = ZoneInfo(series.timezone) if series is not None else None
    return task_out(task, task.tags, attached, zone), [emit(session, task, events.TASK_CREATED)]


def _new_series(
    session: Session, owner: str, spec: TaskCreate, asked: list[ReminderIn]
) -> Series | None:
    """The series of a recurring task. Its occurrences take the relative reminders the
    first one has, the user's defaults included (as they were at its creation): taken
    from the request's field alone, every occurrence after the first had none."""
    if spec.recurrence is None or spec.due_at is None:
        return None
    rule = series_rules.build_rule(spec.recurrence, spec.due_at)
    series = Series(
        owner=owner,
        rrule=rule.rrule,
        timezone=rule.timezone,
        dtstart=spec.due_at,
        mode=rule.policy.mode,
        month_end=rule.policy.month_end,
        catch_up=rule.policy.catch_up,
        title=spec.title,
        description=spec.description,
        priority=PRIORITIES.index(spec.priority),
        tags=sorted(set(spec.tags)),
        reminder_offsets=[
            int(r.before_due.total_seconds()) for r in asked if r.before_due is not None
        ],
        last_index=0,
        last_at=spec.due_at,
    )
    session.add(series)
    session.flush()  # before the task, which refers to it
    return series


def _seconds(duration: timedelta | None) -> int | None:
    return int(duration.total_seconds()) if duration is not None else None


def _reminders_of(session: Session, owner: str, spec: TaskCreate) -> list[ReminderIn]:
    """The reminders asked for; without a `reminders` field, the user's defaults."""
    if "reminders" in spec.model_fields_set or spec.due_at is None:
        return spec.reminders
    offsets = preferences.default_reminders(session, owner)
    return [ReminderIn(before_due=timedelta(seconds=s)) for s in offsets]


def update(session: Session, owner: str, task_id: str, spec: TaskUpdate) -> tuple[Task, list[str]]:
    task, _ = lock_task(session, owner, task_id)
    before = watched(task)
    changes = spec.model_dump(exclude_unset=True)
    if "title" in changes:
        task.title = changes["title"]
    if "description" in changes:
        task.description = changes["description"]
    if "priority" in changes:
        task.priority = PRIORITIES.index(changes["priority"])
    if "tags" in changes:
        task.set_tags(changes["tags"])
    if "due_at" in changes and spec.due_at != task.due_at:  # the same one sent: no move
        old_due, task.due_at = task.due_at, spec.due_at
        now = utcnow()
        for reminder in _lock_reminders(session, task):
            moved = reminders.moved_with_due(
                reminder.state,
                reminder.fire_at,
                reminder.before_due_s,
                old_due,
                task.due_at,
                now,
                rearm=task.status == "open",
            )
            if moved is not None:
                reminder.fire_at, reminder.state = moved
                if reminder.state == "pending":
                    reminder.fired_at = None
    changed = changes_between(before, watched(task))
    if not changed:  # `{}` or the values it has: no event with nothing in it, same ETag
        return task, []
    task.updated_at = utcnow()
    session.add(task)
    return task, [emit(session, task, events.TASK_UPDATED, changes=changed)]


def _lock_reminders(session: Session, task: Task) -> list[Reminder]:
    """The task's reminders locked and read as they are now: the sweep claims them
    without the task's lock, and a due date moved over a claim in progress wrote the new
    time onto the claimed row but not its state (`fired`, at a time notify then found
    obsolete: never sent). Locked, the sweep skips them until this commits, or this
    waits for the claim and leaves what it fired."""
    query = select(Reminder).where(col(Reminder.task_id) == task.id).with_for_update()
    return list(session.exec(query.execution_options(populate_existing=True)).all())


def delete(session: Session, owner: str, task_id: str) -> series_rules.Deletion:
    """Delete a task. An occurrence of a series is deleted so that the series goes on:
    deleting the open one skips it (`series.delete_occurrence`)."""
    task, series = lock_task(session, owner, task_id)
    if series is not None:
        return series_rules.delete_occurrence(session, series, task, utcnow())
    event_id = emit(session, task, events.TASK_DELETED)
    session.delete(task)
    return series_rules.Deletion([event_id])


def complete(session: Session, owner: str, task_id: str) -> tuple[TaskOut, list[str]]:
    """Mark done; completing a done task again changes nothing and emits nothing.

    One UPDATE of the open task, then the task read as shown, without a model. Its row
    lock serialises it with any other change of the task: a concurrent completion, once
    the first commits, finds the task no longer open and answers it as it is. An
    occurrence takes its series' lock first (the lock order of `series.lock`), so it
    waits for any change to the series (a reopen withdrawing it, a skip) and then sees
    its result: completed, or not found. (The read is not the UPDATE's RETURNING:
    SQLite's RETURNING names columns unqualified, and in the view's subqueries `id` is
    then the reminder's own.)"""
    ids = {"task_id": task_id, "owner": owner}
    done_now = {"b_task_id": task_id, "b_owner": owner, "b_now": utcnow()}
    connection = session.connection()
    done = connection.execute(_COMPLETE_SINGLE, done_now).first()
    if done is None:
        series_id = connection.execute(_SERIES_OF, ids).scalar()
        if series_id is not None:
            connection.execute(_LOCK_SERIES_ROW, {"series_id": series_id})
            done = connection.execute(_COMPLETE_ANY, done_now).first()
    found = connection.execute(READ, ids).first()
    if found is None:
        raise NotFound(f"no task {task_id}")
    if done is None:
        return _shown(found), []
    return _shown(found), [emit(session, _state(found), events.TASK_COMPLETED)]


_COMPLETE_ANY = (
    sa.update(TASK)
    .where(
        TASK.c.id == bindparam("b_task_id"),
        TASK.c.owner == bindparam("b_owner"),
        TASK.c.status == "open",
    )
    .values(status="done", completed_at=bindparam("b_now"), updated_at=bindparam("b_now"))
    .returning(TASK.c.id)
)
_COMPLETE_SINGLE = _COMPLETE_ANY.where(TASK.c.series_id.is_(None))
_LOCK_SERIES_ROW = (
    sa.select(task_rows.SERIES.c.id)
    .where(task_rows.SERIES.c.id == bindparam("series_id"))
    .with_for_update()
)


def reopen(session: Session, owner: str, task_id: str) -> tuple[Task, list[str]]:
    """Reopen a done task. In a series only the latest occurrence can be reopened: its
    open successor (and any occurrences recorded missed on the way) is withdrawn, so a
    series never has two open occurrences; after a later one was done or skipped,
    reopening is a 409. Under the series lock a concurrent materialisation of the next
    occurrence either committed first (its successor is withdrawn here) or runs after
    this commit and finds the task open (it does nothing)."""
    task, _ = lock_task(session, owner, task_id)
    if task.status == "open":
        return task, []
    ids = _withdraw_later_occurrences(session, task) if task.series_id else []
    task.status, task.completed_at, task.updated_at = "open", None, utcnow()
    session.add(task)
    session.flush()
    return task, [*ids, emit(session, task, events.TASK_REOPENED)]


def _withdraw_later_occurrences(session: Session, task: Task) -> list[str]:
    index = task.occurrence_index or 0
    later = session.exec(
        select(Task).where(Task.series_id == task.series_id, col(Task.occurrence_index) > index)
    ).all()
    logged = session.exec(
        select(OccurrenceLog).where(
            OccurrenceLog.series_id == task.series_id, col(OccurrenceLog.occurrence_index) > index
        )
    ).all()
    if any(t.status == "done" for t in later) or any(r.outcome == "skipped" for r in logged):
        raise Conflict("a later occurrence of this series is done or skipped; it cannot reopen")
    ids = []
    for successor in later:
        ids.append(emit(session, successor, events.TASK_DELETED))
        session.delete(successor)
    for row in logged:
        session.delete(row)
    series = session.get(Series, task.series_id)
    if series is not None and series.last_index > index:
        assert task.scheduled_at is not None  # an occurrence always has its scheduled time
        series.last_index, series.last_at = index, task.scheduled_at
        session.add(series)
    return ids


def add_reminder(
    session: Session, owner: str, task_id: str, spec: ReminderIn
) -> tuple[Task, Reminder]:
    task, _ = lock_task(session, owner, task_id)
    if len(task.reminders) >= MAX_REMINDERS_PER_TASK:
        raise ValidationFailed.of(None, f"a task has at most {MAX_REMINDERS_PER_TASK} reminders")
    if spec.before_due is not None and task.due_at is None:
        raise ValidationFailed.of(
            "before_due", "a `before_due` reminder needs the task to have `due_at`"
        )
    reminder = _add_reminder(task, spec)
    task.updated_at = utcnow()
    session.add(task)
    session.flush()
    return task, reminder


# --- listing with keyset pagination -------------------------------------------------

SORT_COLUMNS: dict[str, Any] = {
    "created_at": Task.created_at,
    "due_at": Task.due_at,
    "priority": Task.priority,
    "title": Task.title,
}


def _cursor_value(task: Row[Any], sort: str) -> Any:
    value = getattr(task, sort)
    return value.isoformat() if isinstance(value, datetime) else value


def encode_cursor(task: Row[Any], query: TaskQuery) -> str:
    raw = {"s": query.sort, "o": query.order, "v": _cursor_value(task, query.sort), "id": task.id}
    return opaque.dump(raw)


# What a cursor can name: a stored value. Times are given from year 1900 to 8999 in
# their own offset (schemas.Instant), so in UTC from late 1899; a series' occurrences go
# on to the end of 9999 (a cursor at one past 9000 was refused, and the page after it
# out of reach); created_at is the server's clock.
CURSOR_TIMES = (datetime(1899, 12, 30, tzinfo=UTC), datetime.max.replace(tzinfo=UTC))


def decode_cursor(cursor: str, query: TaskQuery) -> tuple[Any, str]:
    """The (value, id) a cursor names; a forged or stale one is a 400, never a query."""
    try:
        raw = opaque.load(cursor)
        if raw["s"] != query.sort or raw["o"] != query.order:
            raise ValueError("sort changed")
        return _cursor_value_of(query.sort, raw["v"]), _cursor_text(raw["id"], keyset.MAX_ID_CHARS)
    except (ValueError, KeyError, TypeError, OverflowError, RecursionError):
        raise BadRequest(
            "invalid cursor: pass back `next_cursor` with the same sort and order"
        ) from None


def _cursor_text(value: Any, max_chars: int) -> str:
    if not isinstance(value, str) or len(value) > max_chars or text_problem(value):
        raise ValueError("cursor text is not storable text")
    return value


def _cursor_value_of(sort: str, value: Any) -> Any:
    if value is None and sort == "due_at":
        return None
    if sort == "priority" and type(value) is int and 0 <= value < len(PRIORITIES):
        return value
    if sort == "title":
        return _cursor_text(value, MAX_TITLE_CHARS)
    if sort in ("created_at", "due_at") and isinstance(value, str):
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is not None:
            utc = parsed.astimezone(UTC)  # OverflowError beyond year 1 or 9999
            if CURSOR_TIMES[0] <= utc <= CURSOR_TIMES[1]:
                return utc
    raise ValueError("cursor value does not fit the sort")


def reads_of(args: Mapping[str, str]) -> int:
    """What a list (its query string, unvalidated) counts against its owner's read
    limit: a search, a title sort, a tag filter, or a due-time range on a list not in
    due-time order may read every task of the owner, which no index serves in the
    page's order (README, design notes; a tag held by the 1,000 oldest of 120,000 tasks
    took 0.23 s to page newest first, an empty range of 200,000 tasks by priority 0.12 s)."""
    return ratelimit.SCAN_READS if _scans(args) else 1


def scans(query: TaskQuery) -> bool:
    """Whether a list may read every task of its owner (no index serves its order)."""
    return _scans(query.model_dump(exclude_none=True))


def _scans(args: Mapping[str, Any]) -> bool:
    """Whether the list may read every task of its owner: no index serves its filter in
    its order. A `priority` filter is served in priority order only: by due time one of
    200,000 tasks read 100,000 to find none, for one read (an audit, 2026-12-07)."""
    ranged = ("due_before" in args or "due_after" in args) and args.get("sort") != "due_at"
    by_priority = "priority" in args and args.get("sort") != "priority"
    return bool(
        args.get("q") or args.get("sort") == "title" or args.get("tag") or ranged or by_priority
    )


SCAN_LIMIT_S = 2.0
"""How long a list that may read every task of its owner (`_scans`) may run on
PostgreSQL. A search over 20,000 tasks of 10,000-character descriptions took 3-6 s, and
29 of them, within one user's reads, held the database for another user's lists for up
to 14 s (a review, 2026-12-07). Past it the list is a 422 that says how to narrow it
(`web.api.list_tasks` sets the bound)."""


def list_tasks(session: Session, owner: str, query: TaskQuery) -> TaskPage:
    stmt = VIEW.where(col(Task.owner) == owner)
    if query.status:
        stmt = stmt.where(col(Task.status) == query.status)
    if query.priority:
        stmt = stmt.where(col(Task.priority) == PRIORITIES.index(query.priority))
    if query.tag:
        stmt = stmt.where(
            select(TaskTag.task_id)
            .where(TaskTag.task_id == Task.id, TaskTag.tag == query.tag)
            .exists()
        )
    if query.due_before:
        stmt = stmt.where(col(Task.due_at) < query.due_before)
    if query.due_after:
        stmt = stmt.where(col(Task.due_at) >= query.due_after)
    if query.series_id:
        stmt = stmt.where(col(Task.series_id) == query.series_id)
    if query.q:
        stmt = stmt.where(
            or_(
                col(Task.title).icontains(query.q, autoescape=True),
                col(Task.description).icontains(query.q, autoescape=True),
            )
        )
    try:
        rows = _page_rows(session, stmt, query)
    except OperationalError as exc:
        if db.cancelled(exc) and scans(query):
            raise QueryTooBroad(
                f"this list reads more of your tasks than can be read in {SCAN_LIMIT_S:g} s "
                "(a search, a tag, a title sort or a due range on another order reads them "
                "all): narrow it with status, a due range sorted by due_at, or fewer words"
            ) from None
        raise
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    return TaskPage(
        items=[_shown(row) for row in rows],
        next_cursor=encode_cursor(rows[-1], query) if more and rows else None,
    )


def _page_rows(session: Session, stmt: Any, query: TaskQuery) -> list[Row[Any]]:
    """A page of `stmt` in the query's order and one row more, if there is one."""
    column = SORT_COLUMNS[query.sort]
    descending = query.order == "desc"
    cursor = decode_cursor(query.cursor, query) if query.cursor else None
    want = query.limit + 1
    if not TASK.c[query.sort].nullable:
        rows = _ordered(session, stmt, column, descending, cursor, want)
    else:
        # Tasks without a value come last either way: first those with one, in order,
        # then the others by id. Two plain orders that the (owner, due_at, id) index
        # serves as they are; one order placing NULLs last by an expression sorted every
        # task of the owner (150 ms a page for 200,000 tasks, on every page).
        rows = []
        if cursor is None or cursor[0] is not None:
            present = stmt.where(column.is_not(None))
            rows = _ordered(session, present, column, descending, cursor, want)
        if len(rows) < want and not (query.due_before or query.due_after):  # those have one
            absent = stmt.where(column.is_(None))
            last_id = cursor[1] if cursor is not None and cursor[0] is None else None
            by_id = None if last_id is None else (last_id, last_id)  # (id, id): by id alone
            rows += _ordered(
                session, absent, col(Task.id), descending, by_id, want - len(rows), column
            )
    return rows


def _ordered(
    session: Session,
    stmt: Any,
    column: Any,
    descending: bool,
    cursor: tuple[Any, str] | None,
    limit: int,
    all_null: Any = None,
) -> list[Row[Any]]:
    """Up to `limit` rows of `stmt` in (column, id) order, after `cursor` if given.

    `all_null`: a column NULL in every row of `stmt`, ordered by first, which changes no
    order but names the index's: PostgreSQL did not take `ORDER BY id` for the order of
    the (owner, [status,] due_at, id) index under `due_at IS NULL`, and read the whole
    table by its primary key instead, every owner's tasks (0.4 s at 400,000 for an owner
    with no task left without a due time)."""
    if cursor is not None:
        stmt = stmt.where(keyset.after(column, col(Task.id), *cursor, descending))
    keys = [column if all_null is None else all_null, col(Task.id)]
    ordering = [key.desc() for key in keys] if descending else keys
    return list(session.connection().execute(stmt.order_by(*ordering).limit(limit)).all())
