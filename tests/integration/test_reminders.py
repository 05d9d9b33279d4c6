"""Reminders as a guarantee: preferences, quiet hours, snooze, channels, concurrent sweeps."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import insert
from sqlmodel import col, select, update

from duetide import events
from duetide.channels import webhook
from duetide.services import reminder_actions, sweep
from duetide.storage import db
from duetide.storage.models import Notification, Outbox, Preference, Reminder, Task, utcnow
from duetide_tools.local.broker import free_loopback_port
from tests.integration.conftest import _reset_caches, function_client
from tests.integration.test_event_functions import post

T0 = datetime.fromisoformat("2026-11-23T12:00:00+00:00")


def reminder_states() -> dict[str, str]:
    with db.session_scope() as session:
        return {r.task_id: r.state for r in session.exec(select(Reminder)).all()}


def due_events() -> list[dict[str, Any]]:
    with db.session_scope() as session:
        rows = session.exec(select(Outbox).where(Outbox.type == events.REMINDER_DUE)).all()
        return [row.data for row in rows]


def make_task(client, headers, **body: Any) -> dict[str, Any]:
    response = client.post("/tasks", json={"title": "t", **body}, headers=headers)
    assert response.status_code == 201, response.json
    return response.json


def test_preferences_defaults_update_and_validation(client, alice):
    shown = client.get("/preferences", headers=alice).json
    assert shown["channels"] == ["log"] and shown["timezone"] == "UTC"
    assert shown["quiet_hours"] is None and shown["grace"] == "PT1H"
    changed = client.patch(
        "/preferences",
        json={"timezone": "Europe/Berlin", "default_reminders": ["PT15M", "P1D"],
              "quiet_hours": {"start": "22:00", "end": "07:00"}, "grace": "PT10M"},
        headers=alice,
    )  # fmt: skip
    assert changed.status_code == 200, changed.json
    assert changed.json["default_reminders"] == ["PT15M", "P1D"]
    assert changed.json["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    for bad in (
        {"timezone": "Nowhere/City"},
        {"timezone": "localtime"},  # the host's own zone, no IANA name
        {"quiet_hours": {"start": "25:00", "end": "07:00"}},
        {"channels": ["pigeon"]},
        {"channels": ["webhook"]},  # no webhook_url
        {"webhook_url": "http://169.254.169.254/latest/meta-data"},
        {"webhook_url": "http://127.0.0.1:9/hook"},
        {"email": "a@b.c\r\nBcc: x@y.z"},
    ):
        response = client.patch("/preferences", json=bad, headers=alice)
        assert response.status_code == 422, (bad, response.json)
    assert client.get("/preferences", headers=alice).json == changed.json
    # Equal times are no quiet hours (README), shown as null: they came back as set.
    same = {"quiet_hours": {"start": "22:00", "end": "22:00"}}
    assert client.patch("/preferences", json=same, headers=alice).json["quiet_hours"] is None
    assert client.get("/preferences", headers=alice).json["quiet_hours"] is None


def test_default_reminders_apply_only_when_none_are_given(client, alice):
    client.patch("/preferences", json={"default_reminders": ["PT15M"]}, headers=alice)
    with_default = make_task(client, alice, due_at="2030-01-01T09:00:00Z")
    assert [r["before_due"] for r in with_default["reminders"]] == ["PT15M"]
    explicit_none = make_task(client, alice, due_at="2030-01-01T09:00:00Z", reminders=[])
    assert explicit_none["reminders"] == []
    no_due = make_task(client, alice)
    assert no_due["reminders"] == []


def test_quiet_hours_defer_to_their_end_in_the_users_zone(client, alice, env):
    client.patch(
        "/preferences",
        json={"timezone": "Europe/Berlin", "quiet_hours": {"start": "22:00", "end": "07:00"}},
        headers=alice,
    )
    # 23:30 Berlin (22:30 UTC) is inside the window: deferred to 07:00 Berlin = 06:00 UTC.
    task = make_task(client, alice, reminders=[{"at": "2026-11-23T22:30:00Z"}])
    sweep.claim_due(datetime.fromisoformat("2026-11-23T22:31:00+00:00"), 100)
    (reminder,) = client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"]
    assert reminder["state"] == "pending"
    assert reminder["fire_at"] == "2026-11-24T06:00:00+00:00"
    assert due_events() == []
    sweep.claim_due(datetime.fromisoformat("2026-11-24T06:00:01+00:00"), 100)
    assert reminder_states() == {task["id"]: "fired"}
    assert [e["scheduled_at"] for e in due_events()] == ["2026-11-24T06:00:00Z"]


def test_snooze_rearms_and_dismiss_silences(client, alice, env):
    task = make_task(client, alice, reminders=[{"at": "2026-11-23T11:59:00Z"}])
    reminder_id = task["reminders"][0]["id"]
    sweep.claim_due(T0, 100)
    snoozed = client.post(f"/reminders/{reminder_id}/snooze", json={"for": "PT10M"}, headers=alice)
    assert snoozed.status_code == 200
    assert snoozed.json["state"] == "pending"
    upcoming = client.get("/reminders/upcoming", headers=alice).json["items"]
    assert [u["id"] for u in upcoming] == [reminder_id]
    refusals = [
        ({"for": "-PT1M"}, "for"),
        ({"for": "P31D"}, "for"),
        ({"until": "2020-01-01T00:00:00Z"}, "until"),
        ({"for_": "PT10M"}, "for_"),  # the document names `for` alone
        ({"for": "PT0.5S"}, "for"),  # stored in whole seconds: it was PT0S
        ({"for": "PT1M", "until": "2030-01-01T00:00:00Z"}, None),
        ({}, None),
    ]  # fmt: skip
    for bad, field in refusals:
        response = client.post(f"/reminders/{reminder_id}/snooze", json=bad, headers=alice)
        assert response.status_code == 422, bad
        (detail,) = response.json["error"]["details"]  # which field, as for any 422
        assert detail["message"] and (field is None or detail["field"] == field), (bad, detail)
    client.post(f"/reminders/{reminder_id}/dismiss", headers=alice)
    assert client.get("/reminders/upcoming", headers=alice).json["items"] == []
    sweep.claim_due(utcnow() + timedelta(hours=1), 100)
    assert reminder_states() == {task["id"]: "dismissed"}


def test_upcoming_reminders_page_past_the_first_page_and_dismissals_shift_nothing(client, alice):
    """`/reminders/upcoming` took `cursor` and gave the first `limit` reminders whatever
    it said, and no `next_cursor`: a user with more pending reminders than a page could
    not see the rest. Two share a time, so the page boundary falls inside a tie."""
    times = [f"2030-01-0{day}T09:00:00Z" for day in (5, 1, 3, 3, 4, 6)]  # pages: .. 3 | 3 ..
    ids = [make_task(client, alice, reminders=[{"at": at}])["reminders"][0]["id"] for at in times]
    expected = [i for _, i in sorted(zip(times, ids, strict=True))]
    make_task(client, alice, reminders=[{"at": "2030-01-01T08:00:00Z"}])  # first, dismissed

    seen, cursor, first_page = [], None, True
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/reminders/upcoming?{query}", headers=alice)
        assert page.status_code == 200, page.json
        seen += [item["id"] for item in page.json["items"]]
        if first_page:  # a reminder of the page already read goes: nothing moves up
            assert client.post(f"/reminders/{seen[0]}/dismiss", headers=alice).status_code == 200
            first_page = False
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)) == len(ids) + 1
    assert [i for i in seen if i in set(ids)] == expected
    bad = client.get("/reminders/upcoming?cursor=bm90LWEtY3Vyc29y", headers=alice)
    assert bad.status_code == 400 and bad.json["error"]["code"] == "bad_request"


def test_upcoming_reminders_read_a_bounded_window_a_page_and_page_past_done_tasks(
    client, alice, monkeypatch
):
    """A done task's reminders stay pending until their time: a page read past all of
    them to find open tasks' (1 s for 200,000, an audit, 2026-12-07). A page now reads a
    window of them (3 here); one that held too few gives a short page whose cursor goes
    on after it, and following the cursors shows each open task's reminder once, in order."""
    monkeypatch.setattr(reminder_actions, "UPCOMING_SCAN", 3)
    opened = []
    for day in range(1, 10):
        task = make_task(client, alice, reminders=[{"at": f"2030-01-0{day}T09:00:00Z"}])
        if day in (1, 2, 3, 4, 5, 7):  # done: their reminders pending, not upcoming
            assert client.post(f"/tasks/{task['id']}/complete", headers=alice).status_code == 200
        else:
            opened.append(task["reminders"][0]["id"])
    pages, cursor = [], None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/reminders/upcoming?{query}", headers=alice)
        assert page.status_code == 200, page.json
        pages.append([item["id"] for item in page.json["items"]])
        cursor = page.json["next_cursor"]
        if cursor is None:
            break
    assert [i for page in pages for i in page] == opened  # days 6, 8, 9
    assert pages[0] == []  # days 1-3, all done: a short page, and a cursor after it


