"""The HTTP edge under abusive clients: wrk's median for an authenticated `GET /tasks` on
the served tasks function, alone, beside 12 slow-body connections, and beside 3 clients
sending 16 MiB request lines, for each way of serving the function.

Servers compared (each one worker process, THREADS threads, SQLite):
- `functions-framework` as it starts itself (the baseline: gunicorn gthread with
  `limit_request_line=0` and no request deadline);
- `gthread+limits`: the same gunicorn worker with request line and header limits only;
- `duetide.web.serve`: the launcher the image and the local stack use (see duetide/web/serve.py):
  the same Flask app behind uvicorn, each request read whole (bounded) on the event loop
  before it takes one of the THREADS threads; httptools parses, on uvloop;
- `duetide.web.serve (h11)`: the same launcher as it was before httptools and uvloop
  (DUETIDE_BENCH_EDGE_BASELINE, default 0210ea2, in a git worktree): h11 parses, on
  asyncio's loop.

`CPU ms/req` is the server's user + system CPU (its processes') over a run alone divided
by the requests answered: the cost of a request, which depends less on the box's load
than the latency does. `/healthz` does no work (no token, no database, no log line): its
figure is what serving a request costs by itself; `/tasks` is the request the table's
other columns time (the `alone` one of them is measured after `/healthz`).
functions-framework's own `--asgi` mode is not compared: it serves Starlette functions
(`functions_framework.aio`), and ours take Flask requests.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import stack_cpu
from bench.serving import checkout, wait_healthy
from duetide.config import get_settings
from duetide.storage import migrate
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import project_root

NEEDS = ("wrk",)
DURATION_S = int(os.environ.get("BENCH_HTTP_SECONDS", "10"))
THREADS = os.environ.get("BENCH_HTTP_THREADS", "10")
SLOW_CLIENTS = 12
LONG_LINE_CLIENTS = 3
LONG_LINE_BYTES = 16 * 1024 * 1024
SECRET = "bench-http-edge-secret-of-enough-length"

SOURCE = "functions/tasks/main.py"
GTHREAD_LIMITS = (
    "import sys, functions_framework as ff; from functions_framework._http import gunicorn as g;"
    "app = ff.create_app('tasks', sys.argv[1]);"
    "g.GunicornApplication(app, '127.0.0.1', sys.argv[2], False,"
    " limit_request_line=8190, limit_request_field_size=8190).run()"
)
BASELINE = os.environ.get("DUETIDE_BENCH_EDGE_BASELINE", "0210ea2")
# The launcher of before, on the loop it had: uvicorn's "auto" took asyncio's, uvloop not
# being installed then.
ASYNCIO_LOOP = (
    "import sys, uvicorn; run = uvicorn.run;"
    "uvicorn.run = lambda *a, **k: run(*a, **{**k, 'loop': 'asyncio'});"
    "from duetide.web.serve import main; main(sys.argv[1:])"
)
SERVERS: dict[str, Callable[[str, int], list[str]]] = {
    "functions-framework": lambda src, port: [
        sys.executable, "-m", "functions_framework", "--target", "tasks", "--source", src,
        "--host", "127.0.0.1", "--port", str(port),
    ],
    "gthread+limits": lambda src, port: [sys.executable, "-c", GTHREAD_LIMITS, src, str(port)],
    "duetide.web.serve": lambda src, port: [
        sys.executable, "-m", "duetide.web.serve", "--target", "tasks", "--source", src,
        "--host", "127.0.0.1", "--port", str(port),
    ],
    "duetide.web.serve (h11)": lambda src, port: [
        sys.executable, "-c", ASYNCIO_LOOP, "--target", "tasks", "--source", src,
        "--host", "127.0.0.1", "--port", str(port),
    ],
}  # fmt: skip


@contextmanager
def serving(name: str, home: Path, root: Path) -> Iterator[tuple[int, int]]:
    """The server `name` of the code at `root`, on a free port: (port, pid)."""
    port = free_loopback_port()
    path = os.pathsep.join([str(root / "shared"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, DUETIDE_HOME=str(home), DATABASE_URL=f"sqlite:///{home / 'db'}",
               DUETIDE_JWT_SECRET=SECRET, KAFKA_BOOTSTRAP_SERVERS="", THREADS=THREADS,
               WORKERS="1", DUETIDE_LOG_LEVEL="WARNING", DUETIDE_READ_RATE_PER_MINUTE="0",
               PYTHONPATH=path)  # fmt: skip
    command = SERVERS[name](str(root / SOURCE), port)
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, name)
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def _slow_body(port: int, stop: threading.Event) -> None:
    """A POST announcing a 1 MB body, then one byte every 0.5 s; reconnects when cut off."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(
                    b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 1000000\r\n\r\n{"
                )
                while not stop.wait(0.5):
                    sock.sendall(b" ")
        except OSError:
            stop.wait(0.1)


