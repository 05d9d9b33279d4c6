"""Issue 12: the tasks API under a realistic request mix, beside a hand-written
FastAPI + SQLModel app doing the same (bench/baseline/app.py) and pgbench running the
SQL such an app needs at the least (the ceiling), on the same PostgreSQL.

The mix: 40% POST /tasks (title, priority, tags, due_at on three in four), 30%
GET /tasks/{id} of a seeded task, 20% GET /tasks?status=open (first page, 50 items),
10% POST /tasks/{id}/complete of a seeded task (completing one twice answers 200 and
changes nothing, in both apps). Each request carries the bearer token of the task's
owner, or of a random one of the users.

Each system gets its own database, copied for every run from a template migrated (duetide:
its Alembic migrations; the baseline: its SQLModel tables) and seeded alike: SEED_PER_USER
open tasks for each of USERS users, a third with no tag, a third with one, a third with
two. So every run starts from the same state.

Each app runs as 2 server processes, each on its own port, and the wrk clients are
shared evenly between them (8 connections each): the analogue of 2 one-process Knative
pods behind the activator, which balances requests. duetide's processes are what the
image starts, a pod's one process (`python -m duetide.web.serve`, WORKERS=1, THREADS=10
as in knative/services.yaml), with no Kafka (events stay in the outbox; the fast-path
publish after a commit is not measured) and write and read rate limits high enough never
to refuse (the write counter is still written, the read bucket still taken from). The
baseline's: `uvicorn bench.baseline.app:app`. One port served by 2 workers (duetide's
WORKERS=2, `uvicorn --workers 2`) is not used: the workers share one listening socket
and whichever accepts first keeps the connection, and of wrk's 16 connections one worker
got 15, 13, 10 or 8 from run to run, so the figures measured the split. Both apps on
uvloop and httptools (duetide's dependencies, and what uvicorn picks when they are
installed, as `uvicorn[standard]` has them; before 2026-12-03 both ran on asyncio's loop
and h11), both with psycopg 3 over TLS to 127.0.0.1 (the server's default).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import requests

from bench.pgtap import Event, WireTap
from bench.pyspy import summarize
from bench.serving import wait_healthy
from duetide.config import Settings
from duetide.web.auth import issue_local_token
from duetide_tools.local.broker import free_loopback_port
from duetide_tools.local.stack import project_root

SECONDS = int(os.environ.get("BENCH_API_MIX_SECONDS", "20"))
ROUNDS = int(os.environ.get("BENCH_API_MIX_ROUNDS", "3"))
WARMUP_S = 3
PROFILE = os.environ.get("BENCH_API_MIX_PROFILE", "1") != "0"
PROFILE_S = 15
RATE = 200  # py-spy samples per second
CLIENTS, WRK_THREADS = 16, 2
USERS, SEED_PER_USER = 20, 2000
SEEDS = USERS * SEED_PER_USER
MIX = {"create": 40, "get": 30, "list": 20, "complete": 10}
SECRET = "bench-api-mix-secret-of-enough-length-for-hs256"
PG_HOST, PG_PORT = "127.0.0.1", int(os.environ.get("BENCH_API_MIX_PG_PORT", "5432"))
PG_USER = "postgres"
PREFIX = "bench_api_mix"
NEEDS = ("wrk", "pgbench")
SYSTEMS = ("duetide", "baseline", "pgbench")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# --- databases ------------------------------------------------------------------------------


def pg_url(database: str, driver: str = "postgresql", port: int = PG_PORT, query: str = "") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{port}/{database}{query}"


def admin(sql: str, *args: Any, database: str = "postgres") -> list[tuple[Any, ...]]:
    with psycopg.connect(pg_url(database), autocommit=True) as connection:
        cursor = connection.execute(sql, args or None)
        return cursor.fetchall() if cursor.description else []


def drop(database: str) -> None:
    admin(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def copy_of(template: str, database: str) -> None:
    drop(database)
    admin(f'CREATE DATABASE "{database}" TEMPLATE "{template}"')


def seed_id(n: int) -> str:
    """Seeded task n's id; PostgreSQL computes the same (`md5(...)::uuid`), so pgbench can."""
    return str(uuid.UUID(hashlib.md5(f"apimix-seed-{n}".encode()).hexdigest()))


def owner_index(n: int) -> int:
    """The user (1..USERS) owning seeded task n."""
    return (n - 1) % USERS + 1


def user(index: int) -> str:
    return f"user-{index:02d}"


SEED_SQL = f"""
INSERT INTO task (id, owner, title, description, status, priority, due_at, created_at, updated_at)
SELECT md5('apimix-seed-' || n)::uuid::text, 'user-' || lpad(((n - 1) % {USERS} + 1)::text, 2, '0'),
       'seeded task ' || n, '', 'open', n % 5,
       CASE WHEN n % 4 = 0 THEN NULL
            ELSE TIMESTAMPTZ '2026-01-05 09:00+00' + (n % 120) * INTERVAL '1 day' END,
       TIMESTAMPTZ '2025-06-01 00:00+00' + n * INTERVAL '1 minute',
       TIMESTAMPTZ '2025-06-01 00:00+00' + n * INTERVAL '1 minute'
FROM generate_series(1, {SEEDS}) AS n;
INSERT INTO task_tag (task_id, tag)
SELECT md5('apimix-seed-' || n)::uuid::text, tag
FROM generate_series(1, {SEEDS}) AS n,
     unnest(CASE n % 3 WHEN 0 THEN ARRAY[]::text[] WHEN 1 THEN ARRAY['work']
                       ELSE ARRAY['errand', 'home'] END) AS tag;
"""  # fmt: skip


