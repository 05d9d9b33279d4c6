"""Batched reminder events (issue 16): the sweep puts several due reminders in one
`reminder.due.batch` when DUETIDE_REMINDERS_PER_EVENT is above 1, and notify delivers
each as its own `reminder.due` would be, exactly once per channel, on SQLite and
PostgreSQL, through the served notify function."""

from __future__ import annotations

import socket
from datetime import timedelta
from typing import Any

import pytest
from sqlmodel import col, select, update

from duetide import events
from duetide.channels import webhook
from duetide.services import notify as notify_service
from duetide.services import sweep
from duetide.storage import db
from duetide.storage.models import Notification, Outbox, Preference, ProcessedEvent, utcnow
from duetide.storage.processed import EventKey
from tests.integration.conftest import _reset_caches, auth_headers, function_client
from tests.integration.test_event_functions import post
from tests.integration.test_reminders import T0, Receiver, make_task, serving_receiver


@pytest.fixture
def per_event(env, monkeypatch) -> int:
    monkeypatch.setenv("DUETIDE_REMINDERS_PER_EVENT", "3")
    _reset_caches()
    return 3


@pytest.fixture
def receiver(monkeypatch):
    with serving_receiver(monkeypatch) as url:
        yield url


@pytest.fixture
def notify(env):
    return function_client("notify")


def batches() -> list[dict[str, Any]]:
    with db.session_scope() as session:
        rows = session.exec(select(Outbox).where(Outbox.type == events.REMINDER_DUE_BATCH)).all()
        return [row.data for row in rows]


def sweep_due(client, headers, count: int, **body: Any) -> list[dict[str, Any]]:
    """`count` tasks with a reminder due a minute ago, claimed by a sweep now (notify
    holds a firing it gets later than the owner's grace): the tasks."""
    now = utcnow()
    at = (now - timedelta(minutes=1)).isoformat()
    tasks = [
        make_task(client, headers, title=f"t{n}", reminders=[{"at": at}], **body)
        for n in range(count)
    ]
    sweep.claim_due(now, 100)
    return tasks


def recorded() -> list[tuple[str, str, str]]:
    with db.session_scope() as session:
        rows = session.exec(select(Notification)).all()
        return sorted((row.reminder_id, row.channel, row.status) for row in rows)


def test_the_sweep_sends_due_reminders_in_events_of_the_setting(client, alice, per_event):
    tasks = sweep_due(client, alice, 7)
    missed = make_task(client, alice, title="old", reminders=[{"at": "2026-11-23T09:00:00Z"}])
    sweep.claim_due(T0, 100)  # claimed past the grace (an hour): missed, its own event

    sent = batches()
    assert sorted(len(batch["reminders"]) for batch in sent) == [1, 3, 3]
    reminders = [r for batch in sent for r in batch["reminders"]]
    assert sorted(r["task_id"] for r in reminders) == sorted(t["id"] for t in tasks)
    with db.session_scope() as session:
        types = session.exec(select(Outbox.type, Outbox.key)).all()
    assert (events.REMINDER_MISSED, missed["id"]) in types
    assert events.REMINDER_DUE not in {t for t, _ in types}  # one type for due reminders
    for batch in sent:  # each event is keyed by its first reminder's task
        assert (events.REMINDER_DUE_BATCH, batch["reminders"][0]["task_id"]) in types


def test_a_batch_is_delivered_once_per_reminder_and_skips_what_is_obsolete(
    client, alice, per_event, notify
):
    tasks = sweep_due(client, alice, 3)
    [batch] = batches()
    dismissed = tasks[1]["reminders"][0]["id"]
    assert client.post(f"/reminders/{dismissed}/dismiss", headers=alice).status_code == 200

    first = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")

    assert first.status_code == 200 and first.json["status"] == "processed"
    wanted = sorted((t["reminders"][0]["id"], "log", "delivered") for t in tasks)
    del wanted[[r for r, _, _ in wanted].index(dismissed)]
    assert recorded() == wanted
    again = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")  # a redelivery
    assert again.status_code == 200 and again.json["status"] == "duplicate"
    other = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b2")  # the same firings
    assert other.status_code == 200 and other.json["status"] == "duplicate"
    assert recorded() == wanted  # nothing sent twice


