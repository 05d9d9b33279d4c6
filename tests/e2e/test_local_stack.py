"""The whole system started the way the README says (`scripts/up`), driven over HTTP.

The three user stories of the walking skeleton: task CRUD, a recurring task whose
completion materialises the next occurrence through Kafka and the recurrence
function, and a reminder delivered once by notify after a sweep ping (in a
reminder.due.batch, as the manifests send them); and the activity
log the activity function writes from the same events, and a webhook subscription that
gets them through the activity function, the webhooks topic and notify. Then Ctrl-C,
and no process of the stack is left behind.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from duetide.channels.webhook import verify_signature
from duetide_tools.local.broker import free_loopback_port
from tests.integration.test_reminders import Receiver, serving_receiver
from tests.support import processes_with_home, wait_for

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90


class Stack:
    def __init__(self, process: subprocess.Popen[str], base: str, token: str, home: Path):
        self.process, self.base, self.home = process, base, home
        self.headers = {"Authorization": f"Bearer {token}"}

    def call(
        self, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> requests.Response:
        return requests.request(
            method, self.base + path, headers={**self.headers, **(headers or {})}, timeout=10,
            **kwargs,
        )  # fmt: skip


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    home = tmp_path_factory.mktemp("home")
    port = free_loopback_port()
    env = {
        **os.environ,
        "DUETIDE_HOME": str(home),
        "DUETIDE_PING_INTERVAL": "1",
        "DATABASE_URL": "",
        "KAFKA_BOOTSTRAP_SERVERS": "",
        "DUETIDE_JWT_SECRET": "",
        "DUETIDE_ALLOW_LOOPBACK_WEBHOOKS": "true",  # the subscriber below is on loopback
        "DUETIDE_SUBSCRIPTION_RETRY_BASE_S": "1",  # its failed try is retried at once
        "DUETIDE_REMINDERS_PER_EVENT": "50",  # as the manifests set it: reminder.due.batch
        "DUETIDE_READ_RATE_PER_MINUTE": "0",  # the tests poll; the limit has its own tests
    }
    process = subprocess.Popen(
        [str(ROOT / "scripts" / "up"), "--port", str(port), "--quiet"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    token = ""
    deadline = time.monotonic() + START_TIMEOUT_S
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        found = re.search(r"export DUETIDE_TOKEN=(\S+)", line)
        if found:
            token = found.group(1)
            break
    if not token:
        process.kill()
        pytest.fail("duetide up did not become ready:\n" + "".join(lines))
    assert any(f"http://127.0.0.1:{port}" in line for line in lines)
    yield Stack(process, f"http://127.0.0.1:{port}", token, home)
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def test_task_crud_filters_and_errors(stack: Stack):
    created = stack.call("POST", "/tasks", json={"title": "Pay rent", "tags": ["home"]})
    assert created.status_code == 201
    task_id = created.json()["id"]
    assert stack.call("GET", f"/tasks/{task_id}").json()["title"] == "Pay rent"
    assert (
        stack.call("PATCH", f"/tasks/{task_id}", json={"priority": "high"}).json()["priority"]
        == "high"
    )
    assert [t["id"] for t in stack.call("GET", "/tasks?tag=home").json()["items"]] == [task_id]
    assert stack.call("POST", f"/tasks/{task_id}/complete").json()["status"] == "done"
    assert stack.call("POST", f"/tasks/{task_id}/reopen").json()["status"] == "open"
    bad = stack.call("POST", "/tasks", json={"title": ""})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_failed"
    assert requests.get(stack.base + "/tasks", timeout=5).status_code == 401
    assert stack.call("DELETE", f"/tasks/{task_id}").status_code == 204
    assert stack.call("GET", f"/tasks/{task_id}").status_code == 404


def test_completing_an_occurrence_materialises_the_next(stack: Stack):
    first = stack.call(
        "POST",
        "/tasks",
        json={
            "title": "Stand-up",
            "due_at": "2026-03-27T09:30:00+01:00",
            "recurrence": {"rrule": "FREQ=WEEKLY;INTERVAL=1;COUNT=5", "timezone": "Europe/Berlin"},
        },
    ).json()
    series = first["series_id"]
    trace = uuid.uuid4().hex  # the caller's trace: it goes through Kafka into recurrence
    completed = stack.call(
        "POST",
        f"/tasks/{first['id']}/complete",
        headers={"traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    assert completed.status_code == 200
    assert completed.headers["traceresponse"].startswith(f"00-{trace}-")

    def open_occurrences() -> list[dict[str, Any]]:
        return stack.call("GET", f"/tasks?series_id={series}&status=open").json()["items"]

    following = wait_for(open_occurrences, "the next occurrence")
    assert [t["due_at"] for t in following] == ["2026-04-03T09:30:00+02:00"]

    def recurrence_lines() -> bool:
        log = (stack.home / "logs" / "recurrence.log").read_text()
        lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
        ours = {line["event"] for line in lines if line.get("trace_id") == trace}
        return {"event.handled", "occurrence.materialised"} <= ours

    wait_for(recurrence_lines, "recurrence's log lines in the caller's trace")
    # Completing the done one again (and a moment of redelivery) adds nothing.
    stack.call("POST", f"/tasks/{first['id']}/complete")
    time.sleep(0)  # nothing to wait for: the second complete emits no event
    everything = stack.call("GET", f"/tasks?series_id={series}").json()["items"]
    assert len(everything) == 2


def test_reminder_is_delivered_once(stack: Stack):
    at = datetime.now(UTC) + timedelta(seconds=2)
    task = stack.call(
        "POST", "/tasks", json={"title": "Call back", "reminders": [{"at": at.isoformat()}]}
    )
    task_id = task.json()["id"]

    def delivered() -> list[dict[str, Any]]:
        items = stack.call("GET", "/notifications").json()["items"]
        return [n for n in items if n["task_id"] == task_id]

    notes = wait_for(delivered, "the reminder's notification")
    assert len(notes) == 1
    assert datetime.fromisoformat(notes[0]["delivered_at"]) >= at
    # A few more pings pass; still exactly one delivery, one log line.
    time.sleep(2.5)
    assert len(delivered()) == 1
    text = (stack.home / "logs" / "notify.log").read_text()
    log = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    deliveries = [
        e for e in log if e["event"] == "notification.delivered" and e.get("task_id") == task_id
    ]
    assert len(deliveries) == 1
    handled = {
        e["type"] for e in log if e["event"] == "event.handled" and ".reminder." in e["type"]
    }
    assert handled == {"dev.duetide.reminder.due.batch.v1"}  # through Kafka, in a batch


def test_the_activity_function_logs_each_change_through_kafka(stack: Stack):
    """The activity function runs from its manifest: its KafkaSource feeds it the task
    events, and the feed shows one task's changes in order, its deletion as a tombstone."""
    task_id = stack.call("POST", "/tasks", json={"title": "Draft"}).json()["id"]
    stack.call("PATCH", f"/tasks/{task_id}", json={"title": "Final"})
    assert stack.call("DELETE", f"/tasks/{task_id}").status_code == 204

    def history() -> list[dict[str, Any]]:
        answer = stack.call("GET", f"/tasks/{task_id}/activity")
        if answer.status_code == 404:  # deleted before its first entry was logged
            return []
        assert answer.status_code == 200, answer.text
        items = answer.json()["items"]
        return items if len(items) == 3 else []

    items = wait_for(history, "the task's three changes in its activity")
    assert [i["type"].split(".")[3] for i in items] == ["created", "updated", "deleted"]
    assert items[1]["changes"] == {"title": {"before": "Draft", "after": "Final"}}
    assert items[2]["deleted"] is True
    feed = stack.call("GET", "/activity?limit=200").json()
    assert [i["event_id"] for i in feed["items"] if i["task_id"] == task_id] == [
        i["event_id"] for i in items
    ]


