"""Object-level authorization (BOLA): one user can neither see nor touch another's objects.

Driven by the OpenAPI document, so a new route that takes an id is covered or fails here:
for every such operation, bob's request for alice's object is a 404 `not_found` that
changes no row of any table (his own write counter aside), while the same request by
alice succeeds. Every list shows bob his rows and none of alice's.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlmodel import SQLModel

from duetide.storage import db
from duetide.storage.models import Notification, Subscription, WebhookDelivery, utcnow
from duetide.web.openapi import document
from tests.support import json_of

# Bob writes too, so his per-minute write counter legitimately moves.
UNCHANGED_TABLES = [t for t in SQLModel.metadata.sorted_tables if t.name != "rate_window"]

# operationId -> (a valid body, alice's expected status for the same request)
ID_OPERATIONS: dict[str, tuple[dict[str, Any] | None, int]] = {
    "get_task": (None, 200),
    "get_reminder": (None, 200),
    "update_task": ({"title": "mine now", "due_at": None}, 200),
    "delete_task": (None, 200),  # an occurrence of a series: deleting it skips it
    "complete_task": (None, 200),
    "reopen_task": (None, 200),
    "add_reminder": ({"before_due": "PT5M"}, 201),
    "get_series": (None, 200),
    "update_series": ({"title": "mine now", "recurrence": {"frequency": "weekly"}}, 200),
    "end_series": (None, 204),
    "forecast": (None, 200),
    "series_history": (None, 200),
    "pause_series": (None, 200),
    "resume_series": (None, 200),
    "skip_series": (None, 200),
    "snooze_reminder": ({"for": "PT10M"}, 200),
    "dismiss_reminder": (None, 200),
    "task_activity": (None, 200),
    "get_subscription": (None, 200),
    "update_subscription": ({"description": "mine now"}, 200),
    "delete_subscription": (None, 204),
    "verify_subscription": (None, 409),  # active already
    "rotate_subscription_secret": (None, 200),
    "subscription_deliveries": (None, 200),
    "redeliver": (None, 202),
}
LISTS = ("/tasks", "/series", "/notifications", "/reminders/upcoming", "/subscriptions")


def operations_with_ids() -> dict[str, tuple[str, str]]:
    """operationId -> (method, path) for each operation whose path takes an `..._id`."""
    return {
        operation["operationId"]: (method, path)
        for path, operations in document()["paths"].items()
        for method, operation in operations.items()
        if re.search(r"\{\w+_id\}", path)
    }


def list_operations() -> set[str]:
    """Paths whose GET answers `{"items": [{"id": ...}, ...]}` without taking an id."""
    schemas = document()["components"]["schemas"]

    def named(schema: dict[str, Any]) -> dict[str, Any]:
        return schemas.get(schema.get("$ref", "").rsplit("/", 1)[-1], {})

    found = set()
    for path, operations in document()["paths"].items():
        answer = operations.get("get", {}).get("responses", {}).get("200", {})
        page = named(answer.get("content", {}).get("application/json", {}).get("schema", {}))
        item = named(page.get("properties", {}).get("items", {}).get("items", {}))
        if "{" not in path and "id" in item.get("properties", {}):
            found.add(path)
    return found


def own_objects(client: FlaskClient, headers: dict[str, str], who: str) -> dict[str, str]:
    """A recurring task with a relative reminder: ids for every `{..._id}` of the API."""
    response = client.post(
        "/tasks",
        json={
            "title": f"{who}'s plants",
            "due_at": "2031-03-28T09:00:00+01:00",
            "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"},
            "reminders": [{"before_due": "PT10M"}],
        },
        headers=headers,
    )
    assert response.status_code == 201, response.json
    task = json_of(response)
    return {
        "task_id": task["id"],
        "series_id": task["series_id"],
        "reminder_id": task["reminders"][0]["id"],
        **own_subscription(who, task["id"]),  # the tokens' subject is `who`
    }


def own_subscription(owner: str, task_id: str) -> dict[str, str]:
    """A verified subscription with one delivered delivery, stored as the flows leave
    them (those flows, with a receiver, are test_subscriptions.py's)."""
    with db.session_scope() as session:
        subscription = Subscription(
            owner=owner, url="https://hooks.example.org/h", secret="whsec_x",
            status="active", verified_at=utcnow(),
        )  # fmt: skip
        session.add(subscription)
        session.flush()
        delivery = WebhookDelivery(
            subscription_id=subscription.id, owner=owner, event_id="e-1", event_source="/s",
            event_type="dev.duetide.task.created.v1", task_id=task_id, data={},
            status="delivered", finished_at=utcnow(),
        )  # fmt: skip
        session.add(delivery)
        session.flush()
        return {"subscription_id": subscription.id, "delivery_id": delivery.id}


def snapshot() -> dict[str, list[str]]:
    with db.session_scope() as session:
        return {
            table.name: sorted(repr(tuple(row)) for row in session.execute(table.select()))
            for table in UNCHANGED_TABLES
        }


def call(client: FlaskClient, operation_id: str, ids: dict[str, str], headers: dict[str, str]):
    method, template = operations_with_ids()[operation_id]
    path = re.sub(r"\{(\w+)\}", lambda m: ids[m.group(1)], template)
    body, _ = ID_OPERATIONS[operation_id]
    return client.open(path, method=method.upper(), json=body, headers=headers)


def test_every_operation_that_takes_an_id_is_in_the_table():
    assert set(operations_with_ids()) == set(ID_OPERATIONS)


@pytest.mark.parametrize("operation_id", sorted(operations_with_ids()))
def test_another_users_object_is_not_found_and_nothing_changes(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str], operation_id: str
) -> None:
    assert operation_id in ID_OPERATIONS, f"add {operation_id} to ID_OPERATIONS"
    own_objects(client, bob, "bob")  # bob has objects of his own: only ownership differs
    alices = own_objects(client, alice, "alice")
    before = snapshot()

    response = call(client, operation_id, alices, bob)

    assert response.status_code == 404, (operation_id, response.json)
    assert response.json["error"]["code"] == "not_found"
    assert snapshot() == before
    _, alice_expects = ID_OPERATIONS[operation_id]
    assert call(client, operation_id, alices, alice).status_code == alice_expects


