"""Webhook subscriptions (issue 15), end to end on SQLite and PostgreSQL.

The tasks, activity and notify functions run through functions-framework; the outbox
rows are delivered as the KafkaSources would (binary mode, each row once, oldest first:
task events to activity, delivery tries to notify), and the sweep's retry claim runs
as its ping would. The subscriber is a real HTTP server on loopback that echoes the
url_verification challenge and answers tries with the statuses of its script.
"""

from __future__ import annotations

import functools
import json
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text
from sqlmodel import col, select

from duetide import events
from duetide.channels import netguard, verification
from duetide.channels.webhook import verify_signature
from duetide.config import get_settings
from duetide.services import subscriptions, webhook_deliveries
from duetide.services.schemas import SubscriptionIn, SubscriptionUpdate
from duetide.services.sweep import purge_processed
from duetide.storage import db
from duetide.storage.models import Outbox, Subscription, WebhookDelivery, utcnow
from duetide.storage.outbox import to_cloudevent
from tests.integration.conftest import _reset_caches, function_client
from tests.integration.test_reminders import Receiver, serving_receiver
from tests.support import json_of, wait_for

TASK_TYPES = set(events.TASK_EVENTS)


@pytest.fixture
def receiver(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serving_receiver(monkeypatch) as url:
        yield url


def setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    _reset_caches()


class Eventing:
    """The KafkaSources of the task events and webhooks topics, in one process: each
    outbox row once, oldest first, to activity (task events) or notify (tries)."""

    def __init__(self) -> None:
        self.activity = function_client("activity")
        self.notify = function_client("notify")
        self.sent: dict[str, tuple[dict[str, str], bytes, str]] = {}

    def pump(self, only: str | None = None) -> list[str]:
        """Deliver every row not delivered yet (of topic `only`, if given), until none is
        left; notify's answers."""
        answers: list[str] = []
        while fresh := [row for row in self._undelivered() if only in (None, row[3])]:
            for row_id, headers, body, topic in fresh:
                self.sent[row_id] = (headers, body, topic)
                answer = self._post(topic, headers, body)
                if topic == get_settings().duetide_topic_webhooks:
                    answers.append(answer)
        return answers

    def redeliver(self) -> list[str]:
        """Every row delivered so far, again (a KafkaSource replaying its topics)."""
        return [self._post(topic, h, b) for h, b, topic in list(self.sent.values())]

    def _post(self, topic: str, headers: dict[str, str], body: bytes) -> str:
        settings = get_settings()
        client = self.notify if topic == settings.duetide_topic_webhooks else self.activity
        response = client.post("/", headers=headers, data=body)
        assert response.status_code == 200, response.get_data(as_text=True)
        return str(json_of(response)["status"])

    def _undelivered(self) -> list[tuple[str, dict[str, str], bytes, str]]:
        settings = get_settings()
        topics = (settings.duetide_topic_task_events, settings.duetide_topic_webhooks)
        with db.session_scope(read_only=True) as session:
            rows = session.exec(
                select(Outbox)
                .where(col(Outbox.topic).in_(topics))
                .order_by(col(Outbox.created_at), col(Outbox.id))
            ).all()
            return [
                (row.id, *events.to_http(to_cloudevent(row)), row.topic)
                for row in rows
                if row.id not in self.sent
            ]


@pytest.fixture
def eventing(env: str) -> Eventing:
    return Eventing()


def subscribe(client: FlaskClient, headers: dict[str, str], url: str, **fields: Any) -> dict:
    response = client.post("/subscriptions", json={"url": url, **fields}, headers=headers)
    assert response.status_code == 201, response.json
    return json_of(response)


def make_task(client: FlaskClient, headers: dict[str, str], title: str) -> str:
    response = client.post("/tasks", json={"title": title}, headers=headers)
    assert response.status_code == 201, response.json
    return str(json_of(response)["id"])


def deliveries(client: FlaskClient, headers: dict[str, str], subscription_id: str) -> list[dict]:
    response = client.get(f"/subscriptions/{subscription_id}/deliveries", headers=headers)
    assert response.status_code == 200, response.json
    return list(json_of(response)["items"])


def signed_correctly(request: dict[str, Any], secret: str) -> bool:
    headers = request["headers"]
    return verify_signature(
        secret.encode(),
        headers.get("Duetide-Signature"),
        request["body"],
        time.time(),
        bound=(headers["ce-id"], headers["ce-type"]),
    )


def task_events() -> list[Outbox]:
    with db.session_scope(read_only=True) as session:
        topic = get_settings().duetide_topic_task_events
        return list(session.exec(select(Outbox).where(Outbox.topic == topic)).all())


def test_a_subscriber_gets_each_event_once_per_delivery_id_signed_as_a_binary_cloudevent(
    client, alice, receiver, eventing
):
    made = subscribe(client, alice, receiver, description="sync")
    assert made["status"] == "active" and made["secret"].startswith("whsec_")
    assert len(Receiver.challenges) == 1
    ids = [make_task(client, alice, f"task {i}") for i in range(4)]
    client.patch(f"/tasks/{ids[0]}", json={"title": "renamed"}, headers=alice)
    client.post(f"/tasks/{ids[1]}/complete", headers=alice)
    client.post(f"/tasks/{ids[1]}/reopen", headers=alice)
    client.delete(f"/tasks/{ids[2]}", headers=alice)

    answers = eventing.pump()

    published = {row.id: row for row in task_events()}
    assert answers == ["delivered"] * len(published)
    assert {r["headers"]["ce-id"] for r in Receiver.seen} == set(published)
    keys = [r["headers"]["Idempotency-Key"] for r in Receiver.seen]
    assert len(set(keys)) == len(keys) == len(published)
    for request in Receiver.seen:
        headers = request["headers"]
        row = published[headers["ce-id"]]
        assert headers["ce-specversion"] == "1.0"
        assert headers["ce-type"] == row.type and headers["ce-source"] == row.source
        assert headers["ce-subject"] == row.key
        assert headers["Content-Type"] == "application/json"
        assert signed_correctly(request, made["secret"])
        assert not signed_correctly(request, "whsec_another")
        assert request["body"] == events.to_http(to_cloudevent(row))[1]  # the event's data
    # A forged type with the same body and signature does not verify.
    forged = dict(Receiver.seen[0], headers={**Receiver.seen[0]["headers"], "ce-type": "x"})
    assert not signed_correctly(forged, made["secret"])

    # Redelivered task events store nothing twice; redelivered tries send nothing.
    before = len(Receiver.seen)
    eventing.redeliver()
    assert eventing.pump() == []
    assert len(Receiver.seen) == before
    log = deliveries(client, alice, made["id"])
    assert len(log) == len(published)
    assert {d["status"] for d in log} == {"delivered"}
    assert all(len(d["tries"]) == 1 and d["tries"][0]["status"] == 200 for d in log)


def test_a_field_beyond_the_task_event_is_not_passed_on_to_subscribers(
    client, alice, receiver, eventing
):
    """The activity function stored the event's data as it came: a producer that could
    write to the topic had its own fields delivered under duetide's signature."""
    subscribe(client, alice, receiver)
    make_task(client, alice, "t")
    ((row_id, headers, body, _topic),) = eventing._undelivered()
    eventing.sent[row_id] = (headers, body, "")
    forged = json.loads(body) | {"injected": "by the producer"}
    answer = eventing.activity.post("/", headers=headers, data=json.dumps(forged))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert eventing.pump() == ["delivered"]
    (request,) = Receiver.seen
    delivered = json.loads(request["body"])
    assert "injected" not in delivered and delivered == json.loads(body)


def test_a_url_with_a_path_outside_ascii_is_verified_and_sent_to(client, alice, receiver, eventing):
    """Its challenge was a 500 (http.client cannot write `é` in a request line) after the
    subscription was stored: now the path goes percent-encoded, as a browser sends it."""
    made = subscribe(client, alice, f"{receiver}/caf\u00e9")
    assert made["status"] == "active" and made["url"] == f"{receiver}/caf\u00e9"
    make_task(client, alice, "t")
    assert eventing.pump() == ["delivered"]


def test_only_the_chosen_types_of_the_owner_are_sent(client, alice, bob, receiver, eventing):
    subscribe(client, alice, receiver, types=[events.TASK_COMPLETED])
    task = make_task(client, alice, "mine")
    make_task(client, bob, "not mine")
    bob_task = make_task(client, bob, "not mine either")
    client.post(f"/tasks/{task}/complete", headers=alice)
    client.post(f"/tasks/{bob_task}/complete", headers=bob)
    eventing.pump()
    assert [(r["headers"]["ce-type"], r["headers"]["ce-subject"]) for r in Receiver.seen] == [
        (events.TASK_COMPLETED, task)
    ]


def test_an_unverified_url_gets_nothing_but_the_challenge_until_it_echoes(
    client, alice, receiver, eventing
):
    Receiver.echo = False
    made = subscribe(client, alice, receiver)
    assert made["status"] == "unverified"
    assert "without the challenge" in made["verification_error"]
    make_task(client, alice, "before verification")
    eventing.pump()
    assert Receiver.seen == [] and deliveries(client, alice, made["id"]) == []
    refused = client.post(f"/subscriptions/{made['id']}/verify", headers=alice)
    assert refused.status_code == 422
    Receiver.echo = True
    verified = client.post(f"/subscriptions/{made['id']}/verify", headers=alice)
    assert verified.status_code == 200 and json_of(verified)["status"] == "active"
    assert client.post(f"/subscriptions/{made['id']}/verify", headers=alice).status_code == 409
    make_task(client, alice, "after verification")
    eventing.pump()
    assert len(Receiver.seen) == 1


@pytest.mark.parametrize(
    "url",
    [
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]:9/hook",
        "ftp://example.org/hook",
        "http://user:pass@example.org/hook",
    ],
)
def test_an_unsafe_url_is_refused_and_nothing_is_stored(client, alice, env, url):
    response = client.post("/subscriptions", json={"url": url}, headers=alice)
    assert response.status_code == 422, response.json
    assert json_of(response)["error"]["details"][0]["field"] == "url"
    assert json_of(client.get("/subscriptions", headers=alice))["items"] == []