def test_a_webhook_subscription_gets_each_change_through_kafka(stack: Stack, monkeypatch):
    """The notify function's second KafkaSource (the webhooks topic, from its manifest)
    feeds it the tries the activity function stores; a failed try is retried by the
    sweep's ping with the same delivery id."""
    with serving_receiver(monkeypatch) as url:
        made = stack.call("POST", "/subscriptions", json={"url": url})
        assert made.status_code == 201 and made.json()["status"] == "active", made.text
        Receiver.script = [503]  # the first try, of either event, fails
        task_id = stack.call("POST", "/tasks", json={"title": "Hooked"}).json()["id"]
        stack.call("POST", f"/tasks/{task_id}/complete")

        def received() -> list[dict[str, Any]]:
            mine = [r for r in Receiver.seen if r["headers"]["ce-subject"] == task_id]
            return mine if len(mine) == 3 else []

        tries = wait_for(received, "both task events at the subscriber, one of them twice")
        headers = [r["headers"] for r in tries]
        assert {h["ce-type"].split(".")[3] for h in headers} == {"created", "completed"}
        assert len({h["Idempotency-Key"] for h in headers}) == 2  # the retry: the same id
        secret = made.json()["secret"].encode()
        for r in tries:
            bound = (r["headers"]["ce-id"], r["headers"]["ce-type"])
            signature = r["headers"]["Duetide-Signature"]
            assert verify_signature(secret, signature, r["body"], time.time(), bound=bound)

        def settled() -> bool:  # notify records a try once the subscriber has answered it
            log = stack.call("GET", f"/subscriptions/{made.json()['id']}/deliveries").json()
            return {d["status"] for d in log["items"]} == {"delivered"}

        wait_for(settled, "both deliveries recorded as delivered")


def test_closing_the_terminal_stops_everything_as_ctrl_c_does(stack: Stack):
    """SIGHUP (the terminal closed) killed `up` at once: its children died by the
    parent-death signal, and no clean stop was recorded, so the next start sent every
    event since the broker's start again. Ctrl-C has its own test (test_supervision)."""
    assert processes_with_home(stack.home), "the stack's processes should be visible while up"
    stack.process.send_signal(signal.SIGHUP)
    assert stack.process.wait(timeout=30) == 0
    wait_for(lambda: not processes_with_home(stack.home), "all stack processes to exit", 10)
