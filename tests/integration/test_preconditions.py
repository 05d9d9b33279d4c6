"""Entity tags and conditional requests on tasks and series (`web.preconditions`),
through the real functions-framework app, on SQLite and PostgreSQL: a change with a
stale If-Match is refused with 412 and changes nothing, so two clients editing one task
or series cannot lose each other's change."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from sqlmodel import col, func, select

from duetide.storage import db
from duetide.storage.models import Outbox, Series, Task
from tests.integration.conftest import auth_headers

PARIS_DAILY = {
    "title": "water the plants",
    "due_at": "2030-03-01T09:00:00+01:00",
    "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Paris"},
    "reminders": [{"before_due": "PT1H"}],
}


def create(client: Any, headers: dict[str, str], **fields: Any) -> tuple[dict[str, Any], str]:
    answer = client.post("/tasks", json={"title": "t", **fields}, headers=headers)
    assert answer.status_code == 201, answer.json
    return answer.json, answer.headers["ETag"]


def current(client: Any, headers: dict[str, str], task_id: str) -> tuple[dict[str, Any], str]:
    answer = client.get(f"/tasks/{task_id}", headers=headers)
    assert answer.status_code == 200, answer.json
    return answer.json, answer.headers["ETag"]


def events_stored() -> int:
    with db.session_scope(read_only=True) as session:
        return session.exec(select(func.count()).select_from(Outbox)).one()


@pytest.mark.parametrize("fields", [{}, PARIS_DAILY], ids=["one-off", "occurrence"])
def test_every_answer_showing_the_task_carries_the_tag_a_read_gives(client, alice, fields):
    """The tag of a change's answer is the tag a GET then gives: each path renders the
    task its own way (the model after a change, a row when read, an occurrence in its
    series' zone), and a mismatch would refuse every If-Match a client sends."""
    task, created = create(client, alice, **fields)
    task_id = task["id"]
    assert created.startswith('"') and created == current(client, alice, task_id)[1]

    steps = [
        ("patch", f"/tasks/{task_id}", {"json": {"title": "renamed", "tags": ["b", "a"]}}),
        ("post", f"/tasks/{task_id}/complete", {}),
        ("post", f"/tasks/{task_id}/reopen", {}),
    ]
    seen = {created}
    for method, path, extra in steps:
        answer = getattr(client, method)(path, headers=alice, **extra)
        assert answer.status_code == 200, answer.json
        body, tag = current(client, alice, task_id)
        assert answer.headers["ETag"] == tag and answer.json == body
        seen.add(tag)
    assert len(seen) == len(steps) + 1  # each change gave a new tag


def test_if_none_match_answers_304_while_the_task_is_unchanged(client, alice):
    task, tag = create(client, alice, title="read me")
    path = f"/tasks/{task['id']}"

    unchanged = client.get(path, headers={**alice, "If-None-Match": tag})
    assert unchanged.status_code == 304 and unchanged.data == b""
    assert unchanged.headers["ETag"] == tag
    weak = client.get(path, headers={**alice, "If-None-Match": f'"other", W/{tag}'})
    assert weak.status_code == 304  # If-None-Match compares weakly

    client.patch(path, json={"title": "changed"}, headers=alice)
    changed = client.get(path, headers={**alice, "If-None-Match": tag})
    assert changed.status_code == 200 and changed.json["title"] == "changed"
    assert changed.headers["ETag"] != tag


def _changes(task_id: str) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        ("patch", f"/tasks/{task_id}", {"json": {"title": "theirs"}}),
        ("post", f"/tasks/{task_id}/complete", {}),
        ("delete", f"/tasks/{task_id}", {}),
    ]


@pytest.mark.parametrize("step", range(3), ids=["patch", "complete", "delete"])
def test_a_stale_if_match_is_refused_with_412_and_changes_nothing(client, alice, step):
    task, stale = create(client, alice, title="mine")
    client.patch(f"/tasks/{task['id']}", json={"description": "by someone else"}, headers=alice)
    before, _ = current(client, alice, task["id"])
    stored = events_stored()

    method, path, extra = _changes(task["id"])[step]
    refused = getattr(client, method)(path, headers={**alice, "If-Match": stale}, **extra)

    assert refused.status_code == 412
    assert refused.json["error"]["code"] == "precondition_failed"
    assert refused.json["error"]["details"] == []
    assert current(client, alice, task["id"])[0] == before
    assert events_stored() == stored