def test_a_refused_name_says_no_more_than_a_name_that_does_not_exist(
    client, alice, env, monkeypatch
):
    """Else anyone could map the cluster's names: which exist, and their addresses (with
    no host allowlist, the default; the tests' own lets loopback through)."""
    setting(monkeypatch, "DUETIDE_WEBHOOK_HOSTS", "")
    names = {"localhost": "127.0.0.1", "db.internal.example": "10.3.0.7"}

    def resolve(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple]:
        if host not in names:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (names[host], port))]

    check_url = netguard.check_url
    monkeypatch.setattr(netguard, "check_url", functools.partial(check_url, resolver=resolve))
    answers = []
    for host in ("localhost", "db.internal.example", "nowhere.example"):
        response = client.post("/subscriptions", json={"url": f"http://{host}/"}, headers=alice)
        assert response.status_code == 422, response.json
        message = json_of(response)["error"]["details"][0]["message"]
        answers.append(message.replace(host.lower(), "<host>"))
    assert len(set(answers)) == 1 and "127." not in answers[0] and "10." not in answers[0]


def test_bad_requests_are_4xx_and_change_nothing(client, alice, receiver):
    for body in (
        {"url": receiver, "types": ["dev.duetide.reminder.due.v1"]},
        {"url": receiver, "types": []},
        {"url": receiver, "description": "x" * 201},
        {"url": receiver, "secret": "mine"},
        {"url": ""},
        {},
    ):
        response = client.post("/subscriptions", json=body, headers=alice)
        assert response.status_code == 422, (body, response.json)
    assert json_of(client.get("/subscriptions", headers=alice))["items"] == []
    assert Receiver.challenges == []


