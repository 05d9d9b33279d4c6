"""The `duetide` command: run the local stack, one function, migrations, tokens."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

FUNCTIONS = ("tasks", "recurrence", "sweep", "notify")


def _home() -> Path:
    from duetide.config import get_settings

    return get_settings().duetide_home


def cmd_up(args: argparse.Namespace) -> int:
    from duetide.auth import issue_local_token
    from duetide.config import get_settings
    from duetide.local.stack import Stack, StackError, project_root

    settings = get_settings()
    interval = os.environ.get("DUETIDE_PING_INTERVAL")
    stack = Stack(
        root=project_root(),
        home=settings.duetide_home,
        port=args.port,
        ping_interval_s=float(interval) if interval else None,
        database_url=settings.database_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        echo=not args.quiet,
    )
    stopping = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    started = time.monotonic()
    try:
        settings.jwt_secret()  # generated once, before the functions read it
        stack.start()
        token = issue_local_token(args.user)
        print(_banner(stack, token, args.user, time.monotonic() - started), flush=True)
        stopping.wait()
        print("duetide: stopping", flush=True)
        return 0
    except StackError as exc:
        print(f"duetide: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        stack.stop()


def _banner(stack, token: str, user: str, seconds: float) -> str:  # type: ignore[no-untyped-def]
    lines = [f"duetide is up in {seconds:.1f} s", ""]
    lines += [f"  {name:<11} {child.url}" for name, child in stack.functions.items()]
    lines += [
        f"  {'broker':<11} {stack.bootstrap_servers}",
        f"  {'database':<11} {stack.database_url}",
        f"  {'logs':<11} {stack.logs}",
        "",
        f"  token for user {user!r}:",
        f"  export DUETIDE_TOKEN={token}",
        "",
        f'  curl -H "Authorization: Bearer $DUETIDE_TOKEN" {stack.functions["tasks"].url}/tasks',
        "",
        "Ctrl-C stops everything.",
    ]
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    """One function alone under functions-framework: the local `func run`."""
    from duetide.local.stack import project_root

    source = project_root() / "functions" / args.function / "main.py"
    command = [
        sys.executable, "-m", "functions_framework",
        "--source", str(source), "--target", args.function,
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    if args.debug:
        command.append("--debug")
    os.execv(sys.executable, command)
    return 0  # not reached


def cmd_token(args: argparse.Namespace) -> int:
    from duetide.auth import issue_local_token

    print(issue_local_token(args.user))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from duetide import migrate

    migrate.upgrade()
    print("database is at the newest schema")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from duetide.events import json_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, schema in json_schemas().items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(json_schemas())} schemas to {out}")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="duetide", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole system locally (Ctrl-C stops it)")
    up.add_argument("--port", type=int, default=8080, help="port of the tasks API (8080)")
    up.add_argument("--user", default="me", help="user of the printed token (me)")
    up.add_argument("--quiet", action="store_true", help="do not echo function logs")
    up.set_defaults(func=cmd_up)
    run = sub.add_parser("run", help="run one function under functions-framework")
    run.add_argument("function", choices=FUNCTIONS)
    run.add_argument("--port", type=int, default=8080)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=cmd_run)
    token = sub.add_parser("token", help="print a local bearer token for USER")
    token.add_argument("user")
    token.set_defaults(func=cmd_token)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    schemas = sub.add_parser("schemas", help="write the JSON Schema of each event type")
    schemas.add_argument("--out", default="docs/events")
    schemas.set_defaults(func=cmd_schemas)
    return root


def main(argv: list[str] | None = None) -> int:
    from duetide.config import ConfigError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"duetide: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
