"""The tasks function's HTTP API: routing and request decoding over tasks.py and series.py."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal, TypeVar

from flask import Request, Response
from pydantic import BaseModel
from sqlmodel import Session, col, select
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import Map, Rule

from duetide.channels import verification
from duetide.config import get_settings
from duetide.errors import BadRequest, MethodNotAllowed, NotFound, Unavailable, ValidationFailed
from duetide.services import (
    activity_feed,
    calendar_export,
    calendar_feed,
    idempotency,
    keyset,
    preferences,
    ratelimit,
    reminder_actions,
    series,
    subscriptions,
    tasks,
    webhook_deliveries,
)
from duetide.services.ratelimit import SCAN_READS
from duetide.services.responses import (
    ActivityPage,
    CalendarFeedOut,
    CommandResult,
    DeliveryOut,
    DeliveryPage,
    ErrorBody,
    Forecast,
    Health,
    History,
    NotificationPage,
    OccurrenceDeleted,
    PreferencesOut,
    ReminderOut,
    SeriesOut,
    SeriesPage,
    SubscriptionOut,
    SubscriptionPage,
    TaskOut,
    TaskPage,
    UpcomingPage,
    delivery_out,
    notification_out,
    rfc3339,
    series_out,
    subscription_out,
)
from duetide.services.schemas import (
    ActivityFeedQuery,
    ActivityQuery,
    ActivityStreamQuery,
    EmailCodeIn,
    ForecastQuery,
    KeysetPageQuery,
    PreferencesUpdate,
    ReminderIn,
    SeriesUpdate,
    SnoozeIn,
    SubscriptionIn,
    SubscriptionUpdate,
    TaskCreate,
    TaskQuery,
    TaskUpdate,
)
from duetide.storage import db, outbox
from duetide.storage.models import Notification, Series, Task, utcnow
from duetide.web import auth, commands, docs, live, openapi, preconditions
from duetide.web.command_events import CommandData, CommandEvent
from duetide.web.http import (
    guarded,
    json_response,
    json_text_response,
    loggable_path,
    parse_model,
    read_json,
    reject_unstorable,
)
from duetide.web.sink import STRUCTURED

Row = TypeVar("Row")
Item = TypeVar("Item")
Shown = TypeVar("Shown", bound=BaseModel)


def _query(request: Request) -> dict[str, Any]:
    query = {k: v for k, v in request.args.items()}
    reject_unstorable(query)
    return query


def _body(request: Request) -> Any:
    return read_json(request, get_settings().duetide_max_body_bytes)


def _write(
    work: Callable[[Session], tuple[Any, list[str]]],
    status: int = 200,
    headers: Callable[[Any], dict[str, str]] | None = None,
    etag: bool = False,
    keyed: tuple[Request, str, BaseModel] | None = None,
) -> Response:
    """Run a state change in one transaction, answer after the commit, then publish;
    `headers` are the answer's from its body (a 201's Location); `etag`: with the ETag
    of the task or series it shows; `keyed` (the request, its user and its validated
    body): a creating write that honours `Idempotency-Key` (`services.idempotency`).

    On SQLite the transaction takes the write lock at BEGIN: the counterpart of the
    row locks the changes take on PostgreSQL (`series.lock`), and no BUSY error for a
    transaction that read before another writer committed.
    """
    claimed = _idempotency_claim(*keyed) if keyed is not None else None
    with db.session_scope() as session:
        if claimed is not None:
            found = idempotency.claim(session.connection(), *claimed, utcnow())
            if found is not None:
                replayed = {**found.headers, idempotency.REPLAYED: "true"}
                return json_text_response(found.body, found.status, replayed)
        body, event_ids = work(session)
        extra = headers(body) if headers is not None else None
        if etag:
            answer = preconditions.tagged_response(body, status, extra)
        else:
            answer = json_response(body, status, extra)
        if claimed is not None:
            kept = {h: answer.headers[h] for h in idempotency.KEPT_HEADERS if h in answer.headers}
            recorded = idempotency.Answer(status, answer.get_data(as_text=True), kept)
            idempotency.record(session.connection(), *claimed[:2], recorded)
    outbox.publish_after_commit(event_ids)
    return answer


_KEY_SYNTAX = re.compile(idempotency.KEY_PATTERN)


def _idempotency_claim(request: Request, user: str, spec: BaseModel) -> tuple[str, str, str] | None:
    """(user, key, fingerprint) of a request sent with an `Idempotency-Key`, worked out
    before its transaction; None without one."""
    key = request.headers.get(idempotency.HEADER)
    if key is None:
        return None
    if not _KEY_SYNTAX.fullmatch(key):
        raise BadRequest(f"{idempotency.HEADER} must be 1 to 255 visible ASCII characters")
    content = spec.model_dump_json(exclude_unset=True).encode()
    return user, key, idempotency.fingerprint(request.method, request.path, content)


def _created_task(task: TaskOut) -> dict[str, str]:
    return {"Location": f"/tasks/{task.id}"}


def health(request: Request, user: str) -> Response:
    return json_response(Health(status="ok"))


def list_tasks(request: Request, user: str) -> Response:
    query = parse_model(TaskQuery, _query(request))
    limit = tasks.SCAN_LIMIT_S if tasks.scans(query) else None
    with db.session_scope(read_only=True, statement_limit_s=limit) as session:
        return json_response(tasks.list_tasks(session, user, query))


def create_task(request: Request, user: str) -> Response:
    spec = parse_model(TaskCreate, _body(request))

    return _write(
        lambda session: tasks.create(session, user, spec),
        201,
        _created_task,
        etag=True,
        keyed=(request, user, spec),
    )


def get_task(request: Request, user: str, task_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        task = tasks.read(session, user, task_id)
    return preconditions.conditional_get(request, task)


def _retention() -> timedelta:
    return timedelta(days=get_settings().duetide_activity_retention_days)


def list_activity(request: Request, user: str) -> Response:
    query = parse_model(ActivityFeedQuery, _query(request))

    def read() -> ActivityPage:
        with db.session_scope(read_only=True) as session:  # one short read per poll
            return activity_feed.feed(session, user, query.since, query.limit, _retention())

    return json_response(live.wait_for_page(user, read, query.wait))


def activity_stream(request: Request, user: str) -> Response:
    """Authenticates itself: EventSource cannot set a header, so the token may come as
    `?access_token=` (on this route only; logs and spans hold the path, not the query)."""
    query = parse_model(ActivityStreamQuery, _query(request))
    if query.access_token and "Authorization" not in request.headers:
        user = auth.verify(query.access_token)
    else:
        user = auth.authenticate(request)
    ratelimit.charge_read(user)
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if last_id:
        reject_unstorable(last_id, "Last-Event-ID")
    body = live.open_stream(user, last_id or query.since)
    return Response(
        body,
        status=200,
        mimetype="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def task_activity(request: Request, user: str, task_id: str) -> Response:
    query = parse_model(ActivityQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        return json_response(
            activity_feed.task_feed(session, user, task_id, query.since, query.limit, _retention())
        )


def _task_now(session: Session, user: str, task_id: str) -> Callable[[], TaskOut]:
    """The task as it is now, locked to the commit: the change then applies to what
    If-Match was compared with."""

    def current() -> TaskOut:
        tasks.lock_task(session, user, task_id)
        return tasks.read(session, user, task_id)

    return current


def _conditional_change(
    request: Request,
    now: Callable[[Session], Callable[[], Shown]],
    change: Callable[[Session], tuple[Shown, list[str]]],
) -> Response:
    """A change of one task or series, made only if it is as the request's If-Match
    says (`now(session)` reads it locked), answered with it and its ETag."""

    def work(session: Session) -> tuple[Shown, list[str]]:
        preconditions.require_match(request, now(session))
        return change(session)

    return _write(work, etag=True)


def _task_change(
    request: Request,
    user: str,
    task_id: str,
    change: Callable[[Session], tuple[TaskOut, list[str]]],
) -> Response:
    return _conditional_change(request, lambda s: _task_now(s, user, task_id), change)


def _shown(session: Session, changed: tuple[Task, list[str]]) -> tuple[TaskOut, list[str]]:
    task, event_ids = changed
    return tasks.show(session, task), event_ids


def update_task(request: Request, user: str, task_id: str) -> Response:
    spec = parse_model(TaskUpdate, _body(request))
    return _task_change(
        request, user, task_id, lambda s: _shown(s, tasks.update(s, user, task_id, spec))
    )


def complete_task(request: Request, user: str, task_id: str) -> Response:
    return _task_change(request, user, task_id, lambda s: tasks.complete(s, user, task_id))


def reopen_task(request: Request, user: str, task_id: str) -> Response:
    return _task_change(request, user, task_id, lambda s: _shown(s, tasks.reopen(s, user, task_id)))


def delete_task(request: Request, user: str, task_id: str) -> Response:
    """204 for a one-off task; for an occurrence of a series, 200 and what happened to
    the series (deleting the open occurrence skips it, see `series.delete_occurrence`)."""
    with db.session_scope() as session:
        preconditions.require_match(request, _task_now(session, user, task_id))
        deleted = tasks.delete(session, user, task_id)
        body = _deletion_out(session, task_id, deleted)
    outbox.publish_after_commit(deleted.event_ids)
    return json_response(None, 204) if body is None else json_response(body)


def _deletion_out(
    session: Session, task_id: str, deleted: series.Deletion
) -> OccurrenceDeleted | None:
    if deleted.series is None:
        return None
    following = deleted.open_occurrence
    return OccurrenceDeleted(
        deleted=task_id,
        outcome="skipped" if deleted.skipped else "deleted",
        series=series_out(deleted.series),
        open_occurrence=tasks.show(session, following) if following is not None else None,
    )


def add_reminder(request: Request, user: str, task_id: str) -> Response:
    spec = parse_model(ReminderIn, _body(request))

    def work(session: Session) -> tuple[ReminderOut, list[str]]:
        _, reminder = tasks.add_reminder(session, user, task_id, spec)
        return tasks.show_reminder(session, reminder), []

    return _write(work, 201, _created_reminder, keyed=(request, user, spec))


def _created_reminder(reminder: ReminderOut) -> dict[str, str]:
    return {"Location": f"/reminders/{reminder.id}"}


def get_reminder(request: Request, user: str, reminder_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        reminder = reminder_actions.get_owned(session, user, reminder_id)
        return json_response(tasks.show_reminder(session, reminder))


def list_series(request: Request, user: str) -> Response:
    query = parse_model(KeysetPageQuery, _query(request))
    after = keyset.decode(query.cursor) if query.cursor else None
    with db.session_scope(read_only=True) as session:
        rows = series.list_series(session, user, after, query.limit + 1)
        shown, cursor = keyset.page(rows, query.limit, lambda s: (s.created_at, s.id))
        return json_response(SeriesPage(items=[series_out(s) for s in shown], next_cursor=cursor))


def get_series(request: Request, user: str, series_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        found = series_out(series.get_owned(session, user, series_id))
    return preconditions.conditional_get(request, found)


def _series_now(session: Session, user: str, series_id: str) -> Callable[[], SeriesOut]:
    """The series as it is now, locked to the commit (`series.lock`)."""

    def current() -> SeriesOut:
        locked = series.lock(session, series_id, user)
        if locked is None:
            raise NotFound(f"no series {series_id}")
        return series_out(locked)

    return current


def _series_change(
    request: Request,
    user: str,
    series_id: str,
    change: Callable[[Session], tuple[Series, list[str]]],
) -> Response:
    def shown(session: Session) -> tuple[SeriesOut, list[str]]:
        changed, ids = change(session)
        return series_out(changed), ids

    return _conditional_change(request, lambda s: _series_now(s, user, series_id), shown)


def update_series(request: Request, user: str, series_id: str) -> Response:
    spec = parse_model(SeriesUpdate, _body(request))
    return _series_change(
        request, user, series_id, lambda s: (series.update(s, user, series_id, spec), [])
    )


def pause_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(
        request, user, series_id, lambda s: (series.pause(s, user, series_id), [])
    )


def resume_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(
        request, user, series_id, lambda s: series.resume(s, user, series_id, utcnow())
    )


def skip_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(
        request, user, series_id, lambda s: series.skip(s, user, series_id, utcnow())
    )


def end_series(request: Request, user: str, series_id: str) -> Response:
    with db.session_scope() as session:
        preconditions.require_match(request, _series_now(session, user, series_id))
        series.end(session, user, series_id)
    return json_response(None, 204)


def series_history(request: Request, user: str, series_id: str) -> Response:
    query = parse_model(KeysetPageQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        items, cursor = series.history(session, user, series_id, query.cursor, query.limit)
        return json_response(History(items=items, next_cursor=cursor))


def forecast(request: Request, user: str, series_id: str) -> Response:
    query = parse_model(ForecastQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        found = series.get_owned(session, user, series_id)
        return json_response(series.forecast(session, found, query.count, utcnow()))


def get_preferences(request: Request, user: str) -> Response:
    with db.session_scope(read_only=True) as session:
        return json_response(preferences.preference_out(preferences.load(session, user)))


def _preferences(user: str) -> Response:
    with db.session_scope() as session:
        return json_response(preferences.preference_out(preferences.load(session, user)))


def update_preferences(request: Request, user: str) -> Response:
    """Commit the change, then send the confirmation of a new target (bounded in time).

    A confirmation that could not be sent does not undo the change: the answer shows
    `email_confirmation_sent_at: null` or `webhook_verified: false`, and the resend and
    verify routes try again.
    """
    spec = preferences.validated(parse_model(PreferencesUpdate, _body(request)))
    with db.session_scope() as session:
        _, outgoing = preferences.update(session, user, spec, utcnow())
    for item in outgoing:
        verification.send(item)
    return _preferences(user)


def verify_email(request: Request, user: str) -> Response:
    spec = parse_model(EmailCodeIn, _body(request))
    with db.session_scope() as session:
        preference = preferences.verify_email(session, user, spec.code, utcnow())
        return json_response(preferences.preference_out(preference))


def resend_email(request: Request, user: str) -> Response:
    with db.session_scope() as session:
        _, confirmation = preferences.resend_email(session, user, utcnow())
    result = verification.send(confirmation)
    if not result.ok and result.retryable:
        raise Unavailable(f"the confirmation mail could not be sent ({result.error}); retry later")
    if not result.ok:
        raise ValidationFailed.of("email", f"the mail relay refused the address ({result.error})")
    return _preferences(user)


def verify_webhook(request: Request, user: str) -> Response:
    with db.session_scope() as session:
        _, challenge = preferences.challenge_webhook(session, user, utcnow())
    if challenge is not None:
        _send_challenge(challenge, "webhook_url")
    return _preferences(user)


def _send_challenge(challenge: verification.WebhookChallenge, field: str) -> None:
    """Send a challenge the user asked for; 422 naming `field` unless it is echoed."""
    result = verification.send(challenge)
    if not result.ok:
        message = f"the webhook did not echo the url_verification challenge: {result.error}"
        raise ValidationFailed.of(field, message)


def upcoming_reminders(request: Request, user: str) -> Response:
    query = parse_model(KeysetPageQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        return json_response(reminder_actions.upcoming(session, user, query.limit, query.cursor))


def snooze_reminder(request: Request, user: str, reminder_id: str) -> Response:
    spec = parse_model(SnoozeIn, _body(request))
    with db.session_scope() as session:
        reminder = reminder_actions.snooze(session, user, reminder_id, spec, utcnow())
        return json_response(tasks.show_reminder(session, reminder))


def dismiss_reminder(request: Request, user: str, reminder_id: str) -> Response:
    with db.session_scope() as session:
        reminder = reminder_actions.dismiss(session, user, reminder_id)
        return json_response(tasks.show_reminder(session, reminder))


def notifications(request: Request, user: str) -> Response:
    query = parse_model(KeysetPageQuery, _query(request))
    delivered, key = col(Notification.delivered_at), col(Notification.id)
    stmt = select(Notification).where(Notification.owner == user)
    if query.cursor:
        at, last_id = keyset.decode(query.cursor)
        stmt = stmt.where(keyset.after(delivered, key, at, last_id, descending=True))
    newest_first = (delivered.desc(), key.desc())
    with db.session_scope(read_only=True) as session:
        rows = session.exec(stmt.order_by(*newest_first).limit(query.limit + 1)).all()
        shown, after = keyset.page(list(rows), query.limit, lambda n: (n.delivered_at, n.id))
        items = [notification_out(row) for row in shown]
        return json_response(NotificationPage(items=items, next_cursor=after))


def _subscription_answer(
    subscription_id: str,
    user: str,
    challenge: verification.WebhookChallenge | None,
    status: int = 200,
    **extra: str,
) -> Response:
    """Send the challenge a change made (after its commit), then answer with the
    subscription as it is now: `active` if the URL echoed it, or why not. The parked
    deliveries of one that is active are due again at once (`webhook_deliveries.resume`:
    nothing for one with none; a retried PATCH that finds it enabled resumes too)."""
    if challenge is not None:
        result = verification.send(challenge)
        if not result.ok:
            extra["verification_error"] = result.error
    with db.session_scope(read_only=True) as session:
        subscription = subscriptions.read(session, user, subscription_id)
    if subscription.status == "active":
        webhook_deliveries.resume(subscription_id, utcnow())
    body = subscription_out(subscription, **extra)
    headers = {"Location": f"/subscriptions/{subscription.id}"} if status == 201 else None
    return json_response(body, status, headers)


def create_subscription(request: Request, user: str) -> Response:
    """With an `Idempotency-Key`, a copy is answered with the subscription it made as it
    is now, and without its secret: the key's record keeps no secret (it is shown in the
    first answer only; a client that lost that answer rotates it). A copy of an answered
    request is answered before the URL is checked again: that look-up may take seconds,
    a replay is charged to no write limit, and a URL that no longer resolves would have
    turned the 201 owed into a 503."""
    spec = parse_model(SubscriptionIn, _body(request))
    claimed = _idempotency_claim(request, user, spec)
    if claimed is not None:
        with db.session_scope(read_only=True) as session:
            found = idempotency.recorded(session.connection(), *claimed, utcnow())
        if found is not None:
            return _subscription_replay(found, user)
    subscriptions.validated(spec)
    with db.session_scope() as session:
        found = claimed and idempotency.claim(session.connection(), *claimed, utcnow())
        if found is None:
            made, challenge = subscriptions.create(session, user, spec, utcnow())
            if claimed is not None:
                where = {"Location": f"/subscriptions/{made.id}"}
                made_answer = idempotency.Answer(201, "", where)
                idempotency.record(session.connection(), *claimed[:2], made_answer)
    if found is not None:  # a copy that came while the first ran, answered once it had
        return _subscription_replay(found, user)
    return _subscription_answer(made.id, user, challenge, 201, secret=made.secret)


def _subscription_replay(found: idempotency.Answer, user: str) -> Response:
    """The subscription a keyed create made, as it is now (404 once it was deleted)."""
    made_id = found.headers["Location"].removeprefix("/subscriptions/")
    replayed = _subscription_answer(made_id, user, None, found.status)
    replayed.headers[idempotency.REPLAYED] = "true"
    return replayed


def list_subscriptions(request: Request, user: str) -> Response:
    with db.session_scope(read_only=True) as session:
        items = [subscription_out(s) for s in subscriptions.listed(session, user)]
    return json_response(SubscriptionPage(items=items))


def get_subscription(request: Request, user: str, subscription_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        return json_response(subscription_out(subscriptions.read(session, user, subscription_id)))


def update_subscription(request: Request, user: str, subscription_id: str) -> Response:
    spec = parse_model(SubscriptionUpdate, _body(request))
    subscriptions.validated(spec)
    with db.session_scope() as session:
        _, challenge = subscriptions.update(session, user, subscription_id, spec, utcnow())
    return _subscription_answer(subscription_id, user, challenge)


def verify_subscription(request: Request, user: str, subscription_id: str) -> Response:
    with db.session_scope() as session:
        _, challenge = subscriptions.challenge(session, user, subscription_id, utcnow())
    _send_challenge(challenge, "url")
    return _subscription_answer(subscription_id, user, None)


def rotate_subscription_secret(request: Request, user: str, subscription_id: str) -> Response:
    with db.session_scope() as session:
        rotated = subscriptions.rotate_secret(session, user, subscription_id, utcnow())
        return json_response(subscription_out(rotated, secret=rotated.secret))


def delete_subscription(request: Request, user: str, subscription_id: str) -> Response:
    with db.session_scope() as session:
        subscriptions.remove(session, user, subscription_id)
    return json_response(None, 204)


def subscription_deliveries(request: Request, user: str, subscription_id: str) -> Response:
    query = parse_model(KeysetPageQuery, _query(request))
    cursor = keyset.decode(query.cursor) if query.cursor else None
    with db.session_scope(read_only=True) as session:
        rows = subscriptions.deliveries(session, user, subscription_id, cursor, query.limit)
    shown, after = keyset.page(rows, query.limit, lambda d: (d.created_at, d.id))
    return json_response(DeliveryPage(items=[delivery_out(d) for d in shown], next_cursor=after))


def redeliver(request: Request, user: str, subscription_id: str, delivery_id: str) -> Response:
    def work(session: Session) -> tuple[Any, list[str]]:
        delivery, event_id = subscriptions.redeliver(
            session, user, subscription_id, delivery_id, utcnow()
        )
        return delivery_out(delivery), [event_id]

    return _write(work, 202)


CALENDAR_CACHE_CONTROL = "private, max-age=300"
"""Calendar apps poll every few minutes to hours: five minutes fresh, then revalidated
with If-None-Match (`calendar_export.Snapshot.etag`), never stored by a shared cache."""


def calendar(request: Request, user: str) -> Response:
    return _calendar_of(request, lambda session: user)


def calendar_feed_ics(request: Request, user: str, feed_token: str) -> Response:
    """The calendar of the user whose current feed token is in the URL: no header needed.
    An unknown, replaced or revoked token is 404, the same for each; a known one is a
    read of its user's (a calendar client polls, but one looping on it is limited)."""

    def owner_of(session: Session) -> str | None:
        owner = calendar_feed.owner_of(session, feed_token)
        if owner is not None:
            held.enter_context(ratelimit.costly_reads().held(owner))
            ratelimit.charge_read(owner, ratelimit.EXPORT_READS)
            owners.append(owner)
        return owner

    owners: list[str] = []
    with contextlib.ExitStack() as held:
        answer = _calendar_of(request, owner_of)
    if owners and answer.content_length:
        ratelimit.charge_size(owners[0], answer.content_length)
    return answer


