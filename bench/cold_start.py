"""Issue 12: each function's cold start and worker memory, beside the import floor.

Each function is launched as the image launches it, `python -m duetide.web.serve --source
functions/<f>/main.py --target <f>` on a free loopback port (WORKERS=1, THREADS=10, as
knative/services.yaml), and timed from the launch to the first 2xx answer of a real
request. Its worker's VmRSS (/proc/<pid>/status) is read right after that answer.

Production-like means, here:
- PostgreSQL (DUETIDE_BENCH_POSTGRES_URL; default the local test server), in a schema of
  its own migrated before the first launch: no function migrates at start-up (the image's
  migration Job does);
- DUETIDE_AUTH=jwks: tokens are RS256, signed by the bench and verified against a JWKS the
  bench serves on loopback, so the first authenticated request fetches the key set as it
  does from the identity provider;
- bytecode compiled before the first launch, as the image's build does;
- publishing off (KAFKA_BOOTSTRAP_SERVERS empty): the outbox rows wait. The requests below
  publish nothing except recurrence's, whose first publish in production would add
  kafka-python's import and a broker connection after the commit.

The first request, the one a cold start in production is for (Knative holds it in the
activator until the readiness probe passes, then sends it):
- tasks: an authenticated `GET /tasks` of the user the tasks below were seeded for;
- recurrence: `task.completed` of an occurrence whose series has no next one yet, so it
  materialises it (one series seeded per launch);
- sweep: a PingSource ping: claim due reminders (none), relay pending rows, purge;
- notify: `reminder.due` of a pending reminder of a user with default preferences, so it
  is delivered on the log channel (one reminder seeded per launch);
- activity: `task.created` of one of those tasks (a new event id per launch), so it is
  appended to its owner's log and fanned out to their webhook subscriptions (none).
`/healthz` alone would leave out the database connection, the token check and what the
handlers import lazily. `listening` is when the server first accepted a connection: the
imports and the app built, before any request.

The import floor is `python -c "import sqlmodel, kafka, cloudevents.http, dateutil.rrule"`,
launch to exit, in the functions' environment; its RSS is its VmRSS after those imports,
from one more run. Every round runs, for each function, the floor and then the function at
this checkout and at BASELINE (main before this work, from a temporary git worktree;
DUETIDE_BENCH_BASELINE, empty to skip), on the same database; `ratio` is the median of each
launch's cold start / the floor run just before it, so drift of a shared machine cancels.

The stack floor is what the design's required parts cost before a line of duetide runs:
the same imports with kafka-python left out (no function imports it before its first
publish) and what serving needs added: psycopg and its SQLAlchemy dialect, the Functions
Framework (Flask), the HTTP edge (uvicorn's httptools protocol, uvloop) and
pydantic-settings (STACK_FLOOR). `stack ratio` is each launch / the stack floor run just
before it: what duetide's own code and its first request add. tasks also needs PyJWT,
which the stack floor leaves out.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import jwt
import psycopg
from cryptography.hazmat.primitives.asymmetric import rsa

from bench.serving import checkout
from duetide import events
from duetide.storage import migrate
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import project_root

ROUNDS = int(os.environ.get("BENCH_COLD_ROUNDS", "10"))
POSTGRES_URL = os.environ.get(
    "DUETIDE_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
BASELINE = os.environ.get("DUETIDE_BENCH_BASELINE", "e4eb0d4")
FUNCTIONS = ("tasks", "recurrence", "sweep", "notify", "activity")
FLOOR = "import sqlmodel, kafka, cloudevents.http, dateutil.rrule"
STACK_FLOOR = (
    "import sqlmodel, cloudevents.http, dateutil.rrule, psycopg,"
    " sqlalchemy.dialects.postgresql.psycopg, functions_framework,"
    " uvicorn.protocols.http.httptools_impl, uvloop, pydantic_settings"
)
START_TIMEOUT_S = 60.0
USER = "bench-cold-start"
ISSUER, AUDIENCE, KID = "https://issuer.bench.invalid/", "duetide", "bench-key"


@dataclass(frozen=True)
class Call:
    """One HTTP request: what the first request of a launch sends."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(frozen=True)
class Sample:
    first_2xx_s: float
    cpu_s: float
    listening_s: float
    rss_mb: float


# --- the identity provider: an RSA key and its JWKS on loopback ---------------------------


class Issuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = json.dumps({"keys": [{**public, "kid": KID, "alg": "RS256", "use": "sig"}]})
        self.url = ""

    def token(self, subject: str) -> str:
        now = datetime.now(UTC)
        claims = {
            "sub": subject,
            "iss": ISSUER,
            "aud": AUDIENCE,
            "iat": now,
            "exp": now + timedelta(hours=2),
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KID})