@pytest.mark.parametrize("step", range(3), ids=["patch", "complete", "delete"])
def test_a_current_or_star_if_match_lets_the_change_through(client, alice, step):
    for condition in ("current", "*"):
        task, tag = create(client, alice, title="mine")
        if_match = tag if condition == "current" else "*"
        method, path, extra = _changes(task["id"])[step]
        answer = getattr(client, method)(path, headers={**alice, "If-Match": if_match}, **extra)
        assert answer.status_code in (200, 204), (condition, answer.json)


def test_reopen_honours_if_match(client, alice):
    task, _ = create(client, alice)
    done = client.post(f"/tasks/{task['id']}/complete", headers=alice)
    path = f"/tasks/{task['id']}/reopen"
    stale = client.post(path, headers={**alice, "If-Match": '"not-the-tag"'})
    assert stale.status_code == 412
    assert current(client, alice, task["id"])[0]["status"] == "done"
    fresh = client.post(path, headers={**alice, "If-Match": done.headers["ETag"]})
    assert fresh.status_code == 200 and fresh.json["status"] == "open"


def test_a_weak_tag_never_satisfies_if_match(client, alice):
    task, tag = create(client, alice)
    answer = client.patch(
        f"/tasks/{task['id']}", json={"title": "x"}, headers={**alice, "If-Match": f"W/{tag}"}
    )
    assert answer.status_code == 412  # If-Match compares strongly


MALFORMED_IF_MATCH = ['"stale', '"a" "b"', ",", '"x" junk', '"a""b"', "W/", "", 'W/"a", *']


def test_an_if_match_that_is_not_a_list_of_entity_tags_is_400_and_changes_nothing(client, alice):
    """Werkzeug reads what it cannot parse as no tags, which passed as no condition:
    a client's typo let its change through unconditionally (found in review)."""
    task, _ = create(client, alice, title="mine")
    series_id, _ = a_series(client, alice)
    stored = events_stored()
    for value in MALFORMED_IF_MATCH:
        headers = {**alice, "If-Match": value}
        for answer in (
            client.patch(f"/tasks/{task['id']}", json={"title": "x"}, headers=headers),
            client.post(f"/tasks/{task['id']}/complete", headers=headers),
            client.delete(f"/tasks/{task['id']}", headers=headers),
            client.post(f"/series/{series_id}/pause", headers=headers),
        ):
            assert answer.status_code == 400, (value, answer.status_code)
            assert answer.json["error"]["code"] == "bad_request"
    assert current(client, alice, task["id"])[0]["title"] == "mine"
    assert client.get(f"/series/{series_id}", headers=alice).json["status"] == "active"
    assert events_stored() == stored
    listed = client.patch(
        f"/tasks/{task['id']}", json={"title": "y"}, headers={**alice, "If-Match": '"a", "b"'}
    )
    assert listed.status_code == 412  # a well-formed list of tags, none current


def test_if_match_does_not_reveal_or_reach_another_users_task(client, alice, bob):
    task, tag = create(client, alice, title="alice's")
    for if_match in (tag, "*", '"stale"'):
        answer = client.patch(
            f"/tasks/{task['id']}", json={"title": "bob's"}, headers={**bob, "If-Match": if_match}
        )
        assert answer.status_code == 404
    missing = client.delete("/tasks/no-such-task", headers={**alice, "If-Match": "*"})
    assert missing.status_code == 404
    assert current(client, alice, task["id"])[0]["title"] == "alice's"


WRITERS = 8