def test_a_transient_failure_is_retried_by_the_sweep_with_the_same_delivery_id(
    client, alice, receiver, eventing
):
    made = subscribe(client, alice, receiver)
    Receiver.script = [503]
    make_task(client, alice, "flaky")
    assert eventing.pump() == ["retry"]
    (pending,) = deliveries(client, alice, made["id"])
    assert pending["status"] == "pending" and pending["tries"][0]["status"] == 503
    base = get_settings().duetide_subscription_retry_base_s
    now = utcnow()
    assert webhook_deliveries.claim_retries(now + timedelta(seconds=base / 2), 100) == 0
    assert webhook_deliveries.claim_retries(now + timedelta(seconds=base + 1), 100) == 1
    assert eventing.pump() == ["delivered"]
    first, second = Receiver.seen
    assert first["headers"]["Idempotency-Key"] == second["headers"]["Idempotency-Key"]
    assert first["body"] == second["body"]
    (done,) = deliveries(client, alice, made["id"])
    assert done["status"] == "delivered" and done["attempt"] == 2
    assert [t["status"] for t in done["tries"]] == [503, 200]
    assert json_of(client.get(f"/subscriptions/{made['id']}", headers=alice))["failures"] == 0


def test_a_refusal_fails_the_delivery_at_once(client, alice, receiver, eventing):
    made = subscribe(client, alice, receiver)
    Receiver.script = [410]
    make_task(client, alice, "refused")
    assert eventing.pump() == ["failed"]
    (failed,) = deliveries(client, alice, made["id"])
    assert failed["status"] == "failed" and failed["next_attempt_at"] is None
    assert webhook_deliveries.claim_retries(utcnow() + timedelta(days=1), 100) == 0

    # Its owner sends it again, as the same delivery.
    redone = client.post(
        f"/subscriptions/{made['id']}/deliveries/{failed['id']}/redeliver", headers=alice
    )
    assert redone.status_code == 202, redone.json
    assert eventing.pump() == ["delivered"]
    assert len({r["headers"]["Idempotency-Key"] for r in Receiver.seen}) == 1
    (done,) = deliveries(client, alice, made["id"])
    assert [t["status"] for t in done["tries"]] == [410, 200]


def test_persistent_failure_disables_the_subscription_until_its_owner_enables_it(
    client, alice, receiver, eventing, monkeypatch
):
    setting(monkeypatch, "DUETIDE_SUBSCRIPTION_MAX_ATTEMPTS", "3")
    setting(monkeypatch, "DUETIDE_SUBSCRIPTION_RETRY_BASE_S", "0")
    setting(monkeypatch, "DUETIDE_SUBSCRIPTION_DISABLE_AFTER_S", "0")
    eventing = Eventing()
    made = subscribe(client, alice, receiver)
    Receiver.script = [500] * 3
    make_task(client, alice, "down")
    assert eventing.pump() == ["retry"]
    for expected in ("retry", "failed"):
        assert webhook_deliveries.claim_retries(utcnow(), 100) == 1
        assert eventing.pump() == [expected]
    shown = json_of(client.get(f"/subscriptions/{made['id']}", headers=alice))
    assert shown["status"] == "disabled" and shown["failures"] == 3
    assert "3 tries in a row failed" in shown["disabled_reason"]

    make_task(client, alice, "while disabled")
    eventing.pump()
    assert len(Receiver.seen) == 3 and len(deliveries(client, alice, made["id"])) == 1

    enabled = client.patch(f"/subscriptions/{made['id']}", json={"active": True}, headers=alice)
    assert enabled.status_code == 200, enabled.json
    assert json_of(enabled)["status"] == "active" and json_of(enabled)["failures"] == 0
    assert len(Receiver.challenges) == 1  # still verified: no new challenge
    make_task(client, alice, "after")
    assert eventing.pump() == ["delivered"]


def test_a_subscription_disabled_by_its_owner_keeps_pending_tries_for_later(
    client, alice, receiver, eventing
):
    made = subscribe(client, alice, receiver)
    Receiver.script = [503]
    make_task(client, alice, "pending")
    assert eventing.pump() == ["retry"]
    client.patch(f"/subscriptions/{made['id']}", json={"active": False}, headers=alice)
    later = utcnow() + timedelta(hours=1)
    assert webhook_deliveries.claim_retries(later, 100) == 0
    client.patch(f"/subscriptions/{made['id']}", json={"active": True}, headers=alice)
    assert webhook_deliveries.claim_retries(later, 100) == 1
    assert eventing.pump() == ["delivered"]


