"""Who may send a command for which user (SECURITY.md, "Commands"): real CloudEvents
through the tasks function, OIDC sender tokens signed by a test JWKS, commands signed
with a registered system key. No user token ever rides inside an event here.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_structured
from flask.testing import FlaskClient
from sqlmodel import col, func, select

from duetide import events
from duetide.events.signing import sign_command
from duetide.storage import db
from duetide.storage.models import Outbox, ProcessedEvent, Task
from duetide_tools.local.eventing import record_to_event
from tests.integration.conftest import _reset_caches, function_client
from tests.integration.test_auth import jwks, token  # noqa: F401 (jwks is a fixture)
from tests.support import json_of

K8S_ISSUER = "https://kubernetes.default.svc.cluster.local"
EVENTS_AUDIENCE = "duetide-events"
# What Knative names the KafkaSource `duetide-commands`' OIDC identity in namespace
# `duetide` (knative/eventing pkg/auth: `<name>-oidc-<group>-<kind>`, lowercased).
COMMANDS_SOURCE = (
    "system:serviceaccount:duetide:duetide-commands-oidc-sources.knative.dev-kafkasource"
)
RECURRENCE_SOURCE = (
    "system:serviceaccount:duetide:duetide-recurrence-oidc-sources.knative.dev-kafkasource"
)
CRM_KEY = "crm-key-" + "k" * 40
SHOP_KEY = "shop-key-" + "s" * 40


# ------------------------------------------------------------------ helpers


def command(
    event_id: str = "order-1", title: str = "Call back", *, user: str | None = None, **ext: str
) -> Any:
    event = events.build(
        event_id=event_id, type=events.CMD_TASK_CREATE, source="/crm", subject="",
        data={"task": {"title": title}},
    )  # fmt: skip
    if user is not None:
        event["duetideuser"] = user
    for name, value in ext.items():
        event[name] = value
    return event


def kafkasource_delivery(client: FlaskClient, event: Any, authorization: str | None = None) -> Any:
    """`event` produced onto the commands topic (a binary-mode record) and POSTed as the
    KafkaSource dispatcher converts it, with Knative's Authorization header if any."""
    message = events.to_kafka(event, "crm")
    record = SimpleNamespace(
        headers=list(message.headers.items()), key=message.key, value=message.value
    )
    delivered = record_to_event(record, "duetide-commands")
    headers, body = to_binary(delivered, data_marshaller=lambda data: data)
    if authorization is not None:
        headers["Authorization"] = authorization
    return client.post("/commands", headers=headers, data=body)


def post(client: FlaskClient, event: Any, headers: dict[str, str] | None = None) -> Any:
    wire, body = events.to_http(event)
    return client.post("/commands", headers={**wire, **(headers or {})}, data=body)


def sender_token(subject: str = COMMANDS_SOURCE, **overrides: Any) -> str:
    """A Kubernetes service-account token as Knative requests one for the sink."""
    claims: dict[str, Any] = {"sub": subject, "iss": K8S_ISSUER, "aud": [EVENTS_AUDIENCE]}
    return "Bearer " + token(**{**claims, **overrides})


def owners() -> list[str]:
    with db.session_scope(read_only=True) as session:
        return sorted(session.exec(select(Task.owner)).all())


def processed_scopes() -> list[str]:
    with db.session_scope(read_only=True) as session:
        rows = session.exec(
            select(ProcessedEvent.scope).where(col(ProcessedEvent.consumer) == "commands")
        )
        return sorted(rows.all())


def nothing_written() -> bool:
    with db.session_scope(read_only=True) as session:
        return all(
            session.exec(select(func.count()).select_from(model)).one() == 0
            for model in (Task, Outbox, ProcessedEvent)
        )