def test_a_batch_retries_only_the_reminder_whose_webhook_failed(
    client, alice, per_event, notify, receiver
):
    prefs = client.patch(
        "/preferences",
        json={"webhook_url": receiver, "channels": ["webhook", "log"]},
        headers=alice,
    )
    assert prefs.status_code == 200 and prefs.json["webhook_verified"]
    tasks = sweep_due(client, alice, 3)
    [batch] = batches()
    Receiver.script = [201, 500]  # the second reminder's webhook fails

    first = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")

    assert first.status_code == 503 and first.json["error"]["code"] == "unavailable"
    # one receiver's sends go one at a time and stop at its first transient failure: the
    # third waits for the retry, with the second
    assert len(Receiver.seen) == 2
    webhooks = [r for r, channel, _ in recorded() if channel == "webhook"]
    assert len(webhooks) == 1 and len([1 for _, c, _ in recorded() if c == "log"]) == 3
    with db.session_scope() as session:  # the one finished, by the batch's id and its reminder
        scopes = session.exec(
            select(ProcessedEvent.scope).where(
                ProcessedEvent.consumer == notify_service.CONSUMER, ProcessedEvent.event_id == "b1"
            )
        ).all()
    assert scopes == webhooks

    second = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")  # Knative's retry

    assert second.status_code == 200 and second.json["status"] == "processed"
    assert len(Receiver.seen) == 4  # the failed one and the one after it
    ids = sorted(t["reminders"][0]["id"] for t in tasks)
    assert recorded() == sorted(
        [(r, "log", "delivered") for r in ids] + [(r, "webhook", "delivered") for r in ids]
    )
    keys = [request["headers"]["Idempotency-Key"] for request in Receiver.seen]
    assert len(set(keys)) == 3 and keys[2] == keys[1]  # the retry under its first try's key


def test_an_owners_hanging_receiver_holds_back_no_other_owners_reminders(
    client, alice, bob, env, notify, receiver, monkeypatch
):
    """Alice's receiver takes each POST and never answers; Bob's, in the same batch,
    answers at once. Her sends ran first (claim order) on every thread the batch has, a
    try's whole budget, try after try: Bob's reminder was never sent, then dead-lettered
    with hers (a review, 2026-12-07)."""
    monkeypatch.setenv("DUETIDE_REMINDERS_PER_EVENT", "10")
    _reset_caches()
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)  # the kernel completes the connections; nothing reads or answers
    alices = f"http://127.0.0.1:{hanging.getsockname()[1]}/hook"
    assert client.patch("/preferences", json={"grace": "PT1H"}, headers=alice).status_code == 200
    with db.session_scope() as session:  # verified before it started to hang
        session.execute(
            update(Preference)
            .where(col(Preference.owner) == "alice")
            .values(
                channels=["webhook"],
                webhook_url=alices,
                webhook_secret="s" * 32,
                webhook_verified_at=utcnow(),
            )
        )
    bobs = client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=bob
    )
    assert bobs.json["webhook_verified"]
    now = utcnow()
    for minutes, headers, count in ((2, alice, 8), (1, bob, 1)):  # hers first in the batch
        at = (now - timedelta(minutes=minutes)).isoformat()
        for n in range(count):
            make_task(client, headers, title=f"t{n}", reminders=[{"at": at}])
    sweep.claim_due(now, 100)
    [batch] = batches()
    assert [r["owner"] for r in batch["reminders"]] == ["alice"] * 8 + ["bob"]
    monkeypatch.setattr(webhook, "LONGEST_S", 0.5)  # a hanging receiver's cost, scaled down
    monkeypatch.setattr(notify_service, "REMOTE_DEADLINE_S", 1.0)  # room for one send a lane

    try:
        answer = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")
    finally:
        hanging.close()

    assert answer.status_code == 503  # hers, for the retry
    assert len(Receiver.seen) == 1
    [bobs_reminder] = [r["reminder_id"] for r in batch["reminders"] if r["owner"] == "bob"]
    assert recorded() == [(bobs_reminder, "webhook", "delivered")]


