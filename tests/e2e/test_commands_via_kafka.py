"""Command intake end to end: the local stack (functions, embedded broker, KafkaSource
dispatchers from knative/) on the test database, commands produced by librdkafka
(`confluent-kafka`, a different Kafka client than ours) or posted to `/commands`.

Commands on the topic are signed as the local stack's system `local` (its key generated
into DUETIDE_HOME, as `duetide up` does) and name their user; no token rides in them.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import confluent_kafka
import pytest
import requests
from cloudevents.conversion import to_structured

from duetide import events
from duetide.config import LOCAL_SYSTEM, get_settings
from duetide.events.signing import sign_command
from duetide.web.auth import issue_local_token
from duetide_tools import deadletters
from duetide_tools.local import stack as stack_module
from duetide_tools.local.broker import free_loopback_port
from tests.support import migrated_database, wait_for

ROOT = Path(__file__).resolve().parents[2]
POSTGRES_URL = os.environ.get("DUETIDE_TEST_POSTGRES_URL", "")
JWT_SECRET = "e2e-commands-secret-of-enough-length"
COMMANDS_TOPIC = "duetide-commands"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test database: a fresh schema on PostgreSQL when configured, else SQLite."""
    with migrated_database(POSTGRES_URL or None, tmp_path_factory.mktemp("db")) as url:
        yield url


@dataclass
class Running:
    stack: stack_module.Stack
    token: str
    key: str

    @property
    def base(self) -> str:
        return self.stack.functions["tasks"].url

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def tasks(self, tag: str) -> list[dict[str, Any]]:
        answer = requests.get(f"{self.base}/tasks?tag={tag}", headers=self.auth, timeout=10)
        assert answer.status_code == 200, answer.text
        return answer.json()["items"]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Running]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as patch:
        for name, value in {
            "DUETIDE_HOME": str(home),
            "DUETIDE_JWT_SECRET": JWT_SECRET,
            "DATABASE_URL": database_url,
            "KAFKA_BOOTSTRAP_SERVERS": "",
            "DUETIDE_COMMAND_KEYS": "",  # the local default: system `local`
            # one user's tasks polled by tag (10 reads each) all module long: not the
            # read limit's test (integration/test_limits.py)
            "DUETIDE_READ_RATE_PER_MINUTE": "0",
        }.items():
            patch.setenv(name, value)
        get_settings.cache_clear()
        [key] = get_settings().command_keys()[LOCAL_SYSTEM]  # generated before the functions
        stack = stack_module.Stack(
            root=ROOT, home=home, port=free_loopback_port(), echo=False, database_url=database_url
        )
        try:
            stack.start()
            yield Running(stack, issue_local_token("carol"), key)
        finally:
            stack.stop()
            get_settings.cache_clear()


def command(event_id: str, event_type: str, data: Any, **extensions: str) -> Any:
    event = events.build(event_id=event_id, type=event_type, source="/crm", subject="", data=data)
    for name, value in extensions.items():
        event[name] = value
    return event


def signed(running: Running, event: Any, user: str = "carol", key: str = "") -> Any:
    return sign_command(event, user=user, system=LOCAL_SYSTEM, key=key or running.key)


def produce_with_librdkafka(running: Running, *commands: Any, key: str = "crm") -> None:
    """Binary-mode records (CloudEvents SDK headers), produced by librdkafka."""
    producer = confluent_kafka.Producer({"bootstrap.servers": running.stack.bootstrap_servers})
    for event in commands:
        message = events.to_kafka(event, key)
        producer.produce(
            COMMANDS_TOPIC,
            value=message.value,
            key=message.key,
            headers=list(message.headers.items()),
        )
    assert producer.flush(10) == 0


def create(title: str, tag: str) -> dict[str, Any]:
    return {"task": {"title": title, "tags": [tag]}}


def dead_letter(running: Running, event_id: str) -> deadletters.DeadLetter:
    def dead_lettered() -> list[deadletters.DeadLetter]:
        letters = deadletters.read(running.stack.bootstrap_servers, "duetide-dead-letters")
        return [letter for letter in letters if letter.event_id == event_id]

    [letter] = wait_for(dead_lettered, "the dead letter")
    assert letter.destination == f"{running.base}/commands"
    return letter


# ------------------------------------------------------------ via the commands topic


