"""Deliver `reminder.due` on the user's channels and record each delivery once.

Each channel's delivery is recorded in its own transaction, unique per (reminder,
scheduled time, channel): a redelivered event skips the channels already done and
retries only the ones that failed for a transient reason. Within one group commit
(`_GroupCommit`) a firing is sent once however many events name it. A webhook receiver
can deduplicate the remaining window (sent, then crashed before the record; two
deliveries of one firing checked at once in separate transactions, in two groups or on
two pods) by the `Idempotency-Key` header, the same for every send of a firing. The database
transaction never spans a network call.

Failures are classified by cause. Only transient trouble on the wire (the SMTP relay
down or busy, a webhook's 5xx, 429, timeout or broken connection) answers 503 so the
event is retried. A failure caused by the event's content or the user's settings (an
address that fails the channel's check, a target not yet verified, a URL no longer
allowed, a refusal by the receiver) is permanent: recorded as a `failed` notification
with a detail that names the cause (never the address or the title), and answered
2xx, so a poison event never holds its partition for the retry budget. A title is the
user's content: it is folded into one subject line, never a reason to fail.

The sweep's rules hold at delivery too, since an event can reach notify hours after its
claim (the broker or notify away, a backlog): a firing later than its owner's grace is
recorded missed and reported with `reminder.missed`, one arriving inside the owner's
quiet hours goes back to pending until they end (`_held`). Only while none of its
channels was sent: a firing started is finished.
"""

from __future__ import annotations

import contextvars
import copy
import functools
import logging
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, String, TextClause, bindparam, insert, text, tuple_, update
from sqlalchemy import select as sa_select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.types import TypeEngine
from sqlmodel import col, select

from duetide import channels, events, telemetry
from duetide.channels.delivery import DELIVERED, DeliveryResult, refused
from duetide.errors import Unavailable
from duetide.logs import log_event
from duetide.rules.quiet_hours import defer_for_quiet_hours
from duetide.rules.reminders import is_missed
from duetide.services import preferences
from duetide.storage import db, outbox
from duetide.storage.models import (
    Notification,
    Preference,
    ProcessedEvent,
    Reminder,
    Task,
    UTCDateTime,
    new_id,
)
from duetide.storage.processed import EventKey, claim
from duetide.vocabulary import Channel

log = logging.getLogger("duetide.services.notify")

CONSUMER = "notify"


def send(channel: Channel, due: events.ReminderEvent, pref: Preference) -> DeliveryResult:
    """Deliver on one channel; content a channel cannot send is a permanent failure (a
    `ValueError` from the channel never escapes as a 500)."""
    try:
        result = channels.REGISTRY[channel].send(due, pref)
    except ValueError as exc:
        log_event(
            log,
            "notification.refused",
            level=logging.WARNING,
            channel=channel,
            reminder_id=due.reminder_id,
            error=type(exc).__name__,
        )
        result = refused(f"the {channel} channel cannot send this reminder's content")
    _observe(channel, due, result)
    return result


def _observe(channel: Channel, due: events.ReminderEvent, result: DeliveryResult) -> None:
    """One log line and one count per attempt, by channel and outcome (`delivered`,
    `failed` for good, `retry` for a transient failure); never the target or the title."""
    outcome = "delivered" if result.ok else "retry" if result.retryable else "failed"
    log_event(
        log,
        "notification.attempted",
        level=logging.INFO if outcome == "delivered" else logging.WARNING,
        channel=channel,
        outcome=outcome,
        reminder_id=due.reminder_id,
        task_id=due.task_id,
        status=result.status,
    )
    telemetry.count_delivery(channel, outcome)


def _current(reminder: _ReminderState | None, due: events.ReminderEvent) -> bool:
    """Is this firing still wanted? Not if dismissed, snoozed since, or gone with its task,
    nor once the task is no longer open (completed after the sweep claimed the firing: the
    sweep itself claims only reminders of open tasks)."""
    if reminder is None or reminder.owner != due.owner or reminder.state == "dismissed":
        return False
    return reminder.status == "open" and reminder.fire_at == due.scheduled_at


class _ReminderState(Protocol):
    owner: str
    state: str
    fire_at: datetime | None
    status: str  # its task's