@contextmanager
def jwks_served(issuer: Issuer) -> Iterator[Issuer]:
    body = issuer.jwks.encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    issuer.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    try:
        yield issuer
    finally:
        server.shutdown()
        server.server_close()


# --- the database: a migrated PostgreSQL schema of its own --------------------------------


@contextmanager
def postgres_schema() -> Iterator[str]:
    libpq = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    schema = f"bench_cold_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(libpq, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in POSTGRES_URL else "?"
    url = f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
    try:
        migrate.upgrade(url)
        yield url
    finally:
        with psycopg.connect(libpq, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def compile_bytecode(code: Path) -> None:
    """Write the checkout's bytecode, as the image's build does (`compileall`): without it
    every launch compiles duetide from source (~0.1 s) where PYTHONDONTWRITEBYTECODE is set,
    as it is in the image and may be in the bench's environment."""
    folders = [str(code / "shared" / "duetide"), str(code / "functions")]
    subprocess.run([sys.executable, "-m", "compileall", "-q", *folders], check=True)


def function_env(code: Path, database_url: str, home: Path, issuer: Issuer) -> dict[str, str]:
    """The ConfigMap's and Service's settings (knative/), with the bench's database and JWKS."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DUETIDE_", "KAFKA_"))}
    env.update(
        PYTHONPATH=str(code / "shared"),
        DATABASE_URL=database_url,
        DUETIDE_HOME=str(home),
        DUETIDE_AUTH="jwks",
        DUETIDE_JWKS_URL=issuer.url,
        DUETIDE_JWT_ISSUER=ISSUER,
        DUETIDE_JWT_AUDIENCE=AUDIENCE,
        DUETIDE_LOG_LEVEL="INFO",
        KAFKA_BOOTSTRAP_SERVERS="",
        WORKERS="1",
        THREADS="10",
    )
    return env


# --- one launch: time to listening and to the first 2xx, then the worker's RSS -------------


def serving_pid(pid: int) -> int:
    """The process that serves: uvicorn's own with WORKERS=1, else its first worker."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def cpu_s(pid: int) -> float:
    """The CPU time the process's threads have run so far (schedstat, nanoseconds)."""
    tasks = Path(f"/proc/{pid}/task").iterdir()
    return sum(int((task / "schedstat").read_text().split()[0]) for task in tasks) / 1e9


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def _connect(port: int, process: subprocess.Popen[bytes], deadline: float) -> socket.socket:
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=START_TIMEOUT_S)
        except ConnectionRefusedError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the server exited or did not listen in time") from None
            time.sleep(0.002)


def serve_command(code: Path, function: str, port: int) -> list[str]:
    """The image's command line (its ENTRYPOINT), on loopback."""
    source = str(code / "functions" / function / "main.py")
    return [sys.executable, "-m", "duetide.web.serve", "--source", source, "--target", function,
            "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip


def _tail(errors: IO[bytes]) -> None:
    errors.seek(0)
    sys.stderr.write(errors.read()[-3000:].decode(errors="replace"))


def launch(code: Path, function: str, env: dict[str, str], call: Call) -> Sample:
    port = free_loopback_port()
    command = serve_command(code, function, port)
    with tempfile.TemporaryFile() as errors:
        start = time.perf_counter()
        process = subprocess.Popen(
            command, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=errors
        )
        try:
            sock = _connect(port, process, time.monotonic() + START_TIMEOUT_S)
            listening = time.perf_counter() - start
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=START_TIMEOUT_S)
            connection.sock = sock
            connection.request(call.method, call.path, body=call.body, headers=call.headers)
            answer = connection.getresponse()
            body = answer.read()
            first = time.perf_counter() - start
            serving = serving_pid(process.pid)
            cpu = cpu_s(serving) + (cpu_s(process.pid) if serving != process.pid else 0)
            rss = vm_rss_mb(serving)
            connection.close()
            if not 200 <= answer.status < 300:
                raise RuntimeError(f"{function}: {answer.status} {body[:300]!r}")
            return Sample(first, cpu, listening, rss)
        except Exception:
            _tail(errors)
            raise
        finally:
            process.terminate()
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def floor(env: dict[str, str], imports: str = FLOOR) -> tuple[float, float]:
    """An import floor's wall and CPU time (user + system, from wait4), launch to exit."""
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-c", imports], env=env)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"the import floor failed: {process.returncode}")
    return elapsed, usage.ru_utime + usage.ru_stime