def test_receivers_that_hang_do_not_take_every_try_from_those_that_answer(
    client, env, notify, receiver, monkeypatch
):
    """Twelve owners' receivers take each POST and never answer, two answer at once, in
    that order in one batch. Each hanging send costs its lane the channel's whole bound,
    so the hanging lanes took the whole of every try, in the batch's order each time:
    the two were never sent (sixteen hanging owners at the real bounds; an audit,
    2026-12-07). The lanes that failed go last in the next try."""
    monkeypatch.setenv("DUETIDE_REMINDERS_PER_EVENT", "20")
    _reset_caches()
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(64)  # the kernel completes the connections; nothing reads or answers
    hangs = [f"h{n}" for n in range(12)]
    answers = ["a0", "a1"]
    with db.session_scope() as session:  # verified before they started to hang
        for owner in hangs + answers:
            url = (
                f"http://127.0.0.1:{hanging.getsockname()[1]}/hook" if owner in hangs else receiver
            )
            session.add(
                Preference(
                    owner=owner,
                    channels=["webhook"],
                    webhook_url=url,
                    webhook_secret="s" * 32,
                    webhook_verified_at=utcnow(),
                    grace_s=3600,
                )
            )
    now = utcnow()
    for minutes, owners in ((2, hangs), (1, answers)):  # the hanging ones first in the batch
        at = (now - timedelta(minutes=minutes)).isoformat()
        for owner in owners:
            make_task(client, auth_headers(owner), title="t", reminders=[{"at": at}])
    sweep.claim_due(now, 100)
    [batch] = batches()
    assert [r["owner"] for r in batch["reminders"]] == hangs + answers
    monkeypatch.setattr(webhook, "LONGEST_S", 0.4)  # the real 5 s and 25 s, scaled down
    monkeypatch.setattr(notify_service, "REMOTE_DEADLINE_S", 1.0)

    try:
        tries = [post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1") for _ in (1, 2)]
    finally:
        hanging.close()

    assert [answer.status_code for answer in tries] == [503, 503]  # the hanging ones'
    answered = {r["reminder_id"] for r in batch["reminders"] if r["owner"] in answers}
    assert {reminder for reminder, _, _ in recorded()} == answered
    assert len(Receiver.seen) == 2


def test_a_reminder_listed_twice_in_a_batch_is_sent_once(
    client, alice, per_event, notify, receiver
):
    client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    )
    sweep_due(client, alice, 2)
    [batch] = batches()
    first, second = batch["reminders"]
    doubled = {"reminders": [first, second, first]}

    answer = post(notify, events.REMINDER_DUE_BATCH, doubled, event_id="b1")

    assert answer.status_code == 200 and answer.json["status"] == "processed"
    keys = sorted(request["headers"]["Idempotency-Key"] for request in Receiver.seen)
    assert len(keys) == 2 and len(set(keys)) == 2
    assert sorted(r for r, _, _ in recorded()) == sorted(
        [first["reminder_id"], second["reminder_id"]]
    )


def test_two_events_of_one_firing_in_one_group_send_it_once(client, alice, per_event, receiver):
    """Two events for the same firing (the sweep's and a replay of it) checked in one
    group commit: the first sends the webhook, the second finds it taken."""
    client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    )
    sweep_due(client, alice, 1)
    [batch] = batches()
    firing = events.ReminderEvent.model_validate(batch["reminders"][0])
    checks = [
        notify_service._Check(EventKey(notify_service.CONSUMER, "/sweep", name), firing, T0)
        for name in ("e1", "e2")
    ]
    notify_service._deliver(checks)  # one request's checks: one group

    assert [check.outcome for check in checks] == ["processed", "duplicate"]
    assert len(Receiver.seen) == 1 and len(recorded()) == 1


def test_network_deliveries_past_the_budget_are_left_for_the_retry(
    client, alice, per_event, notify, receiver, monkeypatch
):
    """A batch starts a network delivery only if it can end by a deadline under the
    KafkaSource's delivery timeout; what it did not start answers 503 and goes with the
    retry."""
    client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    )
    sweep_due(client, alice, 2)
    [batch] = batches()
    # Nearer than one webhook's bound: a send started could end after the deadline (an
    # e-mail started at 20 s ended at 30, the KafkaSource's timeout; an audit, 2026-12-07).
    monkeypatch.setattr(notify_service, "REMOTE_DEADLINE_S", webhook.LONGEST_S / 2)

    late = post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1")

    assert late.status_code == 503 and Receiver.seen == [] and recorded() == []
    monkeypatch.setattr(notify_service, "REMOTE_DEADLINE_S", 25.0)
    assert post(notify, events.REMINDER_DUE_BATCH, batch, event_id="b1").status_code == 200
    assert len(Receiver.seen) == 2 and len(recorded()) == 2


@pytest.mark.parametrize("count", [0, events.MAX_BATCH + 1])
def test_a_batch_is_bounded(client, alice, per_event, notify, count):
    [task] = sweep_due(client, alice, 1)
    [batch] = batches()
    one = batch["reminders"][0]
    response = post(notify, events.REMINDER_DUE_BATCH, {"reminders": [one] * count})
    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "invalid_cloudevent"
    assert "reminders" in response.json["error"]["message"]
    assert recorded() == []
    with db.session_scope() as session:
        assert (
            session.exec(
                select(ProcessedEvent).where(col(ProcessedEvent.consumer) == "notify")
            ).all()
            == []
        )
    assert task["id"] == one["task_id"]


def test_a_ping_claims_within_its_budget_and_the_next_goes_on(client, alice, env):
    """A claim went on until the due reminders were done: 200,000 past their grace took
    37 s of a ping whose request times out at 60 s, before its webhook retries, relay and
    purge (an audit, 2026-12-07). No batch is begun after the budget; the next ping
    claims the rest."""
    now = utcnow()
    at = (now - timedelta(minutes=1)).isoformat()
    for n in range(5):
        make_task(client, alice, title=f"t{n}", reminders=[{"at": at}])
    first = sweep.claim_due(now, 2, claimers=1, budget_s=0.0)
    assert (first.batches, first.fired) == (1, 2)  # one batch, then the budget was spent
    rest = sweep.claim_due(now, 2, claimers=1)
    assert (rest.batches, rest.fired) == (2, 3)  # 2, then a short 1 ends it