@pytest.mark.parametrize("fields", [{}, PARIS_DAILY], ids=["one-off", "occurrence"])
def test_of_concurrent_changes_from_one_tag_exactly_one_wins(client, fields):
    """WRITERS clients read the task, then all change it at once with the tag they read:
    one change is made, every other is 412, and the task holds the winner's change.
    Without the check under the task's lock, each would pass it before any committed."""
    headers = auth_headers("etag-racer")
    task, tag = create(client, headers, **fields)
    winner = race_patches(client, headers, f"/tasks/{task['id']}", tag)
    with db.session_scope(read_only=True) as session:
        stored = session.exec(select(Task.title).where(col(Task.id) == task["id"])).one()
    assert stored == winner


def race_patches(client: Any, headers: dict[str, str], path: str, tag: str) -> str:
    """WRITERS threads PATCH `path` at once, each a title of its own, all with
    `If-Match: tag`: one must be 200, every other 412. The winner's title."""
    start = threading.Barrier(WRITERS)

    def writer(index: int) -> tuple[int, str]:
        own = client.application.test_client()  # a client per thread, one app, as gthread
        start.wait(timeout=30)
        answer = own.patch(
            path, json={"title": f"writer {index}"}, headers={**headers, "If-Match": tag}
        )
        return answer.status_code, answer.json["title"] if answer.status_code == 200 else ""

    with ThreadPoolExecutor(WRITERS) as pool:
        results = list(pool.map(writer, range(WRITERS)))

    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [412] * (WRITERS - 1), statuses
    return next(title for status, title in results if status == 200)


def a_series(client: Any, headers: dict[str, str]) -> tuple[str, str]:
    task, _ = create(client, headers, **PARIS_DAILY)
    answer = client.get(f"/series/{task['series_id']}", headers=headers)
    assert answer.status_code == 200, answer.json
    return task["series_id"], answer.headers["ETag"]


def test_every_answer_showing_a_series_carries_the_tag_a_read_gives(client, alice):
    series_id, tag = a_series(client, alice)
    path = f"/series/{series_id}"
    assert client.get(path, headers={**alice, "If-None-Match": tag}).status_code == 304

    seen = {tag}
    for method, step, extra in [
        ("patch", path, {"json": {"title": "water them all"}}),
        ("post", f"{path}/pause", {}),
        ("post", f"{path}/resume", {}),
        ("post", f"{path}/skip", {}),
    ]:
        answer = getattr(client, method)(step, headers=alice, **extra)
        assert answer.status_code == 200, answer.json
        read = client.get(path, headers=alice)
        assert answer.headers["ETag"] == read.headers["ETag"] and answer.json == read.json
        seen.add(read.headers["ETag"])
    assert len(seen) == 5


@pytest.mark.parametrize("step", ["patch", "pause", "end"])
def test_a_stale_if_match_on_a_series_is_refused_and_changes_nothing(client, alice, step):
    series_id, stale = a_series(client, alice)
    path = f"/series/{series_id}"
    client.patch(path, json={"description": "by someone else"}, headers=alice)
    before = client.get(path, headers=alice).json
    stored = events_stored()

    headers = {**alice, "If-Match": stale}
    refused = {
        "patch": lambda: client.patch(path, json={"title": "mine"}, headers=headers),
        "pause": lambda: client.post(f"{path}/pause", headers=headers),
        "end": lambda: client.delete(path, headers=headers),
    }[step]()

    assert refused.status_code == 412, refused.json
    assert refused.json["error"]["code"] == "precondition_failed"
    assert client.get(path, headers=alice).json == before
    assert events_stored() == stored

    current_tag = client.get(path, headers=alice).headers["ETag"]
    again = {
        "patch": lambda: client.patch(
            path, json={"title": "mine"}, headers={**alice, "If-Match": current_tag}
        ),
        "pause": lambda: client.post(f"{path}/pause", headers={**alice, "If-Match": current_tag}),
        "end": lambda: client.delete(path, headers={**alice, "If-Match": current_tag}),
    }[step]()
    assert again.status_code in (200, 204), again.json


def test_of_concurrent_series_changes_from_one_tag_exactly_one_wins(client):
    headers = auth_headers("etag-series-racer")
    series_id, tag = a_series(client, headers)
    winner = race_patches(client, headers, f"/series/{series_id}", tag)
    with db.session_scope(read_only=True) as session:
        stored = session.exec(select(Series.title).where(col(Series.id) == series_id)).one()
    assert stored == winner
