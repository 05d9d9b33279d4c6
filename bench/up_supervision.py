"""`duetide up` as a process manager: how long a killed child takes to come back, and how
long `up` takes to stop everything on Ctrl-C or to take every child along when SIGKILLed.

Each run starts `duetide up` as a subprocess (free loopback port, a temporary home,
SQLite) and, once it printed its banner: SIGKILLs the recurrence function and times until
its /healthz answers 200 on the same port; SIGKILLs the broker's process group and times
until a Kafka metadata request is answered at the same address with the topics back;
sends SIGINT and times until `up` and every child have exited. A second `up` per run is
SIGKILLed and timed until its last child is gone. A third gets SIGINT as soon as its
broker runs (the functions are starting) and is timed until it and every process of its
home have exited. Restart delay is the first backoff step (0.5 s), included in the
figures.
"""

from __future__ import annotations

import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

import requests
from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from duetide_tools.local.broker import free_loopback_port

RUNS = int(os.environ.get("BENCH_UP_RUNS", "5"))
ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 60.0


def describe() -> str:
    return __doc__.split("\n\n", 1)[1].strip() if __doc__ else ""


def _children(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            argv = [a.decode() for a in (entry / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if int(fields[1]) != pid or fields[0] == "Z":
            continue
        if "--listener-url" in argv:
            found["broker"] = int(entry.name)
        elif "--target" in argv:
            found[argv[argv.index("--target") + 1]] = int(entry.name)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def with_home(home: Path) -> list[int]:
    """Pids whose environment names `home` as DUETIDE_HOME: an `up` and all it spawned."""
    marker = f"DUETIDE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _until(condition: Callable[[], bool], interval_s: float = 0.01) -> float:
    """Seconds until `condition` holds (polled); raises after TIMEOUT_S."""
    began = time.monotonic()
    while not condition():
        if time.monotonic() - began > TIMEOUT_S:
            raise TimeoutError("the condition did not hold in time")
        time.sleep(interval_s)
    return time.monotonic() - began


def spawn_up(
    home: Path, port: int, stdout: int, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """`duetide up --quiet` on `home` (its SQLite, its embedded broker); `env` adds to
    the environment."""
    env = {**os.environ, "DUETIDE_HOME": str(home), "DATABASE_URL": "",
           "KAFKA_BOOTSTRAP_SERVERS": "", "DUETIDE_JWT_SECRET": "", **(env or {})}  # fmt: skip
    return subprocess.Popen(
        [sys.executable, "-m", "duetide_tools.cli", "up", "--port", str(port), "--quiet"],
        env=env, cwd=ROOT, stdout=stdout, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def start_up(
    home: Path, env: dict[str, str] | None = None, console: list[str] | None = None
) -> tuple[subprocess.Popen[str], str, int]:
    """`spawn_up`, returned once its banner is out: the process, the broker's address
    and the port; the lines up to the banner go to `console`."""
    port = free_loopback_port()
    process = spawn_up(home, port, subprocess.PIPE, env)
    assert process.stdout is not None
    broker = ""
    for line in process.stdout:
        if console is not None:
            console.append(line)
        if found := re.match(r"\s+broker\s+(\S+)", line):
            broker = found.group(1)
        if "Ctrl-C stops everything" in line:
            break
    else:
        raise RuntimeError("duetide up did not start")
    threading.Thread(target=_drain, args=(process.stdout,), daemon=True).start()
    return process, broker, port


def _drain(stream: IO[str]) -> None:
    """Read the console to its end so that `up` never blocks on a full pipe."""
    for _ in stream:
        pass


def _broker_back(address: str) -> bool:
    try:
        admin = KafkaAdminClient(bootstrap_servers=address, request_timeout_ms=500)
    except KafkaError:
        return False
    try:
        return "duetide-task-events" in admin.list_topics()
    except KafkaError:
        return False
    finally:
        admin.close()


def _healthy(url: str) -> bool:
    try:
        return requests.get(url, timeout=0.5).status_code == 200
    except requests.RequestException:
        return False


def _one_run(home: Path) -> dict[str, float]:
    process, broker, _ = start_up(home / "a")
    children = _children(process.pid)
    # The recurrence port, from its command line.
    argv = Path(f"/proc/{children['recurrence']}/cmdline").read_bytes().split(b"\0")
    recurrence_url = f"http://127.0.0.1:{argv[argv.index(b'--port') + 1].decode()}/healthz"
    os.kill(children["recurrence"], signal.SIGKILL)
    old = children["recurrence"]
    function_back = _until(
        lambda: _children(process.pid).get("recurrence", old) != old and _healthy(recurrence_url)
    )
    os.killpg(children["broker"], signal.SIGKILL)
    broker_back = _until(lambda: _broker_back(broker), 0.05)
    pids = list(_children(process.pid).values())
    began = time.monotonic()
    process.send_signal(signal.SIGINT)
    process.wait(timeout=TIMEOUT_S)
    _until(lambda: not any(_alive(p) for p in pids))
    stopped = time.monotonic() - began

    doomed, _, _ = start_up(home / "b")
    pids = list(_children(doomed.pid).values())
    began = time.monotonic()
    doomed.kill()
    doomed.wait(timeout=TIMEOUT_S)
    _until(lambda: not any(_alive(p) for p in pids))
    orphans_gone = time.monotonic() - began

    starting = spawn_up(home / "c", free_loopback_port(), subprocess.DEVNULL)
    _until(lambda: "broker" in _children(starting.pid))
    began = time.monotonic()
    starting.send_signal(signal.SIGINT)
    starting.wait(timeout=TIMEOUT_S)
    _until(lambda: not with_home(home / "c"))
    start_stopped = time.monotonic() - began
    return {"function": function_back, "broker": broker_back, "sigint": stopped,
            "sigkill": orphans_gone, "sigint_starting": start_stopped}  # fmt: skip


def run() -> list[dict[str, object]]:
    results = []
    for n in range(RUNS):
        with tempfile.TemporaryDirectory(prefix="duetide-bench-up-") as home:
            results.append(_one_run(Path(home)))
        print(f"  run {n + 1}: " + ", ".join(f"{k} {v:.2f} s" for k, v in results[-1].items()))
    what = {
        "function": "recurrence SIGKILLed → /healthz 200 on the same port",
        "broker": "broker SIGKILLed → metadata answered at the same address, topics back",
        "sigint": "SIGINT to up → up and all 5 children exited",
        "sigkill": "SIGKILL to up → all 5 children exited",
        "sigint_starting": "SIGINT to up while its functions start → all its processes exited",
    }
    rows: list[dict[str, object]] = []
    for key, label in what.items():
        values = sorted(r[key] for r in results)
        rows.append({"what": label, "runs": len(values),
                     "median s": round(statistics.median(values), 2),
                     "max s": round(values[-1], 2)})  # fmt: skip
    return rows