def test_an_outage_longer_than_every_lease_fails_no_delivery_that_was_never_tried(
    client, alice, receiver, eventing
):
    """notify (or the broker) away: each lease that ran out was counted as a try, and
    after eight of them (40 minutes) the delivery failed without a single POST. A try
    whose event was never taken is published again as the same attempt, less often the
    longer it has waited, and sent once when notify is back."""
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "during the outage")
    eventing.pump(only=get_settings().duetide_topic_task_events)  # activity runs, notify not
    settings = get_settings()
    lease = timedelta(seconds=settings.duetide_subscription_lease_s)
    leases = 3 * settings.duetide_subscription_max_attempts
    start = utcnow()
    republished = sum(
        webhook_deliveries.claim_retries(start + k * (lease + timedelta(seconds=1)), 100)
        for k in range(1, leases + 1)
    )
    (delivery,) = deliveries(client, alice, made["id"])
    assert (delivery["status"], delivery["attempt"], delivery["tries"]) == ("pending", 1, [])
    assert 0 < republished < leases / 2  # backed off: not one more event every lease
    answers = eventing.pump()  # notify is back: every queued copy of the try arrives
    assert sorted(answers) == ["delivered"] + ["duplicate"] * republished
    assert len(Receiver.seen) == 1
    (delivery,) = deliveries(client, alice, made["id"])
    assert (delivery["status"], delivery["attempt"]) == ("delivered", 1)


def test_the_sweep_parks_a_disabled_subscriptions_tries_and_enabling_resumes_them(
    client, alice, receiver, eventing, monkeypatch
):
    """A disabled subscription keeps its pending tries; left due, every ping's claim read
    past all of them (300,000: 120-190 ms a ping). The claim parks them, out of the due
    range, and enabling the subscription makes them due again, and only them."""
    made = subscribe(client, alice, receiver)
    Receiver.script = [503, 503, 503]
    for title in ("one", "two", "three"):
        make_task(client, alice, title)
    assert eventing.pump() == ["retry"] * 3
    client.patch(f"/subscriptions/{made['id']}", json={"active": False}, headers=alice)
    later = utcnow() + timedelta(hours=1)
    assert webhook_deliveries.claim_retries(later, 100) == 0
    assert [d["status"] for d in deliveries(client, alice, made["id"])] == ["parked"] * 3
    assert due_at(later + webhook_deliveries.PARKED) == 0  # out of the claim's range

    monkeypatch.setattr(webhook_deliveries, "RESUME_BATCH", 2)  # the request resumes two
    client.patch(f"/subscriptions/{made['id']}", json={"active": True}, headers=alice)
    assert sorted(d["status"] for d in deliveries(client, alice, made["id"])) == [
        "parked", "pending", "pending",
    ]  # fmt: skip
    assert webhook_deliveries.claim_retries(utcnow(), 100) == 3  # the sweep goes on first
    with db.session_scope(read_only=True) as session:
        marked = session.get(Subscription, made["id"])
        assert marked is not None and marked.resuming is False
    assert eventing.pump() == ["delivered"] * 3


def test_enabling_an_active_subscription_moves_no_retry_forward(client, alice, receiver, eventing):
    """`{"active": true}` on an active subscription made every pending try due at once:
    a client sending it with each save skipped every backoff."""
    made = subscribe(client, alice, receiver)
    Receiver.script = [503]
    make_task(client, alice, "one")
    assert eventing.pump() == ["retry"]
    (before,) = deliveries(client, alice, made["id"])
    client.patch(f"/subscriptions/{made['id']}", json={"active": True}, headers=alice)
    (after,) = deliveries(client, alice, made["id"])
    assert after["next_attempt_at"] == before["next_attempt_at"] and after["status"] == "pending"
    assert due_at(utcnow()) == 0


def test_a_parked_delivery_whose_resume_never_ran_is_due_again_a_day_later(
    client, alice, receiver, eventing
):
    """The process that enabled the subscription died before its `resume`: the parked
    tries are looked at again after `PARKED`, and sent, as its subscription is active."""
    made = subscribe(client, alice, receiver)
    Receiver.script = [503]
    make_task(client, alice, "one")
    assert eventing.pump() == ["retry"]
    client.patch(f"/subscriptions/{made['id']}", json={"active": False}, headers=alice)
    webhook_deliveries.claim_retries(utcnow() + timedelta(hours=1), 100)
    with db.session_scope() as session:  # enabled without the resume
        session.exec(text("UPDATE subscription SET status = 'active', disabled_at = NULL"))  # type: ignore[call-overload]
    a_day_later = utcnow() + timedelta(hours=1) + webhook_deliveries.PARKED
    assert webhook_deliveries.claim_retries(a_day_later, 100) == 0  # due again, now
    assert webhook_deliveries.claim_retries(a_day_later, 100) == 1
    assert eventing.pump() == ["delivered"]