def _long_line(port: int, stop: threading.Event) -> None:
    """GET requests whose request line is 16 MiB long, one after the other."""
    chunk = b"a" * (1024 * 1024)
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
                sock.sendall(b"GET /tasks?q=")
                for _ in range(LONG_LINE_BYTES // len(chunk)):
                    if stop.is_set():
                        break
                    sock.sendall(chunk)
                sock.sendall(b" HTTP/1.1\r\nHost: x\r\n\r\n")
                sock.recv(1024)
        except OSError:
            stop.wait(0.05)


@contextmanager
def attackers(kind: str, port: int) -> Iterator[None]:
    stop = threading.Event()
    target, count = {"slow-body": (_slow_body, SLOW_CLIENTS),
                     "16MiB-lines": (_long_line, LONG_LINE_CLIENTS)}[kind]  # fmt: skip
    threads = [
        threading.Thread(target=target, args=(port, stop), daemon=True) for _ in range(count)
    ]
    for thread in threads:
        thread.start()
    time.sleep(1.0)  # let them occupy the server before measuring
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk_median_ms(port: int, token: str, path: str = "/tasks") -> tuple[float, int, int]:
    """wrk's 50th percentile latency (ms), request count and non-2xx/socket errors."""
    out = subprocess.run(
        ["wrk", "-t2", "-c4", f"-d{DURATION_S}s", "--timeout", "15s", "--latency",
         "-H", f"Authorization: Bearer {token}", f"http://127.0.0.1:{port}{path}"],
        capture_output=True, text=True, timeout=DURATION_S + 30, check=True,
    ).stdout  # fmt: skip
    value, unit = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
    count = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    timeouts = re.search(r"Socket errors:.*timeout (\d+)", out)
    bad = (int(errors.group(1)) if errors else 0) + (int(timeouts.group(1)) if timeouts else 0)
    return float(value) * _UNITS[unit], count, bad


def run() -> list[dict[str, object]]:
    home = Path(tempfile.mkdtemp(prefix="duetide-bench-http-"))
    migrate.upgrade(f"sqlite:///{home / 'db'}")
    os.environ["DUETIDE_JWT_SECRET"] = SECRET
    get_settings.cache_clear()
    token = issue_local_token("bench")
    names = os.environ.get("BENCH_HTTP_SERVERS", ",".join(SERVERS)).split(",")
    rows = []
    with checkout(BASELINE, "edge-baseline") as before:
        for name in names:
            root = before if name == "duetide.web.serve (h11)" else project_root()
            row: dict[str, object] = {"server": name}
            for scenario in ("alone", "slow-body", "16MiB-lines"):
                with serving(name, home, root) as (port, pid):
                    if scenario == "alone":
                        for path in ("/healthz", "/tasks"):
                            cpu = stack_cpu.tree_cpu_seconds(pid)
                            median, count, bad = wrk_median_ms(port, token, path)
                            cpu = stack_cpu.tree_cpu_seconds(pid) - cpu
                            per = round(cpu * 1000 / max(count, 1), 3)
                            row[f"{path} CPU ms/req"] = per
                    else:
                        with attackers(scenario, port):
                            median, count, bad = wrk_median_ms(port, token)
                row[f"{scenario} p50 ms"] = round(median, 1) if count else "none answered"
                row[f"{scenario} requests"] = f"{count} ({bad} failed)" if bad else count
            rows.append(row)
            print(row, flush=True)
    return rows


def describe() -> str:
    return (__doc__ or "").strip() + (
        f"\n\n`wrk -t2 -c4 -d{DURATION_S}s --latency` on loopback against `GET /tasks` with a "
        f"bearer token, THREADS={THREADS}. Slow body: {SLOW_CLIENTS} connections each "
        "announcing a 1 MB body and sending one byte every 0.5 s, reconnecting when cut off. "
        f"Long lines: {LONG_LINE_CLIENTS} clients each sending 16 MiB request lines back to "
        "back. `p50 ms` is wrk's median latency; `requests` counts the GETs answered in the "
        "run (0: none was answered at all). The machine has 2 cores shared with wrk and the "
        "abusive clients, so compare within a run."
    )
