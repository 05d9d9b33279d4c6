"""The `duetide` command: run the local stack, one function, migrations, tokens, dead letters;
and the client of the tasks API (task, series, notifications, login)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the commands import what they need when they run
    from duetide_tools.local.stack import Stack
    from duetide_tools.manifests import Wiring

FUNCTIONS = ("tasks", "recurrence", "sweep", "notify", "activity")


def _home() -> Path:
    from duetide.config import get_settings

    return get_settings().duetide_home


def cmd_up(args: argparse.Namespace) -> int:
    from duetide.config import LOCAL_SYSTEM, get_settings
    from duetide.web.auth import issue_local_token
    from duetide_tools.local import running
    from duetide_tools.local.stack import Stack, StackError, StartCancelled, project_root
    from duetide_tools.manifests import ManifestError

    settings = get_settings()
    steps = _Steps()
    stack = Stack(
        root=project_root(),
        home=settings.duetide_home,
        port=args.port,
        ping_interval_s=settings.duetide_ping_interval,
        database_url=settings.database_url,
        bootstrap_servers=settings.kafka_bootstrap_servers,
        echo=not args.quiet,
        progress=None if args.quiet else steps.show,
    )
    stopping = threading.Event()
    fatal: list[str] = []

    def request_stop() -> None:
        stack.request_stop()  # a start under way gives up at its next step
        stopping.set()

    def stop_for(reason: str) -> None:
        fatal.append(reason)
        request_stop()

    stack.on_fatal = stop_for

    def on_signal(signum: int, _frame: object) -> None:
        # Event.set takes the lock that the interrupted main thread may hold (inside an
        # Event.wait); setting it from another thread cannot deadlock.
        threading.Thread(target=request_stop, name="duetide-stop", daemon=True).start()

    stop_on_signals(on_signal)
    started = time.monotonic()
    code = 0
    record: Path | None = None
    try:
        settings.jwt_secret()  # generated once, before the functions read it
        # likewise the local system's command key (hs256 mode without DUETIDE_COMMAND_KEYS)
        generated = LOCAL_SYSTEM in settings.command_keys() and not settings.duetide_command_keys
        stack.start()
        record = _record(settings.duetide_home, args.port, bool(settings.duetide_jwt_secret))
        token = issue_local_token(args.user)
        local_key = settings.duetide_home / "command-key" if generated else None
        seconds = time.monotonic() - started
        print(_banner(stack, token, args.user, seconds, local_key), flush=True)
        stopping.wait()
        with contextlib.suppress(OSError):  # the terminal that was closed (EIO)
            print("duetide: stopping", flush=True)
        code = 1 if fatal else 0
    except StartCancelled:
        with contextlib.suppress(OSError):
            steps.end_line()
            print("duetide: stopping before the start finished", flush=True)
        code = 130
    except (StackError, ManifestError) as exc:
        steps.end_line()
        print(f"duetide: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        if record is not None:
            running.forget(record)
        stack.stop()
    # Everything `up` owns has stopped; tearing the interpreter down (Kafka clients,
    # SQLAlchemy, thousands of objects) would add about half a second to Ctrl-C.
    with contextlib.suppress(OSError):  # a closed terminal: the exit code still counts
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def stop_on_signals(handler: Callable[[int, Any], None]) -> None:
    """`handler` for SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal was closed: left
    to its default, `up` died at once, its children by the parent-death signal, and no
    clean stop was recorded); a signal ignored already (`nohup`) stays ignored."""
    for name in ("SIGTERM", "SIGINT", "SIGHUP"):
        number = getattr(signal, name, None)  # no SIGHUP on Windows
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, handler)


def _record(home: Path, port: int, secret_from_env: bool) -> Path | None:
    """Where `duetide token` in another shell finds this stack's secret; a folder that
    cannot be written costs that convenience only."""
    from duetide_tools.local import running

    try:
        return running.record(home, port, secret_from_env=secret_from_env)
    except OSError as exc:
        print(f"duetide: `duetide token` will not find this stack: {exc}", file=sys.stderr)
        return None


class _Steps:
    """The start steps of `up` on the console: "duetide: creating 6 topics ... 0.1 s"."""

    def __init__(self) -> None:
        self.open = False

    def show(self, what: str, seconds: float | None) -> None:
        if seconds is None:
            print(f"duetide: {what} ...", end="", flush=True)
            self.open = True
        else:
            print(f" {seconds:.1f} s", flush=True)
            self.open = False

    def end_line(self) -> None:
        """Finish a step's line that an error or Ctrl-C interrupted."""
        if self.open:
            print(flush=True)
            self.open = False


