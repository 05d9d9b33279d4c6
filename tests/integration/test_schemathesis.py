"""schemathesis against the real tasks function, served by functions-framework on loopback.

Every operation of `/openapi.json` gets generated valid and invalid requests (bounded
examples per operation) with all of schemathesis' checks: no 5xx, responses match the
document, invalid input is rejected, valid input accepted, and auth is enforced.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from duetide.config import Settings
from duetide.web.api import BY_OPERATION, ENDPOINTS
from duetide.web.auth import issue_local_token
from duetide.web.openapi import IF_MATCH, document
from tests.integration.conftest import BACKENDS, POSTGRES_URL
from tests.support import migrated_database, serving_function

SECRET = "schemathesis-test-secret-of-enough-length"
OTHER_SECRET = "not-the-servers-secret-but-long-enough"
# Examples per operation (and per schemathesis phase); DUETIDE_SCHEMATHESIS_EXAMPLES=600
# for a deeper run.
EXAMPLES = int(os.environ.get("DUETIDE_SCHEMATHESIS_EXAMPLES", "15"))


@pytest.fixture(scope="module", params=BACKENDS)
def server_database(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A fresh migrated database for the served function: an SQLite file or a PG schema."""
    postgres = POSTGRES_URL if request.param == "postgresql" else None
    with migrated_database(postgres, tmp_path_factory.mktemp("served")) as url:
        yield url


@dataclass(frozen=True)
class Served:
    url: str
    log: Path


@pytest.fixture(scope="module")
def server(served: Served) -> str:
    return served.url


