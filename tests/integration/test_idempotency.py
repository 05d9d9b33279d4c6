"""`Idempotency-Key` on the creating writes (`duetide.services.idempotency`), on the real
app over SQLite and PostgreSQL: a request sent again with its key is answered as the
first time and makes nothing again, even when both copies arrive at once."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import col, func, select

from duetide.services import sweep
from duetide.storage import db
from duetide.storage.models import IdempotentRequest, Outbox, Reminder, Task, utcnow
from tests.integration.conftest import _reset_caches, auth_headers, function_client

KEY = "8e03978e-40d5-43e8-bc93-6894a57f9324"
TASK = {"title": "file the taxes", "due_at": "2031-04-01T09:00:00Z", "tags": ["admin"]}


def count(model: Any) -> int:
    with db.session_scope(read_only=True) as session:
        return session.exec(select(func.count()).select_from(model)).one()


def keys() -> list[str]:
    with db.session_scope(read_only=True) as session:
        return list(session.exec(select(IdempotentRequest.key)).all())


def keyed(headers: dict[str, str], key: str = KEY) -> dict[str, str]:
    return {**headers, "Idempotency-Key": key}


def test_a_create_sent_again_with_its_key_is_answered_the_same_and_makes_nothing(client, alice):
    first = client.post("/tasks", json=TASK, headers=keyed(alice))
    assert first.status_code == 201, first.json
    events = count(Outbox)

    again = client.post("/tasks", json=TASK, headers=keyed(alice))

    assert again.status_code == 201
    assert again.json == first.json
    assert again.headers["Location"] == first.headers["Location"]
    assert again.headers["ETag"] == first.headers["ETag"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count(Task) == 1 and count(Outbox) == events  # no second task, no second event
    unkeyed = client.post("/tasks", json=TASK, headers=alice)
    assert unkeyed.status_code == 201 and count(Task) == 2  # without a key, a new task


def test_a_request_sent_again_with_its_key_is_answered_at_the_write_limit_too(
    env, alice, monkeypatch
):
    """The copy was charged as a new write: a client near its minute's budget that sent
    a create again because the answer was lost got 429, not the answer it was owed."""
    monkeypatch.setenv("DUETIDE_WRITE_RATE_PER_MINUTE", "2")
    _reset_caches()
    client = function_client("tasks")
    first = client.post("/tasks", json=TASK, headers=keyed(alice))
    assert first.status_code == 201, first.json
    assert client.post("/tasks", json=TASK, headers=alice).status_code == 201  # the budget
    for _ in range(3):
        again = client.post("/tasks", json=TASK, headers=keyed(alice))
        assert again.status_code == 201, again.json
        assert again.headers["Idempotent-Replayed"] == "true" and again.json == first.json
    assert client.post("/tasks", json=TASK, headers=alice).status_code == 429
    other = client.post("/tasks", json=TASK, headers=keyed(alice, "a-new-key"))
    assert other.status_code == 429  # a new key is a new write


def test_a_reminder_added_again_with_its_key_is_added_once(client, alice):
    task_id = client.post("/tasks", json=TASK, headers=alice).json["id"]
    path = f"/tasks/{task_id}/reminders"
    body = {"before_due": "PT1H"}

    answers = [client.post(path, json=body, headers=keyed(alice)) for _ in range(2)]

    assert [a.status_code for a in answers] == [201, 201]
    assert answers[0].json == answers[1].json
    assert answers[1].headers["Location"] == f"/reminders/{answers[0].json['id']}"
    assert count(Reminder) == 1


def test_the_key_with_another_request_is_422_and_changes_nothing(client, alice):
    task_id = client.post("/tasks", json=TASK, headers=keyed(alice)).json["id"]

    other_body = client.post("/tasks", json={**TASK, "title": "x"}, headers=keyed(alice))
    other_path = client.post(
        f"/tasks/{task_id}/reminders", json={"before_due": "PT1H"}, headers=keyed(alice)
    )

    for answer in (other_body, other_path):
        assert answer.status_code == 422, answer.json
        assert answer.json["error"]["details"][0]["field"] == "Idempotency-Key"
    assert count(Task) == 1 and count(Reminder) == 0


def test_each_user_has_keys_of_their_own(client, alice, bob):
    mine = client.post("/tasks", json=TASK, headers=keyed(alice))
    theirs = client.post("/tasks", json=TASK, headers=keyed(bob))

    assert mine.status_code == theirs.status_code == 201
    assert mine.json["id"] != theirs.json["id"]
    assert "Idempotent-Replayed" not in theirs.headers


def test_a_write_that_failed_leaves_no_key_behind(client, alice):
    missing = client.post(
        "/tasks/no-such-task/reminders", json={"before_due": "PT1H"}, headers=keyed(alice)
    )
    assert missing.status_code == 404
    assert keys() == []

    assert client.post("/tasks", json=TASK, headers=keyed(alice)).status_code == 201
    assert keys() == [KEY]


@pytest.mark.parametrize(
    "key",
    [" spaced", "tab\there", "é", "x" * 256, ""],
    ids=["space", "tab", "non-ascii", "long", "empty"],
)
def test_a_malformed_key_is_400_and_makes_nothing(client, alice, key):
    answer = client.post("/tasks", json=TASK, headers=keyed(alice, key))

    assert answer.status_code == 400, answer.json
    assert "Idempotency-Key" in answer.json["error"]["message"]
    assert count(Task) == 0


def test_the_longest_key_is_accepted(client, alice):
    assert client.post("/tasks", json=TASK, headers=keyed(alice, "k" * 255)).status_code == 201


def test_a_key_older_than_a_day_names_a_new_request_and_the_sweep_forgets_it(client, alice):
    first = client.post("/tasks", json=TASK, headers=keyed(alice))
    with db.session_scope() as session:
        session.exec(update(IdempotentRequest).values(created_at=utcnow() - timedelta(hours=25)))

    again = client.post("/tasks", json={**TASK, "title": "another"}, headers=keyed(alice))

    assert again.status_code == 201 and again.json["id"] != first.json["id"]
    assert "Idempotent-Replayed" not in again.headers
    sweep.purge_processed(utcnow())
    assert keys() == [KEY]  # the new claim is kept
    assert sweep.purge_processed(utcnow() + timedelta(hours=25)) >= 1
    assert keys() == []


COPIES = 8


def test_copies_sent_at_once_make_one_task_and_get_its_answer(client):
    """COPIES clients send the same keyed create at once (a client retrying over several
    connections): one task, one event, every answer that task's. Without the claim in the
    write's transaction, each copy would pass a check for the key before any committed."""
    headers = keyed(auth_headers("idempotency-racer"))
    start = threading.Barrier(COPIES)

    def sender(_: int) -> tuple[int, str]:
        own = client.application.test_client()  # a client per thread, one app, as gthread
        start.wait(timeout=30)
        answer = own.post("/tasks", json=TASK, headers=headers)
        return answer.status_code, answer.json.get("id", "")

    with ThreadPoolExecutor(COPIES) as pool:
        results = list(pool.map(sender, range(COPIES)))

    assert {status for status, _ in results} == {201}, results
    assert len({task_id for _, task_id in results}) == 1
    with db.session_scope(read_only=True) as session:
        made = session.exec(select(func.count()).select_from(Task)).one()
        events = session.exec(
            select(func.count()).select_from(Outbox).where(col(Outbox.key) == results[0][1])
        ).one()
    assert made == 1 and events == 1