def test_reminders_of_another_user_are_not_found(client, alice, bob):
    task = make_task(client, alice, reminders=[{"at": "2030-01-01T00:00:00Z"}])
    reminder_id = task["reminders"][0]["id"]
    snooze = client.post(f"/reminders/{reminder_id}/snooze", json={"for": "PT5M"}, headers=bob)
    assert snooze.status_code == 404
    assert client.post(f"/reminders/{reminder_id}/dismiss", headers=bob).status_code == 404
    assert client.get("/reminders/upcoming", headers=bob).json["items"] == []


def test_clock_forward_fires_or_misses_once_and_back_fires_nothing(client, alice, env):
    client.patch("/preferences", json={"grace": "PT1H"}, headers=alice)
    times = [T0 + timedelta(minutes=m) for m in (0, 30, 150, 170, 200)]
    tasks = [make_task(client, alice, reminders=[{"at": t.isoformat()}]) for t in times]
    sweep.claim_due(T0 - timedelta(minutes=1), 100)  # before any: nothing
    assert set(reminder_states().values()) == {"pending"}
    forward = T0 + timedelta(hours=3)  # the clock jumps three hours
    sweep.claim_due(forward, 100)
    states = reminder_states()
    expected = ["missed", "missed", "fired", "fired", "pending"]  # 1 h grace from 3 h later
    assert [states[t["id"]] for t in tasks] == expected
    sweep.claim_due(T0, 100)  # the clock moves back: nothing again, nothing early
    sweep.claim_due(forward, 100)
    assert reminder_states() == states
    assert len(due_events()) == 2