def _calendar_of(request: Request, owner_of: Callable[[Session], str | None]) -> Response:
    with db.session_scope(read_only=True) as session:
        owner = owner_of(session)
        if owner is None:
            raise NotFound("no calendar feed at this URL: it is unknown, replaced or revoked")
        found = calendar_export.snapshot(session, owner, utcnow())
    headers = {"ETag": f'"{found.etag}"', "Cache-Control": CALENDAR_CACHE_CONTROL}
    if found.truncated:
        headers["Duetide-Truncated"] = str(calendar_export.MAX_EXPORTED_TASKS)
    if request.if_none_match.contains_weak(found.etag):  # If-None-Match compares weakly
        return Response(status=304, headers=headers)  # not rendered: see `Snapshot`
    body = found.render()
    return Response(body, status=200, content_type="text/calendar; charset=utf-8", headers=headers)


def create_feed_token(request: Request, user: str) -> Response:
    """A new feed URL; the one before it (if any) stops working."""
    with db.session_scope() as session:
        token, feed = calendar_feed.issue(session, user, utcnow())
        created = rfc3339(feed.created_at)
    base = get_settings().duetide_public_url or request.host_url
    url = f"{base.rstrip('/')}/calendar/{token}.ics"
    return json_response(CalendarFeedOut(url=url, created_at=created), 201, {"Location": url})