def floor_rss_mb(env: dict[str, str], imports: str = FLOOR) -> float:
    """The floor's VmRSS once its imports are done, read as the workers' is (not timed).

    Not its peak from wait4: a child's peak counts the bench's own pages until the exec.
    """
    read = "import pathlib; print(pathlib.Path('/proc/self/status').read_text())"
    status = subprocess.run(
        [sys.executable, "-c", f"{imports}; {read}"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    kilobytes = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kilobytes) / 1024


# --- the requests: seeded through the tasks API, one per launch where it must be fresh ------


def _api(port: int, issuer: Issuer, method: str, path: str, body: Any = None) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Authorization": f"Bearer {issuer.token(USER)}"}
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    connection.request(method, path, body=payload, headers=headers)
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    if not 200 <= answer.status < 300:
        raise RuntimeError(f"seeding {method} {path}: {answer.status} {data[:300]!r}")
    return json.loads(data)


def _event(type_: str, source: str, data: dict[str, Any]) -> Call:
    built = events.build(
        event_id=str(uuid.uuid4()),
        type=type_,
        source=source,
        subject=data.get("task_id", "ping"),
        data=data,
    )
    headers, body = events.to_http(built)
    return Call("POST", "/", headers, body)


def seed(code: Path, env: dict[str, str], issuer: Issuer, launches: int) -> dict[str, list[Call]]:
    """The first request of each launch of each function, in launch order."""
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).replace(microsecond=0).isoformat()
    port = free_loopback_port()
    rule = {"rrule": "FREQ=DAILY", "timezone": "UTC"}
    completed, reminded = [], []
    with tempfile.TemporaryFile() as errors:
        command = serve_command(code, "tasks", port)
        process = subprocess.Popen(command, env=env, cwd=code, stdout=subprocess.DEVNULL,
                                   stderr=errors)  # fmt: skip
        try:
            _connect(port, process, time.monotonic() + START_TIMEOUT_S).close()
            for i in range(launches):
                daily = {"title": f"daily {i}", "due_at": tomorrow, "recurrence": rule}
                task = _api(port, issuer, "POST", "/tasks", daily)
                completed.append(_api(port, issuer, "POST", f"/tasks/{task['id']}/complete"))
                remind = {"title": f"remind {i}", "reminders": [{"at": tomorrow}]}
                reminded.append(_api(port, issuer, "POST", "/tasks", remind))
        except Exception:
            _tail(errors)
            raise
        finally:
            process.terminate()
            process.wait(timeout=30)
    listing = Call("GET", "/tasks", {"Authorization": f"Bearer {issuer.token(USER)}"})
    recurrence = [
        _event(
            events.TASK_COMPLETED,
            events.SOURCE_TASKS,
            {
                "task_id": t["id"],
                "owner": USER,
                "title": t["title"],
                "status": t["status"],
                "due_at": t["due_at"],
                "completed_at": t["completed_at"],
                "series_id": t["series_id"],
            },
        )
        for t in completed
    ]
    notify = [
        _event(
            events.REMINDER_DUE,
            events.SOURCE_SWEEP,
            {
                "reminder_id": t["reminders"][0]["id"],
                "task_id": t["id"],
                "owner": USER,
                "title": t["title"],
                "scheduled_at": t["reminders"][0]["fire_at"],
            },
        )
        for t in reminded
    ]
    created = [
        _event(
            events.TASK_CREATED,
            events.SOURCE_TASKS,
            {
                "task_id": t["id"],
                "owner": USER,
                "title": t["title"],
                "status": t["status"],
                "actor": f"user:{USER}",
            },
        )
        for t in reminded
    ]
    ping = [
        _event(events.PING, "/apis/v1/namespaces/duetide/pingsources/sweep", {})
        for _ in range(launches)
    ]
    return {
        "tasks": [listing] * launches,
        "recurrence": recurrence,
        "sweep": ping,
        "notify": notify,
        "activity": created,
    }


# --- the rounds ------------------------------------------------------------------------------


def _ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.0f}"