def _url_line(url: str) -> list[str]:
    """The `duetide` client's URL, when it is not the one the client takes by default:
    on another port every command was "connection refused" at 8080 (an audit, 2026-12-07)."""
    from duetide_tools.client.config import DEFAULT_URL

    return [] if url.rstrip("/") == DEFAULT_URL else [f"  export DUETIDE_URL={url}"]


def _banner(
    stack: Stack, token: str, user: str, seconds: float, local_key: Path | None = None
) -> str:
    from duetide_tools.local.stack import shown_database

    lines = [f"duetide is up in {seconds:.1f} s", ""]
    lines += [f"  {name:<11} {child.url}" for name, child in stack.functions.items()]
    lines += [
        f"  {'broker':<11} {stack.bootstrap_servers}",
        f"  {'database':<11} {shown_database(stack.database_url)}",
        f"  {'logs':<11} {stack.logs}",
        "",
        f"  token for user {user!r} (`duetide token USER` makes more):",
        f"  export DUETIDE_TOKEN={token}",
        *_url_line(stack.functions["tasks"].url),
        "",
        f'  curl -H "Authorization: Bearer $DUETIDE_TOKEN" {stack.functions["tasks"].url}/tasks',
        "",
    ]
    if local_key is not None:
        lines += [
            "  commands on duetide-commands: sign them as system 'local' with the key in",
            f"  {local_key} (README, Commands from other systems)",
            "",
        ]
    if stack.broker is not None:
        lines += [
            "  your consumer groups join in ~3 s, not ~23, with session.timeout.ms=6000 and "
            "heartbeat.interval.ms=2000 (README)",
            "",
        ]
    lines.append("Ctrl-C stops everything.")
    return "\n".join(lines)


def cmd_run(args: argparse.Namespace) -> int:
    """One function alone, served as in the image (`--debug`: Flask's development server
    through functions-framework): the local `func run`."""
    from duetide_tools.local.stack import project_root

    source = project_root() / "functions" / args.function / "main.py"
    server = "functions_framework" if args.debug else "duetide.web.serve"
    command = [
        sys.executable, "-m", server,
        "--source", str(source), "--target", args.function,
        "--host", args.host, "--port", str(args.port),
    ]  # fmt: skip
    if args.debug:
        command.append("--debug")
    os.execv(sys.executable, command)
    return 0  # not reached


def cmd_token(args: argparse.Namespace) -> int:
    """A token signed with the secret of the stack the user talks to (never a new one)."""
    from duetide.config import get_settings
    from duetide.web.auth import issue_local_token, usable_user_id
    from duetide_tools.local import running, token_secret

    settings = get_settings()
    if not settings.duetide_jwt_secret:
        try:
            path = token_secret.locate(
                os.environ.get("DUETIDE_HOME"), settings.duetide_home, running.live()
            )
        except token_secret.SecretNotFound as exc:
            print(f"duetide: {exc}", file=sys.stderr)
            return 1
        try:
            secret = path.read_text().strip()
        except (OSError, UnicodeError) as exc:
            print(f"duetide: cannot read the token secret {path}: {exc}", file=sys.stderr)
            return 1
        if not secret:
            print(f"duetide: the token secret {path} is empty", file=sys.stderr)
            return 1
        settings = settings.model_copy(update={"duetide_jwt_secret": secret})
    if not usable_user_id(args.user) or args.user != args.user.strip():
        # the API's own rule: a 300-character user's token was made, and refused (401)
        print(
            "duetide: the user must be 1 to 255 printable characters, without spaces at either end",
            file=sys.stderr,
        )
        return 2
    print(issue_local_token(args.user, settings))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    from duetide.storage import migrate

    try:
        migrate.upgrade()
    except migrate.SchemaNewer as newer:
        print(f"duetide: {newer}")
        return 0
    print("database is at the newest schema")
    return 0


