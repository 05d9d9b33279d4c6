"""`duetide up` supervises its children: what dies comes back, and nothing outlives `up`.

Real processes throughout: `duetide up` runs as a subprocess on a free loopback port with
a home of its own (SQLite), the test kills its children with SIGKILL and reads its
console; then an in-process `Stack` for what the soak relies on (its `restarts`, the
replaced `process`, `broker.pid`, the `on_broker_restart` hook) and for the backoff of a
child that cannot start.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import Engine
from sqlmodel import select

from duetide.config import get_settings
from duetide.services import tasks
from duetide.services.responses import TaskOut
from duetide.services.schemas import TaskCreate
from duetide.storage import db
from duetide.storage.models import Outbox, Task
from duetide_tools import manifests
from duetide_tools.local.backlog import count_not_taken
from duetide_tools.local.broker import LOOPBACK, free_loopback_port
from duetide_tools.local.eventing import KafkaSourceDispatcher
from duetide_tools.local.stack import BROKER_START_FILE, Stack
from duetide_tools.local.supervision import RestartPolicy
from tests.support import processes_with_home, wait_for

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 90


def children_of(pid: int) -> dict[str, int]:
    """The live child processes of `pid` by role: function name, or "broker"."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != pid or fields[0] == "Z":
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "--listener-url" in words:
            found["broker"] = int(entry.name)
        elif "--target" in words:
            found[words[words.index("--target") + 1]] = int(entry.name)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Up:
    """`duetide up` as a subprocess, with its console collected line by line; its record
    for `duetide token` goes to `runtime` (its XDG_RUNTIME_DIR)."""

    def __init__(self, home: Path, port: int, *, ready: bool = True, quiet: bool = True) -> None:
        self.home, self.port = home, port
        self.runtime = home.with_name(home.name + "-run")
        self.runtime.mkdir(exist_ok=True)
        env = {
            **os.environ,
            # This checkout's runtime and tooling, whatever the venv has installed.
            "PYTHONPATH": os.pathsep.join([str(ROOT / "shared"), str(ROOT / "shared" / "tools")]),
            "DUETIDE_HOME": str(home),
            "DUETIDE_PING_INTERVAL": "1",
            "DATABASE_URL": "",
            "KAFKA_BOOTSTRAP_SERVERS": "",
            "DUETIDE_JWT_SECRET": "",
            "XDG_RUNTIME_DIR": str(self.runtime),
        }
        command = [sys.executable, "-m", "duetide_tools.cli", "up", "--port", str(port)]
        self.process = subprocess.Popen(
            command + (["--quiet"] if quiet else []),
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.base = f"http://{LOOPBACK}:{port}"
        if not ready:
            return
        found = self.await_line(r"export DUETIDE_TOKEN=(\S+)", START_TIMEOUT_S)
        self.headers = {"Authorization": f"Bearer {found.group(1)}"}
        self.broker = self.await_line(r"^\s+broker\s+(\S+)", 1).group(1)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    def await_line(self, pattern: str, timeout_s: float = 30) -> re.Match[str]:
        def seen() -> re.Match[str] | None:
            for line in list(self.lines):
                if found := re.search(pattern, line):
                    return found
            if self.process.poll() is not None and not self._reader.is_alive():
                pytest.fail("duetide up ended:\n" + "\n".join(self.lines))
            return None

        return wait_for(seen, f"a console line {pattern!r}", timeout_s)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(
            method, self.base + path, headers=self.headers, timeout=10, **kwargs
        )

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            self.process.wait(timeout=30)
        for pid in children_of(self.process.pid).values():  # only if the test failed
            os.killpg(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(tmp_path_factory.mktemp("up"), free_loopback_port())
    try:
        yield running
    finally:
        running.close()


def next_occurrence_is_made(up: Up, title: str) -> None:
    """A recurring task completed now is followed by its next occurrence: the completion
    travels through the outbox, the broker, a KafkaSource dispatcher and recurrence."""
    first = up.call(
        "POST",
        "/tasks",
        json={
            "title": title,
            "due_at": "2026-03-27T09:30:00+01:00",
            "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=5", "timezone": "Europe/Berlin"},
        },
    )
    assert first.status_code == 201, first.text
    series, task_id = first.json()["series_id"], first.json()["id"]
    assert up.call("POST", f"/tasks/{task_id}/complete").status_code == 200

    def following() -> list[dict[str, Any]]:
        return up.call("GET", f"/tasks?series_id={series}&status=open").json()["items"]

    [after] = wait_for(following, f"the next occurrence of {title!r}", 60)
    assert after["due_at"] == "2026-04-03T09:30:00+02:00"


def test_up_starts_five_functions_and_the_broker_as_its_children(up: Up):
    children = {"tasks", "recurrence", "sweep", "notify", "activity", "broker"}
    assert set(children_of(up.process.pid)) == children


def test_a_killed_function_is_restarted_and_the_console_says_so(up: Up):
    old = children_of(up.process.pid)["recurrence"]
    os.kill(old, signal.SIGKILL)

    up.await_line(rf"recurrence \(pid {old}\) killed by SIGKILL; restarting in 0\.5 s")
    back = up.await_line(r"recurrence is back \(pid (\d+)\)")
    new = int(back.group(1))
    assert new != old and not alive(old)
    assert children_of(up.process.pid)["recurrence"] == new
    next_occurrence_is_made(up, "after recurrence died")


def test_a_killed_broker_comes_back_at_the_same_address_and_new_events_are_delivered(up: Up):
    old = children_of(up.process.pid)["broker"]
    os.killpg(old, signal.SIGKILL)

    up.await_line(rf"broker \(pid {old}\) killed by SIGKILL; restarting in")
    back = up.await_line(r"broker is back \(pid (\d+)\) at (\S+);")
    assert back.group(2) == up.broker  # the address functions and dispatchers were given
    assert children_of(up.process.pid)["broker"] == int(back.group(1)) != old
    up.await_line(r"requeued \d+ events the lost broker held")  # sent again, deduplicated
    next_occurrence_is_made(up, "after the broker died")


def duetide_token(user: str, runtime: Path, data_home: Path) -> subprocess.CompletedProcess[str]:
    """`duetide token USER` as from another shell: no DUETIDE_HOME, no DUETIDE_JWT_SECRET,
    a default home (XDG_DATA_HOME) of its own."""
    env = {k: v for k, v in os.environ.items() if k not in ("DUETIDE_HOME", "DUETIDE_JWT_SECRET")}
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "shared"), str(ROOT / "shared" / "tools")]),
        XDG_RUNTIME_DIR=str(runtime),
        XDG_DATA_HOME=str(data_home),
    )
    command = [sys.executable, "-m", "duetide_tools.cli", "token", user]
    return subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)


