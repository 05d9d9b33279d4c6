"""Poison events in notify and verified notification targets, end to end.

The tasks and notify functions run through functions-framework on SQLite and
PostgreSQL; the SMTP relay is aiosmtpd and the webhook receiver an HTTP server, both on
loopback. Targets are verified through the real flows: the code from the captured
confirmation mail, the challenge echoed by the receiver.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from sqlmodel import select

from duetide import events
from duetide.channels.email import validate_address
from duetide.channels.webhook import verify_signature
from duetide.config import get_settings
from duetide.storage import db
from duetide.storage.models import Notification, Preference, ProcessedEvent, utcnow
from duetide_tools.local.broker import free_loopback_port
from tests.integration.conftest import function_client
from tests.integration.test_event_functions import post
from tests.integration.test_reminders import (
    Receiver,
    claim_due,
    confirmation_code,
    serving_receiver,
    verify_email_by_mail,
)


class Mailbox:
    """An aiosmtpd handler keeping every message; refuses the recipients in `refuse`."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.refuse: set[str] = set()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:
        if address in self.refuse:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:
        self.messages.append(envelope)
        return "250 OK"

    def parsed(self, index: int) -> email.message.EmailMessage:
        raw = self.messages[index].content
        return email.message_from_bytes(raw, policy=email.policy.default)


@dataclass
class Relay:
    mailbox: Mailbox
    controller: Controller