def refused(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.json
    error = json_of(response)["error"]
    assert error["code"] == code and error["message"], error
    assert nothing_written()
    return error


@pytest.fixture
def oidc(jwks: str, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:  # noqa: F811
    """The tasks function with Knative's OIDC on: the commands KafkaSource registered."""
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_AUDIENCE", EVENTS_AUDIENCE)
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_JWKS_URL", jwks)
    monkeypatch.setenv("DUETIDE_EVENT_OIDC_ISSUER", K8S_ISSUER)
    monkeypatch.setenv("DUETIDE_COMMAND_SENDERS", COMMANDS_SOURCE)
    _reset_caches()
    return function_client("tasks")


@pytest.fixture
def keyed(env: str, monkeypatch: pytest.MonkeyPatch) -> FlaskClient:
    """The tasks function without OIDC, with two systems registered by key."""
    monkeypatch.setenv("DUETIDE_COMMAND_KEYS", f"crm={CRM_KEY},shop={SHOP_KEY}")
    _reset_caches()
    return function_client("tasks")


# ---------------------------------------------------------- Knative OIDC senders


def test_a_kafkasource_delivery_from_the_registered_sender_creates_the_named_users_task(oidc):
    first = kafkasource_delivery(oidc, command(user="xavier"), sender_token())
    assert first.status_code == 201, first.json
    assert json_of(first)["task"]["title"] == "Call back"
    assert owners() == ["xavier"]
    mine = oidc.get("/tasks", headers={"Authorization": f"Bearer {token(sub='xavier')}"})
    assert [t["id"] for t in json_of(mine)["items"]] == [first.json["task"]["id"]]

    again = kafkasource_delivery(oidc, command(user="xavier"), sender_token())
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    # The same (source, id) for another user is another command: the key's scope is
    # the user acted for.
    other = kafkasource_delivery(oidc, command(user="yvonne"), sender_token())
    assert other.status_code == 201, other.json
    assert owners() == ["xavier", "yvonne"]
    assert processed_scopes() == ["xavier", "yvonne"]


SENDERS = {
    "another source's identity": (lambda: sender_token(RECURRENCE_SOURCE), 403, "forbidden"),
    "expired": (lambda: sender_token(exp=int(time.time()) - 3600), 401, "unauthorized"),
    "another issuer": (lambda: sender_token(iss="https://evil.example"), 401, "unauthorized"),
    "unknown key": (lambda: sender_token(headers={"kid": "nope"}), 401, "unauthorized"),
    "for the API's audience": (lambda: sender_token(aud="duetide-api"), 401, "unauthorized"),
    "none": (lambda: None, 401, "unauthorized"),
    "a user's token": (lambda: f"Bearer {token(sub='mallory')}", 403, "forbidden"),
}


@pytest.mark.parametrize("name", SENDERS)
def test_other_senders_are_refused_and_nothing_is_written(oidc, name):
    authorization, status, code = SENDERS[name]
    response = kafkasource_delivery(oidc, command(user="xavier"), authorization())
    refused(response, status, code)


def test_a_registered_sender_must_name_a_usable_user(oidc):
    refused(kafkasource_delivery(oidc, command(), sender_token()), 400, "invalid_cloudevent")
    for bad in ("", "a\tb", "u" * 256):
        response = kafkasource_delivery(oidc, command(user=bad), sender_token())
        refused(response, 400, "invalid_cloudevent")


# ------------------------------------------------------------ tokens in events


@pytest.mark.parametrize("sender", ["none", "registered sender", "the user's own bearer"])
def test_a_command_carrying_a_token_is_refused_and_says_why(oidc, sender):
    user_token = token(sub="xavier")
    authorization = {
        "none": None,
        "registered sender": sender_token(),
        "the user's own bearer": f"Bearer {user_token}",
    }[sender]
    event = command(user="xavier", authtoken=user_token)
    error = refused(kafkasource_delivery(oidc, event, authorization), 400, "invalid_cloudevent")
    assert "bearer tokens do not travel in events" in error["message"]
    assert user_token not in json.dumps(error)


# ------------------------------------------------------- a user's own bearer


def test_a_users_own_bearer_over_http_still_works(keyed, alice):
    created = post(keyed, command("own-1"), alice)
    assert created.status_code == 201, created.json
    named = post(keyed, command("own-2", user="alice"), alice)
    assert named.status_code == 201, named.json
    assert owners() == ["alice", "alice"]
    structured, body = to_structured(command("own-3"), data_marshaller=lambda d: d)
    answer = keyed.post("/commands", headers={**structured, **alice}, data=body)
    assert answer.status_code == 201, answer.json


def test_a_users_token_cannot_act_for_another_user(keyed, alice):
    refused(post(keyed, command(user="bob"), alice), 403, "forbidden")


def test_a_users_bearer_works_with_oidc_on_too(oidc):
    answer = post(oidc, command(), {"Authorization": f"Bearer {token(sub='alice')}"})
    assert answer.status_code == 201, answer.json
    assert owners() == ["alice"]


# ----------------------------------------------------------- system keys


def test_a_signed_record_from_the_topic_creates_the_named_users_task(keyed):
    event = sign_command(command(), user="xavier", system="crm", key=CRM_KEY)
    first = kafkasource_delivery(keyed, event)
    assert first.status_code == 201, first.json
    again = kafkasource_delivery(keyed, event)  # a replay, e.g. of a dead letter
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert owners() == ["xavier"]
    assert processed_scopes() == ["xavier"]


def test_a_signed_command_can_be_posted_in_either_mode(keyed):
    # In headers the id is percent-encoded (HTTP binding 3.1.3.2): the sink verifies the
    # signature over the id as signed, not over `%41` read as `A`.
    binary = sign_command(command("p %41 \u00f1-1"), user="xavier", system="shop", key=SHOP_KEY)
    assert post(keyed, binary).status_code == 201
    with db.session_scope(read_only=True) as session:
        assert session.exec(select(ProcessedEvent.event_id)).all() == ["p %41 \u00f1-1"]
    event = sign_command(command("p-2"), user="xavier", system="crm", key=CRM_KEY)
    headers, body = to_structured(event, data_marshaller=lambda d: d)
    answer = keyed.post("/commands", headers=headers, data=body)
    assert answer.status_code == 201, answer.json
    assert owners() == ["xavier", "xavier"]


def test_a_signed_command_forwarded_with_its_headers_as_they_were_is_taken(keyed):
    """A dispatcher that maps Kafka headers to HTTP ones as they are (CloudEvents
    sdk-java's, which Knative's KafkaSource uses) sends a source with escapes, a valid
    URI, undecoded; read decoded, `caf%C3%A9` became `café` and the signature failed:
    401, dead-lettered. The form it was signed in counts, decoded or as received."""
    source = "https://shop.example/stores/caf%C3%A9"
    event = command("order%2042")
    event["source"] = source
    signed = sign_command(event, user="xavier", system="shop", key=SHOP_KEY)
    wire, body = events.to_http(signed)
    as_is = {**wire, "ce-source": source, "ce-id": "order%2042"}  # not percent-encoded
    first = keyed.post("/commands", headers=as_is, data=body)
    assert first.status_code == 201, first.json
    again = post(keyed, signed)  # the same command, encoded as the HTTP binding says
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    with db.session_scope(read_only=True) as session:
        keys = session.exec(select(ProcessedEvent.source, ProcessedEvent.event_id)).all()
    assert [tuple(k) for k in keys] == [(source, "order%2042")] and owners() == ["xavier"]
    forged = {**as_is, "ce-id": "order%2043"}  # not what was signed, in either form
    assert keyed.post("/commands", headers=forged, data=body).status_code == 401


def test_a_create_command_sent_again_is_answered_with_the_task_it_made(keyed):
    """A system that lost the first answer (a timeout) sent the command again and got a
    bare `duplicate`: holding only its key, it could never learn the task's id, nor
    complete the task."""
    event = sign_command(command("order-7"), user="xavier", system="crm", key=CRM_KEY)
    first = post(keyed, event)
    assert first.status_code == 201, first.json
    again = post(keyed, event)
    assert (again.status_code, again.json["status"]) == (200, "duplicate")
    assert again.json["task"]["id"] == first.json["task"]["id"]
    assert again.headers["Location"] == first.headers["Location"]
    done = events.build(
        event_id="order-7-done", type=events.CMD_TASK_COMPLETE, source="/crm", subject="",
        data={"task_id": again.json["task"]["id"]},
    )  # fmt: skip
    completed = post(keyed, sign_command(done, user="xavier", system="crm", key=CRM_KEY))
    assert completed.status_code == 200 and completed.json["task"]["status"] == "done"
    assert post(keyed, event).json["task"]["status"] == "done"  # the task as it is now


def test_a_header_that_is_not_ascii_is_refused_not_read_as_latin_1(keyed):
    """A dispatcher forwarding a UTF-8 header as it is: `josé` was read as `josÃ©`, so a
    registered sender's command acted for another user."""
    event = sign_command(command(), user="xavier", system="crm", key=CRM_KEY)
    wire, body = events.to_http(event)
    wire["ce-duetideuser"] = "jos\u00e9".encode().decode("latin-1")
    answer = keyed.post("/commands", headers=wire, data=body)
    assert refused(answer, 400, "invalid_cloudevent")["message"].startswith(
        "header ce-duetideuser is not ASCII"
    )


def test_structured_mode_holds_to_the_rules_binary_mode_does(keyed):
    """A structured command with `datacontenttype: application/xml` was read as JSON and
    made a task (binary mode: 415); a `time` that is no time, a numeric subject and an
    attribute name outside lower-case letters and digits were taken in either mode."""
    event = sign_command(command(), user="xavier", system="crm", key=CRM_KEY)
    headers, body = to_structured(event, data_marshaller=lambda d: d)
    as_json = json.loads(body)
    changes: list[tuple[dict[str, Any], int]] = [
        ({"datacontenttype": "application/xml"}, 415),
        ({"time": "not a time"}, 400),
        ({"subject": 42}, 400),
        ({"DuetideUser": "mallory"}, 400),  # the SDK lower-cased it into duetideuser
    ]
    for change, status in changes:
        sent = keyed.post("/commands", headers=headers, data=json.dumps({**as_json, **change}))
        assert sent.status_code == status, (change, sent.json)
    wire, data = events.to_http(event)
    assert keyed.post("/commands", headers={**wire, "ce-my-ext": "x"}, data=data).status_code == 400
    assert owners() == []


def test_an_unknown_command_type_is_not_echoed_whole(keyed):
    event = command()
    event["type"] = "x" * 900_000
    answer = post(keyed, event)
    assert answer.status_code == 400 and len(answer.get_data()) < 2_000


def _resigned_then(change: str) -> Any:
    event = sign_command(command(), user="xavier", system="crm", key=CRM_KEY)
    if change == "user":
        event["duetideuser"] = "mallory"
    elif change == "data":
        event.data = {"task": {"title": "Something else"}}
    elif change == "id":
        event["id"] = "order-2"
    elif change == "system":
        event["duetidesystem"] = "shop"
    return event


SIGNATURES = {
    "signed with another key": lambda: sign_command(
        command(), user="xavier", system="crm", key=SHOP_KEY
    ),
    "unknown system": lambda: sign_command(command(), user="xavier", system="erp", key=CRM_KEY),
    "system without signature": lambda: command(user="xavier", duetidesystem="crm"),
    "signature without system": lambda: command(user="xavier", duetidesig="0" * 64),
    "not a MAC": lambda: command(user="xavier", duetidesystem="crm", duetidesig="zz"),
    "user changed": lambda: _resigned_then("user"),
    "data changed": lambda: _resigned_then("data"),
    "id changed": lambda: _resigned_then("id"),
    "system changed": lambda: _resigned_then("system"),
    "unsigned, user named": lambda: command(user="xavier"),
}


@pytest.mark.parametrize("name", SIGNATURES)
def test_a_wrong_or_missing_system_key_is_401(keyed, name):
    event = SIGNATURES[name]()
    refused(kafkasource_delivery(keyed, event), 401, "unauthorized")


def test_a_signed_command_with_a_users_token_is_refused(keyed, alice):
    event = sign_command(command(), user="alice", system="crm", key=CRM_KEY)
    refused(post(keyed, event, alice), 400, "bad_request")


@pytest.mark.parametrize("depth", [0, 600], ids=["a fraction", "nested 600 deep"])
def test_data_that_cannot_be_signed_is_400(keyed, depth):
    event = command(user="xavier", duetidesystem="crm", duetidesig="0" * 64)
    wire, _ = events.to_http(event)
    data = '{"task": {"title": "t", "priority": 1.5}}' if not depth else "[" * depth + "]" * depth
    refused(keyed.post("/commands", headers=wire, data=data), 400, "invalid_cloudevent")


def test_signed_commands_work_with_oidc_on_and_the_sender_token_is_still_checked(oidc, monkeypatch):
    monkeypatch.setenv("DUETIDE_COMMAND_SENDERS", "")  # the topic itself is not trusted
    monkeypatch.setenv("DUETIDE_COMMAND_KEYS", f"crm={CRM_KEY}")
    _reset_caches()
    client = function_client("tasks")
    event = sign_command(command(), user="xavier", system="crm", key=CRM_KEY)
    expired = sender_token(exp=int(time.time()) - 3600)
    refused(kafkasource_delivery(client, event, expired), 401, "unauthorized")
    unsigned = kafkasource_delivery(client, command(user="xavier"), sender_token())
    refused(unsigned, 403, "forbidden")
    answer = kafkasource_delivery(client, event, sender_token())
    assert answer.status_code == 201, answer.json
    assert owners() == ["xavier"]


def test_the_local_stack_signs_as_system_local_with_a_generated_key(env):
    """hs256 mode without DUETIDE_COMMAND_KEYS: `duetide up`'s default."""
    from duetide.config import get_settings

    client = function_client("tasks")
    [key] = get_settings().command_keys()["local"]
    home = get_settings().duetide_home
    assert (home / "command-key").read_text().strip() == key
    assert (home / "command-key").stat().st_mode & 0o077 == 0
    event = sign_command(command(), user="carol", system="local", key=key)
    assert kafkasource_delivery(client, event).status_code == 201
    assert owners() == ["carol"]


def test_production_mode_has_no_default_system(jwks):  # noqa: F811
    from duetide.config import get_settings

    assert get_settings().command_keys() == {}
    event = sign_command(command(), user="carol", system="local", key="x" * 40)
    refused(kafkasource_delivery(function_client("tasks"), event), 401, "unauthorized")


def test_a_users_own_commands_spend_the_users_budget_and_a_systems_do_not(
    keyed, monkeypatch, alice
):
    """A system's burst for one user was 429, retried by the KafkaSource for less than
    the window, then dead-lettered (test_limits has the burst)."""
    monkeypatch.setenv("DUETIDE_WRITE_RATE_PER_MINUTE", "2")
    _reset_caches()
    client = function_client("tasks")
    assert post(client, command("b-1"), alice).status_code == 201
    for i in range(3):
        signed = sign_command(command(f"s-{i}"), user="alice", system="crm", key=CRM_KEY)
        assert post(client, signed).status_code == 201
    assert post(client, command("b-2"), alice).status_code == 201
    assert post(client, command("b-3"), alice).status_code == 429


def test_a_redelivered_command_costs_none_of_the_budget(keyed, monkeypatch):
    """The limit was charged before the duplicate check: a KafkaSource's retries of one
    command spent the user's minute, then got 429 until they were dead-lettered."""
    monkeypatch.setenv("DUETIDE_WRITE_RATE_PER_MINUTE", "2")
    _reset_caches()
    client = function_client("tasks")
    signed = sign_command(command("r-1"), user="alice", system="crm", key=CRM_KEY)
    assert post(client, signed).status_code == 201
    again = [post(client, signed) for _ in range(4)]
    assert [(a.status_code, a.json["status"]) for a in again] == [(200, "duplicate")] * 4
    second = sign_command(command("r-2"), user="alice", system="crm", key=CRM_KEY)
    assert post(client, second).status_code == 201  # the budget's second write
