"""`duetide up`: the whole system on one machine, wired by the same manifests as production.

Order of start: database migrations, the embedded broker (unless
KAFKA_BOOTSTRAP_SERVERS names one), the topics of kafka/, one function server
(`python -m duetide.web.serve`, as in the image) per Knative Service of knative/, then the
eventing stand-ins (a dispatcher per KafkaSource, a timer per PingSource). Stop runs in
reverse.

While it runs, a supervisor thread watches the children like a process manager: a
function or broker that dies is reported on the console and started again after a
backoff (`duetide_tools.local.supervision`), at the same port, because the dispatchers, the
timers and the functions were configured with those addresses. A new broker is empty:
the supervisor re-creates the topics, starts the dispatchers afresh (their consumer
groups are gone, so they read the new topics from the earliest offset) and calls
`on_broker_restart`. A dispatcher whose loop an error ended is replaced after the same
backoff. Every child is SIGKILLed by the kernel if `up` dies without
stopping them (`duetide_tools.local.orphans`), so nothing is left holding a port.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TypeVar

import requests
import sqlalchemy
import sqlalchemy.exc
from kafka.errors import KafkaError

from duetide.config import HOME_MODE
from duetide.storage import db, migrate, outbox
from duetide_tools import manifests, topic_reader
from duetide_tools.local import backlog, orphans
from duetide_tools.local.broker import (
    EmbeddedBroker,
    consumer_settings,
    ensure_topics,
)
from duetide_tools.local.eventing import KafkaSourceDispatcher, PingTimer
from duetide_tools.local.supervision import Restart, RestartPolicy

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 60.0
WATCH_INTERVAL_S = 0.1
HEALTH_TIMEOUT_S = 0.5
LISTEN_BACKLOG = 2048
"""uvicorn's: connections made while a function restarts wait here for the new process."""
EXTERNAL_DISPATCHER_STOP_S = 10.0
EMBEDDED_DISPATCHER_STOP_S = 0.3
BROKER_STOP_S = 0.0
"""The embedded broker holds nothing worth a graceful stop (memory only, gone either
way), and Tansu heeds SIGTERM only once its clients disconnected (0.15-0.3 s): SIGKILL."""
LEFT_NOTHING_WAIT_S = 1.0
"""How much longer a stop on the embedded broker waits for a dispatcher's last commit
before it asks the broker what the readers left; past it the question is not asked, and
the next start sends this run's events again. A dispatcher past its last commit counts
as stopped, whether or not it has left its group: waiting for its thread to end, which
closing its consumer can hold up to 2 s, made a loaded machine skip the question (twice
in CI, 2026-12-07)."""
DISPATCHER_STOP_S = 5.0
"""How long a broker restart waits at most for the old dispatchers to end. Waiting keeps
an old consumer from rejoining the new broker's group and committing offsets of the lost
broker's records there; past this bound its commits would carry the lost broker's member
id, which the new broker refuses (UnknownMemberId), so going on is safe."""
BROKER_START_FILE = "embedded-broker-started"
"""In DUETIDE_HOME: when the embedded broker now running, or the last one, started;
removed by a stop that found nothing left in it."""
BACKLOG_CHECK_S = 1.0
"""The bound of each request of the stop's question to the embedded broker (it answers
in 15-60 ms); one that does not answer leaves the start time written down."""