def run() -> list[dict[str, object]]:
    here = project_root()
    with (
        postgres_schema() as database_url,
        jwks_served(Issuer()) as issuer,
        tempfile.TemporaryDirectory(prefix="duetide-bench-cold-home-") as home,
        checkout(BASELINE, "baseline") if BASELINE else _no_checkout() as baseline,
    ):
        variants = [("after", here)] + ([(f"before ({BASELINE})", baseline)] if baseline else [])
        for _, code in variants:
            compile_bytecode(code)
        envs = {
            label: function_env(code, database_url, Path(home), issuer) for label, code in variants
        }
        calls = seed(here, envs["after"], issuer, ROUNDS * len(variants))
        # Each function's launches follow a floor run of their own: a pair minutes apart
        # on a shared machine would compare different loads.
        floors: dict[str, list[tuple[float, float]]] = {f: [] for f in FUNCTIONS}
        stack_floors: dict[str, list[tuple[float, float]]] = {f: [] for f in FUNCTIONS}
        samples: dict[tuple[str, str], list[Sample]] = {}
        for round_ in range(ROUNDS):
            line = []
            for function in FUNCTIONS:
                floors[function].append(floor(envs["after"]))
                stack_floors[function].append(floor(envs["after"], STACK_FLOOR))
                line.append(f"floor {floors[function][-1][0] * 1000:.0f}")
                line.append(f"stack floor {stack_floors[function][-1][0] * 1000:.0f}")
                for index, (label, code) in enumerate(variants):
                    call = calls[function][round_ * len(variants) + index]
                    sample = launch(code, function, envs[label], call)
                    samples.setdefault((function, label), []).append(sample)
                    line.append(f"{function}/{label.split()[0]} {sample.first_2xx_s * 1000:.0f}")
            print(f"  round {round_ + 1}/{ROUNDS} ms: " + ", ".join(line), flush=True)
        floor_rss = floor_rss_mb(envs["after"])
        stack_floor_rss = floor_rss_mb(envs["after"], STACK_FLOOR)
    every = [run for runs in floors.values() for run in runs]
    walls, cpus = [w for w, _ in every], [c for _, c in every]
    stacked = [run for runs in stack_floors.values() for run in runs]
    stack_walls, stack_cpus = [w for w, _ in stacked], [c for _, c in stacked]
    rows: list[dict[str, object]] = [
        {"function": "import floor", "code": "-", "first 2xx ms": _ms(walls),
         "min-max ms": _range(walls), "listening ms": "-", "ratio": "1.00",
         "stack ratio": "-", "CPU ms": _ms(cpus), "CPU ratio": "1.00", "vs before": "-",
         "RSS MB": f"{floor_rss:.1f}"},
        {"function": "stack floor", "code": "-", "first 2xx ms": _ms(stack_walls),
         "min-max ms": _range(stack_walls), "listening ms": "-",
         "ratio": _paired_ratio(stack_walls, walls), "stack ratio": "1.00",
         "CPU ms": _ms(stack_cpus), "CPU ratio": _paired_ratio(stack_cpus, cpus),
         "vs before": "-",
         "RSS MB": f"{stack_floor_rss:.1f}"},
    ]  # fmt: skip
    for function in FUNCTIONS:
        walls = [w for w, _ in floors[function]]
        cpus = [c for _, c in floors[function]]
        stack_walls = [w for w, _ in stack_floors[function]]
        for label, _ in reversed(variants):
            got = samples[(function, label)]
            first = [s.first_2xx_s for s in got]
            before = [s.first_2xx_s for s in samples[(function, variants[-1][0])]]
            rows.append(
                {"function": function, "code": label, "first 2xx ms": _ms(first),
                 "min-max ms": _range(first), "listening ms": _ms([s.listening_s for s in got]),
                 "ratio": _paired_ratio(first, walls),
                 "stack ratio": _paired_ratio(first, stack_walls),
                 "CPU ms": _ms([s.cpu_s for s in got]),
                 "CPU ratio": _paired_ratio([s.cpu_s for s in got], cpus),
                 "vs before": _paired_ratio(first, before) if first != before else "-",
                 "RSS MB": f"{statistics.median(s.rss_mb for s in got):.1f}"}
            )  # fmt: skip
    return rows


def _range(values: list[float]) -> str:
    return f"{min(values) * 1000:.0f}-{max(values) * 1000:.0f}"


def _paired_ratio(values: list[float], floors: list[float]) -> str:
    """The median of each round's value / that round's floor."""
    return f"{statistics.median(v / f for v, f in zip(values, floors, strict=True)):.2f}"


@contextmanager
def _no_checkout() -> Iterator[None]:
    yield None


def describe() -> str:
    assert __doc__ is not None
    return __doc__.split("\n\n", 1)[1].strip() + (
        f"\n\n{ROUNDS} rounds (BENCH_COLD_ROUNDS); medians, and the range of the first 2xx."
        " `CPU ms` is the CPU time of the serving process's threads at the first 2xx"
        " (/proc/<pid>/task/*/schedstat), the floor's from wait4: on a shared machine it moves"
        " less than wall time, which counts the time spent waiting for a core. `vs before` is"
        " the median of each round's first 2xx at this checkout / at BASELINE, launched one"
        " after the other."
    )