def test_a_reminder_whose_time_comes_while_its_task_is_done_is_dismissed_unsent(client, alice, env):
    """Left pending, such a reminder stayed in the due part of the index for good: every
    ping's claim, and every `/reminders/upcoming`, read past all of them."""
    open_task, done_task, reopened = (
        make_task(client, alice, reminders=[{"at": (T0 + timedelta(minutes=m)).isoformat()}])
        for m in (1, 2, 3)
    )
    for task in (done_task, reopened):
        assert client.post(f"/tasks/{task['id']}/complete", headers=alice).status_code == 200
    assert client.post(f"/tasks/{reopened['id']}/reopen", headers=alice).status_code == 200

    result = sweep.claim_due(T0 + timedelta(minutes=5), 2)  # a batch shorter than the three
    assert (result.fired, result.dismissed) == (2, 1)
    states = reminder_states()
    assert states == {open_task["id"]: "fired", done_task["id"]: "dismissed",
                      reopened["id"]: "fired"}  # fmt: skip
    assert {event["task_id"] for event in due_events()} == {open_task["id"], reopened["id"]}
    shown = client.get(f"/tasks/{done_task['id']}", headers=alice).json["reminders"]
    assert [r["state"] for r in shown] == ["dismissed"]
    assert client.post(f"/tasks/{done_task['id']}/reopen", headers=alice).status_code == 200
    assert sweep.claim_due(T0 + timedelta(minutes=6), 10).seen == 0  # not fired late


def _bulk_reminders(owner: str, count: int, at: datetime) -> None:
    with db.session_scope() as session:
        tasks = [{"id": str(uuid.uuid4()), "owner": owner, "title": "bulk", "description": "",
                  "status": "open", "priority": 0, "created_at": at, "updated_at": at}
                 for _ in range(count)]  # fmt: skip
        session.execute(insert(Task), tasks)
        session.execute(
            insert(Reminder),
            [{"id": str(uuid.uuid4()), "owner": owner, "task_id": t["id"], "at": at,
              "fire_at": at, "state": "pending", "created_at": at} for t in tasks],
        )  # fmt: skip