T = TypeVar("T")


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and why."""


class StartCancelled(StackError):
    """`stop()` was called (Ctrl-C) while `start()` ran; what had started is stopped."""


def project_root() -> Path:
    """The checkout holding functions/, knative/ and kafka/ (DUETIDE_PROJECT_DIR overrides)."""
    if os.environ.get("DUETIDE_PROJECT_DIR"):
        return Path(os.environ["DUETIDE_PROJECT_DIR"]).resolve()
    for candidate in (Path.cwd(), *Path(__file__).resolve().parents):
        if (candidate / "knative").is_dir() and (candidate / "functions").is_dir():
            return candidate
    raise StackError(
        "cannot find the duetide checkout (knative/, functions/); set DUETIDE_PROJECT_DIR"
    )


@dataclass
class FunctionProcess:
    """One function server; `process` is replaced when the supervisor restarts it, and
    each process serves `listener`, the socket `up` holds for the stack's life."""

    service: manifests.ServiceSpec
    listener: socket.socket
    process: subprocess.Popen[bytes]
    log_path: Path
    pump: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.listener.getsockname()[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pump(name: str, stream: IO[bytes], log_path: Path, echo: bool) -> None:
    """Copy a child's output to its log file and, prefixed, to the console.

    By the chunk, not the line: a write (and a flush) per line made this thread, which
    shares its process with the dispatchers, the limit of a busy function's logging. A
    function writing four lines per event filled the pipe, and its threads then queued
    on their logging handler's lock (py-spy, 100,000 reminders: issue 16). The file gets
    every chunk as read; the console whole lines only, each with its function's name.

    It reads to the end whatever becomes of the copies: a write that failed (a full disk,
    a log file made read-only, the console's pipe closed) ended this thread, nothing read
    the child's output any more, and once the pipe's 64 KB were full the function hung in
    its logging, every request with it, while /healthz still answered (an audit,
    2026-12-07). A failed copy is dropped and said once on stderr; the file is tried
    again with the next chunk.
    """
    read = getattr(stream, "read1", stream.read)
    partial = b""
    log = _LogFile(name, log_path)
    try:
        for chunk in iter(lambda: read(_PUMP_CHUNK), b""):
            log.write(chunk)
            if echo:
                lines = (partial + chunk).split(b"\n")
                partial = lines.pop()
                echo = _echo(name, lines)
        if echo and partial:
            _echo(name, [partial])
    finally:
        log.close()


def _echo(name: str, lines: list[bytes]) -> bool:
    """Whether the console still takes lines (False once a write to it failed)."""
    try:
        for line in lines:
            sys.stdout.write(f"[{name}] {line.decode(errors='replace')}\n")
        sys.stdout.flush()
        return True
    except (OSError, ValueError) as exc:  # a closed pipe; a closed stdout object
        _warn(f"{name}'s output is no longer shown on the console ({exc}); see its log file")
        return False


class _LogFile:
    """A child's log file that never stops its pump (`_pump`)."""

    def __init__(self, name: str, path: Path) -> None:
        self.name, self.path = name, path
        self._file: IO[bytes] | None = None
        self._failing = False
        self.write(b"")  # the file is there from the start, output or not

    def write(self, chunk: bytes) -> None:
        try:
            if self._file is None:
                self._file = self.path.open("ab", buffering=0)
            view = memoryview(chunk)
            while view:
                written = self._file.write(view)
                if not written:
                    raise OSError("the log file took nothing")
                view = view[written:]
        except OSError as exc:
            self.close()
            if not self._failing:
                self._failing = True
                _warn(f"{self.path} cannot be written ({exc.strerror or exc}): "
                      f"{self.name}'s output is dropped until it can")  # fmt: skip
            return
        if self._failing:
            self._failing = False
            _warn(f"{self.path} is written again")

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            with contextlib.suppress(OSError):
                file.close()


def _warn(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"duetide up: {message}", file=sys.stderr, flush=True)


_PUMP_CHUNK = 64 * 1024


def _migrate(url: str) -> None:
    """The newest schema, and a database that takes writes: a file this user cannot
    write (another user's, read-only) passed a start whose migrations had nothing to
    write, and every write was then a 503 "retry" that no retry could help (an audit,
    2026-12-07). SQLite: its header's user version written back as it is; PostgreSQL: a
    read-only server (a standby) or role."""
    where = shown_database(url)
    try:
        migrate.upgrade(url)
    except migrate.SchemaNewer as newer:  # a newer checkout's: its schema serves this code
        _warn(str(newer))
    except sqlalchemy.exc.DatabaseError as exc:  # not a database, a damaged one: named
        raise StackError(f"the database {where} cannot be migrated: {exc.orig}") from None
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                version = int(connection.exec_driver_sql("PRAGMA user_version").scalar() or 0)
                connection.exec_driver_sql(f"PRAGMA user_version = {version}")
            elif connection.exec_driver_sql("SHOW transaction_read_only").scalar() == "on":
                raise StackError(f"the database {where} is read-only")
    except sqlalchemy.exc.OperationalError as exc:
        raise StackError(f"the database {where} takes no writes: {exc.orig}") from None
    finally:
        engine.dispose()


def shown_database(url: str) -> str:
    """The database as `up` names it (its banner, a refusal): a file's path, or the URL
    without its password (the banner printed it whole, an audit, 2026-12-07)."""
    parsed = sqlalchemy.make_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    return str(parsed.database) if sqlite else parsed.render_as_string()


@dataclass
class Stack:
    """The local system: call `start()`, then `stop()` (also after a failed start).

    Call `start()` from a thread that lives until `stop()` (the main thread in `up`): the
    kernel kills a child when the *thread* that spawned it ends (`duetide_tools.local.orphans`).
    While it runs, `restarts` lists what died, `functions[name].process` is the current
    process of each function and `broker.pid` the broker's (None while it is down).
    """

    root: Path
    home: Path
    port: int = 8080
    ping_interval_s: float | None = None
    echo: bool = True
    database_url: str = ""
    bootstrap_servers: str = ""
    broker: EmbeddedBroker | None = None
    functions: dict[str, FunctionProcess] = field(default_factory=dict)
    dispatchers: list[KafkaSourceDispatcher] = field(default_factory=list)
    timers: list[PingTimer] = field(default_factory=list)
    wiring: manifests.Wiring | None = None
    restart_policy: RestartPolicy = field(default_factory=RestartPolicy)
    on_broker_restart: Callable[[datetime], object] | None = None
    """Called after a dead broker was replaced (topics re-created, dispatchers restarted)
    with the time the *lost* broker had been started: every record it held, and so every
    outbox row marked sent since then, may be gone. Errors are reported, not raised.
    None: `requeue_lost_events`."""
    stop_grace_s: float = 1.0
    """How long a function may take to exit after SIGTERM on stop, before SIGKILL."""
    on_fatal: Callable[[str], object] | None = None
    """Called once, with the reason, when the stack cannot go on (its SQLite database
    file was removed or replaced): `up` stops with it. None: said only."""
    report: Callable[[str], None] | None = None
    """Where supervisor messages go (default: stdout, "duetide: ..."); also logs/up.log."""
    progress: Callable[[str, float | None], None] | None = None
    """Told each start step as it begins (`what`, None) and ends (`what`, seconds), so a
    console can show what a slow first start is doing; None: silent. Every step's time
    also goes to logs/up.log."""
    _stopping: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _released: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _acting: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _supervisor: threading.Thread | None = field(default=None, init=False, repr=False)
    _restarts: list[Restart] = field(default_factory=list, init=False, repr=False)
    _retiring: list[KafkaSourceDispatcher] = field(default_factory=list, init=False, repr=False)
    retired_dispatchers: list[KafkaSourceDispatcher] = field(default_factory=list, init=False)
    """The dispatchers of brokers that died: what they dead-lettered died with the broker
    (its original events were requeued), which an operator or the soak accounts for."""
    replaced_dispatchers: list[KafkaSourceDispatcher] = field(default_factory=list, init=False)
    """Dispatchers an error stopped, each replaced by a successor (`_watch_dispatchers`):
    what they dead-lettered is on the broker's dead-letter topics."""
    _dispatcher_watches: dict[str, _Watch] = field(default_factory=dict, init=False, repr=False)
    _retiring_until: float = field(default=0.0, init=False, repr=False)
    _home_lock: IO[str] | None = field(default=None, init=False, repr=False)
    _api_listener: socket.socket | None = field(default=None, init=False, repr=False)
    _database_file: tuple[Path, tuple[int, int] | None] | None = field(
        default=None, init=False, repr=False
    )
    _database_checked: float = field(default=0.0, init=False, repr=False)

    @property
    def restarts(self) -> list[Restart]:
        """Every death of a child and the restart it got, oldest first (a class-level
        attribute, so that callers can tell a supervising Stack from an older one)."""
        return self._restarts

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def start(self) -> None:
        """Start everything in order; `request_stop()` from another thread or a signal
        handler makes it give up between steps (and while it waits for the broker or the
        functions) with StartCancelled. Call `stop()` after it either way."""
        self._api_listener = listen(self.port)
        self.port = self._api_listener.getsockname()[1]  # 0 chooses one
        self.home.mkdir(parents=True, exist_ok=True, mode=HOME_MODE)
        self._home_lock = _lock_home(self.home, self.port)
        self.logs.mkdir(exist_ok=True)
        self.wiring = manifests.load(self.root)
        wiring = self.wiring
        self.database_url = self.database_url or f"sqlite:///{self.home / 'duetide.db'}"
        self._step("migrating the database", lambda: _migrate(self.database_url))
        path = _sqlite_path(self.database_url)
        if path is not None:
            self._database_file = (path, _identity(path))
        previous = self._last_broker_start()
        if previous is not None:  # sent again to whichever broker this run uses
            requeued = self._step(
                "requeueing what the last run's broker held",
                lambda: self._requeue_sent_since(previous),
            )
            if requeued:
                self._say(
                    f"requeued {_count(requeued, 'event')} the last run's broker held; "
                    "the next sweep sends them"
                )
        if not self.bootstrap_servers:
            self._step("starting the embedded broker", self._start_broker)
        else:  # no broker of ours whose memory could go
            self._broker_start_file.unlink(missing_ok=True)
        self._step(
            f"creating {_count(len(wiring.topics), 'topic')}",
            lambda: ensure_topics(self.bootstrap_servers, wiring.topics),
        )
        self._step(f"starting {_count(len(wiring.services), 'function')}", self._start_functions)
        dispatchers = _count(len(wiring.kafka_sources), "KafkaSource dispatcher")
        timers = _count(len(wiring.ping_sources), "PingSource timer")
        self._step(f"starting {dispatchers} and {timers}", self._start_eventing)
        self._supervisor = threading.Thread(
            target=self._supervise, name="duetide-supervisor", daemon=True
        )
        self._supervisor.start()

    def request_stop(self) -> None:
        """Make a `start()` under way give up at its next check (safe from any thread);
        `stop()` does the stopping."""
        self._stopping.set()

    def _step(self, what: str, action: Callable[[], T]) -> T:
        """Run one start step, timed and reported; its action's result."""
        if self._stopping.is_set():
            raise StartCancelled(f"stopped before {what}")
        if self.progress is not None:
            self.progress(what, None)
        began = time.monotonic()
        try:
            result = action()
        except StartCancelled:
            raise
        except Exception as exc:
            if self._stopping.is_set():
                raise StartCancelled(f"stopped while {what}") from exc
            raise StackError(f"{what} failed: {exc}") from exc
        took = time.monotonic() - began
        self._log_line(f"{what}: {took:.2f} s")
        if self.progress is not None:
            self.progress(what, took)
        return result

    def _log_line(self, message: str) -> None:
        with contextlib.suppress(OSError), (self.logs / "up.log").open("a") as up_log:
            up_log.write(f"{datetime.now(UTC).isoformat()} {message}\n")

    def _start_broker(self) -> None:
        self.broker = EmbeddedBroker(
            log_path=self.logs / "broker.log", stop_timeout_s=BROKER_STOP_S
        )
        self.broker.start(cancel=self._stopping)
        self.bootstrap_servers = self.broker.bootstrap_servers
        self._record_broker_start()

    @property
    def _broker_start_file(self) -> Path:
        return self.home / BROKER_START_FILE

    def _record_broker_start(self) -> None:
        """Write down when the embedded broker now running started: the records of every
        event sent since then live in its memory only, so a later `start` sends them again
        (`_last_broker_start`)."""
        assert self.broker is not None and self.broker.started_at is not None
        written = self._broker_start_file.with_suffix(".tmp")
        written.write_text(self.broker.started_at.isoformat() + "\n")
        written.replace(self._broker_start_file)

    def _last_broker_start(self) -> datetime | None:
        """When the embedded broker of the last run on this home started, if one ran.

        Its records died with it, also those no KafkaSource had delivered yet (`up`
        stopped or killed with events in flight, a delivery waiting for a retry), and
        their outbox rows are marked sent: so every event sent since then is sent again,
        whatever broker this run uses. Consumers drop the duplicates; rows older than the
        sweep's purge are gone, as are their consumers' records of them.
        """
        try:
            text = self._broker_start_file.read_text().strip()
        except FileNotFoundError:
            return None
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            self._say(f"{self._broker_start_file} is not a time ({text[:40]!r}); ignored")
            return None

    def child_env(self, service: manifests.ServiceSpec) -> dict[str, str]:
        env = dict(os.environ)
        env.update(service.env)
        env.update(
            DUETIDE_HOME=str(self.home),
            DATABASE_URL=self.database_url,
            KAFKA_BOOTSTRAP_SERVERS=self.bootstrap_servers,
            PYTHONUNBUFFERED="1",
            # One worker process per function, as in a Knative pod; threads for concurrency.
            WORKERS=env.get("WORKERS", "1"),
            THREADS=env.get("THREADS", "4"),
        )
        return env

    def _start_functions(self) -> None:
        assert self.wiring is not None
        for service in self.wiring.services.values():
            api = service.function == "tasks" and self._api_listener
            self._start_function(service, api or listen(0))
        self._await_ready()

    def _start_function(self, service: manifests.ServiceSpec, listener: socket.socket) -> None:
        source = self.root / "functions" / service.function / "main.py"
        if not source.exists():
            listener.close()
            raise StackError(f"Service {service.name}: no function source at {source}")
        log_path = self.logs / f"{service.function}.log"
        process = self._spawn_function(service, listener)
        child = FunctionProcess(service, listener, process, log_path)
        self._pump_output(child)
        self.functions[service.function] = child

    def _spawn_function(
        self, service: manifests.ServiceSpec, listener: socket.socket
    ) -> subprocess.Popen[bytes]:
        """The function serves the socket `up` bound, passed down: ports chosen first and
        bound by each function later were taken in between (two functions were once
        given one port, and the supervisor took one's answers for the other's health: a
        CI run, 2026-12-07), and a function restarting left its port free for anyone."""
        source = self.root / "functions" / service.function / "main.py"
        command = [
            sys.executable, "-m", "duetide.web.serve",
            "--source", str(source), "--target", service.function,
            "--fd", str(listener.fileno()),
        ]  # fmt: skip
        return subprocess.Popen(
            orphans.guarded(command),
            env=self.child_env(service),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            pass_fds=(listener.fileno(),),
        )

    def _pump_output(self, child: FunctionProcess) -> None:
        child.pump = threading.Thread(
            target=_pump,
            args=(child.service.function, child.process.stdout, child.log_path, self.echo),
            daemon=True,
        )
        child.pump.start()

    def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = dict(self.functions)
        while pending:
            if self._stopping.is_set():
                # Not serving yet, so nothing to lose: a SIGTERM would wait for uvicorn to
                # finish importing the function (up to a second) before it is heeded.
                for child in pending.values():
                    _signal_group(child.process, signal.SIGKILL)
                raise StartCancelled(f"stopped while waiting for {sorted(pending)}")
            for name, child in list(pending.items()):
                if child.process.poll() is not None:
                    raise StackError(
                        f"function {name} exited with code {child.process.returncode}; "
                        f"its log ({child.log_path}) ends with:\n{_tail(child.log_path)}"
                    )
                try:
                    if requests.get(child.url + "/healthz", timeout=1).status_code == 200:
                        del pending[name]
                except requests.RequestException:
                    pass
            if pending and time.monotonic() > deadline:
                raise StackError(
                    f"functions not ready after {READY_TIMEOUT_S:.0f} s: {sorted(pending)}"
                )
            if pending:
                self._stopping.wait(0.1)

    def sink_url(self, sink: manifests.SinkRef) -> str:
        assert self.wiring is not None
        service = self.wiring.service_for(sink)
        return self.functions[service.function].url + (sink.path or "")

    def _start_eventing(self) -> None:
        assert self.wiring is not None
        self._start_dispatchers()
        for ping in self.wiring.ping_sources:
            timer = PingTimer(ping, self.sink_url(ping.sink), interval_s=self.ping_interval_s)
            timer.start()
            self.timers.append(timer)

    def _start_dispatchers(self, *, from_earliest: bool = False) -> None:
        """A dispatcher per KafkaSource; `from_earliest` on a new broker, whose consumer
        groups are gone and whose every record is one no dispatcher has seen."""
        assert self.wiring is not None
        for source in self.wiring.kafka_sources:
            dls = source.delivery.dead_letter_sink
            dead_letter_topic = (
                self.wiring.kafka_sinks[dls.name].topic if dls and dls.kind == "KafkaSink" else None
            )
            spec = (
                dataclasses.replace(source, initial_offset="earliest") if from_earliest else source
            )
            dispatcher = KafkaSourceDispatcher(
                spec,
                self.bootstrap_servers,
                self.sink_url(source.sink),
                dead_letter_topic=dead_letter_topic,
                consumer_config=consumer_settings(),
            )
            dispatcher.start()
            self.dispatchers.append(dispatcher)

    def stop(self) -> None:
        """Stop everything, with the embedded broker within about `stop_grace_s` + 0.3 s
        (typically 0.2-0.4 s; logs/up.log has each part's time); safe to call twice or
        after a failed or cancelled start.

        The supervisor first finishes (or cancels) a restart under way and restarts
        nothing more. Then timers and dispatchers stop while the functions get SIGTERM,
        all at once (a dispatcher that is stopping leaves an interrupted delivery
        uncommitted rather than retrying it); a function still running after
        `stop_grace_s` gets SIGKILL. The broker goes last, after the dispatchers'
        final commits; the embedded one (memory only) is SIGKILLed once they ended or
        EMBEDDED_DISPATCHER_STOP_S passed, after it was asked whether it still held a
        record some reader had not taken (15-60 ms): if none, the next start has
        nothing of this run's to send again (`_broker_left_nothing`).
        """
        began = time.monotonic()
        self._stopping.set()
        with self._acting:
            pass
        parts: list[PingTimer | KafkaSourceDispatcher] = [
            *self.timers,
            *self.dispatchers,
            *self._retiring,
        ]
        ran_anything = bool(parts or self.functions or self.broker is not None)
        stoppers = [
            threading.Thread(target=part.stop, name=f"stop-{n}", daemon=True)
            for n, part in enumerate(parts)
        ]
        for stopper in stoppers:
            stopper.start()
        processes = [child.process for child in self.functions.values()]
        _terminate_all(processes, self.stop_grace_s)
        for listener in {c.listener for c in self.functions.values()} | {self._api_listener}:
            if listener is not None:
                listener.close()
        functions_done = time.monotonic()
        # A dispatcher's last commit matters to an external broker; the embedded one is
        # memory only and goes next, so its dispatchers get a moment (counted from the
        # start of stop, while the functions end) to close, no more.
        stop_s = EXTERNAL_DISPATCHER_STOP_S if self.broker is None else EMBEDDED_DISPATCHER_STOP_S
        deadline = began + stop_s
        for thread in [*stoppers, *(c.pump for c in self.functions.values() if c.pump)]:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        eventing_done = time.monotonic()
        nothing_left = self.broker is not None and self._broker_left_nothing()
        if self.broker is not None:
            self.broker.stop()
        if nothing_left:  # the next start has nothing of this run's to send again
            self._broker_start_file.unlink(missing_ok=True)
        self._released.set()  # the children it spawned are gone: it may end now
        if self._supervisor is not None:
            self._supervisor.join(timeout=HEALTH_TIMEOUT_S + 0.5)
        self.timers, self.dispatchers, self.functions = [], [], {}
        end = time.monotonic()
        if ran_anything and self.logs.is_dir():  # a start refused at once stopped nothing
            self._log_line(
                f"stopped in {end - began:.2f} s: functions {functions_done - began:.2f} s, "
                f"then eventing and logs {eventing_done - functions_done:.2f} s, "
                f"broker and supervisor {end - eventing_done:.2f} s"
            )
        if self._home_lock is not None:  # last: nothing of this stack runs any more
            self._home_lock.close()
            self._home_lock = None

    def _broker_left_nothing(self) -> bool:
        """True when the embedded broker, about to be killed, holds nothing its readers have
        not taken (`backlog`), so the next start need not send again what this run sent.

        Asked only once nothing can write to it any more: every function ended and every
        dispatcher stopped (a dispatcher still running may hold an uncommitted delivery).
        And only for the broker whose start is the one written down: after a broker
        restart whose requeue failed, the file keeps the lost broker's older start.
        """
        broker = self.broker
        if broker is None or not broker.running or self.wiring is None:
            return False
        why_not = self._why_not_ask(broker)
        if why_not is not None:
            self._log_line(f"not asking the broker what it still holds: {why_not}")
            return False
        began = time.monotonic()
        try:
            left = backlog.count_not_taken(
                self.bootstrap_servers, self.wiring.readers, timeout_s=BACKLOG_CHECK_S
            )
        except (KafkaError, OSError, topic_reader.TopicReadError) as exc:
            self._log_line(f"could not ask the broker what it still holds: {exc!r}")
            return False
        took = time.monotonic() - began
        self._log_line(
            f"the broker held {_count(left, 'record')} its readers had not taken ({took:.2f} s)"
        )
        return left == 0

    def _why_not_ask(self, broker: EmbeddedBroker) -> str | None:
        if any(child.process.poll() is None for child in self.functions.values()):
            return "a function did not end"
        deadline = time.monotonic() + LEFT_NOTHING_WAIT_S
        for dispatcher in [*self.dispatchers, *self._retiring]:
            if not dispatcher.wait_settled(max(0.0, deadline - time.monotonic())):
                return "a dispatcher did not stop in time"
        if broker.started_at is None or self._last_broker_start() != broker.started_at:
            return "the start written down is a lost broker's"
        return None

    # the supervisor thread

    def _say(self, message: str) -> None:
        line = f"duetide: {message}"
        self._log_line(message)
        if self.report is not None:
            self.report(line)
        else:
            print(line, flush=True)

    def _supervise(self) -> None:
        """Watch the children until stop(); stay alive until stop() released them, since
        the kernel SIGKILLs the children this thread spawned when it ends."""
        watches = {name: _Watch(time.monotonic()) for name in self.functions}
        broker_watch = _Watch(time.monotonic())
        while not self._stopping.wait(WATCH_INTERVAL_S):
            try:
                for name, child in self.functions.items():
                    self._watch_function(name, child, watches[name])
                if self.broker is not None:
                    self._watch_broker(self.broker, broker_watch)
                self._watch_dispatchers()
                self._watch_database_file()
            except Exception:  # the supervisor must outlive any one failure
                log.exception("duetide: the supervisor hit an error; it carries on")
        self._released.wait()

    def _died(self, name: str, pid: int, returncode: int, watch: _Watch) -> None:
        delay = watch.failed(self.restart_policy, time.monotonic())
        record = Restart(name, pid, returncode, watch.failures, delay, datetime.now(UTC))
        self._restarts.append(record)
        self._say(record.line())
        watch.back = False

    def _watch_function(self, name: str, child: FunctionProcess, watch: _Watch) -> None:
        returncode = child.process.poll()
        if watch.due is None and returncode is not None:
            self._died(name, child.process.pid, returncode, watch)
        elif watch.due is not None and time.monotonic() >= watch.due:
            with self._acting:
                if self._stopping.is_set():
                    return
                child.process = self._spawn_function(child.service, child.listener)
            self._pump_output(child)
            watch.due, watch.started = None, time.monotonic()
        elif not watch.back and returncode is None and watch.failures and _healthy(child.url):
            watch.back = True
            self._say(f"{name} is back (pid {child.process.pid}) at {child.url}")
        elif watch.back and returncode is None and child.service.liveness is not None:
            self._probe(name, child, child.service.liveness, watch)

    def _probe(
        self, name: str, child: FunctionProcess, probe: manifests.Probe, watch: _Watch
    ) -> None:
        """The Service's livenessProbe, as the kubelet runs it: a function that stopped
        answering (hung, stopped, its workers all stuck) is killed after
        `failure_threshold` failed probes in a row and restarted as if it had died. Only
        exits were watched: a hung function stalled the stack, silently, until someone
        killed it (an audit, 2026-12-07)."""
        now = time.monotonic()
        if now < watch.probe_due:
            return
        watch.probe_due = now + probe.period_s
        if _healthy(child.url, probe.path, probe.timeout_s):
            watch.probe_failures = 0
            return
        watch.probe_failures += 1
        if watch.probe_failures < probe.failure_threshold:
            return
        watch.probe_failures = 0
        self._say(
            f"{name} (pid {child.process.pid}) did not answer {probe.path} within "
            f"{probe.timeout_s:g} s {probe.failure_threshold} times in a row: killing it"
        )
        _signal_group(child.process, signal.SIGKILL)

    def _watch_database_file(self) -> None:
        """The SQLite file the stack started on must stay the one its functions use. One
        removed (or replaced) while they ran split them across two databases: the running
        ones wrote on into the removed file, lost when they closed it, and each one
        restarted made a new, empty file and answered every event 503 (an audit,
        2026-12-07). The stack stops instead, saying why."""
        watched, now = self._database_file, time.monotonic()
        if watched is None or now - self._database_checked < DATABASE_CHECK_S:
            return
        self._database_checked = now
        path, identity = watched
        if _identity(path) == identity:
            return
        self._database_file = None  # said once
        reason = (
            f"the database file {path} was removed or replaced while the stack ran; "
            "stopping, so that no function writes to a database the others do not read "
            "(what was written since is in the removed file, lost once they close it)"
        )
        self._say(reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _watch_dispatchers(self) -> None:
        """A dispatcher whose loop an error ended is replaced after the restart policy's
        backoff, as Knative restarts a crashed dispatcher pod: until then its KafkaSource
        delivers nothing, and its records wait in the broker. One stopped with its broker
        is the broker watch's (`_retire_dispatchers` takes it off this list)."""
        for dispatcher in list(self.dispatchers):
            if dispatcher.failure is None or dispatcher.running:
                continue
            name = f"KafkaSource {dispatcher.spec.name}"
            watch = self._dispatcher_watches.setdefault(
                dispatcher.spec.name, _Watch(time.monotonic())
            )
            now = time.monotonic()
            if watch.due is None:
                delay = watch.failed(self.restart_policy, now)
                self._say(
                    f"{name}'s dispatcher stopped: {dispatcher.failure!r}; starting a new "
                    f"one in {delay:g} s"
                    + (f" (failure {watch.failures} in a row)" if watch.failures > 1 else "")
                )
            elif now >= watch.due:
                self._replace_dispatcher(dispatcher, name, watch)

    def _replace_dispatcher(
        self, dispatcher: KafkaSourceDispatcher, name: str, watch: _Watch
    ) -> None:
        """Start the successor outside `_acting`: a consumer's first connection to a broker
        that is down waits for it (30 s), and `stop` waits on that lock."""
        successor = dispatcher.successor()
        try:
            successor.start()
        except Exception as exc:  # a broker down, or any surprise: again after a backoff
            successor.stop(timeout_s=1.0)
            watch.started = time.monotonic()  # a failed start is a death of its own
            delay = watch.failed(self.restart_policy, watch.started)
            self._say(f"{name}'s new dispatcher did not start: {exc!r}; again in {delay:g} s")
            return
        with self._acting:
            taken = not self._stopping.is_set() and dispatcher in self.dispatchers
            if taken:
                self.dispatchers[self.dispatchers.index(dispatcher)] = successor
                self.replaced_dispatchers.append(dispatcher)
        if not taken:  # stopping, or its broker died meanwhile: not this one's to run
            successor.stop()
            return
        watch.due, watch.started = None, time.monotonic()
        self._say(f"{name}'s dispatcher started again")

    def _watch_broker(self, broker: EmbeddedBroker, watch: _Watch) -> None:
        if watch.due is None:
            returncode = broker.returncode
            if returncode is not None:
                self._died("broker", broker.last_pid or 0, returncode, watch)
                self._retire_dispatchers()
            return
        if time.monotonic() < watch.due or self._dispatchers_retiring():
            return
        lost_started_at = broker.started_at or datetime.now(UTC)
        with self._acting:
            if self._stopping.is_set():
                return
            try:
                broker.restart(cancel=self._stopping)
                assert self.wiring is not None
                ensure_topics(self.bootstrap_servers, self.wiring.topics)
            except Exception as exc:  # BrokerError, KafkaError: try again after a backoff
                if self._stopping.is_set():
                    return
                self._say(f"the broker did not come back: {exc}")
                broker.stop()
                self._died("broker", broker.last_pid or 0, broker.returncode or 1, watch)
                return
            self._start_dispatchers(from_earliest=True)
        watch.due, watch.started, watch.back = None, time.monotonic(), True
        self._say(
            f"broker is back (pid {broker.pid}) at {self.bootstrap_servers}; topics "
            "re-created, dispatchers restarted from the earliest offset"
        )
        hook = self.on_broker_restart or self.requeue_lost_events
        try:
            hook(lost_started_at)
        except Exception as exc:
            log.exception("on_broker_restart failed")
            self._say(f"on_broker_restart failed: {exc!r}")
            return  # the older start stays written down: the next `start` sends them
        self._record_broker_start()

    def requeue_lost_events(self, since: datetime) -> int:
        """The default `on_broker_restart`: the embedded broker kept its records in memory,
        so every event sent since it started is sent again (consumers drop duplicates)."""
        count = self._requeue_sent_since(since)
        self._say(f"requeued {count} events the lost broker held; the next sweep sends them")
        return count

    def _requeue_sent_since(self, since: datetime) -> int:
        engine = db.make_engine(self.database_url)
        try:
            return outbox.requeue_sent_since(since, engine)
        finally:
            engine.dispose()

    def _retire_dispatchers(self) -> None:
        """Stop the dispatchers of a dead broker (in the background)."""
        old, self.dispatchers = self.dispatchers, []
        self._dispatcher_watches.clear()  # the broker watch starts every one afresh
        for dispatcher in old:
            threading.Thread(target=dispatcher.stop, daemon=True).start()
        self._retiring = old
        self.retired_dispatchers.extend(old)
        self._retiring_until = time.monotonic() + DISPATCHER_STOP_S

    def _dispatchers_retiring(self) -> bool:
        """True while an old dispatcher still runs (within DISPATCHER_STOP_S): one could
        commit its offsets into the new broker's empty consumer group and skip records."""
        running = [d for d in self._retiring if d.running]
        if running and time.monotonic() < self._retiring_until:
            return True
        if running:
            self._say(f"{len(running)} dispatcher(s) of the lost broker did not stop in time")
        self._retiring = []
        return False


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" + ("" if number == 1 else "s")


HOME_LOCK = "up.lock"


def _lock_home(home: Path, port: int) -> IO[str] | None:
    """Hold `home`'s lock for as long as this process runs (the kernel lets it go when
    the process ends, however it ends), or say which `up` holds it. Only a clash on the
    port was checked: a second `up` on another port ran a whole stack on the same data,
    sent the first one's events again, ran a second sweep, and overwrote the marker of
    its broker's start, so that the first one's clean stop was never recorded."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, as before
        return None
    path = home / HOME_LOCK
    holder = path.open("a+", encoding="utf-8")
    try:
        fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder.seek(0)
        who = holder.read().strip() or "another process"
        holder.close()
        raise StackError(
            f"a stack already runs on this data folder ({home}): {who}; stop it first, or "
            "give this one its own DUETIDE_HOME"
        ) from None
    holder.seek(0)
    holder.truncate()
    holder.write(f"`duetide up` pid {os.getpid()}, API port {port}")
    holder.flush()
    return holder


def listen(port: int) -> socket.socket:
    """A loopback socket listening on `port` (0: a free one) for a function to serve.
    SO_REUSEADDR, as servers bind: the connections the last run closed wait out
    TIME_WAIT there for a minute, and a plain bind took them for a server running."""
    sock = socket.socket()
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise StackError(
            f"port {port} is in use; stop what runs there or choose another with --port"
        ) from None
    return sock


@dataclass
class _Watch:
    """The supervisor's view of one child."""

    started: float  # monotonic time the current process was started
    failures: int = 0  # deaths in a row
    due: float | None = None  # when a dead child is to be restarted
    back: bool = True  # False from a death until it answers its health check again
    probe_due: float = 0.0  # when its liveness probe is next sent
    probe_failures: int = 0  # liveness probes failed in a row

    def failed(self, policy: RestartPolicy, now: float) -> float:
        """Count a death at `now` and set when to restart; the wait, in seconds."""
        self.failures = policy.failures_after(self.failures, now - self.started)
        delay = policy.delay(self.failures)
        self.due = now + delay
        return delay


DATABASE_CHECK_S = 1.0
"""How often the supervisor checks that the SQLite file is still the one it started on."""


def _sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for another database, or SQLite in memory)."""
    parsed = sqlalchemy.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database:
        return None
    return None if parsed.database == ":memory:" else Path(parsed.database).resolve()


def _identity(path: Path) -> tuple[int, int] | None:
    """The file's device and inode: another file at the same path has others."""
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _healthy(url: str, path: str = "/healthz", timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    try:
        return requests.get(url + path, timeout=timeout_s).status_code == 200
    except requests.RequestException:
        return False


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _terminate_all(processes: list[subprocess.Popen[bytes]], grace_s: float) -> None:
    """SIGTERM every process group at once; SIGKILL those still there after `grace_s`."""
    running = [p for p in processes if p.poll() is None]
    for process in running:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for process in running:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
    for process in running:
        if process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=5)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