def revoke_feed_token(request: Request, user: str) -> Response:
    with db.session_scope() as session:
        calendar_feed.revoke(session, user)
    return json_response(None, 204)


Handler = Callable[..., Response]
Auth = Literal["bearer", "public", "in_handler"]


@dataclass(frozen=True)
class Endpoint:
    """One operation: its route, its handler and what the OpenAPI document says of it.

    `produces`: the media type of a 200 answer that has no response model (a page, a
    file, a calendar).
    `auth`: "bearer" routes authenticate (and charge writes to the rate limit) before
    the handler runs; "public" ones need no token; "in_handler" ones (`/commands`, whose
    sender may be a user or a registered system) authenticate themselves but are
    documented as secured. `other_bodies` are further media types the body may have
    (`/commands` in binary mode: the event's data as application/json), `headers` the
    request headers the operation reads (the binary mode's `ce-*` attributes, If-Match),
    `etag` whether its 200 or 201 carries the ETag of the task or series it shows
    (`web.preconditions`). `reads`: what a GET costs of the user's read budget, as its
    request asks (`ratelimit.charge_read`).
    """

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    responses: Mapping[int, type[BaseModel] | None] = field(default_factory=dict)
    auth: Auth = "bearer"
    media_type: str = "application/json"
    operation_id: str = ""
    description: str = ""
    other_bodies: Mapping[str, type[BaseModel]] = field(default_factory=dict)
    headers: tuple[openapi.Header, ...] = ()
    produces: str | None = None
    etag: bool = False
    reads: Callable[[Request], int] = lambda _request: 1

    def __post_init__(self) -> None:
        if not self.operation_id:
            object.__setattr__(self, "operation_id", self.handler.__name__)