def cmd_schemas(args: argparse.Namespace) -> int:
    from duetide.web.asyncapi import message_schemas

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schemas = message_schemas()
    for name, schema in schemas.items():
        (out / f"{name}.json").write_text(json.dumps(schema, indent=2) + "\n")
    print(f"wrote {len(schemas)} schemas to {out}")
    return 0


def asyncapi_text() -> str:
    """The event catalog as committed (docs/asyncapi.json): the manifests' topic names."""
    from duetide.web.asyncapi import document

    return json.dumps(document(), indent=2) + "\n"


def cmd_asyncapi(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(asyncapi_text())
    print(f"wrote the AsyncAPI document to {out}")
    return 0


def _bootstrap_servers() -> str:
    from duetide.config import ConfigError, get_settings

    servers = get_settings().kafka_bootstrap_servers
    if not servers:
        raise ConfigError(
            "KAFKA_BOOTSTRAP_SERVERS is not set: point it at the Kafka cluster that holds "
            "the dead-letter topic (`duetide up` prints the local broker's address)"
        )
    return servers


def cmd_deadletters(args: argparse.Namespace) -> int:
    """List dead letters (no payloads), or replay them onto the topic they came from."""
    from kafka.errors import KafkaError

    from duetide_tools import deadletters

    servers = _bootstrap_servers()
    try:
        if args.action == "list":
            listed = False
            for letter in deadletters.read(servers, args.topic, args.limit):
                print(letter.line())
                listed = True
            if not listed:  # it printed nothing at all, as a command that had not run
                print(f"duetide: no dead letters on {args.topic}", file=sys.stderr)
        else:
            _replay(servers, args)
    except BrokenPipeError:  # `duetide deadletters list | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except deadletters.DeadLetterError as exc:
        print(f"duetide: {exc}", file=sys.stderr)
        return 1
    except KafkaError as exc:
        print(f"duetide: Kafka at {servers}: {exc!r}", file=sys.stderr)
        return 1
    return 0


def _replay(servers: str, args: argparse.Namespace) -> None:
    from duetide_tools import deadletters

    wiring = None if args.to else _wiring()
    replayed = deadletters.replay(servers, args.topic, event_id=args.id, to=args.to, wiring=wiring)
    count = 0
    for letter, topic in replayed:
        print(f"replayed {letter.line()} to={topic}", flush=True)
        count += 1
    if args.id is not None and not count:
        raise deadletters.DeadLetterError(f"no dead letter with id {args.id!r} on {args.topic}")


def _wiring() -> Wiring:
    """The KafkaSources of knative/, which map a dead letter's destination to its topic."""
    from duetide_tools import manifests
    from duetide_tools.deadletters import DeadLetterError
    from duetide_tools.local.stack import StackError, project_root

    try:
        return manifests.load(project_root())
    except (StackError, manifests.ManifestError) as exc:
        raise DeadLetterError(f"cannot read the KafkaSources ({exc}); pass --to TOPIC") from None


def cmd_outbox(args: argparse.Namespace) -> int:
    """Send events again that a broker acknowledged and then lost (DATABASE_URL)."""
    from sqlalchemy import make_url

    from duetide.config import get_settings
    from duetide.storage import outbox

    url = make_url(get_settings().effective_database_url)
    if url.get_backend_name() == "sqlite" and not Path(url.database or "").is_file():
        # SQLite would make an empty database there (in the default home, for a stack
        # run with another) and then say "no such table: outbox"
        print(
            f"duetide: no duetide database at {url.database}: set DUETIDE_HOME (the one "
            "`duetide up` runs with) or DATABASE_URL",
            file=sys.stderr,
        )
        return 1
    count = outbox.requeue_sent_since(args.since)
    print(f"requeued {count} events sent since {args.since.isoformat()}; the next sweep sends them")
    return 0


def _instant(text: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError("an ISO 8601 instant, e.g. 2026-12-01T09:00Z") from None
    if value.tzinfo is None:
        raise argparse.ArgumentTypeError("needs an offset or Z: the outbox stores UTC")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise argparse.ArgumentTypeError("before year 1 or after 9999 in UTC") from None


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a whole number, 1 or more") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be 1 or more")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("a port number, 1 to 65535") from None
    if not 1 <= value <= 65535:  # 99999 was served on 99999 mod 65536
        raise argparse.ArgumentTypeError("a port number, 1 to 65535")
    return value


LIST_LIMIT = 1000
"""`deadletters list` shows the newest this many unless told otherwise: the whole of a topic
of 600,000 letters took 1.3 GB and 26 s before the first line."""


def _add_deadletters(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from duetide_tools.deadletters import DEFAULT_TOPIC

    dead = sub.add_parser(
        "deadletters", help="list or replay dead letters (KAFKA_BOOTSTRAP_SERVERS)"
    )
    actions = dead.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="one line per dead letter, without payloads")
    listing.add_argument("--topic", default=DEFAULT_TOPIC, help=f"({DEFAULT_TOPIC})")
    listing.add_argument(
        "--limit",
        type=_positive,
        default=LIST_LIMIT,
        help=f"the newest N ({LIST_LIMIT}): the letters are read into memory",
    )
    replay = actions.add_parser(
        "replay", help="re-produce dead letters (same ce_id) onto their original topic"
    )
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", help="the CloudEvent id of the dead letter to replay")
    which.add_argument("--all", action="store_true", help="every distinct dead letter")
    replay.add_argument(
        "--to", help="target topic (default: the KafkaSource topic of knativeerrordest)"
    )
    replay.add_argument(
        "--topic", default=DEFAULT_TOPIC, help=f"dead-letter topic ({DEFAULT_TOPIC})"
    )
    dead.set_defaults(func=cmd_deadletters)


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="duetide", description=__doc__)
    sub = root.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="run the whole system locally (Ctrl-C stops it)")
    up.add_argument("--port", type=_port, default=8080, help="port of the tasks API (8080)")
    up.add_argument("--user", default="me", help="user of the printed token (me)")
    up.add_argument(
        "--quiet", action="store_true", help="print neither the start steps nor function logs"
    )
    up.set_defaults(func=cmd_up)
    run = sub.add_parser("run", help="run one function as the image serves it")
    run.add_argument("function", choices=FUNCTIONS)
    run.add_argument("--port", type=_port, default=8080)
    run.add_argument("--host", default="127.0.0.1")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=cmd_run)
    token = sub.add_parser(
        "token",
        help="print a local bearer token for USER, signed with DUETIDE_JWT_SECRET, else the "
        "secret of DUETIDE_HOME, else of the running `duetide up` (README, Command line)",
    )
    token.add_argument("user")
    token.set_defaults(func=cmd_token)
    sub.add_parser("migrate", help="apply database migrations").set_defaults(func=cmd_migrate)
    schemas = sub.add_parser(
        "schemas",
        help="write the JSON Schema of each event and command type's data (generated: "
        "docs/events is not kept in the repository)",
    )
    schemas.add_argument("--out", default="docs/events")
    schemas.set_defaults(func=cmd_schemas)
    catalog = sub.add_parser(
        "asyncapi", help="write the event catalog (AsyncAPI 3.0) the tasks API serves"
    )
    catalog.add_argument("--out", default="docs/asyncapi.json")
    catalog.set_defaults(func=cmd_asyncapi)
    _add_deadletters(sub)
    box = sub.add_parser("outbox", help="operate the transactional outbox (DATABASE_URL)")
    box_actions = box.add_subparsers(dest="action", required=True)
    requeue = box_actions.add_parser(
        "requeue", help="send again the events sent since an instant (a broker lost them)"
    )
    requeue.add_argument("--since", type=_instant, required=True, help="ISO 8601 with offset")
    box.set_defaults(func=cmd_outbox)
    from duetide_tools.client import commands as client

    client.register(sub)
    return root


def main(argv: list[str] | None = None) -> int:
    from duetide.config import ConfigError

    args = parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"duetide: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command handles it: no traceback
        print(file=sys.stderr)
        return 130
    except Exception as exc:  # a database away, a file in the way, or a bug
        if os.environ.get("DUETIDE_DEBUG"):
            raise
        print(f"duetide: {_one_line(exc)} (DUETIDE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


def _one_line(exc: Exception) -> str:
    """What went wrong, in one line, without what the exception may quote: a header
    check quotes the token it refused, so only errors known to say no secret speak.
    SQLAlchemy hides the password of the URL in what it says."""
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        cause = getattr(exc, "orig", None) or exc
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        return f"database error: {type(cause).__name__}: {first}"[:500]
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}:{where}" if where else exc.strerror
    return f"unexpected {type(exc).__name__}"


if __name__ == "__main__":
    sys.exit(main())