TEMPLATES = {"duetide": f"{PREFIX}_duetide_seed", "baseline": f"{PREFIX}_baseline_seed"}


def prepare_templates(env: dict[str, str]) -> dict[str, str]:
    """One seeded template database per app (pgbench uses the baseline's tables)."""
    templates = TEMPLATES
    schema = {
        "duetide": "from duetide.storage import migrate; migrate.upgrade()",
        "baseline": "from bench.baseline.app import create_tables; create_tables()",
    }
    for app, template in templates.items():
        drop(template)
        admin(f'CREATE DATABASE "{template}"')
        url = pg_url(template, "postgresql+psycopg")
        subprocess.run([sys.executable, "-c", schema[app]], check=True, cwd=project_root(),
                       env=dict(env, DATABASE_URL=url, JWT_SECRET=SECRET))  # fmt: skip
        with psycopg.connect(pg_url(template), autocommit=True) as connection:
            connection.execute(SEED_SQL.encode())
            connection.execute("VACUUM ANALYZE")
    return templates


def database_stats(database: str, postmaster: int) -> dict[str, int]:
    """Commits, rollbacks and sessions of `database` since it was created, read once no
    backend of it is left: a backend reports its last counts as it exits, after it has
    left pg_stat_activity, so it is its process that is waited for."""
    deadline = time.monotonic() + 15
    while _backends_of(database, postmaster) and time.monotonic() < deadline:
        time.sleep(0.05)
    row = admin(
        "SELECT xact_commit, xact_rollback, sessions FROM pg_stat_database WHERE datname = %s",
        database,
    )[0]
    return {"commits": row[0], "rollbacks": row[1], "sessions": row[2]}


def _backends_of(database: str, postmaster: int) -> list[int]:
    """The server processes connected to `database` (their title names it)."""
    name = f" {database} ".encode()
    return [pid for pid in _children(postmaster) if name in _cmdline(pid)]


# --- processes and their CPU ----------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()  # fields from `state` on


def postmaster_pid() -> int:
    """The PostgreSQL server's pid: the parent of a backend, read while its connection is
    open (once closed, the backend may be gone before /proc is read)."""
    with psycopg.connect(pg_url("postgres"), autocommit=True) as connection:
        backend = connection.execute("SELECT pg_backend_pid()").fetchone()
        fields = _stat(int(backend[0])) if backend else None
    if fields is None:
        raise RuntimeError("the PostgreSQL server is not on this machine (no /proc entry)")
    return int(fields[1])


def _pids() -> list[int]:
    return [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]


def group_members(pgid: int) -> list[int]:
    return [pid for pid in _pids() if (fields := _stat(pid)) and int(fields[2]) == pgid]


def cpu_ticks(pids: list[int], with_children_of: int | None = None) -> int:
    """utime + stime of `pids`, plus the reaped children's of `with_children_of`."""
    total = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is None:
            continue
        total += int(fields[11]) + int(fields[12])
        if pid == with_children_of:
            total += int(fields[13]) + int(fields[14])
    return total


def postgres_cpu_ticks(postmaster: int) -> int:
    """The whole server: the postmaster, its live children, and the exited ones it reaped
    (their time is in its cutime/cstime). Other databases' work counts too."""
    return cpu_ticks([postmaster, *_children(postmaster)], with_children_of=postmaster)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return b""


def _children(parent: int) -> list[int]:
    return [pid for pid in _pids() if (fields := _stat(pid)) and int(fields[1]) == parent]


