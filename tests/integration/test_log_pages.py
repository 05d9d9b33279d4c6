"""Logs shown newest first (`GET /notifications`, `GET /subscriptions/{id}/deliveries`)
page by where the last page ended, not by an offset: a row written while a client pages
neither repeats an item on the next page nor hides one, on both backends."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from duetide.storage import db
from duetide.storage.models import Notification, Subscription, WebhookDelivery, utcnow
from tests.support import json_of

START = utcnow() - timedelta(hours=1)


def notification(n: int, at_minute: int) -> Notification:
    return Notification(
        owner="alice",
        reminder_id=f"r{n}",
        task_id=f"t{n}",
        channel="log",
        scheduled_at=START,
        delivered_at=START + timedelta(minutes=at_minute),
    )


def subscription() -> str:
    with db.session_scope() as session:
        made = Subscription(owner="alice", url="https://example.com/hook", secret="s" * 32)
        session.add(made)
        session.flush()
        return made.id


def delivery(subscription_id: str, n: int, at_minute: int) -> WebhookDelivery:
    return WebhookDelivery(
        subscription_id=subscription_id,
        owner="alice",
        event_id=f"e{n}",
        event_source="/duetide/tasks",
        event_type="dev.duetide.task.created.v1",
        task_id=f"t{n}",
        data={},
        created_at=START + timedelta(minutes=at_minute),
    )


def pages(client: FlaskClient, headers: dict[str, str], path: str, between: Callable[[], None]):
    """Every page of `path` (2 items each), with `between()` run after the first."""
    seen: list[str] = []
    cursor = None
    while True:
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        answer = client.get(f"{path}?{query}", headers=headers)
        assert answer.status_code == 200, answer.get_json()
        page = answer.get_json()
        seen += [item["id"] for item in page["items"]]
        if cursor is None:
            between()
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_a_notification_delivered_while_paging_repeats_nothing(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    # Two at the same instant: the id breaks the tie.
    rows = [notification(n, minute) for n, minute in enumerate([1, 2, 3, 3, 4])]
    with db.session_scope() as session:
        session.add_all(rows)
    before = [n.id for n in sorted(rows, key=lambda n: (n.delivered_at, n.id), reverse=True)]

    def deliver_one() -> None:
        with db.session_scope() as session:
            session.add(notification(9, 59))

    seen = pages(client, alice, "/notifications", deliver_one)
    assert seen == before  # the newer one is above the first page, where it belongs
    assert len(client.get("/notifications?limit=200", headers=alice).get_json()["items"]) == 6


def test_a_delivery_made_while_paging_repeats_nothing(
    client: FlaskClient, alice: dict[str, str]
) -> None:
    hook = subscription()
    rows = [delivery(hook, n, minute) for n, minute in enumerate([1, 2, 2, 3, 4])]
    with db.session_scope() as session:
        session.add_all(rows)
    before = [d.id for d in sorted(rows, key=lambda d: (d.created_at, d.id), reverse=True)]

    def deliver_one() -> None:
        with db.session_scope() as session:
            session.add(delivery(hook, 9, 59))

    assert pages(client, alice, f"/subscriptions/{hook}/deliveries", deliver_one) == before


@pytest.mark.parametrize(
    "cursor",
    [
        "abc",  # not base64 JSON
        "WyIyMDI2LTEyLTA2VDA1OjAwOjAwKzAwOjAwIiwi",  # cut short
        "WyIyMDI2LTEyLTA2VDA1OjAwOjAwIiwieCJd",  # a time without an offset
        "WyIwMDAxLTAxLTAxVDAwOjAwOjAwKzE0OjAwIiwieCJd",  # year 1 at +14:00: before UTC's
        "WyIyMDI2LTEyLTA2VDA1OjAwOjAwWiIsMV0",  # an id that is not text
    ],
)
def test_a_forged_log_cursor_is_400(
    client: FlaskClient, alice: dict[str, str], cursor: Any
) -> None:
    hook = subscription()
    for path in ("/notifications", f"/subscriptions/{hook}/deliveries"):
        answer = client.get(f"{path}?cursor={cursor}", headers=alice)
        assert answer.status_code == 400, (path, answer.get_json())
        assert json_of(answer)["error"]["message"].startswith("invalid cursor")