def deliver(event_source: str, event_id: str, due: events.ReminderEvent, now: datetime) -> str:
    """Deliver one `reminder.due`: its outcome (`duplicate`: this event, or its firing
    under another id, was done before; `obsolete`, `processed`, or `missed` and
    `deferred`: `_held`)."""
    [check] = _deliver([_Check(EventKey(CONSUMER, event_source, event_id), due, now)])
    return check.outcome


def deliver_batch(
    event_source: str, event_id: str, batch: list[events.ReminderEvent], now: datetime
) -> list[str]:
    """Deliver each reminder of a `reminder.due.batch` as its own `reminder.due` would be:
    its outcome each, in order. Each is its own key in the processed record (the batch's
    id scoped by the reminder), so a redelivered batch skips the reminders it finished
    and retries only the rest."""
    checks: dict[str, _Check] = {}
    order: list[_Check | None] = []  # None: a reminder listed again, one key, sent once
    for due in batch:
        if due.reminder_id in checks:
            order.append(None)
            continue
        key = EventKey(CONSUMER, event_source, event_id, scope=due.reminder_id)
        order.append(checks.setdefault(due.reminder_id, _Check(key, due, now)))
    _deliver(list(checks.values()))
    return [check.outcome if check is not None else "duplicate" for check in order]


def _deliver(checks: list[_Check]) -> list[_Check]:
    """Deliver on every channel not yet done; 503 (retry) if one failed transiently.

    The checks (processed before? still current? which channels are done?) and the
    record of the channels that need no network (the log) commit in one transaction with
    the checks of the deliveries running beside these (`_GroupCommit`); those channels
    are sent after the commit. Network channels each get their own record; a batch sends
    them a few at a time, within the budget of one request (`_send_remote`).
    """
    _GROUP.run(checks)
    for check in checks:
        for channel in check.local:
            assert check.pref is not None
            send(channel, check.due, check.pref)
    remote = [(check, channel) for check in checks for channel in check.remote]
    transient = _send_remote(remote)
    retried = {id(check) for check, _ in transient}
    finished = [c for c in checks if c.remote and id(c) not in retried]
    if finished:
        with db.session_scope() as session:
            for check in finished:  # a concurrent delivery of the event may have won
                claim(session, check.key)
    for check in checks:
        if check.outcome == "send":
            check.outcome = "processed"
    if transient:
        failed = ", ".join(sorted({channel for _, channel in transient}))
        raise Unavailable(f"delivery failed on {failed}; retry later")
    return checks


REMOTE_DEADLINE_S = 25.0
"""By when a batch's network deliveries have ended: one starts only if its channel's
whole bound (`LONGEST_S`) ends by then, under the KafkaSource's delivery timeout (30 s)
with time left for the records and the answer. (Starting any send up to 20 s let an
e-mail, bound at 10 s, end at 30: a request answered too late was a failed try to the
dispatcher, though its mails had gone; an audit, 2026-12-07.)"""
REMOTE_AT_ONCE = 4
"""A batch's network deliveries under way at once (each a thread, most of it waiting; a
pod runs 32 requests, and each record takes a pooled connection for its commit)."""