def test_signed_commands_produced_by_librdkafka_create_and_complete_a_task_once(
    running: Running,
):
    tag, marker = f"crm-{uuid.uuid4().hex[:8]}", f"marker-{uuid.uuid4().hex[:8]}"
    created = signed(running, command("crm-1", events.CMD_TASK_CREATE, create("Call", tag)))
    # The same command produced twice (a retrying producer), then a marker on the same
    # key: the marker is delivered after both copies (one partition, ordered delivery).
    produce_with_librdkafka(running, created, created)
    produce_with_librdkafka(
        running, signed(running, command("crm-2", events.CMD_TASK_CREATE, create("m", marker)))
    )
    wait_for(lambda: running.tasks(marker), "the marker task")
    [task] = running.tasks(tag)
    assert task["title"] == "Call" and task["status"] == "open"

    completing = command("crm-3", events.CMD_TASK_COMPLETE, {"task_id": task["id"]})
    produce_with_librdkafka(running, signed(running, completing))
    wait_for(lambda: running.tasks(tag)[0]["status"] == "done", "the completion")
    assert len(running.tasks(tag)) == 1


def test_command_with_a_bad_signature_is_dead_lettered_with_401(running: Running):
    tag = f"forged-{uuid.uuid4().hex[:8]}"
    event_id = f"forged-{uuid.uuid4().hex[:8]}"
    forged = signed(
        running, command(event_id, events.CMD_TASK_CREATE, create("x", tag)), key="k" * 40
    )
    produce_with_librdkafka(running, forged)
    assert dead_letter(running, event_id).attribute("knativeerrorcode") == "401"
    assert running.tasks(tag) == []


def test_command_carrying_a_token_is_dead_lettered_with_400_saying_why(running: Running):
    tag = f"token-{uuid.uuid4().hex[:8]}"
    event_id = f"token-{uuid.uuid4().hex[:8]}"
    event = command(
        event_id, events.CMD_TASK_CREATE, create("x", tag), authtoken="eyJhbGciOi.a-token.abc"
    )
    produce_with_librdkafka(running, signed(running, event))
    letter = dead_letter(running, event_id)
    assert letter.attribute("knativeerrorcode") == "400"
    answer = json.loads(base64.b64decode(letter.attribute("knativeerrordata")))
    assert "bearer tokens do not travel in events" in answer["error"]["message"]
    assert running.tasks(tag) == []


# ---------------------------------------------------------------- POST /commands


def post(running: Running, event: Any, *, structured: bool = False, **headers: str) -> Any:
    if structured:
        wire, body = to_structured(event, data_marshaller=lambda d: json.dumps(d).encode())
    else:
        wire, body = events.to_http(event)
    return requests.post(
        f"{running.base}/commands", headers={**wire, **headers}, data=body, timeout=10
    )


@pytest.mark.parametrize("structured", [False, True], ids=["binary", "structured"])
def test_posted_command_creates_a_task_and_its_retry_is_a_duplicate(
    running: Running, structured: bool
):
    tag = f"posted-{uuid.uuid4().hex[:8]}"
    event = command(f"post-{tag}", events.CMD_TASK_CREATE, create("Posted", tag))
    first = post(running, event, structured=structured, **running.auth)
    assert first.status_code == 201, first.text
    assert first.json()["task"]["title"] == "Posted"
    again = post(running, event, structured=structured, **running.auth)
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert [t["id"] for t in running.tasks(tag)] == [first.json()["task"]["id"]]


def test_posted_commands_without_a_valid_token_or_of_unknown_type_are_refused(
    running: Running,
):
    tag = f"refused-{uuid.uuid4().hex[:8]}"
    event = command(f"r-{tag}", events.CMD_TASK_CREATE, create("Refused", tag))
    assert post(running, event).status_code == 401
    assert post(running, event, Authorization="Bearer not-a-token").status_code == 401
    assert post(running, event, structured=True).status_code == 401
    named = command(f"n-{tag}", events.CMD_TASK_CREATE, create("Refused", tag), duetideuser="carol")
    assert post(running, named).status_code == 401  # a user named, nobody vouching
    unknown = command(f"u-{tag}", "dev.duetide.task.archive.v1", {"task_id": "x"})
    answer = post(running, unknown, Authorization=running.auth["Authorization"])
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_cloudevent"
    assert running.tasks(tag) == []