def test_duetide_token_in_another_shell_signs_with_the_running_stacks_secret(
    up: Up, tmp_path: Path
):
    made = duetide_token("alice", up.runtime, tmp_path / "data")
    assert made.returncode == 0, made.stderr
    answer = requests.get(
        up.base + "/tasks", headers={"Authorization": f"Bearer {made.stdout.strip()}"}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert not (tmp_path / "data").exists()  # no secret generated in the default home


def test_duetide_token_without_a_running_stack_refuses_and_generates_nothing(tmp_path: Path):
    (tmp_path / "run").mkdir()
    made = duetide_token("alice", tmp_path / "run", tmp_path / "data")
    assert (made.returncode, made.stdout) == (1, "")
    assert "no running `duetide up` found" in made.stderr
    assert not (tmp_path / "data").exists()


def test_ctrl_c_stops_up_and_every_child(up: Up):
    pids = list(children_of(up.process.pid).values())
    assert len(pids) == 6  # five functions and the broker
    [record] = (up.runtime / "duetide").glob("up-*.json")
    began = time.monotonic()
    up.process.send_signal(signal.SIGINT)
    assert up.process.wait(timeout=30) == 0
    wait_for(lambda: not any(alive(pid) for pid in pids), "every child to exit", 10, 0.01)
    # The time is reported, not asserted: bench/up_supervision.py measures it.
    print(f"SIGINT to the last child's exit: {time.monotonic() - began:.2f} s")
    assert not record.exists()  # `duetide token` no longer finds the stopped stack
    with socket.socket() as sock:
        sock.bind((LOOPBACK, up.port))  # the port is free for the next `up`


def test_ctrl_c_during_the_start_stops_what_had_started(tmp_path: Path):
    starting = Up(tmp_path / "home", free_loopback_port(), ready=False, quiet=False)
    try:
        # The broker is up and the topics exist once their step's line is complete;
        # Ctrl-C comes while the functions start (or have just started).
        starting.await_line(r"^duetide: creating \d+ topics \.\.\. \d+\.\d s$", START_TIMEOUT_S)
        assert children_of(starting.process.pid)["broker"]
        starting.process.send_signal(signal.SIGINT)
        assert starting.process.wait(timeout=30) in (0, 130)
        # Every process of this stack: what was running, and what was being spawned.
        wait_for(lambda: not processes_with_home(starting.home), "every child to exit", 10, 0.01)
        starting._reader.join(timeout=10)
        console = "\n".join(starting.lines)
        assert "duetide: migrating the database ... " in console
        assert "duetide: starting the embedded broker ... " in console
        if starting.process.returncode == 130:  # the usual case: stopped while starting
            assert "Ctrl-C stops everything" not in console
            assert "duetide: stopping before the start finished" in console
        assert not list((starting.runtime / "duetide").glob("up-*.json"))
    finally:
        starting.close()


def test_a_sigkilled_up_leaves_no_child_behind(tmp_path: Path):
    doomed = Up(tmp_path / "home", free_loopback_port())
    try:
        pids = children_of(doomed.process.pid)
        assert set(pids) == {"tasks", "recurrence", "sweep", "notify", "activity", "broker"}
        doomed.process.kill()
        doomed.process.wait(timeout=10)
        wait_for(
            lambda: not [name for name, pid in pids.items() if alive(pid)],
            "every child of the killed up to die",
            10,
        )
        # Its record stayed behind; `duetide token` sees that its process is gone.
        refused = duetide_token("alice", doomed.runtime, tmp_path / "data")
        assert refused.returncode == 1 and "no running `duetide up`" in refused.stderr
        assert not list((doomed.runtime / "duetide").glob("up-*.json"))
        again = Up(tmp_path / "home", doomed.port)  # the port is free: a new `up` starts
        again.close()
    finally:
        doomed.close()


# ------------------------------------------------------------- the Stack object


def new_stack(home: Path, messages: list[str]) -> Stack:
    """A Stack on `home` with short restart delays, its console messages in `messages`."""
    return Stack(
        root=ROOT,
        home=home,
        port=free_loopback_port(),
        echo=False,
        ping_interval_s=1.0,
        report=messages.append,
        restart_policy=RestartPolicy(base_s=0.2, cap_s=0.8, healthy_after_s=30.0),
    )


@pytest.fixture
def stack_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The environment `duetide up` gives a stack on a home of its own (`tmp_path`)."""
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path))
    monkeypatch.setenv("DUETIDE_JWT_SECRET", "e2e-supervision-secret-of-enough-length")
    monkeypatch.setenv("DATABASE_URL", "")
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "")
    get_settings.cache_clear()
    yield tmp_path
    get_settings.cache_clear()


@pytest.fixture
def supervised(stack_env: Path) -> Iterator[tuple[Stack, list[str]]]:
    """A started Stack; its console messages in a list."""
    messages: list[str] = []
    running = new_stack(stack_env, messages)
    try:
        running.start()
        yield running, messages
    finally:
        running.stop()


def test_the_stack_replaces_the_process_records_the_restart_and_calls_the_hook(
    supervised: tuple[Stack, list[str]],
):
    stack, messages = supervised
    hook: list[datetime] = []
    stack.on_broker_restart = hook.append
    assert stack.broker is not None
    lost_started_at, address = stack.broker.started_at, stack.bootstrap_servers
    old_function = stack.functions["notify"].process.pid
    os.kill(old_function, signal.SIGKILL)
    wait_for(lambda: stack.functions["notify"].process.pid != old_function, "a new notify")

    old_broker = stack.broker.pid
    assert old_broker is not None
    os.killpg(old_broker, signal.SIGKILL)
    wait_for(lambda: hook, "the on_broker_restart hook")

    assert hook == [lost_started_at]
    # What the next `up` on this home sends again from now on: the new broker's records.
    new_start, written = stack.broker.started_at, stack.home / BROKER_START_FILE
    assert new_start is not None
    wait_for(lambda: written.read_text().strip() == new_start.isoformat(), "the new start kept")
    assert stack.broker.pid not in (None, old_broker)
    assert stack.bootstrap_servers == address
    assert stack.broker.started_at is not None and lost_started_at is not None
    assert stack.broker.started_at > lost_started_at
    assert [(r.child, r.pid, r.returncode) for r in stack.restarts] == [
        ("notify", old_function, -signal.SIGKILL),
        ("broker", old_broker, -signal.SIGKILL),
    ]
    assert {d.spec.initial_offset for d in stack.dispatchers} == {"earliest"}
    assert all(d.running for d in stack.dispatchers)
    wait_for(lambda: any(m.startswith("duetide: notify is back") for m in messages), "notify back")


def test_a_function_that_cannot_start_is_retried_with_growing_backoff(
    supervised: tuple[Stack, list[str]], monkeypatch: pytest.MonkeyPatch
):
    stack, messages = supervised
    child = stack.functions["sweep"]
    monkeypatch.setenv("DUETIDE_READ_RATE_PER_MINUTE", "-1")  # each new sweep stops at its start
    os.kill(child.process.pid, signal.SIGKILL)
    wait_for(lambda: len(stack.restarts) >= 4, "four deaths of sweep in a row", 30)
    monkeypatch.delenv("DUETIDE_READ_RATE_PER_MINUTE")
    delays = [r.delay_s for r in stack.restarts[:4]]
    assert delays == [0.2, 0.4, 0.8, 0.8]
    assert [r.failures for r in stack.restarts[:4]] == [1, 2, 3, 4]
    assert all(r.child == "sweep" for r in stack.restarts)
    assert stack.restarts[1].returncode > 0  # exited by itself: its configuration
    wait_for(
        lambda: any(m.startswith("duetide: sweep is back") for m in messages),
        "sweep to come back once it can start",
        30,
    )
    assert requests.get(child.url + "/healthz", timeout=5).status_code == 200


def test_a_restarting_functions_port_stays_its_own(supervised: tuple[Stack, list[str]]):
    """Each function bound the port `up` had chosen for it: another program could take
    it before the function started or while it restarted, and the supervisor then took
    that program's answers for the function's health (two functions were once given one
    port, a CI run, 2026-12-07). `up` now holds each function's socket for the stack's
    life and passes it down: nobody else can bind it, and a request made while the
    function restarts waits for the new process instead of being refused."""
    stack, _ = supervised
    child = stack.functions["sweep"]
    old = child.process.pid
    os.kill(old, signal.SIGKILL)
    child.process.wait(timeout=10)
    with socket.socket() as squatter, pytest.raises(OSError):
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind((LOOPBACK, child.port))
    assert requests.get(child.url + "/healthz", timeout=30).status_code == 200
    assert child.process.pid != old
    assert [(r.child, r.pid) for r in stack.restarts] == [("sweep", old)]


def test_a_function_that_stops_answering_is_killed_by_its_liveness_probe_and_restarted(
    supervised: tuple[Stack, list[str]],
):
    """The manifests' livenessProbe, run as the kubelet runs it (here every 0.2 s, not the
    manifests' 10 s): only exits were watched, and a hung function stalled the stack."""
    stack, messages = supervised
    child = stack.functions["notify"]
    assert child.service.liveness == manifests.Probe("/healthz", 10, 2, 3)  # as deployed
    child.service = dataclasses.replace(
        child.service, liveness=manifests.Probe("/healthz", 0.2, 0.3, 2)
    )
    hung = child.process.pid
    os.kill(hung, signal.SIGSTOP)  # alive, answering nothing
    wait_for(lambda: child.process.pid != hung, "a new notify", 30)
    assert [(r.child, r.pid, r.returncode) for r in stack.restarts] == [
        ("notify", hung, -signal.SIGKILL)
    ]
    assert any(f"notify (pid {hung}) did not answer /healthz" in m for m in messages), messages
    wait_for(lambda: any(m.startswith("duetide: notify is back") for m in messages), "back", 30)
    assert requests.get(child.url + "/healthz", timeout=5).status_code == 200


def test_a_database_file_removed_under_the_stack_stops_it_saying_why(
    supervised: tuple[Stack, list[str]],
):
    """The running functions wrote on into the removed file, each one restarted made a
    new empty one, and events were answered 503 until dead-lettered, while the console
    said nothing (an audit, 2026-12-07)."""
    stack, messages = supervised
    reasons: list[str] = []
    stack.on_fatal = reasons.append
    database = stack.home / "duetide.db"
    assert database.exists()
    for path in stack.home.glob("duetide.db*"):
        path.unlink()
    wait_for(lambda: reasons, "the stack to give up", 10)
    assert any(reasons[0] in message for message in messages)  # said on the console
    assert f"the database file {database.resolve()} was removed or replaced" in reasons[0]


def _recurring_task_completed(engine: Engine, title: str) -> TaskOut:
    """What the tasks function does for a user: a weekly task created, then completed;
    its two events wait in the outbox for the sweep."""
    spec = TaskCreate.model_validate(
        {
            "title": title,
            "due_at": "2026-03-27T09:30:00+01:00",
            "recurrence": {"rrule": "FREQ=WEEKLY;COUNT=5", "timezone": "Europe/Berlin"},
        }
    )
    with db.session_scope(engine) as session:
        task, _ = tasks.create(session, "alice", spec)
    with db.session_scope(engine) as session:
        tasks.complete(session, "alice", task.id)
    return task


def _next_occurrences(engine: Engine, task: TaskOut) -> list[Task]:
    with db.session_scope(engine) as session:
        query = select(Task).where(Task.series_id == task.series_id, Task.id != task.id)
        return list(session.exec(query))


def _sent_at(engine: Engine) -> dict[str, datetime | None]:
    with db.session_scope(engine) as session:
        return {row.id: row.sent_at for row in session.exec(select(Outbox))}


def test_a_new_stack_sends_again_what_the_last_runs_broker_held(stack_env: Path):
    """The embedded broker keeps its records in memory: an event it held when `up` was
    stopped, before a KafkaSource delivered it, went with it, and its outbox row says
    sent. The next start sends every event sent since that broker started again, so the
    completion still makes its series' next occurrence."""
    messages: list[str] = []
    first = new_stack(stack_env, messages)
    try:
        first.start()
        engine = db.make_engine(first.database_url)
        # recurrence hangs: the sweep sends the events, and the delivery of the first
        # one to recurrence is under way, uncommitted, when the stack stops.
        os.kill(first.functions["recurrence"].process.pid, signal.SIGSTOP)
        task = _recurring_task_completed(engine, "sent to a broker that is gone")
        wait_for(lambda: all(_sent_at(engine).values()), "the sweep to send both events")
    finally:
        first.stop()
    try:
        assert (stack_env / BROKER_START_FILE).exists()
        assert not _next_occurrences(engine, task)
        second = new_stack(stack_env, messages)
        try:
            second.start()
            [after] = wait_for(
                lambda: _next_occurrences(engine, task), "the next occurrence, by the new run", 60
            )
        finally:
            second.stop()
    finally:
        engine.dispose()
    assert after.status == "open" and after.previous_id == task.id
    # The second start only (the first found no broker before it), and the two events
    # sent since the first run's broker started: nothing else was sent in that run.
    requeued = [m for m in messages if "the last run's broker held" in m]
    assert requeued == [
        "duetide: requeued 2 events the last run's broker held; the next sweep sends them"
    ]


def test_a_stop_that_left_nothing_in_the_broker_has_nothing_sent_again(stack_env: Path):
    """When every KafkaSource had taken every record (and no dead letter waited), the
    stop says so, and the next start sends nothing again: its consumers are not made to
    drop the whole last run as duplicates."""
    messages: list[str] = []
    first = new_stack(stack_env, messages)
    try:
        first.start()
        engine = db.make_engine(first.database_url)
        task = _recurring_task_completed(engine, "delivered before the stop")
        wait_for(lambda: _next_occurrences(engine, task), "the next occurrence, by this run", 60)
        assert first.wiring is not None
        readers, servers = first.wiring.readers, first.bootstrap_servers

        def quiet() -> bool:
            # The next occurrence is visible before the relay sends its task.created,
            # and a delivery may write more events: quiet is every row sent, every
            # record taken, and no row written or sent meanwhile.
            before = _sent_at(engine)
            return (
                all(before.values())
                and count_not_taken(servers, readers, timeout_s=5) == 0
                and _sent_at(engine) == before
            )

        wait_for(quiet, "every event sent and every KafkaSource to commit what it delivered")
    finally:
        first.stop()
    try:
        assert not (stack_env / BROKER_START_FILE).exists()
        assert (
            "the broker held 0 records its readers had not taken"
            in (stack_env / "logs" / "up.log").read_text()
        )
        sent = _sent_at(engine)
        assert len(sent) >= 3 and all(sent.values())  # created, completed, the next created
        second = new_stack(stack_env, messages)
        try:
            second.start()
        finally:
            second.stop()
        assert _sent_at(engine) == sent  # none made pending again, none sent again
    finally:
        engine.dispose()
    assert not [m for m in messages if "held" in m]


def test_a_dispatcher_an_error_stopped_is_replaced_and_its_records_delivered(stack_env: Path):
    """A KafkaSource dispatcher whose loop an unexpected error ended (a bug, a client
    library's surprise) is started again after the restart backoff, as Knative restarts
    its dispatcher pod: the events it left in the broker still make the next occurrence."""
    messages: list[str] = []
    stack = new_stack(stack_env, messages)
    try:
        stack.start()
        engine = db.make_engine(stack.database_url)
        [victim] = [d for d in stack.dispatchers if d.spec.name == "duetide-recurrence"]
        # In its group: one that dies while joining holds the group's rebalance until
        # its member expires (the broker's doing, whoever replaces it).
        assert victim.wait_assigned(30)

        def broken(consumer: Any) -> None:
            raise RuntimeError("injected into the poll loop")

        # Its first successor does not start either: the next is tried after a backoff.
        make_successor, made = victim.successor, []

        def refused() -> KafkaSourceDispatcher:
            raise RuntimeError("no start")

        def successor() -> KafkaSourceDispatcher:
            made.append(make_successor())
            if len(made) == 1:
                made[0].start = refused  # type: ignore[method-assign]
            return made[-1]

        victim.successor = successor  # type: ignore[method-assign]
        victim._poll_once = broken  # type: ignore[method-assign]
        wait_for(lambda: not victim.running, "the dispatcher to stop")
        task = _recurring_task_completed(engine, "delivered by the new dispatcher")
        wait_for(lambda: _next_occurrences(engine, task), "the next occurrence", 60)
        [running] = [d for d in stack.dispatchers if d.spec.name == "duetide-recurrence"]
        assert running is made[1] and running.running
        assert stack.replaced_dispatchers == [victim]
    finally:
        stack.stop()
    engine.dispose()
    assert (
        "duetide: KafkaSource duetide-recurrence's dispatcher stopped: "
        "RuntimeError('injected into the poll loop'); starting a new one in 0.2 s"
    ) in messages
    assert (
        "duetide: KafkaSource duetide-recurrence's new dispatcher did not start: "
        "RuntimeError('no start'); again in 0.4 s"
    ) in messages
    assert "duetide: KafkaSource duetide-recurrence's dispatcher started again" in messages