def test_a_try_notify_never_takes_is_given_up_after_its_publications(
    client, alice, receiver, eventing
):
    """Published again as the same attempt while notify never took it, without a bound:
    a try notify refuses (a dead letter each time) went on until the purge."""
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "refused by notify")
    eventing.pump(only=get_settings().duetide_topic_task_events)
    at = utcnow()
    for _ in range(webhook_deliveries.MAX_REPUBLISHES):
        at += webhook_deliveries.REPUBLISH_CAP + timedelta(seconds=1)
        assert webhook_deliveries.claim_retries(at, 100) == 1  # published again
    (delivery,) = deliveries(client, alice, made["id"])
    assert (delivery["status"], delivery["attempt"]) == ("pending", 1)
    with db.session_scope(read_only=True) as session:
        tries = session.exec(select(Outbox).where(Outbox.type == events.WEBHOOK_DELIVERY)).all()
    assert len(tries) == 1 + webhook_deliveries.MAX_REPUBLISHES
    at += webhook_deliveries.REPUBLISH_CAP + timedelta(seconds=1)
    assert webhook_deliveries.claim_retries(at, 100) == 0
    (delivery,) = deliveries(client, alice, made["id"])
    assert (delivery["status"], delivery["attempt"]) == ("failed", 1)
    assert "never taken" in delivery["tries"][-1]["error"]
    assert Receiver.seen == []


def due_at(moment) -> int:
    """Deliveries the claim would take at `moment`."""
    with db.session_scope(read_only=True) as session:
        query = select(WebhookDelivery).where(
            col(WebhookDelivery.status) == "pending",
            col(WebhookDelivery.next_attempt_at) <= moment,
        )
        return len(session.exec(query).all())


def test_a_new_url_is_verified_before_it_gets_anything(client, alice, receiver, eventing):
    made = subscribe(client, alice, receiver)
    Receiver.echo = False
    moved = client.patch(
        f"/subscriptions/{made['id']}", json={"url": receiver + "/moved"}, headers=alice
    )
    assert json_of(moved)["status"] == "unverified"
    make_task(client, alice, "nothing for an unverified URL")
    eventing.pump()
    assert Receiver.seen == []


def test_subscriptions_are_their_owners_alone(client, alice, bob, receiver, eventing):
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "private")
    eventing.pump()
    (delivery,) = deliveries(client, alice, made["id"])
    base = f"/subscriptions/{made['id']}"
    for method, path in (
        ("get", base),
        ("patch", base),
        ("delete", base),
        ("post", f"{base}/verify"),
        ("get", f"{base}/deliveries"),
        ("post", f"{base}/deliveries/{delivery['id']}/redeliver"),
    ):
        kwargs = {"json": {"description": "mine"}} if method == "patch" else {}
        response = getattr(client, method)(path, headers=bob, **kwargs)
        assert response.status_code == 404, (method, path, response.json)
    assert json_of(client.get("/subscriptions", headers=bob))["items"] == []
    assert "secret" not in json_of(client.get(base, headers=alice))
    assert client.delete(base, headers=alice).status_code == 204
    assert client.get(base, headers=alice).status_code == 404


def test_the_number_of_subscriptions_per_user_is_bounded(client, alice, receiver, monkeypatch):
    setting(monkeypatch, "DUETIDE_SUBSCRIPTIONS_PER_USER", "2")
    setting(monkeypatch, "DUETIDE_VERIFICATION_SENDS_PER_HOUR", "100")
    subscribe(client, alice, receiver)
    subscribe(client, alice, receiver)
    response = client.post("/subscriptions", json={"url": receiver}, headers=alice)
    assert response.status_code == 409 and "at most 2" in json_of(response)["error"]["message"]


def test_of_two_removals_at_once_one_is_204_and_the_other_404(
    env, client, alice, receiver, monkeypatch
):
    """Both read the subscription before either deleted it, and both answered 204 (a
    PostgreSQL audit, 2026-12-07), the second with SQLAlchemy's warning of a row it
    expected to delete. PostgreSQL only: SQLite's write lock, taken at BEGIN, lets the
    second read only once the first has committed."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite's write lock keeps the two removals apart")
    made = subscribe(client, alice, receiver)
    both_read = threading.Barrier(2, timeout=10)
    read = subscriptions.read

    def read_then_wait(*args: Any, **kwargs: Any) -> Subscription:
        found = read(*args, **kwargs)
        both_read.wait()
        return found

    monkeypatch.setattr(subscriptions, "read", read_then_wait)
    with ThreadPoolExecutor(2) as pool:
        removals = [
            pool.submit(lambda: function_client("tasks").delete(
                f"/subscriptions/{made['id']}", headers=alice
            ))
            for _ in range(2)
        ]  # fmt: skip
        statuses = sorted(removal.result().status_code for removal in removals)
    assert statuses == [204, 404]


def test_concurrent_creates_never_exceed_the_bound(env, receiver, monkeypatch):
    setting(monkeypatch, "DUETIDE_SUBSCRIPTIONS_PER_USER", "3")
    setting(monkeypatch, "DUETIDE_VERIFICATION_SENDS_PER_HOUR", "100")
    from tests.integration.conftest import auth_headers

    headers = auth_headers("carol")
    statuses: list[int] = []
    start = threading.Barrier(8)

    def create() -> None:
        api = function_client("tasks")
        start.wait()
        response = api.post("/subscriptions", json={"url": receiver}, headers=headers)
        statuses.append(response.status_code)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] * 3 + [409] * 5
    with db.session_scope(read_only=True) as session:
        assert (
            len(session.exec(select(Subscription).where(Subscription.owner == "carol")).all()) == 3
        )


def test_one_try_is_sent_once_when_its_event_arrives_twice_at_once(
    client, alice, receiver, eventing
):
    subscribe(client, alice, receiver)
    make_task(client, alice, "raced")
    eventing.pump(only=get_settings().duetide_topic_task_events)
    (try_row,) = eventing._undelivered()
    answers: list[str] = []
    start = threading.Barrier(4)

    def deliver() -> None:
        notify = function_client("notify")
        start.wait()
        response = notify.post("/", headers=try_row[1], data=try_row[2])
        answers.append(str(json_of(response)["status"]))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == ["delivered"] + ["duplicate"] * 3
    assert len(Receiver.seen) == 1


def test_an_event_fanned_out_while_its_subscription_is_deleted_is_retried_not_dropped(
    env, client, alice, receiver, eventing
):
    """The insert of a try for a subscription deleted meanwhile broke its foreign key,
    which `run_once` took for a concurrent delivery of the same event: `200 duplicate`,
    the activity entry rolled back with it, and the event was never logged."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the delete and the fan-out cannot overlap")
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "during the delete")
    ((_, headers, body, _topic),) = eventing._undelivered()
    with db.get_engine().connect() as deleting:
        gone = deleting.begin()  # the owner's DELETE, not committed yet
        for table, key in (("webhook_delivery", "subscription_id"), ("subscription", "id")):
            deleting.execute(text(f"DELETE FROM {table} WHERE {key} = :id"), {"id": made["id"]})
        answers: list[Any] = []
        delivery = threading.Thread(
            target=lambda: answers.append(eventing.activity.post("/", headers=headers, data=body))
        )
        delivery.start()
        wait_for(_waiting_on_a_lock, "the fan-out to wait for the delete")
        gone.commit()
        delivery.join(timeout=30)
    (first,) = answers
    assert first.status_code == 503, first.get_data(as_text=True)  # retried, not "duplicate"
    assert _count("activity") == 0 and _count("processed_event") == 0

    assert str(json_of(eventing.activity.post("/", headers=headers, data=body))["status"]) == (
        "processed"
    )
    assert _count("activity") == 1 and _count("webhook_delivery") == 0