TASK_LIST_DESCRIPTION = (
    "A page in the order of `sort`, then by id; pass `next_cursor` back as `cursor` for the "
    "next one. A page by creation time, due time or priority is read from an index; a "
    f"search (`q`), `sort=title` or a `tag` filter may read every task of yours and counts "
    f"as {SCAN_READS} reads against the per-minute read limit (429 with Retry-After)."
)

ACTIVITY_DESCRIPTION = (
    "Each change to your tasks, in the order it happened, as the task events record it "
    "(`type` is the CloudEvent type; a deletion is a tombstone, `deleted: true`). Start "
    "without `since`, then pass each answer's `since` back; while `more` is true, ask "
    "again at once. Entries are kept DUETIDE_ACTIVITY_RETENTION_DAYS (30 by default): an "
    "older `since` is a 410, after which read `GET /tasks` again and restart the feed. "
    "The log is written by the activity function from the event stream, so a change "
    "shows here shortly after its answer, not in it."
)


ACTIVITY_WAIT_DESCRIPTION = (
    " With `wait` (seconds, at most 25) an answer that would have no items waits until an "
    "entry is logged or the time is up, then answers as without it (the long-poll, for "
    "clients that cannot stream); a server with too many waiters answers 503 with "
    "Retry-After."
)
ACTIVITY_STREAM_DESCRIPTION = (
    "`text/event-stream`: each entry of the feed as an event whose `id` is a `since` "
    "token resuming right after it, `event` the CloudEvent type and `data` the feed's "
    "item. A comment line is sent every 15 s; the stream ends after "
    "DUETIDE_ACTIVITY_STREAM_LIFETIME_S (5 minutes by default) and EventSource reconnects "
    "after `retry:` with `Last-Event-ID`, missing nothing. The bearer token may be given "
    "as `access_token` in the query (EventSource cannot set headers; it is never logged). "
    "A server with too many streams answers 503 with Retry-After."
)
SUBSCRIPTIONS_DESCRIPTION = (
    "Each task event of yours (or of `types`) is POSTed to `url` as a binary-mode "
    "CloudEvent: `ce-id`, `ce-type`, `ce-source`, `ce-subject` (the task id), `ce-time` "
    "headers and the event's data as the JSON body. `Idempotency-Key` is the delivery id, "
    "the same on every try of one delivery: deduplicate on it. `Duetide-Signature` is "
    "`t=<unix seconds>,v1=<hex>`, HMAC-SHA256 with `secret` (shown once, in this answer) "
    "over `<t>.<ce-id>.<ce-type>.` followed by the raw body; refuse a `t` older than 5 "
    "minutes. Before the first delivery the URL must echo a `url_verification` challenge "
    "(as for the preferences' webhook); until then the subscription is `unverified` and "
    "events are not kept for it. A try that gets a 2xx is delivered; a timeout, 429 or 5xx "
    "is retried with backoff (by default 30 s, then 4 times longer each time, up to 6 h; 8 "
    "tries); any other answer fails the delivery. A subscription whose tries have all failed "
    "for a day (and at least 8 in a row, by default) is disabled; `PATCH` it with `active: "
    "true` to enable "
    "it, then read what it missed from `GET /activity`. Deliveries are not ordered: use "
    "`ce-time`, or the delta feed, to order them. This request's own `Idempotency-Key` "
    "makes a create sent again answer with the subscription the first one made, as it is "
    "now and without `secret` (404 if it was deleted since): if the first answer was "
    "lost, rotate the secret (`POST /subscriptions/{id}/secret`)."
)