def _send_remote(jobs: list[tuple[_Check, Channel]]) -> list[tuple[_Check, Channel]]:
    """Send and record each (check, channel); those that failed transiently (then retried
    by the event's redelivery, which skips what was recorded).

    One event's own channels go one after the other, as they always did. A batch's go in
    lanes, one per owner and channel (one receiver), a few lanes at once: a lane sends
    one at a time and stops at its first transient failure, the rest of it counting as
    transient too, and nothing is started that could end after REMOTE_DEADLINE_S. So no
    request outlives its delivery timeout whatever the receivers do (each send is bounded
    by its channel). Lanes whose receiver failed transiently lately (`_LAGGING`) go after
    the others: the receivers that hang cost a lane its channel's whole bound each, and
    in the batch's order, try after try, 16 of them took every try's time while the rest
    of the batch's receivers, which answer, never got a send (an audit, 2026-12-07; a
    review before found the same with one owner's receiver on the shared threads).
    """
    deadline = time.monotonic() + REMOTE_DEADLINE_S

    def one(job: tuple[_Check, Channel]) -> bool:
        check, channel = job
        assert check.pref is not None
        result = send(channel, check.due, check.pref)
        if not result.ok and result.retryable:
            return False
        _record(check.due, channel, result, check.now)
        return True

    def startable(channel: Channel) -> bool:
        return time.monotonic() + channels.REGISTRY[channel].LONGEST_S <= deadline

    if all(check is jobs[0][0] for check, _ in jobs):
        return [job for job in jobs if not (startable(job[1]) and one(job))]
    lanes: dict[tuple[str, Channel], list[tuple[_Check, Channel]]] = {}
    for job in jobs:
        lanes.setdefault((job[0].due.owner, job[1]), []).append(job)

    def lane(receiver: tuple[str, Channel]) -> list[tuple[_Check, Channel]]:
        queued = lanes[receiver]
        for at, job in enumerate(queued):
            if not startable(job[1]):
                return queued[at:]
            if not one(job):
                _LAGGING.failed(receiver)
                return queued[at:]
        _LAGGING.answered(receiver)
        return []

    context = contextvars.copy_context()
    order = sorted(lanes, key=_LAGGING.lagging)  # stable: the batch's order otherwise
    with ThreadPoolExecutor(min(REMOTE_AT_ONCE, len(lanes))) as pool:
        left = pool.map(lambda receiver: context.copy().run(lane, receiver), order)
        return [job for jobs_left in left for job in jobs_left]


class _Receivers:
    """The receivers (owner, channel) whose last send failed transiently within
    `for_s`, at most `size` of them (the oldest forgotten first): bounded, whatever the
    batches hold. This process's own memory: a retry that reaches another pod finds the
    batch's order there, and its own first try teaches it."""

    def __init__(self, size: int = 10_000, for_s: float = 600.0) -> None:
        self._failed: dict[tuple[str, Channel], float] = {}
        self._size, self._for_s = size, for_s
        self._lock = threading.Lock()

    def failed(self, receiver: tuple[str, Channel]) -> None:
        with self._lock:
            self._failed.pop(receiver, None)
            self._failed[receiver] = time.monotonic()
            while len(self._failed) > self._size:
                del self._failed[next(iter(self._failed))]

    def answered(self, receiver: tuple[str, Channel]) -> None:
        with self._lock:
            self._failed.pop(receiver, None)

    def lagging(self, receiver: tuple[str, Channel]) -> bool:
        with self._lock:
            since = self._failed.get(receiver)
        return since is not None and time.monotonic() - since < self._for_s


_LAGGING = _Receivers()


MAX_GROUP = 64
"""The most events one group commit checks and records (a batch larger than this is a
group of its own)."""


class _Check:
    """One reminder's turn in a group commit, and what its checks found: `outcome` is
    `duplicate`, `obsolete`, `missed`, `deferred` (`_held`) or `send` (then `pref`, and
    the `local` channels recorded with the commit and the `remote` ones still to send
    and record)."""

    def __init__(self, key: EventKey, due: events.ReminderEvent, now: datetime) -> None:
        self.key = key
        self.due = due
        self.now = now
        self.outcome = ""
        self.pref: Preference | None = None
        self.local: list[Channel] = []
        self.remote: list[Channel] = []


class _Ticket:
    """One request's checks (one event's reminders) waiting for, or leading, a group."""

    def __init__(self, checks: list[_Check]) -> None:
        self.checks = checks
        self.failed: Exception | None = None  # why its group's transaction failed
        self.finished = False
        self.woken = threading.Event()


