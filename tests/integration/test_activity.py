"""The activity log and its delta feed (issue 15), on SQLite and PostgreSQL.

The tasks function writes its events to the outbox; each test delivers them to the real
activity function (and task.completed to recurrence) as the KafkaSource would: binary
mode, the outbox row id as the event id, one task's events in order. A client that
follows `GET /activity` then holds exactly what `GET /tasks` shows.
"""

from __future__ import annotations

import random
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlmodel import col, func, select, update

from duetide import events
from duetide.config import get_settings
from duetide.events.signing import sign_command
from duetide.services import activity as activity_log
from duetide.services.activity_feed import decode_token, encode_token
from duetide.services.responses import ActivityTask
from duetide.services.sweep import purge_processed
from duetide.storage import db
from duetide.storage.models import ActivityEntry, Outbox, utcnow
from duetide.storage.outbox import to_cloudevent
from tests.integration.conftest import _reset_caches, function_client
from tests.support import json_of, wait_for

# What the feed shows of a task, compared with GET /tasks.
FIELDS = ("title", "status", "description", "priority", "tags", "series_id")
TIMES = ("due_at", "completed_at")


@pytest.fixture
def activity(env: str) -> FlaskClient:
    return function_client("activity")


@pytest.fixture
def recurrence(env: str) -> FlaskClient:
    return function_client("recurrence")