def test_a_new_url_is_not_activated_by_the_echo_of_the_old_one_arriving_meanwhile(
    env, monkeypatch: pytest.MonkeyPatch
):
    """The change read the subscription unlocked; the old URL's echo, recorded between
    that read and its commit, made it active, and the ORM then wrote the new URL but not
    `unverified` (the value it had read): a URL that never echoed was active, and was
    sent the user's signed events."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the change and the echo cannot overlap")
    old, new, alice_id = "https://old.example/hook", "https://new.example/hook", "alice"
    with db.session_scope() as session:
        made, old_challenge = subscriptions.create(
            session, alice_id, SubscriptionIn(url=old), utcnow()
        )
    read, go_on = threading.Event(), threading.Event()
    challenge = subscriptions._challenge

    def paused(*args: Any) -> Any:  # the change has read the row, and not committed
        read.set()
        go_on.wait(30)
        return challenge(*args)

    monkeypatch.setattr(subscriptions, "_challenge", paused)

    def change() -> None:
        with db.session_scope() as session:
            subscriptions.update(session, alice_id, made.id, SubscriptionUpdate(url=new), utcnow())

    changing = threading.Thread(target=change)
    changing.start()
    assert read.wait(30)
    echo = threading.Thread(
        target=verification._record_subscription, args=(old_challenge, utcnow())
    )
    echo.start()
    try:
        wait_for(_waiting_on_a_lock, "the old URL's echo to wait for the change")
    finally:
        go_on.set()
        changing.join(timeout=30)
        echo.join(timeout=30)
    with db.session_scope(read_only=True) as session:
        row = session.get(Subscription, made.id)
        assert row is not None
        assert (row.url, row.status, row.verified_at) == (new, "unverified", None)


def test_removing_a_subscription_while_a_try_is_recorded_waits_instead_of_deadlocking(
    env, client, alice, receiver
):
    """A try's record locks its delivery, then the subscription; removal locked the
    subscription first, then deleted the deliveries: PostgreSQL broke the deadlock
    after a second by failing one side."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the two cannot overlap")
    made = subscribe(client, alice, receiver)
    with db.session_scope() as session:
        delivery = WebhookDelivery(
            subscription_id=made["id"], owner="alice", event_id="e-1", event_source="/tasks",
            event_type="t", task_id="t-1", data={},
        )  # fmt: skip
        session.add(delivery)
    failures: list[BaseException] = []

    def remove() -> None:
        try:
            with db.session_scope() as session:
                subscriptions.remove(session, "alice", made["id"])
        except BaseException as error:  # reported below
            failures.append(error)

    with db.get_engine().connect() as recording:
        record = recording.begin()  # as `webhook_deliveries._record` does
        recording.execute(
            text("SELECT id FROM webhook_delivery WHERE id = :id FOR UPDATE"), {"id": delivery.id}
        )
        removing = threading.Thread(target=remove)
        removing.start()
        wait_for(_waiting_on_a_lock, "the removal to wait for the try's record")
        try:
            recording.execute(
                text("SELECT id FROM subscription WHERE id = :id FOR UPDATE"), {"id": made["id"]}
            )
            record.commit()
        finally:
            removing.join(timeout=30)
    assert failures == []
    assert _count("subscription") == 0


def _waiting_on_a_lock() -> bool:
    """From a transaction of its own: pg_stat_activity is a snapshot per transaction."""
    with db.get_engine().connect() as connection:
        waiting = connection.execute(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND wait_event_type = 'Lock'"
            )
        )
        return bool(waiting.scalar())