class _GroupCommit:
    """The checks of concurrent deliveries, committed together (a group commit).

    One transaction per event made the database's commit (and on SQLite the process's
    one writer at a time) the limit of a burst: about 290 reminders/s on the local
    stack. Each request thread brings its event's checks (one, or a batch's); while
    fewer than `leaders` groups are under way it leads one at once, else it queues. A
    leader checks and records its checks and what is queued (at most MAX_GROUP checks in
    all, or its own batch alone if larger) in one transaction (`_commit_group`), wakes
    them with their outcomes and hands the lead to the next request queued meanwhile. A
    group is whatever arrived while the others committed, so a lone event commits at
    once and nothing waits on a timer. Each event still answers on its own request
    after the commit (the sink contract: one event, one answer).

    PostgreSQL runs two groups at once (one checks while the other commits: the commit's
    flush was half a group's time); SQLite one, since the process has one writer anyway.

    Exactly once per channel holds as before: the checks of a group are made in order
    against the stored records and those the group adds itself, and the unique keys
    (`processed_event`, `uq_notification_once`) still decide between concurrent
    transactions. A group whose transaction fails commits nothing. On a unique key (a
    concurrent duplicate won) each of its checks is then made alone, as it was before
    group commits, so one event's conflict never fails the others; for any other cause
    (the database away, its lock not given) every event of the group fails with it, a
    503, rather than wait for the database once more each.
    """

    def __init__(self, limit: int = MAX_GROUP, leaders: int | None = None) -> None:
        self._limit = limit
        self._max_leaders = leaders
        self._lock = threading.Lock()
        self._queue: deque[_Ticket] = deque()
        self._leaders = 0

    def run(self, checks: list[_Check]) -> None:
        """Make and record `checks` in a group; each alone if its group failed on a key."""
        ticket = _Ticket(checks)
        leaders = self._max_leaders
        if leaders is None:  # the engine is cached: a look at its dialect costs nothing
            leaders = 2 if db.get_engine().dialect.name == "postgresql" else 1
        with self._lock:
            lead = self._leaders < leaders
            if lead:
                self._leaders += 1
            else:
                self._queue.append(ticket)
        if not lead:
            ticket.woken.wait()
        if not ticket.finished:  # it leads: at once, or handed the lead
            self._lead(ticket)
        if isinstance(ticket.failed, IntegrityError):  # another delivery won a key
            for check in checks:
                _commit_alone(check)
        elif ticket.failed is not None:  # the database itself: alone, each would wait for it
            raise copy.copy(ticket.failed)  # again (each request its own exception)

    def _lead(self, first: _Ticket) -> None:
        with self._lock:
            group, size = [first], len(first.checks)
            while self._queue and size + len(self._queue[0].checks) <= self._limit:
                group.append(self._queue.popleft())
                size += len(group[-1].checks)
        try:
            _commit_group([check for ticket in group for check in ticket.checks])
        except Exception as exc:
            log_event(
                log,
                "notify.group_failed",
                level=logging.WARNING,
                events=len(group),
                error=type(exc).__name__,
            )
            for ticket in group:
                ticket.failed = exc
        finally:
            with self._lock:
                successor = self._queue.popleft() if self._queue else None
                if successor is None:
                    self._leaders -= 1
            for ticket in group:
                ticket.finished = True
                ticket.woken.set()
            if successor is not None:
                successor.woken.set()  # not finished: it leads the next group


_GROUP = _GroupCommit()


def _commit_alone(check: _Check) -> None:
    """One event in a transaction of its own; once more if a concurrent delivery of the
    same event or firing committed first (the retry then sees its records)."""
    check.outcome, check.local, check.remote = "", [], []
    try:
        _commit_group([check])
    except IntegrityError:
        check.outcome, check.local, check.remote = "", [], []
        _commit_group([check])