def openapi_document(request: Request, user: str) -> Response:
    return json_response(openapi.document())


def asyncapi_document(request: Request, user: str) -> Response:
    from duetide.web import asyncapi  # built on first use: start-up does not pay for it

    return json_response(asyncapi.document(asyncapi.addresses(get_settings())))


def docs_page(request: Request, user: str) -> Response:
    return docs.page()


def docs_asset(request: Request, user: str, version: str, name: str) -> Response:
    return docs.asset(version, name, gzip_accepted=request.accept_encodings.quality("gzip") > 0)


def root(request: Request, user: str) -> Response:
    """The API's address in a browser: its documentation page."""
    return Response(status=302, headers={"Location": "/docs"})


def command_intake(request: Request, user: str) -> Response:
    return commands.handle(request)


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET", "/healthz", health, "Liveness and readiness", responses={200: Health}, auth="public"
    ),
    Endpoint(
        "GET",
        "/openapi.json",
        openapi_document,
        "This document",
        responses={200: None},
        auth="public",
        operation_id="openapi",
    ),
    Endpoint(
        "GET",
        "/asyncapi.json",
        asyncapi_document,
        "The event catalog: an AsyncAPI 3.0 document of the Kafka topics and every "
        "CloudEvent type with the JSON Schema of its data",
        responses={200: None},
        auth="public",
        operation_id="asyncapi",
        produces="application/json",
    ),
    Endpoint(
        "GET",
        "/docs",
        docs_page,
        'This document as a page (Swagger UI); its "Try it out" uses the bearer token '
        'given under "Authorize"',
        responses={200: None},
        auth="public",
        produces="text/html",
    ),
    Endpoint(
        "GET",
        "/docs/assets/<version>/<name>",
        docs_asset,
        "A file of the documentation page (cached: the version is in the path)",
        responses={200: None, 404: ErrorBody},
        auth="public",
    ),
    Endpoint("GET", "/", root, "Redirects to /docs", responses={302: None}, auth="public"),
    Endpoint(
        "GET",
        "/tasks",
        list_tasks,
        "List, filter and sort tasks",
        query=TaskQuery,
        responses={200: TaskPage},
        description=TASK_LIST_DESCRIPTION,
        reads=lambda request: tasks.reads_of(request.args),
    ),
    Endpoint(
        "POST",
        "/tasks",
        create_task,
        "Create a task, maybe recurring",
        body=TaskCreate,
        responses={201: TaskOut},
        etag=True,
        headers=(openapi.IDEMPOTENCY_KEY,),
    ),
    Endpoint(
        "GET",
        "/tasks/<task_id>",
        get_task,
        "Read a task",
        responses={200: TaskOut},
        headers=(openapi.IF_NONE_MATCH,),
        etag=True,
    ),
    Endpoint(
        "PATCH",
        "/tasks/<task_id>",
        update_task,
        "Change a task",
        body=TaskUpdate,
        responses={200: TaskOut},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "DELETE",
        "/tasks/<task_id>",
        delete_task,
        "Delete a task; deleting the open occurrence of a series skips it",
        responses={200: OccurrenceDeleted, 204: None, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
    ),
    Endpoint(
        "POST",
        "/tasks/<task_id>/complete",
        complete_task,
        "Complete a task (idempotent)",
        responses={200: TaskOut},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "POST",
        "/tasks/<task_id>/reopen",
        reopen_task,
        "Reopen a task",
        responses={200: TaskOut, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "POST",
        "/tasks/<task_id>/reminders",
        add_reminder,
        "Add a reminder to a task",
        body=ReminderIn,
        responses={201: ReminderOut},
        headers=(openapi.IDEMPOTENCY_KEY,),
    ),
    Endpoint(
        "GET",
        "/tasks/<task_id>/activity",
        task_activity,
        "One task's history, oldest first (a delta feed like GET /activity)",
        query=ActivityQuery,
        responses={200: ActivityPage, 400: ErrorBody, 404: ErrorBody, 410: ErrorBody},
    ),
    Endpoint(
        "GET",
        "/activity",
        list_activity,
        "What changed in your tasks since `since`: the delta feed",
        query=ActivityFeedQuery,
        responses={200: ActivityPage, 400: ErrorBody, 410: ErrorBody, 503: ErrorBody},
        description=ACTIVITY_DESCRIPTION + ACTIVITY_WAIT_DESCRIPTION,
    ),
    Endpoint(
        "GET",
        "/activity/stream",
        activity_stream,
        "The delta feed as it happens: server-sent events",
        query=ActivityStreamQuery,
        responses={200: None, 400: ErrorBody, 410: ErrorBody, 503: ErrorBody},
        auth="in_handler",
        produces="text/event-stream",
        headers=(
            openapi.Header(
                "Last-Event-ID",
                "The `id` of the last event received: the stream resumes right after it "
                "(wins over `since`). EventSource sends it when it reconnects.",
                "WyJhMSIsNDIsMTcwMDAwMDAwMF0",
            ),
        ),
        description=ACTIVITY_STREAM_DESCRIPTION,
    ),
    Endpoint(
        "GET",
        "/series",
        list_series,
        "List series",
        query=KeysetPageQuery,
        responses={200: SeriesPage},
    ),
    Endpoint(
        "GET",
        "/series/<series_id>",
        get_series,
        "Read a series",
        responses={200: SeriesOut},
        headers=(openapi.IF_NONE_MATCH,),
        etag=True,
    ),
    Endpoint(
        "PATCH",
        "/series/<series_id>",
        update_series,
        "Change a series from the next occurrence on",
        body=SeriesUpdate,
        responses={200: SeriesOut, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "DELETE",
        "/series/<series_id>",
        end_series,
        "End a series, keeping its history",
        responses={204: None},
        headers=(openapi.IF_MATCH,),
    ),
    Endpoint(
        "GET",
        "/series/<series_id>/occurrences",
        forecast,
        "The next occurrences of a series",
        query=ForecastQuery,
        responses={200: Forecast},
        reads=lambda request: ratelimit.forecast_reads(request.args.get("count")),
    ),
    Endpoint(
        "GET",
        "/series/<series_id>/history",
        series_history,
        "A series' occurrences so far, oldest first, a page at a time",
        query=KeysetPageQuery,
        responses={200: History},
    ),
    Endpoint(
        "POST",
        "/series/<series_id>/pause",
        pause_series,
        "Pause a series",
        responses={200: SeriesOut, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "POST",
        "/series/<series_id>/resume",
        resume_series,
        "Resume a series",
        responses={200: SeriesOut, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "POST",
        "/series/<series_id>/skip",
        skip_series,
        "Skip the open occurrence",
        responses={200: SeriesOut, 409: ErrorBody},
        headers=(openapi.IF_MATCH,),
        etag=True,
    ),
    Endpoint(
        "GET",
        "/notifications",
        notifications,
        "Delivered notifications, newest first",
        query=KeysetPageQuery,
        responses={200: NotificationPage},
    ),
    Endpoint(
        "GET",
        "/preferences",
        get_preferences,
        "Reminder preferences",
        responses={200: PreferencesOut},
    ),
    Endpoint(
        "PATCH",
        "/preferences",
        update_preferences,
        "Change reminder preferences; a new e-mail address gets a confirmation mail, "
        "a new webhook URL a url_verification challenge",
        body=PreferencesUpdate,
        responses={200: PreferencesOut},
    ),
    Endpoint(
        "POST",
        "/preferences/email/verify",
        verify_email,
        "Confirm the e-mail address with the code from the confirmation mail",
        body=EmailCodeIn,
        responses={200: PreferencesOut, 409: ErrorBody},
    ),
    Endpoint(
        "POST",
        "/preferences/email/resend",
        resend_email,
        "Send a new confirmation code to the unverified e-mail address",
        responses={200: PreferencesOut, 409: ErrorBody, 503: ErrorBody},
    ),
    Endpoint(
        "POST",
        "/preferences/webhook/verify",
        verify_webhook,
        "Send the webhook URL a new url_verification challenge; 422 if it is not echoed",
        responses={200: PreferencesOut, 409: ErrorBody},
    ),
    Endpoint(
        "POST",
        "/subscriptions",
        create_subscription,
        "Subscribe a webhook to your task events: signed binary-mode CloudEvents",
        body=SubscriptionIn,
        responses={201: SubscriptionOut, 409: ErrorBody, 429: ErrorBody},
        description=SUBSCRIPTIONS_DESCRIPTION,
        headers=(openapi.IDEMPOTENCY_KEY,),
    ),
    Endpoint(
        "GET",
        "/subscriptions",
        list_subscriptions,
        "Your webhook subscriptions",
        responses={200: SubscriptionPage},
    ),
    Endpoint(
        "GET",
        "/subscriptions/<subscription_id>",
        get_subscription,
        "Read a webhook subscription",
        responses={200: SubscriptionOut},
    ),
    Endpoint(
        "PATCH",
        "/subscriptions/<subscription_id>",
        update_subscription,
        "Change a subscription; `active: true` enables it again after a failure",
        body=SubscriptionUpdate,
        responses={200: SubscriptionOut, 429: ErrorBody},
    ),
    Endpoint(
        "DELETE",
        "/subscriptions/<subscription_id>",
        delete_subscription,
        "Remove a subscription and its delivery log",
        responses={204: None},
    ),
    Endpoint(
        "POST",
        "/subscriptions/<subscription_id>/verify",
        verify_subscription,
        "Send the URL a new url_verification challenge; 422 if it is not echoed",
        responses={200: SubscriptionOut, 409: ErrorBody, 429: ErrorBody},
    ),
    Endpoint(
        "POST",
        "/subscriptions/<subscription_id>/secret",
        rotate_subscription_secret,
        "Rotate the signing secret: the new one is in this answer only; for 24 hours "
        "each delivery is signed by the old one too",
        responses={200: SubscriptionOut},
    ),
    Endpoint(
        "GET",
        "/subscriptions/<subscription_id>/deliveries",
        subscription_deliveries,
        "The delivery log: each event sent, its tries and the receiver's status codes",
        query=KeysetPageQuery,
        responses={200: DeliveryPage},
    ),
    Endpoint(
        "POST",
        "/subscriptions/<subscription_id>/deliveries/<delivery_id>/redeliver",
        redeliver,
        "Send a delivered or failed delivery again, with the same delivery id",
        responses={202: DeliveryOut, 409: ErrorBody},
    ),
    Endpoint(
        "GET",
        "/reminders/upcoming",
        upcoming_reminders,
        "Pending reminders, soonest first",
        query=KeysetPageQuery,
        responses={200: UpcomingPage},
    ),
    Endpoint(
        "GET",
        "/reminders/<reminder_id>",
        get_reminder,
        "Read a reminder",
        responses={200: ReminderOut},
    ),
    Endpoint(
        "POST",
        "/reminders/<reminder_id>/snooze",
        snooze_reminder,
        "Snooze a reminder",
        body=SnoozeIn,
        responses={200: ReminderOut},
        description="It fires next `for` a duration from now or `until` a time, whether it "
        "has fired or not: on a pending reminder that can be earlier than planned.",
    ),
    Endpoint(
        "POST",
        "/reminders/<reminder_id>/dismiss",
        dismiss_reminder,
        "Dismiss a reminder",
        responses={200: ReminderOut},
    ),
    Endpoint(
        "GET",
        "/calendar.ics",
        calendar,
        "Open tasks and series as an iCalendar (VTODOs), for calendar apps",
        responses={200: None, 304: None},
        produces="text/calendar",
        reads=lambda _request: ratelimit.EXPORT_READS,
    ),
    Endpoint(
        "POST",
        "/calendar/feed-token",
        create_feed_token,
        "Make a calendar feed URL, replacing the one before; shown only here",
        responses={201: CalendarFeedOut},
    ),
    Endpoint(
        "DELETE",
        "/calendar/feed-token",
        revoke_feed_token,
        "Revoke the calendar feed URL",
        responses={204: None},
    ),
    Endpoint(
        "GET",
        "/calendar/<feed_token>.ics",
        calendar_feed_ics,
        "The calendar of the feed URL's user, without a header: the URL is the secret",
        responses={200: None, 304: None, 404: ErrorBody, 429: ErrorBody},
        auth="public",
        produces="text/calendar",
        operation_id="calendar_feed",
    ),
    Endpoint(
        "POST",
        "/commands",
        command_intake,
        "Command intake: a task.create/complete CloudEvent",
        body=CommandEvent,
        responses={200: CommandResult, 201: CommandResult, 403: ErrorBody},
        auth="in_handler",
        media_type=STRUCTURED,
        operation_id="commands",
        description=openapi.COMMANDS_DESCRIPTION,
        other_bodies={"application/json": CommandData},
        headers=openapi.BINARY_MODE_HEADERS,
    ),
)
"""Every operation of the API, declared once: the router below and the OpenAPI document
(`openapi.document`) are built from this table."""

BY_OPERATION = {e.operation_id: e for e in ENDPOINTS}
ROUTES = Map(
    [Rule(e.path, methods=[e.method], endpoint=e.operation_id) for e in ENDPOINTS],
    strict_slashes=False,
    merge_slashes=False,  # merging answers with a redirect, which would surface as a 500
)


def warm_up() -> None:
    """At start-up, import what every request needs and the other functions import
    lazily: the database driver and the token library. Otherwise the first requests of
    a new pod paid about 0.25 s for them, all at once, and a pod is ready (`/healthz`)
    before they come (`bench/results/api_mix.md`). And the HS256 secret, which a home
    that cannot keep one would otherwise refuse at the first authenticated request."""
    db.import_driver()
    auth.import_verifier()
    settings = get_settings()
    if settings.duetide_auth == "hs256":
        settings.jwt_secret()  # made now if need be: where it cannot be, the start stops


READS = frozenset({"GET", "HEAD"})  # werkzeug routes HEAD wherever GET goes


@guarded
def handle(request: Request) -> Response:
    """Route a request; every route but the "public" ones (/healthz and the documents
    and pages describing the API) needs a bearer token."""
    adapter = ROUTES.bind("duetide", path_info=request.path)
    try:
        if "\x00" in request.path:  # no id has one, and PostgreSQL could not compare it
            raise RouteNotFound()
        endpoint, args = adapter.match(request.path, method=request.method)
    except RouteNotFound:
        raise NotFound(f"no route {loggable_path(request.path)!r}") from None
    except RouteMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.valid_methods or []))
        raise MethodNotAllowed(
            f"{request.method} is not allowed here", headers={"Allow": allowed}
        ) from None
    operation = BY_OPERATION[endpoint]
    if operation.auth != "bearer":
        return operation.handler(request, "", **args)
    user = auth.authenticate(request)
    if request.method not in READS:
        if not _replay(request, operation, user):
            ratelimit.charge_write(user)
        return operation.handler(request, user, **args)
    reads = operation.reads(request)
    if reads == 1:
        ratelimit.charge_read(user)
        answer = operation.handler(request, user, **args)
    else:  # a search, an export, a long forecast: its place first, refused without a charge
        with ratelimit.costly_reads().held(user):
            ratelimit.charge_read(user, reads)
            answer = operation.handler(request, user, **args)
    if answer.content_length:  # a stream's is not known: it charges as it goes
        ratelimit.charge_size(user, answer.content_length)
    return answer


def _replay(request: Request, operation: Endpoint, user: str) -> bool:
    """Whether the request is one sent again with an `Idempotency-Key` that already has
    its answer (`idempotency.answered`): no new write, so no charge. A copy sent while
    the first still runs is charged, as any write attempt is."""
    key = request.headers.get(idempotency.HEADER)
    if key is None or openapi.IDEMPOTENCY_KEY not in operation.headers:
        return False
    if not _KEY_SYNTAX.fullmatch(key):
        return False  # the handler says what is wrong with it (400)
    with db.session_scope(read_only=True) as session:
        return idempotency.answered(session.connection(), user, key, utcnow())