def _sweep_in_child(database_url: str, now: str, queue: Any) -> None:
    os.environ["DATABASE_URL"] = database_url
    _reset_caches()
    result = sweep.claim_due(datetime.fromisoformat(now), 100)
    queue.put(result.fired)


def test_two_concurrent_sweeps_fire_each_of_1000_reminders_once(env):
    _bulk_reminders("alice", 1000, T0 - timedelta(seconds=1))
    if env.startswith("postgresql"):  # two processes, as two sweep replicas would be
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        workers = [
            context.Process(target=_sweep_in_child, args=(env, T0.isoformat(), queue))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        fired = [queue.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    else:  # SQLite: two threads against one file
        fired = []
        threads = [threading.Thread(target=lambda: fired.append(sweep.claim_due(T0, 100).fired))
                   for _ in range(2)]  # fmt: skip
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
    assert sum(fired) == 1000
    reminder_ids = [e["reminder_id"] for e in due_events()]
    assert len(reminder_ids) == 1000 and len(set(reminder_ids)) == 1000
    assert set(reminder_states().values()) == {"fired"}


def test_two_sweeps_claiming_at_once_on_postgresql_take_disjoint_batches(env, monkeypatch):
    """Two sweep replicas inside their claim transactions at the same moment: each has
    read and updated its batch before either commits (a barrier between the UPDATE and
    the outbox INSERT), so only SKIP LOCKED lets the second pass the first's rows; with
    a plain FOR UPDATE it would wait on them and never reach the barrier."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite takes its one write lock at BEGIN: its claims never overlap")
    _bulk_reminders("alice", 300, T0 - timedelta(seconds=1))
    both_claimed = threading.Barrier(2, timeout=60)
    insert_pending = sweep.outbox.insert_pending

    def meet_then_insert(session: Any, pending: list[Any]) -> int:
        both_claimed.wait()  # BrokenBarrierError in a thread that waited 60 s for the other
        return insert_pending(session, pending)

    monkeypatch.setattr(sweep.outbox, "insert_pending", meet_then_insert)
    results: list[sweep.SweepResult] = []
    claimers = [threading.Thread(target=lambda: results.append(sweep.claim_batch(T0, 100)))
                for _ in range(2)]  # fmt: skip
    for claimer in claimers:
        claimer.start()
    for claimer in claimers:
        claimer.join(timeout=120)
    assert [r.fired for r in results] == [100, 100]
    first, second = ({e.data["reminder_id"] for e in r.events} for r in results)
    assert len(first) == len(second) == 100 and not first & second
    assert sorted(reminder_states().values()) == ["fired"] * 200 + ["pending"] * 100
    assert len(due_events()) == 200


class Receiver(BaseHTTPRequestHandler):
    """A webhook receiver: echoes url_verification challenges as a real one would (kept
    apart in `challenges`), answers reminders with the statuses of `script`, then 200."""

    script: list[int] = []
    seen: list[dict[str, Any]] = []
    challenges: list[dict[str, Any]] = []
    echo = True

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = {"headers": dict(self.headers), "body": body}
        payload = json.loads(body)
        answer = b""
        if payload.get("type") == "url_verification":
            Receiver.challenges.append(request)
            if Receiver.echo:
                answer = json.dumps({"challenge": payload["challenge"]}).encode()
            status = 200
        else:
            Receiver.seen.append(request)
            status = Receiver.script.pop(0) if Receiver.script else 200
        self.send_response(status)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def serving_receiver(monkeypatch) -> Iterator[str]:
    """The Receiver on a loopback port (loopback webhooks allowed); yields its URL."""
    Receiver.script, Receiver.seen, Receiver.challenges, Receiver.echo = [], [], [], True
    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("DUETIDE_ALLOW_LOOPBACK_WEBHOOKS", "true")
    _reset_caches()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def receiver(monkeypatch):
    with serving_receiver(monkeypatch) as url:
        yield url


def claim_due(client, alice, title: str = "Pay rent", **task: Any) -> dict[str, Any]:
    """A reminder due a minute ago, claimed now: its event, as notify gets it at once
    (notify holds one it gets later than the owner's grace). `task`: more of the task's
    fields."""
    now = utcnow()
    at = (now - timedelta(minutes=1)).isoformat()
    make_task(client, alice, title=title, reminders=[{"at": at}], **task)
    sweep.claim_due(now, 100)
    (data,) = [e for e in due_events() if e["title"] == title]
    return data


def test_webhook_is_signed_retried_and_not_repeated(client, alice, env, receiver):
    prefs = client.patch(
        "/preferences",
        json={"webhook_url": receiver, "channels": ["webhook", "log"]},
        headers=alice,
    ).json
    assert prefs["webhook_verified"] and len(Receiver.challenges) == 1  # echoed at once
    notify = function_client("notify")
    data = claim_due(client, alice)
    Receiver.script = [500]  # the one attempt fails: 503, and the KafkaSource retries
    first = post(notify, events.REMINDER_DUE, data, event_id="e1")
    assert first.status_code == 503 and first.json["error"]["code"] == "unavailable"
    second = post(notify, events.REMINDER_DUE, data, event_id="e1")  # Knative's retry
    assert second.status_code == 200
    assert post(notify, events.REMINDER_DUE, data, event_id="e1").json["status"] == "duplicate"
    # The same firing under another id (the sweep's again): sent once, so a duplicate.
    assert post(notify, events.REMINDER_DUE, data, event_id="e2").json["status"] == "duplicate"
    assert len(Receiver.seen) == 2  # one failed attempt + one success, nothing after
    keys = {r["headers"]["Idempotency-Key"] for r in Receiver.seen}
    assert len(keys) == 1
    last = Receiver.seen[-1]
    assert webhook.verify_signature(
        prefs["webhook_secret"].encode(), last["headers"]["Duetide-Signature"], last["body"],
        now=utcnow().timestamp(),
    )  # fmt: skip
    assert json.loads(last["body"])["title"] == "Pay rent"
    with db.session_scope() as session:
        delivered = session.exec(select(Notification.channel, Notification.status)).all()
    assert sorted(delivered) == [("log", "delivered"), ("webhook", "delivered")]


def test_webhook_refusal_is_recorded_as_failed_not_retried(client, alice, env, receiver):
    prefs = client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    ).json
    assert prefs["webhook_verified"]
    Receiver.script = [410]
    response = post(function_client("notify"), events.REMINDER_DUE, claim_due(client, alice))
    assert response.status_code == 200
    assert len(Receiver.seen) == 1
    with db.session_scope() as session:
        (row,) = session.exec(select(Notification)).all()
    assert (row.channel, row.status) == ("webhook", "failed")


class Captures(Protocol):
    """An SMTP handler that keeps the envelopes it received (`Inbox`, or a test's own)."""

    messages: list[Any]


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Any] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append(envelope)
        return "250 OK"


def confirmation_code(envelope: Any) -> str:
    """The code in a captured confirmation mail."""
    found = re.search(rb"Confirmation code: ([A-Z0-9-]+)", envelope.content)
    assert found, "not a confirmation mail"
    return found.group(1).decode()


def verify_email_by_mail(client, headers, inbox: Captures, address: str) -> dict[str, Any]:
    """Set `address` and confirm it the way a user does: the code from the mail."""
    changed = client.patch("/preferences", json={"email": address}, headers=headers)
    assert changed.status_code == 200 and not changed.json["email_verified"], changed.json
    confirmation = inbox.messages[-1]
    assert confirmation.rcpt_tos == [address]
    code = confirmation_code(confirmation)
    verified = client.post("/preferences/email/verify", json={"code": code}, headers=headers)
    assert verified.status_code == 200 and verified.json["email_verified"], verified.json
    return verified.json


@pytest.fixture
def relay_inbox(env, monkeypatch) -> Iterator[Inbox]:
    """An SMTP relay on loopback, configured as the one duetide sends through."""
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=free_loopback_port())
    controller.start()
    monkeypatch.setenv("DUETIDE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("DUETIDE_SMTP_PORT", str(controller.port))
    monkeypatch.setenv("DUETIDE_SMTP_STARTTLS", "false")
    _reset_caches()
    try:
        yield inbox
    finally:
        controller.stop()


def test_email_goes_through_the_smtp_relay(client, alice, relay_inbox):
    verify_email_by_mail(client, alice, relay_inbox, "alice@example.org")
    client.patch("/preferences", json={"channels": ["email"]}, headers=alice)
    data = claim_due(client, alice, title="Dentist")
    response = post(function_client("notify"), events.REMINDER_DUE, data)
    assert response.status_code == 200, response.json
    _confirmation, message = relay_inbox.messages
    assert message.rcpt_tos == ["alice@example.org"]
    assert b"Subject: Reminder: Dentist" in message.content
    assert b"Due: no due time" in message.content


def test_an_email_shows_the_due_time_in_the_users_zone(client, alice, relay_inbox):
    """It said `Due: 2031-12-08T09:00:00+00:00` to a user in Berlin."""
    verify_email_by_mail(client, alice, relay_inbox, "alice@example.org")
    prefs = {"channels": ["email"], "timezone": "Europe/Berlin"}
    assert client.patch("/preferences", json=prefs, headers=alice).status_code == 200
    data = claim_due(client, alice, title="Dentist", due_at="2031-12-08T09:00:00Z")
    response = post(function_client("notify"), events.REMINDER_DUE, data)
    assert response.status_code == 200, response.json
    _confirmation, message = relay_inbox.messages
    assert b"Due: Mon 08 Dec 2031, 10:00 CET (Europe/Berlin)" in message.content


@pytest.mark.parametrize(
    ("swept_at", "state", "event_type"),
    [("2026-11-24T06:30:00+00:00", "fired", events.REMINDER_DUE),
     ("2026-11-24T08:00:00+00:00", "missed", events.REMINDER_MISSED)],
)  # fmt: skip
def test_a_reminder_first_swept_after_its_quiet_hours_fires_at_their_end(
    client, alice, env, swept_at, state, event_type
):
    """Quiet hours 22:00-07:00 Berlin (21:00-06:00 UTC) had passed by the first sweep:
    the reminder's time is their end (06:00 UTC), from which grace (1 h) is counted."""
    client.patch(
        "/preferences",
        json={"timezone": "Europe/Berlin", "quiet_hours": {"start": "22:00", "end": "07:00"},
              "grace": "PT1H"},
        headers=alice,
    )  # fmt: skip
    task = make_task(client, alice, reminders=[{"at": "2026-11-23T22:30:00Z"}])
    result = sweep.claim_due(datetime.fromisoformat(swept_at), 100)
    assert (result.fired, result.missed, result.deferred) == (
        int(state == "fired"), int(state == "missed"), 0
    )  # fmt: skip
    (reminder,) = client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"]
    assert (reminder["state"], reminder["fire_at"]) == (state, "2026-11-24T06:00:00+00:00")
    with db.session_scope() as session:
        reminder_types = [events.REMINDER_DUE, events.REMINDER_MISSED]
        (row,) = session.exec(select(Outbox).where(col(Outbox.type).in_(reminder_types))).all()
    assert (row.type, row.key) == (event_type, task["id"])
    assert row.data["scheduled_at"] == "2026-11-24T06:00:00Z"


def test_a_reminder_claimed_late_inside_quiet_hours_waits_for_their_end(client, alice, env):
    """Due at 20:00 Berlin, outside quiet hours (22:00-07:00), and first claimed at 22:20
    (the sweep was away), within the grace: it was sent then, inside the quiet hours, as
    only its own time was checked (a review, 2026-12-07)."""
    client.patch(
        "/preferences",
        json={"timezone": "Europe/Berlin", "quiet_hours": {"start": "22:00", "end": "07:00"},
              "grace": "PT3H"},
        headers=alice,
    )  # fmt: skip
    task = make_task(client, alice, reminders=[{"at": "2026-11-23T19:00:00Z"}])
    result = sweep.claim_due(datetime.fromisoformat("2026-11-23T21:20:00+00:00"), 100)
    assert (result.fired, result.deferred) == (0, 1)
    (reminder,) = client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"]
    assert (reminder["state"], reminder["fire_at"]) == ("pending", "2026-11-24T06:00:00+00:00")
    sweep.claim_due(datetime.fromisoformat("2026-11-24T06:00:30+00:00"), 100)
    assert [e["scheduled_at"] for e in due_events()] == ["2026-11-24T06:00:00Z"]


def test_a_reminder_past_its_grace_is_missed_even_when_claimed_in_quiet_hours(client, alice, env):
    """Due at 14:00 and first claimed at 23:30, inside quiet hours (22:00-07:00), with an
    hour's grace: missed. The deferral of a late claim came first and moved it to 07:00,
    from which the grace was counted, and it was sent 17 hours late (a review of the
    change, 2026-12-07)."""
    client.patch(
        "/preferences",
        json={"quiet_hours": {"start": "22:00", "end": "07:00"}, "grace": "PT1H"},
        headers=alice,
    )
    task = make_task(client, alice, reminders=[{"at": "2026-11-23T14:00:00Z"}])
    result = sweep.claim_due(datetime.fromisoformat("2026-11-23T23:30:00+00:00"), 100)
    assert (result.missed, result.deferred, result.fired) == (1, 0, 0)
    assert reminder_states() == {task["id"]: "missed"}


def outbox_of(event_type: str) -> list[Outbox]:
    with db.session_scope() as session:
        return list(session.exec(select(Outbox).where(Outbox.type == event_type)).all())


def notifications() -> list[tuple[str, str]]:
    with db.session_scope() as session:
        return list(session.exec(select(Notification.channel, Notification.status)).all())


def test_a_firing_reaching_notify_past_its_grace_is_recorded_missed_not_sent(client, alice, env):
    """Claimed on time, its event reached notify three hours later (the broker or notify
    away): every reminder an outage held was sent at once when it ended, however late
    (a review, 2026-12-07). Now the sweep's rule holds at delivery too."""
    client.patch("/preferences", json={"grace": "PT1H"}, headers=alice)
    at = utcnow() - timedelta(hours=3)
    task = make_task(client, alice, reminders=[{"at": at.isoformat()}])
    sweep.claim_due(at + timedelta(seconds=30), 100)  # on time: fired, its event written
    [due] = due_events()
    notify = function_client("notify")

    answer = post(notify, events.REMINDER_DUE, due, event_id="late-1")

    assert (answer.status_code, answer.json["status"]) == (200, "missed")
    assert notifications() == [] and reminder_states() == {task["id"]: "missed"}
    [missed] = outbox_of(events.REMINDER_MISSED)
    assert (missed.source, missed.key, missed.data) == (events.SOURCE_NOTIFY, task["id"], due)
    again = post(notify, events.REMINDER_DUE, due, event_id="late-1")
    assert again.json["status"] == "duplicate" and len(outbox_of(events.REMINDER_MISSED)) == 1


def test_a_firing_reaching_notify_inside_quiet_hours_waits_for_their_end(client, alice, env):
    """Claimed before the quiet hours began, its event reached notify inside them: it
    was sent then, at any hour (a review, 2026-12-07). Now it is pending again until
    they end, and the sweep claims it then."""
    now = utcnow()
    task = make_task(client, alice, reminders=[{"at": (now - timedelta(minutes=1)).isoformat()}])
    sweep.claim_due(now, 100)
    [due] = due_events()
    end = (now + timedelta(hours=1)).replace(second=0, microsecond=0)
    quiet = {"start": f"{now - timedelta(hours=1):%H:%M}", "end": f"{end:%H:%M}"}
    changed = client.patch("/preferences", json={"quiet_hours": quiet}, headers=alice)
    assert changed.status_code == 200, changed.json
    notify = function_client("notify")

    answer = post(notify, events.REMINDER_DUE, due, event_id="quiet-1")

    assert (answer.status_code, answer.json["status"]) == (200, "deferred")
    assert notifications() == []
    (reminder,) = client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"]
    assert (reminder["state"], reminder["fire_at"]) == ("pending", end.isoformat())
    sweep.claim_due(end + timedelta(seconds=1), 100)
    scheduled = sorted(e["scheduled_at"] for e in due_events())  # the outbox has no order
    assert scheduled == [due["scheduled_at"], end.isoformat().replace("+00:00", "Z")]


def test_a_grace_under_two_minutes_is_refused_and_one_stored_before_counts_as_two(
    client, alice, env
):
    """The sweep claims once a minute: a grace of PT0S (accepted before) had every
    reminder claimed on time missed, PT30S about half (a review, 2026-12-07)."""
    for short in ("PT0S", "PT1M59S"):
        refused = client.patch("/preferences", json={"grace": short}, headers=alice)
        assert refused.status_code == 422 and "PT2M" in json.dumps(refused.json)
    assert client.patch("/preferences", json={"grace": "PT2M"}, headers=alice).status_code == 200
    with db.session_scope() as session:  # as a preference stored before the bound
        session.execute(update(Preference).values(grace_s=0))
    make_task(client, alice, reminders=[{"at": "2026-11-23T12:00:20Z"}])
    result = sweep.claim_due(datetime.fromisoformat("2026-11-23T12:01:00.3+00:00"), 100)
    assert (result.fired, result.missed) == (1, 0)


def test_a_before_due_reminder_on_a_task_without_a_due_time_names_the_field(client, alice):
    task = make_task(client, alice)
    assert task["due_at"] is None
    response = client.post(
        f"/tasks/{task['id']}/reminders", json={"before_due": "PT5M"}, headers=alice
    )
    assert response.status_code == 422, response.json
    assert [d["field"] for d in response.json["error"]["details"]] == ["before_due"]
    assert client.get(f"/tasks/{task['id']}", headers=alice).json["reminders"] == []


def test_moving_the_due_time_keeps_a_snooze_and_leaves_an_at_reminder_where_it_is(
    client, alice, env
):
    """A due change recomputed every pending reminder from its `at`: a snoozed one went
    back to its first time, in the past, and the next sweep fired it two hours early."""
    now = utcnow()
    task = make_task(
        client,
        alice,
        due_at=(now + timedelta(hours=3)).isoformat(),
        reminders=[{"at": (now - timedelta(minutes=1)).isoformat()}],
    )
    reminder_id = task["reminders"][0]["id"]
    assert sweep.claim_due(utcnow(), 100).fired == 1
    snoozed = client.post(f"/reminders/{reminder_id}/snooze", json={"for": "PT2H"}, headers=alice)
    assert snoozed.status_code == 200, snoozed.json
    later = {"due_at": (now + timedelta(hours=5)).isoformat()}
    moved = client.patch(f"/tasks/{task['id']}", json=later, headers=alice)
    assert moved.status_code == 200, moved.json
    assert client.get(f"/reminders/{reminder_id}", headers=alice).json == snoozed.json
    assert sweep.claim_due(utcnow() + timedelta(seconds=1), 100).fired == 0


def test_a_relative_reminder_that_fired_is_armed_again_when_the_due_time_moves_later(
    client, alice, env
):
    """It fired 15 minutes before the old due time; moved a day later, the task had no
    reminder left before its new one (only pending reminders were moved)."""
    task = make_task(
        client,
        alice,
        due_at=(utcnow() + timedelta(minutes=10)).isoformat(),
        reminders=[{"before_due": "PT15M"}],
    )
    assert sweep.claim_due(utcnow(), 100).fired == 1
    new_due = utcnow().replace(microsecond=0) + timedelta(days=1)
    later = {"due_at": new_due.isoformat()}
    moved = client.patch(f"/tasks/{task['id']}", json=later, headers=alice)
    (reminder,) = moved.json["reminders"]
    assert reminder["state"] == "pending"
    assert datetime.fromisoformat(reminder["fire_at"]) == new_due - timedelta(minutes=15)
    upcoming = client.get("/reminders/upcoming", headers=alice).json["items"]
    assert [u["id"] for u in upcoming] == [reminder["id"]]
    assert sweep.claim_due(new_due - timedelta(minutes=15), 100).fired == 1
    assert len(due_events()) == 2  # once for each due time


def test_a_snoozed_relative_reminder_stays_snoozed_when_the_same_due_time_is_sent(
    client, alice, env
):
    """A client sending the whole task (or a title change with it) sent the due time it
    had: the reminder went back from its snooze to its first time."""
    due = (utcnow() + timedelta(hours=3)).replace(microsecond=0)
    task = make_task(client, alice, due_at=due.isoformat(), reminders=[{"before_due": "PT1H"}])
    reminder_id = task["reminders"][0]["id"]
    until = (utcnow() + timedelta(hours=2, minutes=30)).replace(microsecond=0).isoformat()
    snoozed = client.post(f"/reminders/{reminder_id}/snooze", json={"until": until}, headers=alice)
    assert snoozed.status_code == 200, snoozed.json
    same = {"due_at": due.isoformat(), "title": "renamed"}
    assert client.patch(f"/tasks/{task['id']}", json=same, headers=alice).status_code == 200
    assert client.get(f"/reminders/{reminder_id}", headers=alice).json == snoozed.json