@pytest.fixture(scope="module")
def served(server_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The tasks function served as in the image (duetide.web.serve) on a free loopback port."""
    home = tmp_path_factory.mktemp("home")
    env = {
        **os.environ,
        "DATABASE_URL": server_database,
        "DUETIDE_HOME": str(home),
        "DUETIDE_JWT_SECRET": SECRET,
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "DUETIDE_WRITE_RATE_PER_MINUTE": "0",
        "DUETIDE_READ_RATE_PER_MINUTE": "0",
        "DUETIDE_LOG_LEVEL": "INFO",
        # The long-poll and the activity stream answer within a second (not 25 s, 5 min).
        "DUETIDE_ACTIVITY_MAX_WAIT_S": "0.2",
        "DUETIDE_ACTIVITY_STREAM_LIFETIME_S": "0.5",
        # The documented Last-Event-ID example (from 2023) is then still within retention.
        "DUETIDE_ACTIVITY_RETENTION_DAYS": "3650",
        # A generated `access_token` one character too long (4097), each character percent-
        # encoded UTF-8, makes a request line of ~49 KB: it must reach the 422, not a 431.
        "DUETIDE_HTTP_MAX_HEAD_BYTES": "65536",
        # Generated webhook URLs are refused by the allowlist before any DNS look-up:
        # nothing leaves loopback.
        "DUETIDE_WEBHOOK_HOSTS": "192.0.2.1",
    }
    with serving_function(home, env) as port:
        yield Served(f"http://127.0.0.1:{port}", home / "serve.log")


def bearer(user: str, secret: str = SECRET) -> dict[str, str]:
    token = issue_local_token(user, Settings(duetide_jwt_secret=secret))
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def fuzzer() -> dict[str, str]:
    """The one token schemathesis sends, for the whole module."""
    return bearer("fuzzer")


POSITIVE_DEFAULT = ["2xx", "3xx", "401", "403", "404", "409", "429", "5xx"]
# What JSON Schema cannot say, so schema-valid input can still be refused; each exception
# is narrowed further by `only_known_refusals` below.
# - list_tasks 400: the cursor is opaque (a server-issued token); any string is "valid".
#   The same for the logs' cursors and the activity feeds' `since`.
# - 422 for rules checked beyond the document: an RRULE must parse (RFC 5545) and have an
#   occurrence within 400 years, a zone must be in tzdata, durations have ranges
#   (`before_due` PT0S..P366D, grace P7D), a webhook URL must be public, an e-mail plain,
#   a channel needs its address; a confirmation code must be the one that was mailed.
KNOWN_REFUSALS = {
    "list_tasks": (400, r"^invalid cursor"),
    "notifications": (400, r"^invalid cursor"),
    "subscription_deliveries": (400, r"^invalid cursor"),
    "upcoming_reminders": (400, r"^invalid cursor"),
    "list_series": (400, r"^invalid cursor"),
    "series_history": (400, r"^invalid cursor"),
    "list_activity": (400, r"^invalid `since`"),
    "task_activity": (400, r"^invalid `since`"),
    "activity_stream": (400, r"^invalid `since`"),
    # Idempotency-Key: schemathesis sends one key with bodies of every kind, and each
    # after the first names another request (the pattern lets any key through)
    "create_task": (422, r"^(recurrence|reminders\.\d+|Idempotency-Key): "),
    # a command's data.task: its fields as `task.*` (the model's checks) or as the
    # service names them (`recurrence` when the rule is built); a complete command's
    # `task_id` that names no task of the user (a 404 would be retried by a KafkaSource)
    "commands": (422, r"^((task\.)?(recurrence|reminders\.\d+)|task_id): "),
    "add_reminder": (422, r"^(body: .*`before_due` must be between|Idempotency-Key: )"),
    "update_preferences": (
        422,
        r"^(timezone|default_reminders|grace|webhook_url|email|channels): ",
    ),
    "verify_email": (422, r"^code: the code is wrong or has expired"),
    "verify_webhook": (422, r"^webhook_url: the webhook did not echo"),
    "create_subscription": (422, r"^(url|Idempotency-Key): "),
    "update_subscription": (422, r"^url: "),
    "verify_subscription": (422, r"^url: the webhook did not echo"),
    "resend_email": (422, r"^email: the mail relay refused"),
    # If-Match's pattern is in the document, but schemathesis 4.32 still sends `0` for it
    # as a positive header value (the hypothesis phase keeps to the pattern).
    **{
        endpoint.operation_id: (400, r"^If-Match must be `\*` or a comma-separated list")
        for endpoint in ENDPOINTS
        if IF_MATCH in endpoint.headers
    },
}
# - commands 400: which ce-* headers a command needs depends on its media type (binary
#   mode, application/json: ce-specversion, ce-id, ce-source and ce-type; structured: none,
#   and any sent are ignored, so their schemas cannot constrain them), and the data's shape
#   on ce-type; OpenAPI can tie neither to the other.
BINARY_MODE_REFUSALS = {
    "commands": (
        400,
        r"^(missing required attributes|not a CloudEvent|invalid dev\.duetide\.task\.\w+\.v1 data"
        r"|unsupported specversion|unknown command type|the (id|source) attribute is longer"
        r"|duetideuser must be|invalid CloudEvent attributes|missing required CloudEvent"
        r"|the CloudEvent could not be parsed|the event at attributes\."
        r"|header ce-\S+ is not (ASCII|percent-encoded UTF-8))",
    ),
}


def known_refusals(operation_id: str) -> list[tuple[int, str]]:
    return [
        refusal
        for table in (KNOWN_REFUSALS, BINARY_MODE_REFUSALS)
        if (refusal := table.get(operation_id)) is not None
    ]


def _config(headers: dict[str, str]) -> schemathesis.Config:
    operations = [
        {
            "include-operation-id": operation_id,
            "checks": {
                "positive_data_acceptance": {
                    "expected-statuses": [
                        *POSITIVE_DEFAULT,
                        *(str(status) for status, _ in known_refusals(operation_id)),
                    ]
                }
            },
        }
        for operation_id in KNOWN_REFUSALS.keys() | BINARY_MODE_REFUSALS.keys()
    ]
    return schemathesis.Config.from_dict(
        {
            "headers": headers,
            # Also as the bearer scheme's credentials: with header parameters in an
            # operation (the binary mode's ce-* of /commands), schemathesis takes a token
            # from `headers` alone for one it generated, and expects it to be refused.
            "auth": {"openapi": {"bearer": {"bearer": headers["Authorization"].split()[1]}}},
            "operations": operations,
            # The document says (info.description) that text must not hold U+0000, which
            # JSON Schema cannot; test_limits checks that such text is refused.
            "generation": {"allow-x00": False},
        }
    )


def only_known_refusals(ctx: Any, response: Any, case: schemathesis.Case) -> bool | None:
    """A refused schema-valid request must be one of the KNOWN_REFUSALS, by field and reason."""
    if case.meta is None or not case.meta.generation.mode.is_positive:
        return None
    refusals = dict(known_refusals(case.operation.definition.raw.get("operationId", "")))
    if response.status_code not in refusals:
        return None
    pattern = refusals[response.status_code]
    error = response.json()["error"]
    reasons = [f"{d['field'] or 'body'}: {d['message']}" for d in error.get("details") or []]
    reasons = reasons or [error["message"]]
    unexpected = [reason for reason in reasons if not re.search(pattern, reason)]
    assert not unexpected, f"schema-valid input refused for an undocumented reason: {unexpected}"
    return None


@pytest.fixture(scope="module")
def api_schema(server: str, fuzzer: dict[str, str]) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{server}/openapi.json", config=_config(fuzzer))


schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32 reads `node._nodeid`, which pytest 9.2 no longer has."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.mark.timeout(240)  # every operation of one backend; ~15 s here
@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_openapi_document(case: schemathesis.Case) -> None:
    case.call_and_validate(additional_checks=[only_known_refusals])


# A well-formed body where one is needed, so that only the missing token is wrong.
BODIES = {
    "create_task": {"title": "t"},
    "update_task": {"title": "t"},
    "add_reminder": {"before_due": "PT5M"},
    "update_series": {"title": "t"},
    "update_preferences": {"timezone": "UTC"},
    "snooze_reminder": {"for": "PT5M"},
    "verify_email": {"code": "ABCD-2345-WXYZ"},
    "create_subscription": {"url": "https://192.0.2.1/h"},
    "update_subscription": {"description": "d"},
    "commands": {
        "specversion": "1.0", "id": "c-1", "source": "/test",
        "type": "dev.duetide.task.create.v1", "data": {"task": {"title": "t"}},
    },
}  # fmt: skip


def test_every_operation_but_the_public_ones_needs_a_token(server: str) -> None:
    for path, operations in document()["paths"].items():
        url = server + path.replace("{", "").replace("}", "")
        for method, operation in operations.items():
            operation_id = operation["operationId"]
            if "requestBody" in operation:
                assert operation_id in BODIES, f"add a body for {operation_id} to BODIES"
            media_types = list(operation.get("requestBody", {}).get("content", {}))
            headers = {"Content-Type": media_types[0]} if media_types else {}
            body = BODIES.get(operation_id)
            response = requests.request(method, url, json=body, headers=headers, timeout=5)
            if BY_OPERATION[operation_id].auth == "public":
                # A public route with a path parameter names no file (/docs/assets/...) or
                # carries the secret in its URL (the calendar feed): a made-up one is not
                # found, in the error shape, and never a request for a token.
                secret_url = "{" in path
                assert response.status_code == (404 if secret_url else 200), (method, path)
                if secret_url:
                    assert response.json()["error"]["code"] == "not_found"
                continue
            assert response.status_code == 401, (method, path, response.text)
            assert response.json()["error"]["code"] == "unauthorized"
            assert "Bearer" in response.headers["WWW-Authenticate"]
            forged = {**headers, **bearer("fuzzer", secret=OTHER_SECRET)}
            response = requests.request(method, url, json=body, headers=forged, timeout=5)
            assert response.status_code == 401, (method, path, response.text)


def test_a_newline_in_an_id_gets_a_json_404(server: str, fuzzer: dict[str, str]) -> None:
    response = requests.get(f"{server}/tasks/a%0Ab", headers=fuzzer, timeout=5)
    assert response.status_code == 404
    assert response.headers["Content-Type"] == "application/json"


def test_the_server_logged_no_unhandled_error_and_no_token(
    served: Served, fuzzer: dict[str, str]
) -> None:
    """Last in the file, after every request: an unexpected exception logs a traceback."""
    log = served.log.read_text()
    assert "Traceback" not in log, log[-5000:]
    signature = fuzzer["Authorization"].rsplit(".", 1)[1]
    assert signature not in log
