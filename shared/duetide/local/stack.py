"""`duetide up`: the whole system on one machine, wired by the same manifests as production.

Order of start: database migrations, the embedded broker (unless
KAFKA_BOOTSTRAP_SERVERS names one), the topics of kafka/, one function server
(`python -m duetide.serve`, as in the image) per Knative Service of knative/, then the
eventing stand-ins (a dispatcher per KafkaSource, a timer per PingSource). Stop runs in
reverse.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import requests

from duetide import migrate
from duetide.local import manifests
from duetide.local.broker import (
    EmbeddedBroker,
    consumer_settings,
    ensure_topics,
    free_loopback_port,
)
from duetide.local.eventing import KafkaSourceDispatcher, PingTimer

READY_TIMEOUT_S = 60.0


class StackError(RuntimeError):
    """A part of the stack did not start; the message says which and why."""


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
    service: manifests.ServiceSpec
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    pump: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def _pump(name: str, stream: IO[bytes], log_path: Path, echo: bool) -> None:
    """Copy a child's output to its log file and, prefixed, to the console."""
    with log_path.open("ab") as log:
        for line in iter(stream.readline, b""):
            log.write(line)
            log.flush()
            if echo:
                sys.stdout.write(f"[{name}] {line.decode(errors='replace')}")
                sys.stdout.flush()


@dataclass
class Stack:
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

    @property
    def logs(self) -> Path:
        return self.home / "logs"

    def start(self) -> None:
        _check_port_free(self.port)
        self.home.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.wiring = manifests.load(self.root)
        self.database_url = self.database_url or f"sqlite:///{self.home / 'duetide.db'}"
        self._step("migrating the database", lambda: migrate.upgrade(self.database_url))
        self._start_broker()
        self._step(
            "creating topics", lambda: ensure_topics(self.bootstrap_servers, self.wiring.topics)
        )
        for service in self.wiring.services.values():
            self._start_function(service)
        self._await_ready()
        self._start_eventing()

    def _step(self, what: str, action: Any) -> None:
        try:
            action()
        except Exception as exc:
            raise StackError(f"{what} failed: {exc}") from exc

    def _start_broker(self) -> None:
        if self.bootstrap_servers:
            return
        self.broker = EmbeddedBroker(log_path=self.logs / "broker.log")
        self._step("starting the embedded broker", self.broker.start)
        self.bootstrap_servers = self.broker.bootstrap_servers

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

    def _start_function(self, service: manifests.ServiceSpec) -> None:
        port = self.port if service.function == "tasks" else free_loopback_port()
        source = self.root / "functions" / service.function / "main.py"
        if not source.exists():
            raise StackError(f"Service {service.name}: no function source at {source}")
        command = [
            sys.executable, "-m", "duetide.serve",
            "--source", str(source), "--target", service.function,
            "--host", "127.0.0.1", "--port", str(port),
        ]  # fmt: skip
        log_path = self.logs / f"{service.function}.log"
        process = subprocess.Popen(
            command,
            env=self.child_env(service),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        child = FunctionProcess(service, port, process, log_path)
        child.pump = threading.Thread(
            target=_pump,
            args=(service.function, process.stdout, log_path, self.echo),
            daemon=True,
        )
        child.pump.start()
        self.functions[service.function] = child

    def _await_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        pending = dict(self.functions)
        while pending:
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
                time.sleep(0.1)

    def sink_url(self, sink: manifests.SinkRef) -> str:
        assert self.wiring is not None
        service = self.wiring.service_for(sink)
        return self.functions[service.function].url + (sink.path or "")

    def _start_eventing(self) -> None:
        assert self.wiring is not None
        for source in self.wiring.kafka_sources:
            dls = source.delivery.dead_letter_sink
            dead_letter_topic = (
                self.wiring.kafka_sinks[dls.name].topic if dls and dls.kind == "KafkaSink" else None
            )
            dispatcher = KafkaSourceDispatcher(
                source,
                self.bootstrap_servers,
                self.sink_url(source.sink),
                dead_letter_topic=dead_letter_topic,
                consumer_config=consumer_settings(),
            )
            dispatcher.start()
            self.dispatchers.append(dispatcher)
        for ping in self.wiring.ping_sources:
            timer = PingTimer(ping, self.sink_url(ping.sink), interval_s=self.ping_interval_s)
            timer.start()
            self.timers.append(timer)

    def stop(self) -> None:
        """Stop everything, newest first; safe to call twice or after a failed start."""
        for timer in self.timers:
            timer.stop()
        for dispatcher in self.dispatchers:
            dispatcher.stop()
        for child in self.functions.values():
            _terminate(child.process)
        for child in self.functions.values():
            if child.pump is not None:
                child.pump.join(timeout=2)
        if self.broker is not None:
            self.broker.stop()
        self.timers, self.dispatchers, self.functions = [], [], {}


def _check_port_free(port: int) -> None:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            raise StackError(
                f"port {port} is in use; stop what runs there or choose another with --port"
            ) from None


def _terminate(process: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace_s)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
