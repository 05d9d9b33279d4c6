"""One source of truth: editing knative/ changes what the local stack does.

A copy of the project gets two edits, each in knative/ only: the PingSource fires every
second (cron with Knative's seconds field) instead of every minute, and the notify
KafkaSource sinks into another Service, a probe that records the CloudEvents it gets.
The real local stack (embedded broker, functions-framework processes, eventing
stand-ins) then runs the copy: a task's two reminders, six seconds apart, are each
claimed by the sweep within seconds of being due (a minute's schedule cannot tick twice
in that window) and reach the probe, not notify.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from duetide.config import Settings
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import Stack
from duetide_tools.manifests import SinkRef
from tests.support import wait_for

REPO_ROOT = Path(__file__).resolve().parents[2]
SECRET = "wiring-test-secret-of-a-sufficient-length-0123456789"
EVERY_SECOND = "*/1 * * * * *"
# A reminder is claimed at the first tick after it is due: within a second (plus the
# PingSource's 0-500 ms jitter and the sweep's own work) when ticking every second.
CLAIM_BOUND = timedelta(seconds=4)
REMINDER_GAP = timedelta(seconds=6)
# The notify KafkaSource's consumer group joins the embedded broker first.
DELIVERY_TIMEOUT_S = 45.0

PROBE_SOURCE = '''"""A sink that prints each CloudEvent it receives as one JSON line."""

import json

import functions_framework
from flask import Request


@functions_framework.http
def probe(request: Request) -> dict:
    if request.method != "POST":
        return {"status": "ok"}
    headers = {k.lower(): v for k, v in request.headers.items() if k.lower().startswith("ce-")}
    record = {"path": request.path, "headers": headers, "data": request.get_json(silent=True)}
    print("PROBE " + json.dumps(record), flush=True)
    return {"status": "recorded"}
'''

Doc = dict[str, Any]


def _edit(path: Path, change: Callable[[list[Doc]], None]) -> None:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    change(docs)
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


def ping_every_second(docs: list[Doc]) -> None:
    _named(docs, "PingSource", "duetide-sweep")["spec"]["schedule"] = EVERY_SECOND


def notify_source_into_probe(docs: list[Doc]) -> None:
    _named(docs, "KafkaSource", "duetide-notify")["spec"]["sink"]["ref"]["name"] = "duetide-probe"


def add_probe_service(docs: list[Doc]) -> None:
    probe = yaml.safe_load(yaml.safe_dump(_named(docs, "Service", "duetide-notify")))
    probe["metadata"]["name"] = "duetide-probe"
    probe["metadata"]["labels"]["app.kubernetes.io/name"] = "duetide-probe"
    (container,) = probe["spec"]["template"]["spec"]["containers"]
    for env in container["env"]:
        if env["name"] == "FUNCTION_TARGET":
            env["value"] = "probe"
    docs.append(probe)


@pytest.fixture
def edited_project(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for folder in ("knative", "kafka", "functions"):
        shutil.copytree(
            REPO_ROOT / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    _edit(root / "knative" / "sources.yaml", ping_every_second)
    _edit(root / "knative" / "sources.yaml", notify_source_into_probe)
    _edit(root / "knative" / "services.yaml", add_probe_service)
    (root / "functions" / "probe").mkdir()
    (root / "functions" / "probe" / "main.py").write_text(PROBE_SOURCE)
    return root


@pytest.fixture
def stack(edited_project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    monkeypatch.setenv("DUETIDE_JWT_SECRET", SECRET)  # inherited by the function processes
    running = Stack(
        root=edited_project,
        home=tmp_path / "home",
        port=free_loopback_port(),
        ping_interval_s=None,  # the PingSource's own schedule, as edited
        echo=False,
    )
    try:
        running.start()
        yield running
    finally:
        running.stop()


def probe_records(stack: Stack) -> list[Doc]:
    log = stack.logs / "probe.log"
    if not log.exists():
        return []
    lines = log.read_text(errors="replace").splitlines()
    return [json.loads(line.split("PROBE ", 1)[1]) for line in lines if "PROBE " in line]


def test_knative_edits_change_the_schedule_and_the_sink_the_stack_runs(stack: Stack) -> None:
    assert stack.wiring is not None
    assert [p.schedule for p in stack.wiring.ping_sources] == [EVERY_SECOND]
    notify_source = next(s for s in stack.wiring.kafka_sources if s.name == "duetide-notify")
    assert notify_source.sink == SinkRef("Service", "duetide-probe")

    headers = {"Authorization": f"Bearer {issue_local_token('alice', Settings())}"}
    base = stack.functions["tasks"].url
    first = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    due = [first, first + REMINDER_GAP]
    created = requests.post(
        f"{base}/tasks",
        json={"title": "Water the plants", "reminders": [{"at": at.isoformat()} for at in due]},
        headers=headers,
        timeout=10,
    )
    assert created.status_code == 201, created.text
    task_id = created.json()["id"]

    def both_reminders_at_the_probe() -> list[Doc]:
        records = [r for r in probe_records(stack) if r["data"]["task_id"] == task_id]
        return records if len(records) == 2 else []

    records = wait_for(
        both_reminders_at_the_probe, "two reminders at the probe", DELIVERY_TIMEOUT_S
    )
    assert {r["headers"]["ce-type"] for r in records} == {"dev.duetide.reminder.due.v1"}
    claimed = sorted(
        (
            datetime.fromisoformat(r["data"]["scheduled_at"]),
            datetime.fromisoformat(r["headers"]["ce-time"]),
        )
        for r in records
    )
    assert [scheduled for scheduled, _ in claimed] == due
    for scheduled, at in claimed:
        assert timedelta(0) <= at - scheduled <= CLAIM_BOUND, (scheduled, at)
    # Two sweeps, seconds apart: only a sub-minute schedule ticks twice in this window.
    assert claimed[1][1] - claimed[0][1] >= REMINDER_GAP - CLAIM_BOUND

    notifications = requests.get(f"{base}/notifications", headers=headers, timeout=10)
    assert notifications.json()["items"] == []  # the notify function was not the sink
