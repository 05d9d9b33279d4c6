"""The soak: the whole local stack on PostgreSQL under a mixed workload while its parts die.

Series completions (with reopen races and skips), reminders and idempotent commands run
for a bounded time while a chaos thread SIGKILLs function processes and the broker; `up`'s
supervisor brings them back. When the load stops and the stack has settled, the database
must show what the contracts promise:

- every active series has exactly one open occurrence, every completed occurrence
  exactly one successor;
- every reminder that fell due is delivered exactly once per channel, never early;
- every command created exactly one task, however often it was sent;
- the outbox is empty, and no dead letter is unaccounted for.

Bounded: a fixed number of operations and a deadline for each phase, loopback only.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import func
from sqlmodel import col, select

from duetide.storage import db
from duetide.storage.models import Notification, Outbox, Reminder, Series, Task
from duetide.web.auth import issue_local_token
from duetide_tools import deadletters
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import Stack, project_root
from tests.integration.conftest import POSTGRES_URL, _reset_caches
from tests.support import migrated_database, wait_for

pytestmark = pytest.mark.soak

SERIES, REMINDERS, COMMANDS = 12, 60, 40
LOAD_S = float(os.environ.get("DUETIDE_SOAK_SECONDS", "45"))
CHAOS_EVERY_S = 4.0
SETTLE_S = 120.0
USERS = ("soak-ann", "soak-ben", "soak-cat")


@dataclass
class Client:
    """An HTTP client that retries what a real client would: refused connections and 5xx."""

    base: str
    tokens: dict[str, str]
    errors: list[str] = field(default_factory=list)

    def call(self, user: str, method: str, path: str, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}", **kwargs.pop("headers", {})}
        last: Any = None
        for attempt in range(40):
            try:
                answer = requests.request(
                    method, self.base + path, headers=headers, timeout=10, **kwargs
                )
            except requests.RequestException as exc:
                last = exc
            else:
                if answer.status_code < 500:
                    return answer
                last = answer.status_code
            time.sleep(min(0.05 * 2**attempt, 1.0))
        raise AssertionError(f"{method} {path} kept failing: {last}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    if not POSTGRES_URL:
        pytest.fail("the soak runs on PostgreSQL: set DUETIDE_TEST_POSTGRES_URL")
    home = tmp_path_factory.mktemp("soak")
    saved = dict(os.environ)
    with migrated_database(POSTGRES_URL, home) as url:
        os.environ.update(
            DUETIDE_HOME=str(home),
            DATABASE_URL=url,
            KAFKA_BOOTSTRAP_SERVERS="",
            DUETIDE_JWT_SECRET="soak-test-secret-of-enough-length-0123",
            DUETIDE_WRITE_RATE_PER_MINUTE="0",  # the soak is three busy users, not abuse
            DUETIDE_READ_RATE_PER_MINUTE="0",
        )
        _reset_caches()
        running = Stack(
            root=project_root(),
            home=home,
            port=free_loopback_port(),
            ping_interval_s=1.0,
            echo=False,
            database_url=url,
        )
        try:
            running.start()
            yield running
        finally:
            running.stop()
            db.get_engine().dispose()
            os.environ.clear()
            os.environ.update(saved)
            _reset_caches()


def _pids(stack: Stack) -> dict[str, int]:
    found = {name: child.process.pid for name, child in stack.functions.items()}
    if stack.broker is not None and stack.broker.pid is not None:
        found["broker"] = stack.broker.pid
    return found


def chaos(stack: Stack, stop: threading.Event, log: list[str]) -> None:
    """SIGKILL a function or the broker every few seconds, round robin, until `stop`."""
    victims = ["recurrence", "notify", "broker", "sweep", "tasks", "broker"]
    turn = 0
    while not stop.wait(CHAOS_EVERY_S):
        name = victims[turn % len(victims)]
        turn += 1
        pid = _pids(stack).get(name)
        if pid is None:
            continue
        try:
            os.killpg(pid, signal.SIGKILL) if name == "broker" else os.kill(pid, signal.SIGKILL)
            log.append(f"{time.monotonic():.1f} killed {name} ({pid})")
        except ProcessLookupError:
            continue


def series_worker(client: Client, user: str, series_ids: list[str], stop: threading.Event):
    """Complete open occurrences; now and then reopen right after, or skip instead."""
    rng = random.Random(user)
    while not stop.is_set():
        series_id = rng.choice(series_ids)
        items = client.call(user, "GET", f"/tasks?series_id={series_id}&status=open").json()
        for task in items["items"]:
            roll = rng.random()
            if roll < 0.15:
                client.call(user, "POST", f"/series/{series_id}/skip")
                continue
            client.call(user, "POST", f"/tasks/{task['id']}/complete")
            if roll < 0.35:
                answer = client.call(user, "POST", f"/tasks/{task['id']}/reopen")
                assert answer.status_code in (200, 409), answer.text


def command_worker(client: Client, user: str, sent: dict[str, str], stop: threading.Event):
    """Post create commands, each id several times (a producer retrying)."""
    rng = random.Random(f"cmd-{user}")
    for n in range(COMMANDS):
        if stop.is_set():
            return
        command_id = f"{user}-{n}"
        marker = f"cmd {command_id} {uuid.uuid4().hex[:6]}"
        sent[command_id] = marker
        for _ in range(rng.randint(1, 3)):
            answer = client.call(
                user,
                "POST",
                "/commands",
                data=f'{{"task": {{"title": "{marker}"}}}}',
                headers={
                    "Content-Type": "application/json",
                    "ce-specversion": "1.0",
                    "ce-id": command_id,
                    "ce-source": "/soak",
                    "ce-type": "dev.duetide.task.create.v1",
                },
            )
            assert answer.status_code in (200, 201), answer.text
        time.sleep(rng.random() * LOAD_S / COMMANDS)


def _scalar(statement: Any) -> Any:
    with db.session_scope(read_only=True) as session:
        return session.exec(statement).one()


def _settled() -> bool:
    unsent = _scalar(select(func.count()).select_from(Outbox).where(col(Outbox.sent_at).is_(None)))
    # Every reminder, not only those due by now: the last falls due near the end of the
    # load, and a check before its time found the rest settled and it never fired.
    pending = _scalar(select(func.count()).select_from(Reminder).where(Reminder.state == "pending"))
    undelivered = _scalar(
        select(func.count())
        .select_from(Reminder)
        .where(
            Reminder.state == "fired",
            ~select(Notification.id).where(Notification.reminder_id == Reminder.id).exists(),
        )
    )
    orphans = _completed_without_successor()
    return unsent == 0 and pending == 0 and undelivered == 0 and not orphans


def _completed_without_successor() -> list[str]:
    """Done occurrences of active series that no later occurrence follows (yet).

    A successor that was skipped is replaced by the one after it, whose `previous_id` is
    the skipped one, so "followed" means a later occurrence exists, not a `previous_id`.
    """
    with db.session_scope(read_only=True) as session:
        rows = session.exec(
            select(Task.id, Task.series_id, Task.occurrence_index, Task.status)
            .join(Series, col(Series.id) == col(Task.series_id))
            .where(Series.status == "active")
        ).all()
    # Joined on `series_id`, so it is never NULL here.
    occurrences = [(task_id, s, index or 0, status) for task_id, s, index, status in rows if s]
    latest: dict[str, int] = {}
    for _id, series_id, index, _status in occurrences:
        latest[series_id] = max(latest.get(series_id, -1), index)
    return [
        task_id
        for task_id, series_id, index, status in occurrences
        if status == "done" and index >= latest[series_id]
    ]


def _successors_per_occurrence() -> dict[str, int]:
    """How many tasks name each occurrence as their predecessor."""
    with db.session_scope(read_only=True) as session:
        rows = session.exec(
            select(Task.previous_id, func.count())
            .where(col(Task.previous_id).is_not(None))
            .group_by(Task.previous_id)
        ).all()
    return {previous: count for previous, count in rows if previous is not None}


def test_the_stack_keeps_its_contracts_while_its_parts_die(stack: Stack):
    tokens = {user: issue_local_token(user) for user in USERS}
    client = Client(f"http://127.0.0.1:{stack.port}", tokens)
    start = datetime.now(UTC)

    series_ids: dict[str, list[str]] = {user: [] for user in USERS}
    for n in range(SERIES):
        user = USERS[n % len(USERS)]
        body: dict[str, Any] = {
            "title": f"series {n}",
            "due_at": (start - timedelta(days=40 - n)).isoformat(),
            "recurrence": {"rrule": "FREQ=DAILY", "timezone": "Europe/Berlin"},
        }
        created = client.call(user, "POST", "/tasks", json=body)
        assert created.status_code == 201, created.text
        series_ids[user].append(created.json()["series_id"])
    for n in range(REMINDERS):
        user = USERS[n % len(USERS)]
        at = start + timedelta(seconds=3 + LOAD_S * n / REMINDERS)
        body = {"title": f"reminder {n}", "reminders": [{"at": at.isoformat()}]}
        assert client.call(user, "POST", "/tasks", json=body).status_code == 201

    stop = threading.Event()
    kills: list[str] = []
    sent: dict[str, str] = {}
    failures: list[BaseException] = []

    def run(target: Any, *args: Any) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except BaseException as exc:  # reported below; stop the others at once
                failures.append(exc)
                stop.set()

        return threading.Thread(target=guarded)

    threads = [run(chaos, stack, stop, kills)]
    for user in USERS:
        threads.append(run(series_worker, client, user, series_ids[user], stop))
        threads.append(run(command_worker, client, user, sent, stop))
    for thread in threads:
        thread.start()
    stop.wait(LOAD_S)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures, failures
    assert len([k for k in kills if "broker" in k]) >= 1, kills

    wait_for(_settled, "the stack to settle after the load", timeout_s=SETTLE_S, interval_s=0.5)
    letters = [  # an operator's `duetide deadletters replay --all`
        letter
        for letter, _ in deadletters.replay(
            stack.bootstrap_servers, _dead_letter_topic(stack), wiring=stack.wiring
        )
    ]
    if letters:
        wait_for(_settled, "the replayed dead letters", timeout_s=SETTLE_S, interval_s=0.5)

    with db.session_scope(read_only=True) as session:
        for series in session.exec(select(Series)).all():
            open_ones = session.exec(
                select(func.count())
                .select_from(Task)
                .where(Task.series_id == series.id, Task.status == "open")
            ).one()
            expected = 1 if series.status == "active" else 0
            assert open_ones == expected, (series.id, series.status, open_ones)
        assert _completed_without_successor() == []
        assert {n for n in _successors_per_occurrence().values()} <= {1}

        notes = session.exec(select(Notification)).all()
        completed = session.exec(
            select(func.count()).select_from(Task).where(Task.status == "done")
        ).one()
        per_firing: dict[tuple[str, datetime, str], int] = {}
        for note in notes:
            key = (note.reminder_id, note.scheduled_at, note.channel)
            per_firing[key] = per_firing.get(key, 0) + 1
            assert note.delivered_at >= note.scheduled_at, "delivered early"
        assert set(per_firing.values()) == {1}
        fired = session.exec(select(Reminder).where(Reminder.state == "fired")).all()
        assert len(fired) == REMINDERS
        assert {n.reminder_id for n in notes} == {r.id for r in fired}

        for command_id, marker in sent.items():
            made = session.exec(
                select(func.count()).select_from(Task).where(Task.title == marker)
            ).one()
            assert made == 1, (command_id, made)
        unsent = session.exec(
            select(func.count()).select_from(Outbox).where(col(Outbox.sent_at).is_(None))
        ).one()
        assert unsent == 0

    # Every dead letter is accounted for: those the final broker holds are on its topic
    # (and were replayed above); those written to a broker that died went with it, and
    # their original events were requeued from the outbox when it was replaced.
    on_topic = {letter.event_id for letter in letters}
    kept = {i for d in [*stack.dispatchers, *stack.replaced_dispatchers] for i in d.dead_lettered}
    lost = {i for d in stack.retired_dispatchers for i in d.dead_lettered}
    assert kept <= on_topic, kept - on_topic
    Path(stack.home / "chaos.log").write_text("\n".join(kills))
    print(
        f"soak: {len(kills)} kills, {len(stack.restarts)} restarts, "
        f"{len(on_topic)} dead letters replayed, {len(lost)} lost with a broker and requeued; "
        f"{completed} completions, {len(notes)} notifications, {len(sent)} commands"
    )


def _dead_letter_topic(stack: Stack) -> str:
    assert stack.wiring is not None
    names = {sink.topic for sink in stack.wiring.kafka_sinks.values()}
    assert len(names) == 1, names
    return names.pop()
