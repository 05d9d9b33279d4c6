"""Changes that wait for a lock see what the holder committed (PostgreSQL, READ COMMITTED).

Found by racing real requests (a helper session, 2026-12-05): a statement that waited for
a row lock re-reads the locked row only, so a task read with its reminders and tags in the
statement that locked it saw them as they were before the wait; and a reminder changed
without its own lock lost a race with the sweep's claim; and notify's record of an event
two deliveries had sent at once failed the second (500). Each interleaving is forced
here: the first change holds its lock until the second is seen waiting for it.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select

from duetide import events
from duetide.services import notify, sweep
from duetide.services import tasks as task_ops
from duetide.services.schemas import ReminderIn
from duetide.storage import db, outbox
from duetide.storage.models import Notification, Outbox, Reminder, TaskTag, utcnow
from duetide.storage.processed import claim
from tests.integration.conftest import function_client
from tests.integration.test_event_functions import post
from tests.integration.test_reminders import Receiver, serving_receiver
from tests.integration.test_series_concurrency import backend_pid, blocked_by, hold_then_race
from tests.support import wait_for


@pytest.fixture(autouse=True)
def on_postgresql(env: str) -> None:
    if not env.startswith("postgresql"):
        pytest.skip("SQLite has one writer: BEGIN IMMEDIATE queues the second change whole")


def reminders_of(task_id: str) -> list[Reminder]:
    with db.session_scope(read_only=True) as session:
        return list(session.exec(select(Reminder).where(Reminder.task_id == task_id)).all())


def test_a_reminder_added_while_another_add_holds_the_task_counts_it(client, alice):
    before_due = [{"before_due": f"PT{minutes}M"} for minutes in range(1, 10)]
    body = {"title": "t", "due_at": "2030-01-05T09:00:00Z", "reminders": before_due}
    task_id = client.post("/tasks", json=body, headers=alice).json["id"]
    tenth = ReminderIn(before_due=timedelta(minutes=30))

    answer = hold_then_race(
        lambda s: task_ops.add_reminder(s, "alice", task_id, tenth),
        lambda: (
            client.application.test_client()
            .post(f"/tasks/{task_id}/reminders", json={"before_due": "PT45M"}, headers=alice)
            .status_code
        ),
    )

    assert answer == 422  # the tenth is there: at most 10
    assert len(reminders_of(task_id)) == 10


def test_tags_set_while_another_change_holds_the_task_are_what_it_asked(client, alice):
    task_id = client.post("/tasks", json={"title": "t", "tags": ["a"]}, headers=alice).json["id"]

    def first(session: Any) -> None:
        task, _ = task_ops.lock_task(session, "alice", task_id)
        task.set_tags(["b", "c"])
        session.add(task)
        session.flush()

    answer = hold_then_race(
        first,
        lambda: (
            client.application.test_client()
            .patch(f"/tasks/{task_id}", json={"tags": ["c", "d"]}, headers=alice)
            .status_code
        ),
    )

    assert answer == 200  # it was a 500 (a duplicate tag row) or a mix of both
    with db.session_scope(read_only=True) as session:
        tags = session.exec(select(TaskTag.tag).where(TaskTag.task_id == task_id)).all()
    assert sorted(tags) == ["c", "d"]


def while_the_sweep_claims(monkeypatch: pytest.MonkeyPatch, change: Callable[[], Any]) -> Any:
    """Run the sweep's claim; once it holds its claimed rows (its outbox rows written)
    `change` runs in another thread and is seen waiting for them. `change`'s answer,
    after the claim committed."""
    answer: list[Any] = []
    started: list[threading.Thread] = []
    insert_pending = outbox.insert_pending

    def claimed(session: Any, rows: Any) -> Any:
        result = insert_pending(session, rows)
        pid = backend_pid(session)
        started.append(threading.Thread(target=lambda: answer.append(change())))
        started[0].start()
        wait_for(lambda: blocked_by(pid), "the change to wait for the claim's locks", 10)
        return result

    monkeypatch.setattr(outbox, "insert_pending", claimed)
    sweep.claim_batch(utcnow(), 100)
    monkeypatch.setattr(outbox, "insert_pending", insert_pending)
    started[0].join(timeout=30)
    assert answer, "the change did not finish"
    return answer[0]


def due_reminder(client, alice, **task: Any) -> tuple[str, str]:
    at = (utcnow() - timedelta(seconds=1)).isoformat()
    body = {"title": "x", "reminders": [{"at": at}], **task}
    made = client.post("/tasks", json=body, headers=alice).json
    return made["id"], made["reminders"][0]["id"]


def test_a_snooze_waiting_on_the_sweeps_claim_rearms_the_claimed_reminder(
    client, alice, monkeypatch
):
    """Unlocked, it wrote its time over the claimed row but not its state: `fired`, at a
    time notify then found obsolete, and never claimed again."""
    task_id, reminder_id = due_reminder(client, alice)
    snooze = lambda: client.application.test_client().post(  # noqa: E731
        f"/reminders/{reminder_id}/snooze", json={"for": "PT10M"}, headers=alice
    )

    answer = while_the_sweep_claims(monkeypatch, snooze)

    assert answer.status_code == 200 and answer.json["state"] == "pending"
    (stored,) = reminders_of(task_id)
    assert stored.state == "pending"
    assert sweep.claim_batch(utcnow() + timedelta(minutes=11), 100).fired == 1


def test_a_due_date_moved_while_the_sweep_claims_arms_the_reminder_for_the_new_one(
    client, alice, monkeypatch
):
    """The move waits for the claim and then applies over what it fired: the reminder is
    armed again for the new due time, so the claimed firing (for the old one) is obsolete
    and the new time fires once. Unlocked, it was `fired` at the new time, which notify
    found obsolete, and nothing was ever sent."""
    due = (utcnow() + timedelta(minutes=15) - timedelta(seconds=1)).isoformat()
    body = {"title": "x", "due_at": due, "reminders": [{"before_due": "PT15M"}]}
    made = client.post("/tasks", json=body, headers=alice).json
    new_due = utcnow() + timedelta(hours=2)
    move = lambda: client.application.test_client().patch(  # noqa: E731
        f"/tasks/{made['id']}", json={"due_at": new_due.isoformat()}, headers=alice
    )

    answer = while_the_sweep_claims(monkeypatch, move)

    assert answer.status_code == 200
    (stored,) = reminders_of(made["id"])
    assert (stored.state, stored.fire_at) == ("pending", new_due - timedelta(minutes=15))
    notify = function_client("notify")
    with db.session_scope() as session:
        (data,) = session.exec(
            select(Outbox.data).where(col(Outbox.type) == events.REMINDER_DUE)
        ).all()
    assert post(notify, events.REMINDER_DUE, data, source="/duetide/sweep").json["status"] == (
        "obsolete"
    )
    assert sweep.claim_batch(new_due, 100).fired == 1
    with db.session_scope() as session:
        fired = session.exec(
            select(Outbox.data).where(col(Outbox.type) == events.REMINDER_DUE)
        ).all()
    (new,) = [d for d in fired if d != data]
    assert post(notify, events.REMINDER_DUE, new, source="/duetide/sweep").json["status"] == (
        "processed"
    )
    with db.session_scope(read_only=True) as session:
        assert len(session.exec(select(Notification)).all()) == 1


def test_a_delivery_whose_event_another_delivery_recorded_first_is_not_a_500(
    client, alice, monkeypatch
):
    """Two deliveries of one event at once: the one recording it second, after its
    webhook, found the key taken (an IntegrityError: a 500, and a retry); now it answers
    as the first did. The other delivery's commit is made while this one sends."""
    with serving_receiver(monkeypatch) as url:
        prefs = {"webhook_url": url, "channels": ["webhook"]}
        assert client.patch("/preferences", json=prefs, headers=alice).json["webhook_verified"]
        due_reminder(client, alice)
        sweep.claim_batch(utcnow(), 100)
        with db.session_scope() as session:
            (data,) = session.exec(
                select(Outbox.data).where(col(Outbox.type) == events.REMINDER_DUE)
            ).all()
        send_remote = notify._send_remote
        committers: list[threading.Thread] = []

        def sent_beside_another(jobs: Any) -> Any:
            """The other delivery records the event (not committed yet); it commits once
            this one's record of it is seen waiting on that row."""
            failed = send_remote(jobs)
            other = contextlib.ExitStack()
            session = other.enter_context(db.session_scope())
            claim(session, jobs[0][0].key)
            pid = backend_pid(session)

            def commit_when_waited_on() -> None:
                wait_for(lambda: blocked_by(pid), "this delivery to wait for the other", 10)
                other.close()

            committers.append(threading.Thread(target=commit_when_waited_on))
            committers[0].start()
            return failed

        monkeypatch.setattr(notify, "_send_remote", sent_beside_another)
        answer = post(function_client("notify"), events.REMINDER_DUE, data, source="/s")
        committers[0].join(timeout=30)

    assert answer.status_code == 200, answer.json
    assert answer.json["status"] == "processed" and len(Receiver.seen) == 1