@contextmanager
def process_group(
    command: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start `command` in its own process group, its output to `log`; on exit SIGTERM the
    group, and SIGKILL whatever is left of it after 30 s."""
    with log.open("wb") as out:
        process = subprocess.Popen(command, env=env, cwd=project_root(), start_new_session=True,
                                   stdout=out, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        yield process
    finally:
        _stop_group(process)


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        deadline = time.monotonic() + 10
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    finally:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


PROCESSES = 2


@dataclass(frozen=True)
class Server:
    """PROCESSES server processes of one app, each on its own port."""

    app: str
    ports: list[int]
    pids: list[int]

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports[0]}"

    def processes(self) -> list[int]:
        return [member for pid in self.pids for member in group_members(pid)]


def _command(
    app: str, port: int, url: str, env: dict[str, str]
) -> tuple[list[str], dict[str, str]]:
    """One server process of `app`: duetide as the image starts it (a Knative pod's one
    process), the baseline as uvicorn starts it."""
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if app == "duetide":
        source = str(project_root() / "functions/tasks/main.py")
        command = [sys.executable, "-m", "duetide.web.serve", "--target", "tasks",
                   "--source", source, *address]  # fmt: skip
        return command, dict(
            env, DATABASE_URL=url, DUETIDE_JWT_SECRET=SECRET, WORKERS="1", THREADS="10",
            KAFKA_BOOTSTRAP_SERVERS="", DUETIDE_WRITE_RATE_PER_MINUTE="100000000",
            DUETIDE_READ_RATE_PER_MINUTE="100000000",
            DUETIDE_LOG_LEVEL="INFO",
            DUETIDE_HOME=env.get("DUETIDE_HOME") or tempfile.mkdtemp(prefix="apimix-home-"),
        )  # fmt: skip
    command = [sys.executable, "-m", "uvicorn", "bench.baseline.app:app", *address,
               "--no-access-log", "--log-level", "warning"]  # fmt: skip
    return command, dict(env, DATABASE_URL=url, JWT_SECRET=SECRET)


@contextmanager
def serving(
    app: str, database: str, env: dict[str, str], pg_port: int = PG_PORT, query: str = ""
) -> Iterator[Server]:
    """`app` as PROCESSES processes on `database`, each answering on its own loopback port."""
    url = pg_url(database, "postgresql+psycopg", pg_port, query)
    with ExitStack() as stack:
        started = []
        for number in range(PROCESSES):
            port = free_loopback_port()
            command, app_env = _command(app, port, url, env)
            log = Path(tempfile.gettempdir()) / f"apimix-{app}-{number}.log"
            started.append((port, stack.enter_context(process_group(command, app_env, log))))
        for port, process in started:
            wait_healthy(f"http://127.0.0.1:{port}", process, f"{app} (see its log in /tmp)")
        yield Server(app, [port for port, _ in started], [p.pid for _, p in started])


# --- the load -------------------------------------------------------------------------------

LUA = """
-- generated by bench/api_mix.py: the request mix, with each user's token and the seeds
local tokens = {%(tokens)s}
local ids = {%(ids)s}
local users, seeds = #tokens, #ids
local priorities = {"none", "low", "medium", "high", "urgent"}
local headers = {}
counts = {create = 0, get = 0, list = 0, complete = 0}
statuses = {}
local threads = {}
local n = 0

function setup(thread)
  table.insert(threads, thread)
  thread:set("number", #threads)
end

function init(args)
  math.randomseed(os.time() * 100 + number)
  for u = 1, users do
    headers[u] = {["Authorization"] = "Bearer " .. tokens[u],
                  ["Content-Type"] = "application/json"}
  end
end

function request()
  n = n + 1
  local r = math.random(100)
  if r <= %(create)d then
    counts.create = counts.create + 1
    local due = ""
    if n %% 4 ~= 0 then due = ',"due_at":"2026-03-0' .. (n %% 9 + 1) .. 'T09:00:00Z"' end
    local body = '{"title":"load task ' .. number .. '-' .. n .. '","priority":"' ..
      priorities[n %% 5 + 1] .. '","tags":["load","work"]' .. due .. '}'
    return wrk.format("POST", "/tasks", headers[math.random(users)], body)
  elseif r <= %(get)d then
    counts.get = counts.get + 1
    local s = math.random(seeds)
    return wrk.format("GET", "/tasks/" .. ids[s], headers[(s - 1) %% users + 1])
  elseif r <= %(list)d then
    counts.list = counts.list + 1
    return wrk.format("GET", "/tasks?status=open", headers[math.random(users)])
  else
    counts.complete = counts.complete + 1
    local s = math.random(seeds)
    return wrk.format("POST", "/tasks/" .. ids[s] .. "/complete", headers[(s - 1) %% users + 1])
  end
end

function response(status)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local mix, answered = {}, {}
  for _, thread in ipairs(threads) do
    for k, v in pairs(thread:get("counts")) do mix[k] = (mix[k] or 0) + v end
    for k, v in pairs(thread:get("statuses")) do answered[k] = (answered[k] or 0) + v end
  end
  for k, v in pairs(mix) do io.write(string.format("mix %%s %%d\\n", k, v)) end
  for k, v in pairs(answered) do io.write(string.format("status %%s %%d\\n", k, v)) end
  for i = 1, %(quantiles)d do  -- the latency distribution, in microseconds
    io.write(string.format("quantile %%d\\n", latency:percentile(100 * i / %(quantiles)d)))
  end
end
"""


def write_lua(path: Path, tokens: list[str], mix: dict[str, int] = MIX) -> None:
    bounds = dict(create=mix["create"], get=mix["create"] + mix["get"],
                  list=mix["create"] + mix["get"] + mix["list"])  # fmt: skip
    path.write_text(LUA % dict(
        tokens=",".join(f'"{t}"' for t in tokens),
        ids=",\n".join(f'"{seed_id(n)}"' for n in range(1, SEEDS + 1)),
        quantiles=QUANTILES,
        **bounds,
    ))  # fmt: skip


@dataclass
class Load:
    """What one load run measured."""

    requests: int
    per_s: float
    p50_ms: float
    p99_ms: float
    failed: int  # non-2xx answers and socket errors
    statuses: dict[str, int]
    mix: dict[str, int]


QUANTILES = 2000


def wrk(ports: list[int], script: Path, seconds: int) -> Load:
    """One wrk per server process, CLIENTS shared evenly among them, run together: each
    process gets the same share, as a load balancer in front of pods gives it. Their
    latency distributions are merged (each run's QUANTILES quantiles, weighted by its
    requests), so the percentiles are of all requests, to 1/QUANTILES."""
    command = ["wrk", "-t1", f"-c{CLIENTS // len(ports)}", f"-d{seconds}s", "--timeout", "10s",
               "-s", str(script)]  # fmt: skip
    runs = [
        subprocess.Popen(
            [*command, f"http://127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for port in ports
    ]
    outs = []
    try:
        for run_ in runs:
            out, _ = run_.communicate(timeout=seconds + 60)
            if run_.returncode:
                raise RuntimeError(f"wrk failed: {out[-2000:]}")
            outs.append(out)
    finally:
        for run_ in runs:
            if run_.poll() is None:
                run_.kill()
                run_.wait()
    return _merged(outs)


def _merged(outs: list[str]) -> Load:
    weights: dict[int, float] = {}
    statuses: dict[str, int] = {}
    mix: dict[str, int] = {}
    requests_, per_s, failed = 0, 0.0, 0
    for out in outs:
        done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
        requests_ += done
        per_s += float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        errors = re.search(
            r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
        )
        failed += int(non_2xx.group(1)) if non_2xx else 0
        failed += sum(int(x) for x in errors.groups()) if errors else 0
        for pattern, into in ((r"^status (\d+) (\d+)$", statuses), (r"^mix (\w+) (\d+)$", mix)):
            for key, value in re.findall(pattern, out, re.M):
                into[key] = into.get(key, 0) + int(value)
        for value in re.findall(r"^quantile (\d+)$", out, re.M):
            weights[int(value)] = weights.get(int(value), 0.0) + done / QUANTILES
    return Load(requests_, per_s, _percentile(weights, 0.5), _percentile(weights, 0.99),
                failed, statuses, mix)  # fmt: skip


def _percentile(weights: dict[int, float], q: float) -> float:
    """The q-quantile (ms) of weighted latencies in microseconds."""
    total = sum(weights.values())
    seen = 0.0
    for value in sorted(weights):
        seen += weights[value]
        if seen >= q * total * (1 - 1e-9):
            return value / 1000
    return 0.0


PGBENCH_SCRIPTS = {
    "create": r"""
\set u random(1, {users})
\set p random(0, 4)
WITH t AS (
  INSERT INTO task (id, owner, title, description, status, priority, due_at, created_at,
                    updated_at)
  VALUES (gen_random_uuid()::text, 'user-' || lpad(:u::text, 2, '0'), 'load task', '', 'open',
          :p, now() + INTERVAL '3 days', now(), now())
  RETURNING *
), g AS (
  INSERT INTO task_tag (task_id, tag)
  SELECT t.id, v.tag FROM t, (VALUES ('load'), ('work')) AS v(tag)
)
SELECT t.*, ARRAY['load', 'work'] AS tags FROM t;
""",
    "get": r"""
\set n random(1, {seeds})
\set u (:n - 1) % {users} + 1
SELECT t.*, ARRAY(SELECT tag FROM task_tag WHERE task_id = t.id ORDER BY tag) AS tags FROM task t
WHERE t.id = md5('apimix-seed-' || :n::text)::uuid::text
  AND t.owner = 'user-' || lpad(:u::text, 2, '0');
""",
    "list": r"""
\set u random(1, {users})
SELECT t.*, ARRAY(SELECT tag FROM task_tag WHERE task_id = t.id ORDER BY tag) AS tags FROM task t
WHERE t.owner = 'user-' || lpad(:u::text, 2, '0') AND t.status = 'open'
ORDER BY t.created_at, t.id LIMIT 51;
""",
    "complete": r"""
\set n random(1, {seeds})
\set u (:n - 1) % {users} + 1
UPDATE task SET status = 'done', completed_at = coalesce(completed_at, now()), updated_at = now()
WHERE id = md5('apimix-seed-' || :n::text)::uuid::text AND owner = 'user-' || lpad(:u::text, 2, '0')
RETURNING *, ARRAY(SELECT tag FROM task_tag WHERE task_id = task.id ORDER BY tag) AS tags;
""",
}  # fmt: skip
"""One statement per request, each its own transaction: what a hand-written app needs at the
least (tags come back as an array from a subquery, tasks and their tags go in together)."""


def pgbench(database: str, folder: Path, seconds: int, log: bool) -> Load:
    """pgbench with the same clients, the mix as weighted scripts, prepared statements."""
    weights = []
    for name, script in PGBENCH_SCRIPTS.items():
        path = folder / f"{name}.sql"
        path.write_text(script.format(users=USERS, seeds=SEEDS))
        weights += ["-f", f"{path}@{MIX[name]}"]
    logs = folder / "log"
    logs.mkdir(exist_ok=True)
    for old in logs.iterdir():
        old.unlink()
    command = ["pgbench", "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_USER, "-n", "-M", "prepared",
               f"-c{CLIENTS}", f"-j{WRK_THREADS}", f"-T{seconds}", *weights]  # fmt: skip
    if log:
        command += ["-l", "--log-prefix", str(logs / "tx")]
    out = subprocess.run([*command, database], capture_output=True, text=True,
                         timeout=seconds + 60, check=True).stdout  # fmt: skip
    done = int(re.search(r"number of transactions actually processed: (\d+)", out).group(1))  # type: ignore[union-attr]
    failed = re.search(r"number of failed transactions: (\d+)", out)
    per_s = float(re.search(r"tps = ([\d.]+) \(without initial", out).group(1))  # type: ignore[union-attr]
    latencies: list[int] = []
    counts: dict[str, int] = dict.fromkeys(PGBENCH_SCRIPTS, 0)
    names = list(PGBENCH_SCRIPTS)
    for path in logs.iterdir():
        for line in path.read_text().splitlines():
            fields = line.split()
            latencies.append(int(fields[2]))
            counts[names[int(fields[3])]] += 1
    latencies.sort()

    def at(q: float) -> float:
        return (
            latencies[min(len(latencies) - 1, int(q * len(latencies)))] / 1000 if latencies else 0
        )

    return Load(done, per_s, at(0.5), at(0.99), int(failed.group(1)) if failed else 0, {}, counts)


# --- one measured run -----------------------------------------------------------------------


@dataclass
class Run:
    system: str
    load: Load
    app_cpu_ms: float | None  # per request, the app's processes
    pg_cpu_ms: float  # per request, the whole PostgreSQL server
    stats: dict[str, int]  # commits, rollbacks, sessions of the measured part


def measure(system: str, templates: dict[str, str], env: dict[str, str], script: Path,
            folder: Path, postmaster: int) -> Run:  # fmt: skip
    """A fresh copy of the seeded database; a warm-up; then the measured load."""
    database = f"{PREFIX}_{system}"
    copy_of(templates["duetide" if system == "duetide" else "baseline"], database)
    admin("CHECKPOINT")
    try:
        if system == "pgbench":
            pgbench(database, folder, WARMUP_S, log=False)
            before = database_stats(database, postmaster)
            pg0 = postgres_cpu_ticks(postmaster)
            load = pgbench(database, folder, SECONDS, log=True)
            pg1 = postgres_cpu_ticks(postmaster)
            app_ms = None
        else:
            with serving(system, database, env) as server:  # warm-up: caches, not the pools
                wrk(server.ports, script, WARMUP_S)
            before = database_stats(database, postmaster)
            with serving(system, database, env) as server:
                workers = server.processes()
                app0, pg0 = cpu_ticks(workers), postgres_cpu_ticks(postmaster)
                load = wrk(server.ports, script, SECONDS)
                app1, pg1 = cpu_ticks(workers), postgres_cpu_ticks(postmaster)
            app_ms = (app1 - app0) / CLK_TCK * 1000 / max(load.requests, 1)
        after = database_stats(database, postmaster)
    finally:
        drop(database)
    stats = {k: after[k] - before[k] for k in after}
    pg_ms = (pg1 - pg0) / CLK_TCK * 1000 / max(load.requests, 1)
    return Run(system, load, app_ms, pg_ms, stats)


def row(round_: str, run: Run) -> dict[str, object]:
    load = run.load
    per = max(load.requests, 1)
    failed = str(load.failed)
    if load.failed and load.statuses:
        failed += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(load.statuses.items())
                                   if not k.startswith("2")) + ")"  # fmt: skip
    return {
        "round": round_,
        "system": run.system,
        "requests/s": round(load.per_s),
        "p50 ms": round(load.p50_ms, 1),
        "p99 ms": round(load.p99_ms, 1),
        "requests": load.requests,
        "failed": failed,
        "app CPU ms/req": "—" if run.app_cpu_ms is None else round(run.app_cpu_ms, 2),
        "PG CPU ms/req": round(run.pg_cpu_ms, 2),
        "commits/req": round(run.stats["commits"] / per, 2),
        "rollbacks/req": round(run.stats["rollbacks"] / per, 2),
        "PG sessions": run.stats["sessions"],
        "load 1 min": f"{os.getloadavg()[0]:.2f}",
    }


# --- statements per request type ------------------------------------------------------------

_SELECT_LIST = re.compile(r"^SELECT (?!1\b)(.{40,}?) FROM ", re.S)
_INSERT_LIST = re.compile(r"^INSERT INTO (\S+) \(.*", re.S)


def shorten(sql: str) -> str:
    """One line; long column and value lists elided."""
    sql = " ".join(sql.split())
    sql = _SELECT_LIST.sub("SELECT … FROM ", sql)
    sql = _INSERT_LIST.sub(r"INSERT INTO \1 …", sql)
    sql = re.sub(r"^UPDATE (\S+) SET .*? WHERE", r"UPDATE \1 SET … WHERE", sql)
    return sql if len(sql) <= 160 else sql[:157] + "..."


@dataclass(frozen=True)
class Statements:
    """What one request asked of PostgreSQL."""

    round_trips: int
    statements: list[str]  # in order, BEGIN/COMMIT/ROLLBACK included
    parses: int
    connections: int

    def count(self, *words: str) -> int:
        return sum(1 for s in self.statements if s.split(" ", 1)[0].upper() in words)


def of_events(events: list[Event]) -> Statements:
    statements = [shorten(e.sql) for e in events if e.kind in ("query", "execute")]
    return Statements(
        round_trips=sum(1 for e in events if e.kind == "ready"),
        statements=statements,
        parses=sum(1 for e in events if e.kind == "parse"),
        connections=len({e.connection for e in events}),
    )


def request_kinds(base: str, headers: dict[str, str], number: int) -> dict[str, requests.Request]:
    seed = seed_id(number)
    body = {"title": "counted", "priority": "high", "tags": ["load", "work"],
            "due_at": "2026-03-01T09:00:00Z"}  # fmt: skip
    return {
        "create": requests.Request("POST", f"{base}/tasks", headers, json=body),
        "get": requests.Request("GET", f"{base}/tasks/{seed}", headers),
        "list": requests.Request("GET", f"{base}/tasks?status=open", headers),
        "complete": requests.Request("POST", f"{base}/tasks/{seed}/complete", headers),
    }


WARM_SEEDS = 16


def count_statements(app: str, template: str, env: dict[str, str]) -> dict[str, Statements]:
    """Each request type through a wire tap: warmed up (pool filled, statements past
    psycopg's prepare threshold of 5), then one request of each, alone."""
    database = f"{PREFIX}_{app}_count"
    copy_of(template, database)
    tap = WireTap((PG_HOST, PG_PORT))
    session = requests.Session()
    found: dict[str, Statements] = {}
    try:
        plain = "?sslmode=disable&gssencmode=disable"
        with serving(app, database, env, tap.port, plain) as server:
            headers = {"Authorization": f"Bearer {token(1)}"}
            # One kept-alive connection: one worker, whose statements pass the threshold.
            for number in range(1, WARM_SEEDS * USERS, USERS):  # tasks of user 1
                for kind, request in request_kinds(server.base, headers, number).items():
                    answer = session.send(request.prepare(), timeout=30)
                    if answer.status_code >= 300:
                        raise RuntimeError(f"{app} {kind}: {answer.status_code} {answer.text}")
            tap.wait_idle()
            for kind, request in request_kinds(
                server.base, headers, WARM_SEEDS * USERS + 1
            ).items():
                mark = tap.mark()
                session.send(request.prepare(), timeout=30).raise_for_status()
                if not tap.wait_idle():
                    raise RuntimeError(f"{app} {kind}: the database did not go idle: {tap.state()}")
                found[kind] = of_events(tap.since(mark))
    finally:
        tap.close()
        drop(database)
    return found


def token(index: int) -> str:
    return issue_local_token(user(index), Settings(duetide_jwt_secret=SECRET))


# --- the profile ----------------------------------------------------------------------------


def profile(
    app: str, template: str, env: dict[str, str], script: Path, folder: Path
) -> dict[str, Any]:
    """py-spy on both processes of `app` for PROFILE_S seconds while the mix runs: the
    summary, and `requests`, those answered while py-spy ran (the run's, prorated).

    `--gil`: only the thread holding the GIL is sampled, so a sample is Python running
    (or C code called with the GIL held), never a thread waiting for the database, a
    socket or the GIL; samples / (rate x seconds x processes) is the share of the time
    the GIL was held. CPU spent without the GIL (TLS in libpq, the kernel) is not in it.
    """
    database = f"{PREFIX}_{app}_profile"
    copy_of(template, database)
    spy = str(Path(sys.executable).parent / "py-spy")
    outputs = [folder / f"profile-{app}-{n}.txt" for n in range(PROCESSES)]
    try:
        with serving(app, database, env) as server:
            wrk(server.ports, script, WARMUP_S)
            with ThreadPoolExecutor(1) as background:
                running = background.submit(wrk, server.ports, script, PROFILE_S + 4)
                record = [spy, "record", "--gil", "-d", str(PROFILE_S), "--rate", str(RATE),
                          "--format", "raw"]  # fmt: skip
                spies = [
                    subprocess.Popen(
                        [*record, "--pid", str(pid), "-o", str(output)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                    for pid, output in zip(server.pids, outputs, strict=True)
                ]
                try:
                    for spied in spies:
                        if spied.wait(timeout=PROFILE_S + 60):
                            raise RuntimeError("py-spy failed")
                finally:
                    for spied in spies:
                        if spied.poll() is None:
                            spied.kill()
                            spied.wait()
                load = running.result()
    finally:
        drop(database)
    raw = "\n".join(output.read_text() for output in outputs)
    found = vars(summarize(raw, top=25, focus=("duetide", "main")))
    return dict(found, requests=round(load.requests * PROFILE_S / (PROFILE_S + 4)))


# --- each request type alone ----------------------------------------------------------------

PER_TYPE_S = int(os.environ.get("BENCH_API_MIX_PER_TYPE_SECONDS", "8"))


def per_type(app: str, template: str, env: dict[str, str], scripts: dict[str, Path],
             postmaster: int) -> dict[str, dict[str, float]]:  # fmt: skip
    """Each request type alone for PER_TYPE_S seconds on one server (after a warm-up with
    the mix): what one request of the type costs the app and the database."""
    database = f"{PREFIX}_{app}_per_type"
    copy_of(template, database)
    found: dict[str, dict[str, float]] = {}
    try:
        with serving(app, database, env) as server:
            wrk(server.ports, scripts["mix"], WARMUP_S)
            for kind in MIX:
                processes = server.processes()
                app0, pg0 = cpu_ticks(processes), postgres_cpu_ticks(postmaster)
                load = wrk(server.ports, scripts[kind], PER_TYPE_S)
                app1, pg1 = cpu_ticks(processes), postgres_cpu_ticks(postmaster)
                per = max(load.requests, 1)
                found[kind] = {
                    "requests/s": round(load.per_s),
                    "p50 ms": round(load.p50_ms, 1),
                    "app CPU ms/req": round((app1 - app0) / CLK_TCK * 1000 / per, 2),
                    "PG CPU ms/req": round((pg1 - pg0) / CLK_TCK * 1000 / per, 2),
                    "failed": load.failed,
                }
    finally:
        drop(database)
    return found


# --- the scenario ---------------------------------------------------------------------------

_DETAILS: dict[str, Any] = {}


def _ratio(runs: list[Run], system: str, other: str, value: str) -> float:
    ours = next(r for r in runs if r.system == system)
    theirs = next(r for r in runs if r.system == other)
    get = (lambda r: r.load.per_s) if value == "rps" else (lambda r: r.load.p99_ms)
    return get(ours) / get(theirs)


def run() -> list[dict[str, object]]:
    root = project_root()
    pythonpath = os.pathsep.join(str(p) for p in (root, root / "shared", root / "shared/tools"))
    folder = Path(tempfile.mkdtemp(prefix="apimix-"))  # scripts, profiles, DUETIDE_HOME
    env = dict(os.environ, PYTHONPATH=pythonpath, DUETIDE_HOME=str(folder / "home"))
    rows: list[dict[str, object]] = []
    rounds: list[list[Run]] = []
    try:
        tokens = [token(u) for u in range(1, USERS + 1)]
        script = folder / "mix.lua"
        write_lua(script, tokens)
        scripts = {"mix": script}
        for kind in MIX:
            scripts[kind] = folder / f"{kind}.lua"
            write_lua(scripts[kind], tokens, {k: 100 if k == kind else 0 for k in MIX})
        postmaster = postmaster_pid()
        print(f"api_mix: {ROUNDS} rounds of {SECONDS} s, seeding {SEEDS} tasks", flush=True)
        templates = prepare_templates(env)
        for number in range(1, ROUNDS + 1):
            order = SYSTEMS[number - 1 :] + SYSTEMS[: number - 1]  # who goes first rotates
            runs = []
            for system in order:
                print(f"round {number}/{ROUNDS}: {system} ...", flush=True)
                result = measure(system, templates, env, script, folder, postmaster)
                runs.append(result)
                rows.append(row(str(number), result))
                print(f"  {rows[-1]}", flush=True)
            rounds.append(runs)
        pairs = {
            "duetide/baseline requests/s": ("duetide", "baseline", "rps"),
            "duetide/baseline p99": ("duetide", "baseline", "p99"),
            "baseline/pgbench requests/s": ("baseline", "pgbench", "rps"),
            "duetide/pgbench requests/s": ("duetide", "pgbench", "rps"),
        }
        ratios = {name: [_ratio(r, *pair) for r in rounds] for name, pair in pairs.items()}
        _DETAILS["ratios"] = {k: [round(v, 3) for v in vs] for k, vs in ratios.items()}
        _DETAILS["median_ratios"] = {k: round(statistics.median(v), 3) for k, v in ratios.items()}
        print(f"median ratios: {_DETAILS['median_ratios']}", flush=True)
        _DETAILS["mix"] = {r.system: r.load.mix for r in rounds[-1]}  # as it came out
        print("statements per request type ...", flush=True)
        _DETAILS["statements"] = {
            app: {kind: vars(s) for kind, s in count_statements(app, templates[app], env).items()}
            for app in ("duetide", "baseline")
        }
        _DETAILS["per_type"] = {}
        for app in ("duetide", "baseline"):
            print(f"{app}: each request type alone, {PER_TYPE_S} s each ...", flush=True)
            found = per_type(app, templates[app], env, scripts, postmaster)
            _DETAILS["per_type"][app] = found
        if PROFILE:
            _DETAILS["profile"] = {}
            for app in ("duetide", "baseline"):
                print(f"profile of {app}, {PROFILE_S} s under the mix ...", flush=True)
                _DETAILS["profile"][app] = profile(app, templates[app], env, script, folder)
    finally:
        for template in TEMPLATES.values():
            drop(template)
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def details() -> dict[str, Any]:
    return _DETAILS


def _statement_tables() -> str:
    found = _DETAILS.get("statements")
    if not found:
        return ""
    out = ["Statements per request type, through a wire-protocol tap, one request of each "
           "alone after a warm-up (`BEGIN`, `COMMIT` and `ROLLBACK` included; a round trip "
           "is one `Sync` or simple query answered; `create` is with `due_at`). `;` is "
           "SQLAlchemy's `pool_pre_ping` at each checkout; psycopg forgets what it "
           "prepared at every `ROLLBACK`, with `DEALLOCATE ALL` when it had prepared "
           "some:\n"]  # fmt: skip
    for app, kinds in found.items():
        out.append(f"\n{app}:\n\n| request | round trips | statements | BEGIN | COMMIT | "
                   "ROLLBACK | in order |\n|---|---|---|---|---|---|---|")  # fmt: skip
        for kind, s in kinds.items():
            counted = Statements(**s)
            order = "<br>".join(f"`{x}`" for x in counted.statements)
            out.append(
                f"| {kind} | {counted.round_trips} | {len(counted.statements)} | "
                f"{counted.count('BEGIN')} | {counted.count('COMMIT')} | "
                f"{counted.count('ROLLBACK')} | {order} |"
            )
    return "\n".join(out)


def _per_type_table() -> str:
    found = _DETAILS.get("per_type")
    if not found:
        return ""
    lines = [
        f"Each request type alone, {PER_TYPE_S} s each on one pair of servers after a warm-up "
        "with the mix (creates keep adding tasks; completes hit seeded tasks, some twice):\n",
        "| request | app | requests/s | p50 ms | app CPU ms/req | PG CPU ms/req | failed |",
        "|---|---|---|---|---|---|---|",
    ]
    for kind in MIX:
        for app, kinds in found.items():
            r = kinds[kind]
            lines.append(
                f"| {kind} | {app} | {r['requests/s']} | {r['p50 ms']} | "
                f"{r['app CPU ms/req']} | {r['PG CPU ms/req']} | {r['failed']} |"
            )
    return "\n".join(lines)


def _profile_tables() -> str:
    found = _DETAILS.get("profile")
    if not found:
        return ""
    ours = found["duetide"]

    def ms(count: int, app: str) -> float:
        """GIL-held milliseconds per request answered."""
        return count / RATE * 1000 / max(found[app]["requests"], 1)

    def listing(entries: list[tuple[str, int]]) -> str:
        return "\n".join(
            f"| {name} | {count / max(ours['samples'], 1):.1%} | {ms(count, 'duetide'):.2f} |"
            for name, count in entries
        )

    by_package = {app: dict(summary["own_by_package"]) for app, summary in found.items()}
    names = sorted(
        set(by_package["duetide"]) | set(by_package["baseline"]),
        key=lambda n: -max(ms(by_package[a].get(n, 0), a) for a in found),
    )
    packages = "\n".join(
        f"| {name} | {ms(by_package['duetide'].get(name, 0), 'duetide'):.2f} | "
        f"{ms(by_package['baseline'].get(name, 0), 'baseline'):.2f} |"
        for name in names
        if max(ms(by_package[a].get(name, 0), a) for a in found) >= 0.01
    )
    totals = " | ".join(f"{ms(found[a]['samples'], a):.2f}" for a in ("duetide", "baseline"))
    held = ", ".join(
        f"{app} {summary['samples'] / (RATE * PROFILE_S * PROCESSES):.0%}"
        for app, summary in found.items()
    )
    heading = "| share | GIL ms/req |\n|---|---|---|\n"
    return (
        f"Profile: `py-spy record --gil` at {RATE} Hz on both processes of each app for "
        f"{PROFILE_S} s under the mix: samples of the thread holding the GIL (Python, and the "
        "C it calls with the GIL held; not TLS in libpq, not the kernel), so wall time with "
        "the GIL held, which on this busy machine includes a holder's waits for a core. The "
        f"GIL was held {held} of the time. `GIL ms/req`: that time per request answered "
        f"meanwhile ({ours['requests']} and {found['baseline']['requests']} requests).\n\n"
        "| own time by package, GIL ms/req | duetide | baseline |\n|---|---|---|\n"
        + packages + f"\n| all | {totals} |\n\n"
        "| duetide: own time, by function " + heading + listing(ours["own"]) + "\n\n"
        "| duetide: total time (with callees), by function " + heading
        + listing(ours["total"]) + "\n\n"
        "| duetide: total time of its own functions " + heading + listing(ours["total_in"])
    )  # fmt: skip


def describe() -> str:
    medians = _DETAILS.get("median_ratios", {})
    summary = ", ".join(f"{k} {v}" for k, v in medians.items())
    return "\n\n".join(
        part
        for part in (
            (__doc__ or "").strip(),
            f"Load: per server process, `wrk -t1 -c{CLIENTS // PROCESSES} -d{SECONDS}s` with a "
            "Lua script for the mix (their latency histograms merged), on servers started for "
            f"the run after a {WARMUP_S} s warm-up of others on the same database; pgbench with "
            f"`-c{CLIENTS} -j{WRK_THREADS} -T{SECONDS} -M prepared` and the mix as weighted "
            f"scripts ({', '.join(f'{k} {v}%' for k, v in MIX.items())}), one statement each. "
            f"{ROUNDS} rounds; who goes first rotates. Per round ratios, and their medians: "
            f"{summary or 'n/a'}.",
            "What the figures mean: the machine has 2 cores, shared by wrk (or pgbench), the "
            "app's 2 processes and PostgreSQL, and by whatever else runs on it (see the load "
            "average), so requests/s is what this box sustains with everything on it, not a "
            "server's capacity; compare within a round and use the ratios. `app CPU ms/req` is "
            "the app's processes' user+system time over the run divided by the "
            "requests answered: the cost of a request in the app, which does not depend on "
            "how busy the machine is as much. `PG CPU ms/req` is the whole PostgreSQL "
            "server's (its other databases' work included), `commits/req`, `rollbacks/req` "
            "and `PG sessions` (connections opened during the measured run) come from "
            "pg_stat_database for the run's own database; a statement sent outside a "
            "transaction counts as a commit there (duetide's pings, psycopg's "
            "`DEALLOCATE ALL`). `failed`: non-2xx answers and "
            "socket errors (they must be 0).",
            _per_type_table(),
            _statement_tables(),
            _profile_tables(),
        )
        if part
    )