def _count(table: str) -> int:
    with db.get_engine().connect() as connection:
        return int(connection.execute(text(f"SELECT count(*) FROM {table}")).scalar_one())


def test_a_rotated_secret_signs_beside_the_new_one_for_a_day(client, alice, receiver, eventing):
    made = subscribe(client, alice, receiver)
    rotated = client.post(f"/subscriptions/{made['id']}/secret", headers=alice)
    assert rotated.status_code == 200, rotated.json
    new = json_of(rotated)["secret"]
    assert new != made["secret"] and new.startswith("whsec_")
    assert "secret" not in json_of(client.get(f"/subscriptions/{made['id']}", headers=alice))
    make_task(client, alice, "during the overlap")
    eventing.pump()
    (during,) = Receiver.seen
    assert signed_correctly(during, new) and signed_correctly(during, made["secret"])

    with db.session_scope() as session:  # the day has passed
        row = session.get(Subscription, made["id"])
        assert row is not None and row.previous_secret_until is not None
        row.previous_secret_until = utcnow() - timedelta(seconds=1)
        session.add(row)
    make_task(client, alice, "after the overlap")
    eventing.pump()
    after = Receiver.seen[1]
    assert signed_correctly(after, new) and not signed_correctly(after, made["secret"])
    # A second rotation retires the first secret at once.
    client.post(f"/subscriptions/{made['id']}/secret", headers=alice)
    make_task(client, alice, "after two rotations")
    eventing.pump()
    assert not signed_correctly(Receiver.seen[2], made["secret"])


def test_deliveries_are_purged_with_the_activity_log(client, alice, receiver, eventing):
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "old")
    eventing.pump()
    assert len(deliveries(client, alice, made["id"])) == 1
    retention = timedelta(days=get_settings().duetide_activity_retention_days)
    purge_processed(utcnow() + retention + timedelta(minutes=1))
    assert deliveries(client, alice, made["id"]) == []
    with db.session_scope(read_only=True) as session:
        assert session.exec(select(WebhookDelivery)).all() == []


def test_a_claim_during_an_enabling_does_not_park_what_the_enabling_resumes(
    env, client, alice, receiver, eventing
):
    """The claim read a subscription as disabled while its owner was enabling it, and
    parked its tries after the `resume` had looked: they waited a day. The claim locks
    the subscriptions of what it takes (SKIP LOCKED): one being enabled is left alone."""
    if not env.startswith("postgresql"):
        pytest.skip("SQLite has one writer: the claim and the enabling cannot overlap")
    made = subscribe(client, alice, receiver)
    Receiver.script = [503]
    make_task(client, alice, "one")
    assert eventing.pump() == ["retry"]
    client.patch(f"/subscriptions/{made['id']}", json={"active": False}, headers=alice)
    later = utcnow() + timedelta(hours=1)
    with db.get_engine().connect() as enabling:
        change = enabling.begin()  # the owner's PATCH, holding the row, not committed yet
        enabling.execute(
            text("UPDATE subscription SET status = 'active' WHERE id = :id"), {"id": made["id"]}
        )
        assert webhook_deliveries.claim_retries(later, 100) == 0
        (waiting,) = deliveries(client, alice, made["id"])
        assert waiting["status"] == "pending"  # not parked
        change.commit()
    assert webhook_deliveries.claim_retries(later, 100) == 1
    assert eventing.pump() == ["delivered"]


def test_a_subscription_created_again_with_its_key_is_made_once(
    client, alice, receiver, monkeypatch
):
    """A system whose connection dropped after `POST /subscriptions` sends it again with
    its key: the subscription the first made, as it is now, without its secret (the
    key's record keeps none), its URL neither checked nor challenged again; another key
    makes another."""
    keyed = {**alice, "Idempotency-Key": "subscribe-ci-hook-1"}
    body = {"url": receiver, "description": "ci"}
    first = client.post("/subscriptions", json=body, headers=keyed)
    assert first.status_code == 201, first.json
    assert first.json["secret"] and first.json["status"] == "active"

    again = client.post("/subscriptions", json=body, headers=keyed)

    assert again.status_code == 201, again.json
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert again.json["id"] == first.json["id"] and again.json["status"] == "active"
    assert again.json.get("secret") is None
    assert len(Receiver.challenges) == 1
    setting(monkeypatch, "DUETIDE_ALLOW_LOOPBACK_WEBHOOKS", "false")  # the URL now refused
    assert client.post("/subscriptions", json=body, headers=keyed).status_code == 201
    setting(monkeypatch, "DUETIDE_ALLOW_LOOPBACK_WEBHOOKS", "true")
    other = client.post("/subscriptions", json=body, headers={**alice, "Idempotency-Key": "2"})
    assert other.status_code == 201 and other.json["id"] != first.json["id"]
    changed = client.post("/subscriptions", json={**body, "description": "x"}, headers=keyed)
    assert changed.status_code == 422  # the key names another request
    with db.session_scope(read_only=True) as session:
        assert len(subscriptions.listed(session, "alice")) == 2