def _commit_group(group: list[_Check]) -> None:
    """Check `group` in order and record what needs no network, in one transaction.

    A constant number of statements whatever the group's size: one read each of the
    processed ids, the reminders, the preferences and the recorded notifications, one
    INSERT of the notifications and one of the processed ids.
    """
    with db.session_scope() as session:
        connection = session.connection()
        reminder_ids = {check.due.reminder_id for check in group}
        seen = _processed(connection, [check.key for check in group])
        current = (
            sa_select(  # five columns: more than sqlmodel's select types
                col(Reminder.id),
                col(Reminder.owner),
                col(Reminder.state),
                col(Reminder.fire_at),
                col(Task.status),
            )
            .join(Task, col(Task.id) == col(Reminder.task_id))
            .where(col(Reminder.id).in_(reminder_ids))
        )
        reminders: dict[str, _ReminderState] = {
            row.id: row for row in connection.execute(current).all()
        }
        owners = {check.due.owner for check in group}
        prefs = {
            pref.owner: pref
            for pref in session.exec(select(Preference).where(col(Preference.owner).in_(owners)))
        }
        done = _delivered(connection, sorted(reminder_ids))
        missed: list[events.ReminderEvent] = []
        deferred: list[dict[str, object]] = []
        notifications: list[dict[str, object]] = []
        processed: list[dict[str, object]] = []
        for check in group:
            key = (check.key.scope, check.key.source, check.key.event_id)
            if key in seen:
                check.outcome = "duplicate"
                continue
            due = check.due
            if not _current(reminders.get(due.reminder_id), due):
                check.outcome = "obsolete"
                continue
            pref = prefs.get(due.owner) or _defaults(due.owner)
            pending = [
                c for c in pref.channels if (due.reminder_id, due.scheduled_at, c) not in done
            ]
            if pref.channels and not pending:  # the firing is done, by another event of it
                check.outcome = "duplicate"  # (the sweep's again): nothing sent, nor late
                processed.append(check.key.values(check.now))
                seen.add(key)
                continue
            if len(pending) == len(pref.channels):  # none sent yet: may it go now?
                held = _held(due, pref, check.now)
                if held is not None:
                    check.outcome = "missed" if held is _MISSED else "deferred"
                    if held is _MISSED:
                        missed.append(due)
                    else:
                        deferred.append({"held_id": due.reminder_id, "held_at": due.scheduled_at,
                                         "held_to": held})  # fmt: skip
                    done.update((due.reminder_id, due.scheduled_at, c) for c in pending)
                    processed.append(check.key.values(check.now))
                    seen.add(key)
                    continue
            check.outcome, check.pref = "send", pref
            check.local = [c for c in pending if not channels.REGISTRY[c].NEEDS_NETWORK]
            check.remote = [c for c in pending if channels.REGISTRY[c].NEEDS_NETWORK]
            for channel in check.local:
                row = {"id": new_id(), **_notification_values(due, channel, DELIVERED, check.now)}
                notifications.append(row)
            # The same firing later in the group (another event for it) sends none of
            # these again; its own event is done when this one is.
            done.update((due.reminder_id, due.scheduled_at, c) for c in pending)
            if not check.remote:
                processed.append(check.key.values(check.now))
                seen.add(key)
        if missed:  # reported only where still as read (no snooze or dismissal since)
            firings = [(d.reminder_id, d.scheduled_at) for d in missed]
            marked = set(connection.execute(_miss(firings)).scalars())
            outbox.record_many(
                session,
                (outbox.Event(events.REMINDER_MISSED, d.task_id, d.model_dump(mode="json"))
                 for d in missed if d.reminder_id in marked),
                source=events.SOURCE_NOTIFY,
            )  # fmt: skip
        if deferred:
            connection.execute(_DEFER, deferred)
        if notifications:
            connection.execute(insert(Notification), notifications)
        if processed:
            connection.execute(insert(ProcessedEvent), processed)


_MISSED = object()


def _held(due: events.ReminderEvent, pref: Preference, now: datetime) -> datetime | object | None:
    """Why a firing is not sent now: `_MISSED` when it is later than its owner's grace
    (the sweep's rule, which it applies when it claims), or the end of the quiet hours
    `now` is in; None to send it. The sweep checks both when it claims a reminder, but an
    event can reach notify hours later (the broker or notify away, a backlog): without
    this, an outage ended with every reminder it held sent at once, at any hour (a
    review, 2026-12-07)."""
    if is_missed(due.scheduled_at, now, preferences.grace(pref)):
        return _MISSED
    window = preferences.quiet_window(pref)
    if window is not None:
        end = defer_for_quiet_hours(now, pref.timezone, *window)
        if end > now:
            return end
    return None


def _miss(firings: list[tuple[str, datetime]]) -> Any:
    """Mark missed the (id, scheduled time) firings still fired at that time (another
    change to the reminder since, a snooze, a dismissal, a due time moved, is left as it
    is); the ids it marked."""
    return (
        update(Reminder)
        .where(
            tuple_(col(Reminder.id), col(Reminder.fire_at)).in_(firings),
            col(Reminder.state) == "fired",
        )
        .values(state="missed")
        .returning(col(Reminder.id))
    )


# A firing notify puts back until the quiet hours end, likewise if still as it was read.
_DEFER = (
    update(Reminder)
    .where(
        (col(Reminder.id) == bindparam("held_id"))
        & (col(Reminder.state) == "fired")
        & (col(Reminder.fire_at) == bindparam("held_at", type_=UTCDateTime()))
    )
    .values(state="pending", fired_at=None, fire_at=bindparam("held_to", type_=UTCDateTime()))
)


