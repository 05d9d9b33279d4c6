"""The tasks function's HTTP API: routing and request decoding over tasks.py and series.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Request, Response
from sqlmodel import Session, col, select
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import Map, Rule

from duetide.channels import verification
from duetide.config import get_settings
from duetide.errors import BadRequest, MethodNotAllowed, NotFound, Unavailable, ValidationFailed
from duetide.services import preferences, ratelimit, reminder_actions, series, tasks
from duetide.services.schemas import (
    EmailCodeIn,
    ForecastQuery,
    PageQuery,
    PreferencesUpdate,
    ReminderIn,
    SeriesUpdate,
    SnoozeIn,
    TaskCreate,
    TaskQuery,
    TaskUpdate,
    notification_out,
    reminder_out,
)
from duetide.storage import db, outbox
from duetide.storage.models import Notification, utcnow
from duetide.web import auth, commands, openapi
from duetide.web.http import guarded, json_response, parse_model, read_json, reject_unstorable

ROUTES = Map(
    [
        Rule("/healthz", methods=["GET"], endpoint="health"),
        Rule("/openapi.json", methods=["GET"], endpoint="openapi"),
        Rule("/tasks", methods=["GET"], endpoint="list_tasks"),
        Rule("/tasks", methods=["POST"], endpoint="create_task"),
        Rule("/tasks/<task_id>", methods=["GET"], endpoint="get_task"),
        Rule("/tasks/<task_id>", methods=["PATCH"], endpoint="update_task"),
        Rule("/tasks/<task_id>", methods=["DELETE"], endpoint="delete_task"),
        Rule("/tasks/<task_id>/complete", methods=["POST"], endpoint="complete_task"),
        Rule("/tasks/<task_id>/reopen", methods=["POST"], endpoint="reopen_task"),
        Rule("/tasks/<task_id>/reminders", methods=["POST"], endpoint="add_reminder"),
        Rule("/series", methods=["GET"], endpoint="list_series"),
        Rule("/series/<series_id>", methods=["GET"], endpoint="get_series"),
        Rule("/series/<series_id>", methods=["PATCH"], endpoint="update_series"),
        Rule("/series/<series_id>", methods=["DELETE"], endpoint="end_series"),
        Rule("/series/<series_id>/occurrences", methods=["GET"], endpoint="forecast"),
        Rule("/series/<series_id>/history", methods=["GET"], endpoint="series_history"),
        Rule("/series/<series_id>/pause", methods=["POST"], endpoint="pause_series"),
        Rule("/series/<series_id>/resume", methods=["POST"], endpoint="resume_series"),
        Rule("/series/<series_id>/skip", methods=["POST"], endpoint="skip_series"),
        Rule("/notifications", methods=["GET"], endpoint="notifications"),
        Rule("/preferences", methods=["GET"], endpoint="get_preferences"),
        Rule("/preferences", methods=["PATCH"], endpoint="update_preferences"),
        Rule("/preferences/email/verify", methods=["POST"], endpoint="verify_email"),
        Rule("/preferences/email/resend", methods=["POST"], endpoint="resend_email"),
        Rule("/preferences/webhook/verify", methods=["POST"], endpoint="verify_webhook"),
        Rule("/reminders/upcoming", methods=["GET"], endpoint="upcoming_reminders"),
        Rule("/reminders/<reminder_id>/snooze", methods=["POST"], endpoint="snooze_reminder"),
        Rule("/reminders/<reminder_id>/dismiss", methods=["POST"], endpoint="dismiss_reminder"),
        Rule("/commands", methods=["POST"], endpoint="commands"),
    ],
    strict_slashes=False,
)


def _query(request: Request) -> dict[str, Any]:
    query = {k: v for k, v in request.args.items()}
    reject_unstorable(query)
    return query


def _body(request: Request) -> Any:
    return read_json(request, get_settings().duetide_max_body_bytes)


def _write(work: Callable[[Session], tuple[Any, list[str]]], status: int = 200) -> Response:
    """Run a state change in one transaction, answer after the commit, then publish.

    On SQLite the transaction takes the write lock at BEGIN: the counterpart of the
    row locks the changes take on PostgreSQL (`series.lock`), and no BUSY error for a
    transaction that read before another writer committed.
    """
    with db.session_scope() as session:
        body, event_ids = work(session)
    outbox.publish_after_commit(event_ids)
    return json_response(body, status)


def health(request: Request, user: str) -> Response:
    return json_response({"status": "ok"})


def list_tasks(request: Request, user: str) -> Response:
    query = parse_model(TaskQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        return json_response(tasks.list_tasks(session, user, query))


def create_task(request: Request, user: str) -> Response:
    spec = parse_model(TaskCreate, _body(request))

    def work(session: Session) -> tuple[Any, list[str]]:
        task, ids = tasks.create(session, user, spec)
        return tasks.show(session, task), ids

    return _write(work, 201)


def get_task(request: Request, user: str, task_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        return json_response(tasks.show(session, tasks.get_owned(session, user, task_id)))


def _task_change(change: Callable[[Session], tuple[Any, list[str]]]) -> Response:
    def work(session: Session) -> tuple[Any, list[str]]:
        task, ids = change(session)
        return tasks.show(session, task), ids

    return _write(work)


def update_task(request: Request, user: str, task_id: str) -> Response:
    spec = parse_model(TaskUpdate, _body(request))
    return _task_change(lambda s: tasks.update(s, user, task_id, spec))


def complete_task(request: Request, user: str, task_id: str) -> Response:
    return _task_change(lambda s: tasks.complete(s, user, task_id))


def reopen_task(request: Request, user: str, task_id: str) -> Response:
    return _task_change(lambda s: tasks.reopen(s, user, task_id))


def delete_task(request: Request, user: str, task_id: str) -> Response:
    """204 for a one-off task; for an occurrence of a series, 200 and what happened to
    the series (deleting the open occurrence skips it, see `series.delete_occurrence`)."""
    with db.session_scope() as session:
        deleted = tasks.delete(session, user, task_id)
        body = _deletion_out(session, task_id, deleted)
    outbox.publish_after_commit(deleted.event_ids)
    return json_response(None, 204) if body is None else json_response(body)


def _deletion_out(session: Session, task_id: str, deleted: series.Deletion) -> Any:
    if deleted.series is None:
        return None
    following = deleted.open_occurrence
    return {
        "deleted": task_id,
        "outcome": "skipped" if deleted.skipped else "deleted",
        "series": series.series_out(deleted.series),
        "open_occurrence": tasks.show(session, following) if following is not None else None,
    }


def add_reminder(request: Request, user: str, task_id: str) -> Response:
    spec = parse_model(ReminderIn, _body(request))
    with db.session_scope() as session:
        _, reminder = tasks.add_reminder(session, user, task_id, spec)
        return json_response(reminder_out(reminder), 201)


def list_series(request: Request, user: str) -> Response:
    query = parse_model(PageQuery, _query(request))
    offset = _offset_cursor(query.cursor)
    with db.session_scope(read_only=True) as session:
        rows = series.list_series(session, user, offset, query.limit + 1)
        return _offset_page(rows, offset, query.limit, series.series_out)


def get_series(request: Request, user: str, series_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        return json_response(series.series_out(series.get_owned(session, user, series_id)))


def update_series(request: Request, user: str, series_id: str) -> Response:
    spec = parse_model(SeriesUpdate, _body(request))
    with db.session_scope() as session:
        return json_response(series.series_out(series.update(session, user, series_id, spec)))


def _series_change(change: Callable[[Session], tuple[Any, list[str]]]) -> Response:
    def work(session: Session) -> tuple[Any, list[str]]:
        changed, ids = change(session)
        return series.series_out(changed), ids

    return _write(work)


def pause_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(lambda s: (series.pause(s, user, series_id), []))


def resume_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(lambda s: series.resume(s, user, series_id, utcnow()))


def skip_series(request: Request, user: str, series_id: str) -> Response:
    return _series_change(lambda s: series.skip(s, user, series_id, utcnow()))


def end_series(request: Request, user: str, series_id: str) -> Response:
    with db.session_scope() as session:
        series.end(session, user, series_id)
    return json_response(None, 204)


def series_history(request: Request, user: str, series_id: str) -> Response:
    with db.session_scope(read_only=True) as session:
        return json_response({"items": series.history(session, user, series_id)})


def forecast(request: Request, user: str, series_id: str) -> Response:
    query = parse_model(ForecastQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        found = series.get_owned(session, user, series_id)
        return json_response(series.forecast(found, query.count))


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
        message = f"the mail relay refused the address ({result.error})"
        raise ValidationFailed(message, details=[{"field": "email", "message": message}])
    return _preferences(user)


def verify_webhook(request: Request, user: str) -> Response:
    with db.session_scope() as session:
        _, challenge = preferences.challenge_webhook(session, user, utcnow())
    result = None if challenge is None else verification.send(challenge)
    if result is not None and not result.ok:
        message = f"the webhook did not echo the url_verification challenge: {result.error}"
        raise ValidationFailed(message, details=[{"field": "webhook_url", "message": message}])
    return _preferences(user)


def upcoming_reminders(request: Request, user: str) -> Response:
    query = parse_model(PageQuery, _query(request))
    with db.session_scope(read_only=True) as session:
        return json_response({"items": reminder_actions.upcoming(session, user, query.limit)})


def snooze_reminder(request: Request, user: str, reminder_id: str) -> Response:
    spec = parse_model(SnoozeIn, _body(request))
    with db.session_scope() as session:
        reminder = reminder_actions.snooze(session, user, reminder_id, spec, utcnow())
        return json_response(reminder_out(reminder))


def dismiss_reminder(request: Request, user: str, reminder_id: str) -> Response:
    with db.session_scope() as session:
        return json_response(reminder_out(reminder_actions.dismiss(session, user, reminder_id)))


def notifications(request: Request, user: str) -> Response:
    query = parse_model(PageQuery, _query(request))
    offset = _offset_cursor(query.cursor)
    with db.session_scope(read_only=True) as session:
        rows = session.exec(
            select(Notification)
            .where(Notification.owner == user)
            .order_by(col(Notification.delivered_at).desc(), col(Notification.id).desc())
            .offset(offset)
            .limit(query.limit + 1)
        ).all()
        return _offset_page(list(rows), offset, query.limit, notification_out)


def _offset_page(
    rows: list[Any], offset: int, limit: int, render: Callable[[Any], Any]
) -> Response:
    """A page of `limit` rendered rows; `rows` holds one more if another page follows."""
    more = len(rows) > limit
    return json_response(
        {
            "items": [render(row) for row in rows[:limit]],
            "next_cursor": str(offset + limit) if more else None,
        }
    )


def _offset_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > 9:  # not "²"
        raise BadRequest("invalid cursor: pass back `next_cursor`")
    return int(cursor)


ENDPOINTS: dict[str, Callable[..., Response]] = {
    name: globals()[name]
    for name in (
        "health",
        "list_tasks",
        "create_task",
        "get_task",
        "update_task",
        "delete_task",
        "complete_task",
        "reopen_task",
        "add_reminder",
        "list_series",
        "get_series",
        "update_series",
        "end_series",
        "series_history",
        "pause_series",
        "resume_series",
        "skip_series",
        "forecast",
        "notifications",
        "get_preferences",
        "update_preferences",
        "verify_email",
        "resend_email",
        "verify_webhook",
        "upcoming_reminders",
        "snooze_reminder",
        "dismiss_reminder",
    )
}


@guarded
def handle(request: Request) -> Response:
    """Route a request; every route but /healthz needs a bearer token."""
    adapter = ROUTES.bind("duetide", path_info=request.path)
    try:
        if "\x00" in request.path:  # no id has one, and PostgreSQL could not compare it
            raise RouteNotFound()
        endpoint, args = adapter.match(request.path, method=request.method)
    except RouteNotFound:
        raise NotFound(f"no route {request.path!r}") from None
    except RouteMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.valid_methods or []))
        raise MethodNotAllowed(
            f"{request.method} is not allowed here", headers={"Allow": allowed}
        ) from None
    if endpoint == "health":
        return health(request, "")
    if endpoint == "openapi":
        return json_response(openapi.document())
    if endpoint == "commands":
        return commands.handle(request)
    user = auth.authenticate(request)
    if request.method != "GET":
        ratelimit.charge_write(user)
    return ENDPOINTS[endpoint](request, user, **args)