class Pipeline:
    """The KafkaSources of the task events topic: each outbox row once to activity (and
    each task.completed to recurrence), oldest first."""

    def __init__(self, activity: FlaskClient, recurrence: FlaskClient):
        self.activity, self.recurrence = activity, recurrence
        self.delivered: list[tuple[dict[str, str], bytes, str]] = []

    def pump(self, newest_first: bool = False) -> list[str]:
        """Deliver every row not delivered yet (recurrence's own events too); the
        activity function's answers. `newest_first`: in the reverse of the order the
        changes were made, as rows the outbox sent late arrive."""
        answers: list[str] = []
        while True:
            fresh = self._undelivered()
            if not fresh:
                return answers
            for headers, body, event_type in reversed(fresh) if newest_first else fresh:
                self.delivered.append((headers, body, event_type))
                answers.append(self._post(self.activity, headers, body))
                if event_type == events.TASK_COMPLETED:
                    self._post(self.recurrence, headers, body)

    def redeliver(self) -> list[str]:
        return [self._post(self.activity, h, b) for h, b, _ in self.delivered]

    def _undelivered(self) -> list[tuple[dict[str, str], bytes, str]]:
        seen = {h["ce-id"] for h, _, _ in self.delivered}
        topic = get_settings().duetide_topic_task_events
        with db.session_scope(read_only=True) as session:
            rows = session.exec(
                select(Outbox).where(Outbox.topic == topic).order_by(col(Outbox.created_at))
            ).all()
            return [
                (*events.to_http(to_cloudevent(row)), row.type)
                for row in rows
                if row.id not in seen
            ]

    @staticmethod
    def _post(client: FlaskClient, headers: dict[str, str], body: bytes) -> str:
        response = client.post("/", headers=headers, data=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return str(json_of(response)["status"])


@pytest.fixture
def pipeline(activity: FlaskClient, recurrence: FlaskClient) -> Pipeline:
    return Pipeline(activity, recurrence)


class SyncingClient:
    """A client that keeps its tasks from the delta feed only."""

    def __init__(self, api: FlaskClient, headers: dict[str, str], limit: int):
        self.api, self.headers, self.limit = api, headers, limit
        self.since: str | None = None
        self.tasks: dict[str, dict[str, Any]] = {}
        self.seen: list[str] = []

    def sync(self) -> None:
        while True:
            query = f"?limit={self.limit}" + (f"&since={self.since}" if self.since else "")
            response = self.api.get(f"/activity{query}", headers=self.headers)
            assert response.status_code == 200, response.json
            page = json_of(response)
            for item in page["items"]:
                self.seen.append(item["event_id"])
                if item["superseded"]:
                    continue  # history only: a later change of the task came first
                if item["deleted"]:
                    self.tasks.pop(item["task_id"], None)
                else:
                    self.tasks[item["task_id"]] = item["task"]
            self.since = page["since"]
            if not page["more"]:
                return


def shown(task: dict[str, Any]) -> dict[str, Any]:
    """A task's fields the feed carries, times as instants (the API shows an occurrence
    in its series' zone, the feed in UTC)."""
    out = {name: task.get(name) for name in FIELDS}
    for name in TIMES:
        out[name] = datetime.fromisoformat(task[name]) if task.get(name) else None
    return out


def server_state(api: FlaskClient, headers: dict[str, str]) -> dict[str, dict[str, Any]]:
    tasks: dict[str, dict[str, Any]] = {}
    cursor = ""
    while True:
        page = json_of(api.get(f"/tasks?limit=200{cursor}", headers=headers))
        tasks |= {task["id"]: shown(task) for task in page["items"]}
        if not page["next_cursor"]:
            return tasks
        cursor = f"&cursor={page['next_cursor']}"


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    return json_of(response) if status != 204 else {}


def burst(client: FlaskClient, headers: dict[str, str], rng: random.Random, n: int) -> None:
    """Creates, updates, completions, reopenings and deletes, a recurring task among them."""
    ids = []
    for i in range(n):
        body: dict[str, Any] = {"title": f"task {i}", "tags": [f"t{i % 3}"], "priority": "low"}
        if i % 4 == 0:
            body["due_at"] = f"2026-05-{1 + i % 28:02d}T09:00:00+02:00"
        ids.append(ok(client.post("/tasks", json=body, headers=headers), 201)["id"])
    for task_id in rng.sample(ids, n // 2):
        change = rng.choice(
            [
                {"title": f"renamed {rng.randrange(1000)}"},
                {"tags": ["x", "y"], "priority": "high"},
                {"due_at": "2026-06-01T08:00:00Z", "description": "moved"},
            ]
        )
        ok(client.patch(f"/tasks/{task_id}", json=change, headers=headers))
    done = rng.sample(ids, n // 3)
    for task_id in done:
        ok(client.post(f"/tasks/{task_id}/complete", headers=headers))
    ok(client.post(f"/tasks/{done[0]}/reopen", headers=headers))
    for task_id in rng.sample([i for i in ids if i != done[0]], n // 4):
        ok(client.delete(f"/tasks/{task_id}", headers=headers), 204)


def test_a_client_syncing_from_the_feed_ends_with_the_servers_state(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str], pipeline: Pipeline
) -> None:
    rng = random.Random(15)
    follower = SyncingClient(client, alice, limit=7)  # pages that split the bursts
    daily = ok(
        client.post(
            "/tasks",
            json={"title": "Water plants", "due_at": "2026-03-28T09:00:00+01:00",
                  "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"}},
            headers=alice,
        ),
        201,
    )  # fmt: skip
    ok(client.post("/tasks", json={"title": "bob's"}, headers=bob), 201)
    burst(client, alice, rng, 16)
    assert set(pipeline.pump()) == {"processed"}
    follower.sync()  # midway: then more changes, and the feed goes on from its token
    ok(client.post(f"/tasks/{daily['id']}/complete", headers=alice))  # recurrence: the next
    burst(client, alice, rng, 12)
    pipeline.pump()
    follower.sync()

    expected = server_state(client, alice)
    assert {task_id: shown(task) for task_id, task in follower.tasks.items()} == expected
    assert len(expected) > 10
    assert any(task["series_id"] == daily["series_id"] for task in expected.values())
    assert len(follower.seen) == len(set(follower.seen))  # nothing twice
    # Redelivery of every event adds nothing, and a sync after it finds nothing new.
    assert set(pipeline.redeliver()) == {"duplicate"}
    seen = len(follower.seen)
    follower.sync()
    assert len(follower.seen) == seen
    assert entries() == len(pipeline.delivered)


def test_an_event_that_arrives_after_a_later_change_of_its_task_is_history_not_state(
    client: FlaskClient, alice: dict[str, str], pipeline: Pipeline
) -> None:
    done = ok(client.post("/tasks", json={"title": "Done"}, headers=alice), 201)
    ok(client.post(f"/tasks/{done['id']}/complete", headers=alice))
    gone = ok(client.post("/tasks", json={"title": "Gone"}, headers=alice), 201)
    ok(client.delete(f"/tasks/{gone['id']}", headers=alice), 204)
    assert set(pipeline.pump(newest_first=True)) == {"processed"}
    kept = ok(client.post("/tasks", json={"title": "Kept"}, headers=alice), 201)
    pipeline.pump()  # in order: nothing superseded
    follower = SyncingClient(client, alice, limit=2)
    follower.sync()

    assert {task_id: shown(task) for task_id, task in follower.tasks.items()} == server_state(
        client, alice
    )
    assert set(follower.tasks) == {done["id"], kept["id"]}
    assert follower.tasks[done["id"]]["status"] == "done"
    history = ok(client.get(f"/tasks/{done['id']}/activity", headers=alice))["items"]
    assert [(i["type"], i["superseded"]) for i in history] == [
        (events.TASK_COMPLETED, False),
        (events.TASK_CREATED, True),  # kept, at its own time, marked
    ]
    assert history[1]["at"] < history[0]["at"]
    gone_history = ok(client.get(f"/tasks/{gone['id']}/activity", headers=alice))["items"]
    assert [(i["type"], i["superseded"]) for i in gone_history] == [
        (events.TASK_DELETED, False),
        (events.TASK_CREATED, True),
    ]
    assert entries(col(ActivityEntry.superseded)) == 2


def entries(*where: Any) -> int:
    with db.session_scope(read_only=True) as session:
        return session.exec(select(func.count()).select_from(ActivityEntry).where(*where)).one()


def test_a_tasks_history_is_in_order_with_before_and_after(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str], pipeline: Pipeline
) -> None:
    task = ok(client.post("/tasks", json={"title": "Draft", "tags": ["a"]}, headers=alice), 201)
    ok(client.patch(f"/tasks/{task['id']}", json={"title": "Final", "tags": ["a"]}, headers=alice))
    ok(client.post(f"/tasks/{task['id']}/complete", headers=alice))
    ok(client.delete(f"/tasks/{task['id']}", headers=alice), 204)
    pipeline.pump()

    history = ok(client.get(f"/tasks/{task['id']}/activity", headers=alice))
    items = history["items"]
    assert [i["type"] for i in items] == [
        events.TASK_CREATED,
        events.TASK_UPDATED,
        events.TASK_COMPLETED,
        events.TASK_DELETED,
    ]
    assert {i["actor"] for i in items} == {"user:alice"}
    assert items[1]["changes"] == {"title": {"before": "Draft", "after": "Final"}}  # tags same
    assert items[0]["changes"] is None
    assert items[3]["deleted"] is True and items[3]["task"] is None
    assert [datetime.fromisoformat(i["at"]) for i in items] == sorted(
        datetime.fromisoformat(i["at"]) for i in items
    )
    # Another user's task (even a deleted one, even by its id) is not found.
    missing = client.get(f"/tasks/{task['id']}/activity", headers=bob)
    assert missing.status_code == 404 and json_of(missing)["error"]["code"] == "not_found"
    assert ok(client.get("/activity", headers=bob))["items"] == []


def test_a_command_from_a_system_names_it_as_the_actor(
    client: FlaskClient, alice: dict[str, str], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "crm-key-" + "k" * 40
    monkeypatch.setenv("DUETIDE_COMMAND_KEYS", f"crm={key}")
    _reset_caches()
    event = events.build(
        event_id="order-1", type=events.CMD_TASK_CREATE, source="/crm", subject="",
        data={"task": {"title": "Call back"}},
    )  # fmt: skip
    wire, body = events.to_http(sign_command(event, user="alice", system="crm", key=key))
    ok(client.post("/commands", headers=wire, data=body), 201)
    pipeline.pump()
    (item,) = ok(client.get("/activity", headers=alice))["items"]
    assert item["actor"] == "system:crm" and item["task"]["title"] == "Call back"


def test_an_event_redelivered_is_logged_once(
    client: FlaskClient, alice: dict[str, str], pipeline: Pipeline, activity: FlaskClient
) -> None:
    ok(client.post("/tasks", json={"title": "once"}, headers=alice), 201)
    assert pipeline.pump() == ["processed"]
    assert pipeline.redeliver() == ["duplicate"]
    assert pipeline.redeliver() == ["duplicate"]
    assert entries() == 1
    assert len(ok(client.get("/activity", headers=alice))["items"]) == 1


def test_a_token_older_than_the_retention_is_gone(
    client: FlaskClient, alice: dict[str, str], pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    for title in ("a", "b", "c"):
        ok(client.post("/tasks", json={"title": title}, headers=alice), 201)
    pipeline.pump()
    with db.session_scope() as session:  # logged three days ago
        session.exec(update(ActivityEntry).values(recorded_at=utcnow() - timedelta(days=3)))
    page = ok(client.get("/activity?limit=1", headers=alice))
    assert page["more"] is True
    monkeypatch.setenv("DUETIDE_ACTIVITY_RETENTION_DAYS", "2")
    _reset_caches()
    purge_processed(utcnow())
    assert entries() == 0

    gone = client.get(f"/activity?since={page['since']}", headers=alice)
    assert gone.status_code == 410, gone.json
    error = json_of(gone)["error"]
    assert error["code"] == "gone" and "2 days" in error["message"] and error["details"] == []
    # Starting over (no `since`) works, and a fresh token is good.
    fresh = ok(client.get("/activity", headers=alice))
    assert fresh["items"] == []
    assert ok(client.get(f"/activity?since={fresh['since']}", headers=alice))["items"] == []


def test_a_token_stamped_in_the_future_is_answered_with_one_stamped_now(
    client: FlaskClient, alice: dict[str, str], pipeline: Pipeline
) -> None:
    # A forged stamp far ahead would have been handed back for ever, and never turned 410.
    ok(client.post("/tasks", json={"title": "a"}, headers=alice), 201)
    pipeline.pump()
    seq, _ = decode_token(ok(client.get("/activity", headers=alice))["since"])
    forged = encode_token(seq, utcnow() + timedelta(days=3650))
    page = ok(client.get(f"/activity?since={forged}", headers=alice))
    assert page["items"] == []
    after, stamp = decode_token(page["since"])
    assert after == seq and stamp <= utcnow()


@pytest.mark.parametrize(
    "query",
    ["since=not-a-token", "since=" + "A" * 65, "since=%00", "limit=0", "limit=201", "limit=x"],
)
def test_a_bad_query_is_a_clear_4xx(client: FlaskClient, alice: dict[str, str], query: str) -> None:
    response = client.get(f"/activity?{query}", headers=alice)
    assert response.status_code in (400, 422), response.get_data(as_text=True)
    error = json_of(response)["error"]
    assert error["code"] in ("bad_request", "validation_failed") and error["message"]


@pytest.mark.parametrize("since", ["not-a-token", "!!", "a.b", "W10", "%C2%B2"])
@pytest.mark.parametrize("path", ["/activity", "/activity/stream"])
def test_a_since_that_is_no_token_is_the_same_400_everywhere(
    client: FlaskClient, alice: dict[str, str], since: str, path: str
) -> None:
    """A pattern made `!!` a 422 where `not-a-token` was a 400."""
    response = client.get(f"{path}?since={since}", headers=alice)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert json_of(response)["error"]["code"] == "bad_request"


def post_event(client: FlaskClient, event_type: str, data: dict[str, Any], event_id: str) -> Any:
    event = events.build(
        event_id=event_id, type=event_type, source=events.SOURCE_TASKS, subject="s", data=data,
        time=datetime(2026, 12, 1, 9, 0, tzinfo=UTC),
    )  # fmt: skip
    headers, body = events.to_http(event)
    return client.post("/", headers=headers, data=body)


def test_an_event_from_before_the_new_fields_is_logged_with_what_it_carries(
    client: FlaskClient, alice: dict[str, str], activity: FlaskClient
) -> None:
    old = {"task_id": "t-1", "owner": "alice", "title": "Old", "status": "open"}
    assert ok(post_event(activity, events.TASK_UPDATED, old, "e-1"))["status"] == "processed"
    (item,) = ok(client.get("/activity", headers=alice))["items"]
    assert item["actor"] == "user:alice" and item["changes"] is None
    assert item["at"] == "2026-12-01T09:00:00+00:00"
    assert item["task"] == {
        "title": "Old", "status": "open", "description": None, "priority": None, "tags": None,
        "due_at": None, "completed_at": None, "series_id": None, "scheduled_at": None,
        "occurrence_index": None,
    }  # fmt: skip


def test_an_event_with_an_unknown_status_is_refused_not_stored(
    client: FlaskClient, alice: dict[str, str], activity: FlaskClient
) -> None:
    bad = {"task_id": "t-1", "owner": "alice", "title": "x", "status": "weird"}
    refused = post_event(activity, events.TASK_CREATED, bad, "e-2")
    assert refused.status_code == 400, refused.get_data(as_text=True)
    assert json_of(refused)["error"]["code"] == "invalid_cloudevent"
    assert entries() == 0
    assert ok(client.get("/activity", headers=alice))["items"] == []


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "bad",
    [
        {"due_at": "0001-01-01T00:00:00+23:59"},  # before year 1 in UTC
        {"completed_at": "9999-12-31T23:59:59-23:59"},  # after year 9999 in UTC
        {"series_id": "s" * 37},  # longer than the column (PostgreSQL's DataError)
        {"changes": {"title": {"before": "a", "after": {"deep": "x"}}}},
        {"changes": {"tags": {"before": None, "after": _nested(900)}}},  # past pydantic's dump
    ],
)
def test_event_data_no_entry_could_hold_is_refused_not_stored(
    client: FlaskClient, alice: dict[str, str], activity: FlaskClient, bad: dict[str, Any]
) -> None:
    data = {"task_id": "t-1", "owner": "alice", "title": "x", "status": "open", **bad}
    refused = post_event(activity, events.TASK_UPDATED, data, "e-3")
    assert refused.status_code == 400, refused.get_data(as_text=True)
    assert json_of(refused)["error"]["code"] == "invalid_cloudevent"
    assert entries() == 0


@pytest.mark.parametrize("time", ["9999-12-31T23:59:59-23:59", "0001-01-01T00:00:00+23:59"])
def test_an_event_time_that_is_no_instant_is_left_out(
    client: FlaskClient, alice: dict[str, str], activity: FlaskClient, time: str
) -> None:
    data = {"task_id": "t-1", "owner": "alice", "title": "x", "status": "open"}
    event = events.build(
        event_id="e-4", type=events.TASK_CREATED, source=events.SOURCE_TASKS, subject="s",
        data=data,
    )  # fmt: skip
    headers, body = events.to_http(event)
    before = utcnow()
    answer = activity.post("/", headers={**headers, "ce-time": time}, data=body)
    assert ok(answer)["status"] == "processed"
    (item,) = ok(client.get("/activity", headers=alice))["items"]
    assert datetime.fromisoformat(item["at"]) >= before  # when it was logged instead


def test_an_entry_keeps_the_fields_the_feed_shows() -> None:
    assert set(ActivityTask.model_fields) == activity_log.STATE_FIELDS


def test_an_owners_entries_commit_in_seq_order(
    database_url: str, client: FlaskClient, alice: dict[str, str], pipeline: Pipeline
) -> None:
    """A second writer for the same owner waits for the first to commit: a reader never
    sees a later `seq` while an earlier one is still to come (and would skip it)."""
    if not database_url.startswith("postgresql"):
        pytest.skip("SQLite has one writer at a time: nothing can commit out of order")
    ok(client.post("/tasks", json={"title": "later"}, headers=alice), 201)
    ((headers, body, _),) = pipeline._undelivered()
    answers: list[int] = []

    def deliver() -> None:
        answers.append(
            function_client("activity").post("/", headers=headers, data=body).status_code
        )

    earlier = events.TaskEvent(task_id="t-0", owner="alice", title="earlier", status="open")
    with db.session_scope() as session:
        activity_log.record(
            session, event_type=events.TASK_CREATED, event_id="held", source="/test", time=None,
            data=earlier,
        )  # fmt: skip
        session.flush()  # its seq is drawn, not yet committed
        writer = threading.Thread(target=deliver)
        writer.start()
        wait_for(lambda: advisory_waiters() == 1, "the second writer to wait for the owner")
        assert ok(client.get("/activity", headers=alice))["items"] == []
    writer.join(timeout=30)
    assert answers == [200]
    titles = [i["task"]["title"] for i in ok(client.get("/activity", headers=alice))["items"]]
    assert titles == ["earlier", "later"]


def advisory_waiters() -> int:
    with db.session_scope(read_only=True) as session:
        return int(
            session.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
                    " AND query LIKE '%pg_advisory_xact_lock%'"
                    " AND datname = current_database()"
                )
            ).scalar_one()
        )