def _defaults(owner: str) -> Preference:
    """The preferences of an owner who never stored any (`preferences.load`'s defaults),
    built once per owner: building a `Preference` runs pydantic's default factories,
    which inspect their signatures each time, and was a tenth of notify's CPU in a burst
    whose owners had no preference row. Read only: nothing here stores or changes it."""
    pref = _DEFAULTS.get(owner)
    if pref is None:
        if len(_DEFAULTS) >= _MAX_DEFAULTS:
            _DEFAULTS.clear()
        pref = _DEFAULTS[owner] = Preference(owner=owner)
    return pref


_DEFAULTS: dict[str, Preference] = {}
_MAX_DEFAULTS = 10_000


def _processed(connection: Connection, keys: list[EventKey]) -> set[tuple[str, str, str]]:
    """Which of `keys` notify has processed, as (scope, source, event id), in one statement
    (`_union_all`), each lookup on the whole primary key."""
    params: dict[str, str] = {}
    for n, key in enumerate(keys):
        params.update({f"c{n}": key.consumer, f"s{n}": key.scope, f"r{n}": key.source,
                       f"e{n}": key.event_id})  # fmt: skip
    rows = connection.execute(_union_all(_PROCESSED_LOOKUP, len(keys)), params)
    return {(row[0], row[1], row[2]) for row in rows}


def _delivered(connection: Connection, reminder_ids: list[str]) -> set[tuple[str, datetime, str]]:
    """The (reminder, scheduled time, channel) recorded for `reminder_ids`, in one
    statement (`_union_all`), each lookup by the first column of `uq_notification_once`;
    the times read as the column type reads them, so they compare with the events'."""
    params = {f"r{n}": reminder_id for n, reminder_id in enumerate(reminder_ids)}
    lookups = _union_all(_RECORDED_LOOKUP, len(reminder_ids))
    rows = connection.execute(lookups.columns(**_RECORDED_COLUMNS), params)
    return {(row.reminder_id, row.scheduled_at, row.channel) for row in rows}


_PROCESSED_LOOKUP = (
    f"SELECT scope, source, event_id FROM {ProcessedEvent.__tablename__}"
    " WHERE consumer = :c{n} AND scope = :s{n} AND source = :r{n} AND event_id = :e{n}"
)
_RECORDED_LOOKUP = (
    f"SELECT reminder_id, scheduled_at, channel FROM {Notification.__tablename__}"
    " WHERE reminder_id = :r{n}"
)
_RECORDED_COLUMNS: dict[str, TypeEngine[Any]] = {
    "reminder_id": String(),
    "scheduled_at": UTCDateTime(),
    "channel": String(),
}


@functools.lru_cache(maxsize=256)
def _union_all(lookup: str, count: int) -> TextClause:
    """`count` copies of `lookup` (parameters numbered by `{n}`) joined by UNION ALL.

    One lookup per key, so the database finds each by its index whatever its statistics
    say. An `IN` list let PostgreSQL's planner, on a table that grew since it was last
    analyzed (a burst into a fresh one), estimate dozens of rows per value and scan
    every row: for `notification`, 128 ms a group at 100,000 rows and most of the
    database's time in the burst; for `processed_event`, it matched the first columns of
    the key and filtered the ids over every row notify had processed. Plain SQL text, one
    per lookup and group size: built as SQLAlchemy selects it was a quarter of a group's
    CPU.
    """
    return text(" UNION ALL ".join(lookup.format(n=n) for n in range(count)))


def _notification_values(
    due: events.ReminderEvent, channel: Channel, result: DeliveryResult, now: datetime
) -> dict[str, Any]:
    """A delivery's `notification` row (without its id): a group commit inserts these as
    plain rows, a network channel's record as a model."""
    return {
        "owner": due.owner,
        "reminder_id": due.reminder_id,
        "task_id": due.task_id,
        "channel": channel,
        "scheduled_at": due.scheduled_at,
        "delivered_at": now,
        "status": "delivered" if result.ok else "failed",
        "detail": (result.error or "")[:255],
    }


def _record(
    due: events.ReminderEvent, channel: Channel, result: DeliveryResult, now: datetime
) -> None:
    try:
        with db.session_scope() as session:
            session.add(Notification(**_notification_values(due, channel, result, now)))
    except IntegrityError:
        pass  # a concurrent delivery of the same firing recorded it first