def test_copies_of_a_keyed_subscription_sent_at_once_make_one(client, alice, receiver):
    """Copies sent at once over several connections: one subscription, every answer its
    (on PostgreSQL the claim's insert waits for the first copy's commit)."""
    keyed = {**alice, "Idempotency-Key": "subscribe-at-once"}
    copies = 6
    start = threading.Barrier(copies)

    def sender(_: int) -> tuple[int, str]:
        own = client.application.test_client()
        start.wait(timeout=30)
        answer = own.post("/subscriptions", json={"url": receiver}, headers=keyed)
        return answer.status_code, str(answer.json.get("id", answer.json))

    with ThreadPoolExecutor(copies) as pool:
        results = list(pool.map(sender, range(copies)))

    assert {status for status, _ in results} == {201}, results
    assert len({made for _, made in results}) == 1
    with db.session_scope(read_only=True) as session:
        assert len(subscriptions.listed(session, "alice")) == 1


def test_a_try_started_late_in_its_lease_is_not_claimed_again_while_it_runs(
    client, alice, receiver, eventing, monkeypatch
):
    """notify takes a try a second before its lease (counted from the claim) ends, and a
    ping comes while the receiver answers: the ping claimed the next try, the receiver got
    the event twice and the first try's 200 was dropped as an older attempt's."""
    made = subscribe(client, alice, receiver)
    make_task(client, alice, "taken late")
    eventing.pump(only=get_settings().duetide_topic_task_events)
    ((row_id, headers, body, topic),) = eventing._undelivered()  # the try, not taken yet
    eventing.sent[row_id] = (headers, body, topic)  # taken here, below
    event = events.WebhookDeliveryEvent.model_validate(json.loads(body))
    lease = timedelta(seconds=get_settings().duetide_subscription_lease_s)
    taken_at = utcnow() + lease - timedelta(seconds=1)
    answering, release = threading.Event(), threading.Event()
    answer = Receiver.do_POST

    def slow(handler: Receiver) -> None:
        answering.set()
        release.wait(10)
        answer(handler)

    monkeypatch.setattr(Receiver, "do_POST", slow)
    statuses: list[str] = []
    worker = threading.Thread(
        target=lambda: statuses.append(webhook_deliveries.send(event, taken_at))
    )
    worker.start()
    assert answering.wait(10)
    claimed = webhook_deliveries.claim_retries(taken_at + timedelta(seconds=2), 100)
    release.set()
    worker.join(10)
    assert (claimed, statuses) == (0, ["delivered"])
    assert eventing.pump() == []  # nothing claimed: no second try on its way
    assert len(Receiver.seen) == 1
    (delivery,) = deliveries(client, alice, made["id"])
    assert (delivery["status"], delivery["attempt"]) == ("delivered", 1)
    assert [one["status"] for one in delivery["tries"]] == [200]


def test_a_url_changed_while_disabled_is_verified_by_its_echo_for_the_enabling(
    client, alice, receiver, monkeypatch
):
    """The new URL's challenge was sent and echoed, the echo thrown away (the subscription
    was not `unverified`), and the enabling charged another: two of the hourly budget a
    fix, a 429 once it was spent though the URL had echoed."""
    setting(monkeypatch, "DUETIDE_VERIFICATION_SENDS_PER_HOUR", "2")
    made = subscribe(client, alice, receiver)
    changed = client.patch(f"/subscriptions/{made['id']}", json={"active": False}, headers=alice)
    assert changed.json["status"] == "disabled"
    fixed = client.patch(
        f"/subscriptions/{made['id']}", json={"url": receiver + "/v2"}, headers=alice
    )
    assert fixed.status_code == 200 and fixed.json["status"] == "disabled"
    assert len(Receiver.challenges) == 2  # the new URL's, echoed
    shown = client.get(f"/subscriptions/{made['id']}", headers=alice).json
    assert shown["verified_at"] is not None

    enabled = client.patch(f"/subscriptions/{made['id']}", json={"active": True}, headers=alice)
    assert enabled.status_code == 200, enabled.json
    assert enabled.json["status"] == "active"
    assert len(Receiver.challenges) == 2  # nothing charged again


def test_a_redelivery_has_the_retries_of_a_new_delivery(
    client, alice, receiver, eventing, monkeypatch
):
    """A delivery that spent its tries got one from a redelivery: the receiver's one 503
    while it came back failed it for good (the policy counted tries since the first)."""
    setting(monkeypatch, "DUETIDE_SUBSCRIPTION_MAX_ATTEMPTS", "2")
    made = subscribe(client, alice, receiver)
    Receiver.script = [503, 503]  # the receiver is down
    make_task(client, alice, "while it was down")
    assert eventing.pump() == ["retry"]
    later = utcnow() + timedelta(seconds=get_settings().duetide_subscription_retry_base_s + 1)
    assert webhook_deliveries.claim_retries(later, 100) == 1
    assert eventing.pump() == ["failed"]
    (failed,) = deliveries(client, alice, made["id"])

    Receiver.script = [503]  # back, one 503 while it warms up
    path = f"/subscriptions/{made['id']}/deliveries/{failed['id']}/redeliver"
    assert client.post(path, headers=alice).status_code == 202
    assert eventing.pump() == ["retry"]
    (again,) = deliveries(client, alice, made["id"])
    assert (again["status"], again["attempt"]) == ("pending", 3)
    assert webhook_deliveries.claim_retries(utcnow() + (later - utcnow()) * 2, 100) == 1
    assert eventing.pump() == ["delivered"]
    (done,) = deliveries(client, alice, made["id"])
    assert (done["status"], done["attempt"]) == ("delivered", 4)
    assert [one["status"] for one in done["tries"]] == [503, 503, 503, 200]