@pytest.fixture
def relay(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relay]:
    mailbox = Mailbox()
    controller = Controller(mailbox, hostname="127.0.0.1", port=free_loopback_port())
    controller.start()
    monkeypatch.setenv("DUETIDE_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("DUETIDE_SMTP_PORT", str(controller.port))
    monkeypatch.setenv("DUETIDE_SMTP_STARTTLS", "false")
    get_settings.cache_clear()
    running = Relay(mailbox, controller)
    try:
        yield running
    finally:
        running.controller.stop()


@pytest.fixture
def inbox(relay: Relay) -> Mailbox:
    return relay.mailbox


@pytest.fixture
def receiver(env: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with serving_receiver(monkeypatch) as url:
        yield url


@pytest.fixture
def notify(env: str):
    return function_client("notify")


def setting(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    get_settings.cache_clear()


def recorded() -> list[tuple[str, str, str]]:
    with db.session_scope() as session:
        rows = session.exec(select(Notification)).all()
        return sorted((row.channel, row.status, row.detail) for row in rows)


def stored(owner: str) -> Preference:
    with db.session_scope() as session:
        preference = session.get(Preference, owner)
        assert preference is not None
        return preference


def change_stored(owner: str, **values: Any) -> None:
    """Change the stored row behind the API's back: what an older version let in."""
    with db.session_scope() as session:
        preference = session.get(Preference, owner)
        assert preference is not None
        for name, value in values.items():
            setattr(preference, name, value)
        session.add(preference)


def email_channel(client, alice, inbox: Mailbox, address: str = "alice@example.org") -> None:
    verify_email_by_mail(client, alice, inbox, address)
    changed = client.patch("/preferences", json={"channels": ["email", "log"]}, headers=alice)
    assert changed.status_code == 200, changed.json


# --- poison events ----------------------------------------------------------------------


def test_a_title_with_line_breaks_is_delivered_with_a_folded_subject(client, alice, inbox, notify):
    email_channel(client, alice, inbox)
    data = claim_due(client, alice, title="Pay rent\r\nBcc: victim@example.test\nnow")

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200 and response.json["status"] == "processed"
    assert len(inbox.messages) == 2  # the confirmation, then the reminder
    reminder = inbox.parsed(1)
    assert inbox.messages[1].rcpt_tos == ["alice@example.org"]
    assert reminder["Subject"] == "Reminder: Pay rent Bcc: victim@example.test now"
    assert reminder["Bcc"] is None
    assert "Pay rent" in reminder.get_content()  # the body keeps the title's lines
    assert recorded() == [("email", "delivered", ""), ("log", "delivered", "")]


def test_an_encoded_word_in_a_title_adds_no_header(client, alice, inbox, notify):
    """The email package decodes RFC 2047 encoded words in the subject it is given, and
    before Python 3.11.10 (CVE-2024-6923) wrote a CR LF decoded from one as it was: a
    title could add a Reply-To, or end the headers and write the body."""
    email_channel(client, alice, inbox)
    hidden = base64.b64encode(b"x\r\nReply-To: attacker@example.test\r\nX-Injected: yes")
    title = f"Invoice =?utf-8?b?{hidden.decode()}?= =?us-ascii?q?ok?="
    data = claim_due(client, alice, title=title)

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200 and response.json["status"] == "processed"
    reminder = inbox.parsed(1)
    assert reminder["Reply-To"] is None and reminder["X-Injected"] is None
    assert inbox.messages[1].rcpt_tos == ["alice@example.org"]
    assert reminder["Subject"].replace("\u200b", "") == f"Reminder: {title}"  # as written


@pytest.mark.parametrize(
    "bad",
    ["jörg@example.org", "alice@example.org\r\nBcc: victim@example.test", "not-an-address"],
)
def test_an_event_whose_stored_address_became_invalid_is_failed_at_once(
    client, alice, inbox, notify, bad: str
):
    email_channel(client, alice, inbox)
    change_stored("alice", email=bad)  # e.g. accepted before preferences used the one check
    data = claim_due(client, alice)

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200 and response.json["status"] == "processed"
    assert recorded() == [
        ("email", "failed", "email address is not valid"),
        ("log", "delivered", ""),
    ]
    assert len(inbox.messages) == 1  # the confirmation only
    again = post(notify, events.REMINDER_DUE, data)  # redelivered: nothing left to try
    assert again.status_code == 200 and len(inbox.messages) == 1
    listed = client.get("/notifications", headers=alice).json["items"]
    failed = next(item for item in listed if item["channel"] == "email")
    assert (failed["status"], failed["detail"]) == ("failed", "email address is not valid")


def test_a_stored_webhook_url_the_guard_now_refuses_is_failed_at_once(
    client, alice, receiver, notify, monkeypatch
):
    prefs = client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    ).json
    assert prefs["webhook_verified"]
    setting(monkeypatch, "DUETIDE_ALLOW_LOOPBACK_WEBHOOKS", "false")  # both ends: one rule
    refused = client.patch("/preferences", json={"webhook_url": receiver + "/2"}, headers=alice)
    assert refused.status_code == 422
    data = claim_due(client, alice)

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200
    [(channel, status, detail)] = recorded()
    assert (channel, status) == ("webhook", "failed") and "not allowed" in detail
    assert Receiver.seen == []


def test_content_no_channel_can_encode_is_a_permanent_400_not_a_server_error(
    client, alice, inbox, notify
):
    """A lone surrogate cannot be stored or sent: the event is refused whole (400 goes to
    the dead-letter sink at once, never retried) and nothing is recorded or sent."""
    email_channel(client, alice, inbox)
    data = claim_due(client, alice)
    data["title"] = "broken \ud800 text"

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 400, response.json
    assert response.json["error"]["code"] == "invalid_cloudevent"
    assert recorded() == []


def test_a_relay_that_is_down_is_transient_and_retried(client, alice, relay, notify):
    email_channel(client, alice, relay.mailbox)
    data = claim_due(client, alice)
    relay.controller.stop()

    response = post(notify, events.REMINDER_DUE, data, event_id="down")

    assert response.status_code == 503 and response.json["error"]["code"] == "unavailable"
    assert recorded() == [("log", "delivered", "")]  # email left for the retry
    with db.session_scope() as session:
        assert session.exec(select(ProcessedEvent)).all() == []
    port = relay.controller.port
    relay.controller = Controller(relay.mailbox, hostname="127.0.0.1", port=port)
    relay.controller.start()  # the relay is back
    assert post(notify, events.REMINDER_DUE, data, event_id="down").status_code == 200
    assert recorded() == [("email", "delivered", ""), ("log", "delivered", "")]


# --- unverified targets get nothing but the confirmation --------------------------------


def test_an_unverified_address_gets_nothing_but_the_confirmation(client, alice, inbox, notify):
    changed = client.patch(
        "/preferences", json={"email": "alice@example.org", "channels": ["email"]}, headers=alice
    )
    assert changed.status_code == 200
    assert changed.json["email_verified"] is False
    assert changed.json["email_confirmation_sent_at"] is not None
    data = claim_due(client, alice, title="Secret plans")

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200
    assert recorded() == [("email", "failed", "email not verified")]
    [confirmation] = inbox.messages
    assert confirmation.rcpt_tos == ["alice@example.org"]
    message = inbox.parsed(0)
    assert message["Subject"] == "Confirm your e-mail address for duetide reminders"
    assert b"Secret plans" not in confirmation.content


def test_an_unverified_webhook_gets_nothing_but_the_challenge(client, alice, receiver, notify):
    Receiver.echo = False  # a receiver that does not take part in the verification
    changed = client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    )
    assert changed.status_code == 200 and changed.json["webhook_verified"] is False
    [challenge] = Receiver.challenges
    payload = json.loads(challenge["body"])
    assert payload["type"] == "url_verification" and len(payload["challenge"]) >= 32
    for secret in (changed.json["webhook_secret"], changed.json["webhook_secret"].encode()):
        assert verify_signature(  # the secret as the API gave it, or its bytes
            secret,
            challenge["headers"]["Duetide-Signature"],
            challenge["body"],
            utcnow().timestamp(),
        )
    data = claim_due(client, alice)

    response = post(notify, events.REMINDER_DUE, data)

    assert response.status_code == 200
    assert recorded() == [("webhook", "failed", "webhook not verified")]
    assert Receiver.seen == [] and len(Receiver.challenges) == 1


# --- verification flows -----------------------------------------------------------------


def test_email_verification_by_the_code_in_the_mail(client, alice, inbox, notify):
    first = client.patch("/preferences", json={"email": "alice@example.org"}, headers=alice)
    assert first.json["email_verified"] is False
    old_code = confirmation_code(inbox.messages[0])
    wrong = client.post("/preferences/email/verify", json={"code": "AAAA-BBBB-CCCC"}, headers=alice)
    assert wrong.status_code == 422 and wrong.json["error"]["details"][0]["field"] == "code"
    assert client.get("/preferences", headers=alice).json == first.json

    client.patch("/preferences", json={"email": "Alice <alice@example.net>"}, headers=alice)
    assert inbox.messages[1].rcpt_tos == ["alice@example.net"]
    code = confirmation_code(inbox.messages[1])
    bound = client.post("/preferences/email/verify", json={"code": old_code}, headers=alice)
    assert bound.status_code == 422  # the first code was for the first address
    typed = code.replace("-", " ").lower()
    verified = client.post("/preferences/email/verify", json={"code": typed}, headers=alice)
    assert verified.status_code == 200, verified.json
    assert (verified.json["email"], verified.json["email_verified"]) == ("alice@example.net", True)
    again = client.post("/preferences/email/verify", json={"code": "anything"}, headers=alice)
    assert again.status_code == 200 and again.json["email_verified"]
    assert client.post("/preferences/email/resend", headers=alice).status_code == 409
    client.patch("/preferences", json={"email": "alice@example.net", "channels": ["email"]},
                 headers=alice)  # fmt: skip
    assert len(inbox.messages) == 2  # the same address again: still verified, no mail
    same = client.patch("/preferences", json={"email": "alice@Example.NET"}, headers=alice)
    assert (same.json["email"], same.json["email_verified"]) == ("alice@example.net", True)
    assert len(inbox.messages) == 2  # a domain in other letters is the same mailbox

    response = post(notify, events.REMINDER_DUE, claim_due(client, alice, title="Dentist"))

    assert response.status_code == 200
    assert recorded() == [("email", "delivered", "")]
    assert inbox.parsed(2)["Subject"] == "Reminder: Dentist"


def test_an_expired_code_is_refused_and_a_new_one_can_be_asked_for(client, alice, inbox):
    client.patch("/preferences", json={"email": "alice@example.org"}, headers=alice)
    code = confirmation_code(inbox.messages[0])
    preference = stored("alice")
    assert code not in json.dumps(preference.model_dump(mode="json"))  # only its hash is kept
    change_stored("alice", email_code_expires_at=utcnow() - timedelta(seconds=1))

    expired = client.post("/preferences/email/verify", json={"code": code}, headers=alice)
    assert expired.status_code == 422
    resent = client.post("/preferences/email/resend", headers=alice)
    assert resent.status_code == 200 and resent.json["email_confirmation_sent_at"]
    fresh = confirmation_code(inbox.messages[1])
    assert fresh != code
    verified = client.post("/preferences/email/verify", json={"code": fresh}, headers=alice)
    assert verified.status_code == 200 and verified.json["email_verified"]


def test_a_refused_confirmation_mail_is_shown_and_resend_says_why(client, alice, inbox):
    inbox.refuse.add("nobody@example.org")

    changed = client.patch("/preferences", json={"email": "nobody@example.org"}, headers=alice)

    assert changed.status_code == 200  # the address is saved; the answer shows no mail went
    assert changed.json["email_confirmation_sent_at"] is None
    resent = client.post("/preferences/email/resend", headers=alice)
    assert resent.status_code == 422 and "refused" in resent.json["error"]["message"]
    assert "nobody@" not in json.dumps(resent.json)
    assert inbox.messages == []


def test_webhook_verification_by_an_echoed_challenge(client, alice, receiver, notify):
    Receiver.echo = False
    changed = client.patch(
        "/preferences", json={"webhook_url": receiver, "channels": ["webhook"]}, headers=alice
    )
    assert changed.json["webhook_verified"] is False
    refused = client.post("/preferences/webhook/verify", headers=alice)
    assert refused.status_code == 422
    assert "did not echo" in refused.json["error"]["message"]
    assert refused.json["error"]["details"][0]["field"] == "webhook_url"
    assert client.get("/preferences", headers=alice).json["webhook_verified"] is False

    Receiver.echo = True
    verified = client.post("/preferences/webhook/verify", headers=alice)
    assert verified.status_code == 200 and verified.json["webhook_verified"] is True
    assert len(Receiver.challenges) == 3  # the PATCH's, the refused one, the echoed one
    assert client.post("/preferences/webhook/verify", headers=alice).status_code == 200
    assert len(Receiver.challenges) == 3  # verified already: nothing sent

    response = post(notify, events.REMINDER_DUE, claim_due(client, alice))
    assert response.status_code == 200
    assert recorded() == [("webhook", "delivered", "")] and len(Receiver.seen) == 1

    moved = client.patch("/preferences", json={"webhook_url": receiver + "/new"}, headers=alice)
    assert moved.json["webhook_verified"] is True and len(Receiver.challenges) == 4


def test_verify_routes_without_a_target_are_conflicts(client, alice, inbox):
    assert client.post("/preferences/webhook/verify", headers=alice).status_code == 409
    assert client.post("/preferences/email/resend", headers=alice).status_code == 409
    verify = client.post("/preferences/email/verify", json={"code": "X"}, headers=alice)
    assert verify.status_code == 409


# --- the confirmation budget ------------------------------------------------------------


def test_confirmations_are_limited_per_user_and_hour(client, alice, bob, inbox, monkeypatch):
    setting(monkeypatch, "DUETIDE_VERIFICATION_SENDS_PER_HOUR", "2")
    assert (
        client.patch("/preferences", json={"email": "a@example.org"}, headers=alice).status_code
        == 200
    )
    assert client.post("/preferences/email/resend", headers=alice).status_code == 200

    over = client.post("/preferences/email/resend", headers=alice)
    moved = client.patch("/preferences", json={"email": "b@example.org"}, headers=alice)

    assert over.status_code == 429 and 1 <= int(over.headers["Retry-After"]) <= 3600
    assert moved.status_code == 429  # and nothing changed
    assert client.get("/preferences", headers=alice).json["email"] == "a@example.org"
    assert (
        client.patch("/preferences", json={"email": "b@example.org"}, headers=bob).status_code
        == 200
    )
    assert [m.rcpt_tos for m in inbox.messages] == [["a@example.org"]] * 2 + [["b@example.org"]]
    change_stored("alice", verification_sends={"email": [int(utcnow().timestamp()) - 3601] * 2})
    assert client.post("/preferences/email/resend", headers=alice).status_code == 200  # an hour on


def test_concurrent_confirmations_never_exceed_the_budget(client, alice, inbox, monkeypatch):
    setting(monkeypatch, "DUETIDE_VERIFICATION_SENDS_PER_HOUR", "3")
    assert (
        client.patch("/preferences", json={"email": "a@example.org"}, headers=alice).status_code
        == 200
    )
    app = function_client("tasks").application
    start = threading.Barrier(8)
    statuses: list[int] = []

    def resend() -> None:
        own = app.test_client()
        start.wait(timeout=10)
        statuses.append(own.post("/preferences/email/resend", headers=alice).status_code)

    threads = [threading.Thread(target=resend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert sorted(statuses) == [200, 200] + [429] * 6
    assert len(inbox.messages) == 3
    assert len(stored("alice").verification_sends["email"]) == 3


# --- one validator at both ends ---------------------------------------------------------

ADDRESSES = [
    "alice@example.org",
    "Alice <alice@example.net>",
    "alice@localhost",
    "jörg@example.org",
    '"a b"@example.org',
    "a@b@example.org",
    "alice@example.org, bob@example.org",
    "alice@-example.org",
    "alice@example..org",
    "alice.@example.org",
    "x" * 65 + "@example.org",
    "alice@example.org\nBcc: x@example.org",
]


def test_preferences_store_exactly_what_the_email_channel_sends_to(client, alice):
    for address in ADDRESSES:
        try:
            expected: str | None = validate_address(address)
        except ValueError:
            expected = None
        response = client.patch("/preferences", json={"email": address}, headers=alice)
        if expected is None:
            assert response.status_code == 422, address
            assert response.json["error"]["details"][0]["field"] == "email"
        else:
            assert response.status_code == 200, (address, response.json)
            assert response.json["email"] == expected


def test_a_webhook_url_whose_name_cannot_be_looked_up_for_now_is_503_not_422(
    client, alice, monkeypatch
):
    """A resolver failing or slow is not the URL's fault: a 422 told the user their URL
    was wrong. A name that does not exist still is."""
    from duetide.channels import netguard, webhook

    def failing(url: str, **options: Any) -> netguard.Target:
        raise netguard.ResolutionFailed("the look-up of hooks.example.org took longer than 5 s")

    monkeypatch.setattr(webhook.netguard, "check_url", failing)
    url = "https://hooks.example.org/in"
    saves = [
        ("/preferences", "patch", {"webhook_url": url}),
        ("/subscriptions", "post", {"url": url}),
    ]
    for path, method, sent in saves:
        response = getattr(client, method)(path, json=sent, headers=alice)
        assert response.status_code == 503, response.json
        assert response.headers["Retry-After"] == "5"
    assert client.get("/preferences", headers=alice).json["webhook_url"] is None
    assert client.get("/subscriptions", headers=alice).json["items"] == []