def test_lists_are_documented_as_checked():
    assert list_operations() == set(LISTS)


def test_lists_never_show_another_users_rows(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    rows = {"alice": own_objects(client, alice, "alice"), "bob": own_objects(client, bob, "bob")}
    with db.session_scope() as session:
        for owner, ids in rows.items():
            notification = Notification(
                owner=owner,
                reminder_id=ids["reminder_id"],
                task_id=ids["task_id"],
                channel="log",
                scheduled_at=utcnow(),
            )
            session.add(notification)
            session.flush()
            ids["notification_id"] = notification.id
    alices = set(rows["alice"].values())
    for path in LISTS:
        response = client.get(path, headers=bob)
        assert response.status_code == 200, (path, response.json)
        listed = {item["id"] for item in json_of(response)["items"]}
        assert listed, f"{path}: bob's own rows are missing"
        assert listed <= set(rows["bob"].values()), path
        assert not listed & alices, path
        seen = str(response.json)
        assert not any(value in seen for value in alices), path


def test_a_command_cannot_complete_another_users_task(
    client: FlaskClient, alice: dict[str, str], bob: dict[str, str]
) -> None:
    alices = own_objects(client, alice, "alice")
    before = snapshot()
    event = {
        "specversion": "1.0", "id": "c-1", "source": "/other-system",
        "type": "dev.duetide.task.complete.v1", "data": {"task_id": alices["task_id"]},
    }  # fmt: skip
    headers = {**bob, "Content-Type": "application/cloudevents+json"}

    response = client.post("/commands", json=event, headers=headers)

    # The answer for an id that names nothing: a 422 on `task_id` (a KafkaSource retries
    # a 404), which says no more about Alice's task than about no task at all.
    assert response.status_code == 422, response.json
    nothing = client.post("/commands", headers=headers, json={
        **event, "id": "c-2", "data": {"task_id": "no-such-task"}})  # fmt: skip
    assert json_of(nothing)["error"]["details"][0]["message"].replace("no-such-task", "X") == (
        json_of(response)["error"]["details"][0]["message"].replace(alices["task_id"], "X")
    )
    assert snapshot() == before
