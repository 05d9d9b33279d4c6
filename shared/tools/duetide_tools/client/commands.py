"""The client's subcommands of `duetide`, each declared once: arguments, then handler.

`register(sub)` adds `task`, `series`, `notifications` and `login` to the `duetide`
parser. Every handler gets the parsed arguments, an `Api` and the zone to read and show
times in, and returns an exit code; `_run` maps the client's errors to 1 (the API or the
network) and 2 (usage, as argparse).
"""

from __future__ import annotations

import argparse
import base64
import getpass
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, tzinfo
from typing import TYPE_CHECKING, Any, get_args
from urllib.parse import quote

from duetide.services.schemas import MAX_PAGE, TaskQuery
from duetide.vocabulary import PRIORITIES, TaskStatus
from duetide_tools.client import config, every, tables, when
from duetide_tools.client.errors import ApiError, ClientError, UsageError
from duetide_tools.client.transport import Api

if TYPE_CHECKING:
    SubParsers = argparse._SubParsersAction[argparse.ArgumentParser]

Handler = Callable[[argparse.Namespace, Api, tzinfo], int]
FORECAST = 5
STATUSES = get_args(TaskStatus)
SORTS = get_args(TaskQuery.model_fields["sort"].annotation)


def _run(handler: Handler) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            zone, _ = when.local_zone(args.tz)
            found = config.target()
            return handler(args, Api(found.url, found.token), zone)
        except UsageError as exc:
            return _fail(str(exc), 2)
        except ApiError as exc:
            if exc.status == 401:
                exc.message += " (check DUETIDE_TOKEN, or run `duetide login`)"
            return _fail("\n".join(exc.lines()), 1)
        except ClientError as exc:
            return _fail(str(exc), 1)
        except BrokenPipeError:  # `duetide task ls | head`: the reader has gone
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1

    return run


def _fail(message: str, code: int) -> int:
    print(f"duetide: {tables.terminal_text(message)}", file=sys.stderr)
    return code


def _emit(args: argparse.Namespace, answer: Any, human: Callable[[], str]) -> int:
    """The API's JSON with --json, else the readable form."""
    if args.json:
        print(json.dumps(answer, indent=2, ensure_ascii=False))
    else:
        print(tables.terminal_text(human()))
    return 0


def _id(value: str) -> str:
    """An id as one path segment: `../x` must not reach another route."""
    return quote(value, safe="")


def _now() -> datetime:
    return datetime.now(UTC)


# task -------------------------------------------------------------------------------


def task_add(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    body: dict[str, Any] = {"title": args.title}
    if args.due is not None:
        read = when.due if args.every is None else when.due_as_written
        body["due_at"] = read(args.due, _now(), zone).isoformat()
    elif args.every is not None or args.remind:
        raise UsageError("--every and --remind need --due (the first occurrence's time)")
    if args.every is not None:
        if not args.every.strip():  # `--every "$RULE"` unset made a one-off task, silently
            raise UsageError("--every is empty: give a rule such as daily or 'every 2 weeks'")
        _, name = when.local_zone(args.tz)
        if name is None:  # it was UTC, silently: 09:00 local became 09:00 UTC
            raise UsageError(
                "a recurring task's series needs an IANA time zone, and the system's has no "
                "such name (TZ is a POSIX rule?): give --tz, e.g. --tz Europe/Berlin"
            )
        body["recurrence"] = every.recurrence(args.every, name)
    if args.remind:
        offsets = [when.iso_duration(when.duration(text)) for text in args.remind]
        body["reminders"] = [{"before_due": offset} for offset in offsets]
    if args.tag:
        body["tags"] = args.tag
    if args.priority:
        body["priority"] = args.priority
    if args.note:
        body["description"] = args.note
    task = api.create("/tasks", body)
    if "recurrence" in body:  # after the answer: said of a rule the API refused too
        on_rule = every.first_on_rule(body["recurrence"], datetime.fromisoformat(body["due_at"]))
        if on_rule is not None:
            print(
                f"duetide: note: the due time is not one the rule gives; the series starts "
                f"there and then follows the rule, next {tables.when(on_rule.isoformat(), zone)}",
                file=sys.stderr,
            )
    return _emit(args, task, lambda: _task_with_reminders(task, zone))


def _task_with_reminders(task: dict[str, Any], zone: tzinfo) -> str:
    lines = [tables.task_line(task, zone)]
    for reminder in task.get("reminders") or []:
        offset = reminder.get("before_due")
        before = f" ({when.short(when.duration(offset))} before due)" if offset else ""
        lines.append(f"  reminder {tables.when(reminder.get('fire_at'), zone)}{before}")
    return "\n".join(lines)


def task_ls(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    now = _now()
    query = {
        "tag": args.tag,
        "status": args.status,
        "priority": args.priority,
        "series_id": args.series,
        "q": args.search,
        "due_before": _instant(args.due_before, now, zone),
        "due_after": _instant(args.due_after, now, zone),
        "sort": args.sort,
        "order": "desc" if args.desc else None,
        "limit": args.limit,
        "cursor": args.cursor,
    }
    page = api.page("/tasks", query)
    return _emit(args, page, lambda: _page(page, tables.tasks(page["items"], zone), "tasks"))


def _instant(text: str | None, now: datetime, zone: tzinfo) -> str | None:
    return None if text is None else when.due(text, now, zone).isoformat()


def _page(page: dict[str, Any], shown: str, what: str) -> str:
    if not page["items"]:
        return f"no {what}"
    if page.get("next_cursor"):
        shown += f"\n(more {what}: add --cursor {page['next_cursor']})"
    return shown


def task_done(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    task = api.post(f"/tasks/{_id(args.id)}/complete")
    return _emit(args, task, lambda: tables.task_line(task, zone))


def task_reopen(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    task = api.post(f"/tasks/{_id(args.id)}/reopen")
    return _emit(args, task, lambda: tables.task_line(task, zone))


def task_rm(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    """A one-off task is deleted (204); a series' open occurrence is skipped (200)."""
    # A 204 has no answer: a script reading --json got nothing at all.
    answer = api.delete(f"/tasks/{_id(args.id)}") or {"id": args.id, "outcome": "deleted"}

    def human() -> str:
        if "series" not in answer:
            return f"deleted {args.id}"
        following = answer.get("open_occurrence")
        line = f"{answer['outcome']} {args.id} (series {answer['series']['id']})"
        return line + (f"\nnext: {tables.task_line(following, zone)}" if following else "")

    return _emit(args, answer, human)


# series -----------------------------------------------------------------------------


def series_ls(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    page = api.page("/series", {"limit": args.limit, "cursor": args.cursor})
    return _emit(args, page, lambda: _page(page, tables.series(page["items"], zone), "series"))


def series_show(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    found = api.get(f"/series/{_id(args.id)}")
    if args.json:
        return _emit(args, found, str)
    query = {"series_id": found["id"], "status": "open", "limit": 1}
    open_one = next(iter(api.page("/tasks", query)["items"]), None)
    upcoming: list[str] = []
    if found["status"] == "active":
        # The forecast starts at the open occurrence (at its due time), if there is one:
        # filtered by the latest scheduled time, a moved one was listed twice.
        count = FORECAST + (open_one is not None)
        answer = api.page(f"/series/{_id(args.id)}/occurrences", {"count": count}, of=str)
        upcoming = answer["items"][1:] if open_one is not None else answer["items"]
    print(tables.terminal_text(tables.series_detail(found, open_one, upcoming, zone)))
    return 0


def _series_action(action: str) -> Handler:
    def handle(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
        found = api.post(f"/series/{_id(args.id)}/{action}")
        return _emit(args, found, lambda: tables.series([found], zone))

    handle.__doc__ = f"POST /series/ID/{action}"
    return handle


def series_end(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    api.delete(f"/series/{_id(args.id)}")  # 204: the --json answer is made here
    ended = {"id": args.id, "outcome": "ended"}
    return _emit(args, ended, lambda: f"ended {args.id} (its history is kept)")


# notifications ----------------------------------------------------------------------


def notifications(args: argparse.Namespace, api: Api, zone: tzinfo) -> int:
    page = api.page("/notifications", {"limit": args.limit, "cursor": args.cursor})
    shown = tables.notifications(page["items"], zone)
    return _emit(args, page, lambda: _page(page, shown, "notifications"))


# login ------------------------------------------------------------------------------


def login(args: argparse.Namespace) -> int:
    """Ask for (or take) the URL and the token, check them with one authenticated read,
    and only then save them."""
    try:
        url, token = _login_answers(args)
        Api(url, token).get("/tasks", {"limit": 1})
        path = config.save(url, token)
    except UsageError as exc:
        return _fail(str(exc), 2)
    except ApiError as exc:
        if exc.status == 401:
            return _fail(f"the API at {url} refused the token ({exc.message}); nothing saved", 1)
        return _fail("\n".join(exc.lines()), 1)
    except ClientError as exc:
        return _fail(str(exc), 1)
    if args.json:
        print(json.dumps({"url": url, "user": _subject(token), "config": str(path)}, indent=2))
    else:
        who = _subject(token)
        print(f"logged in to {url}{f' as {who}' if who else ''}; saved in {path} (mode 0600)")
    if os.environ.get("DUETIDE_TOKEN") or os.environ.get("DUETIDE_URL"):
        print("note: DUETIDE_URL / DUETIDE_TOKEN in the environment win over it", file=sys.stderr)
    return 0


def _login_answers(args: argparse.Namespace) -> tuple[str, str]:
    interactive = sys.stdin.isatty()
    url = args.url
    token = args.token
    try:
        if url is None:
            default = os.environ.get("DUETIDE_URL") or _saved_url() or config.DEFAULT_URL
            url = (input(f"API URL [{default}]: ").strip() if interactive else "") or default
        if token is None or token == "-":
            token = getpass.getpass("token: ") if interactive else sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        raise UsageError("login cancelled; nothing saved") from None
    token = token.strip()
    if not token:
        raise UsageError("no token given: `scripts/up` prints one (DUETIDE_TOKEN=...)")
    return config.checked_url(url).rstrip("/"), config.checked_token(token)


def _saved_url() -> str | None:
    """The saved URL as login's default; none from a damaged file, which login is there
    to replace (it refused to, naming the file and saying to run login again)."""
    try:
        return config.saved().get("url")
    except UsageError:
        print(f"duetide: {config.config_path()} cannot be read: replacing it", file=sys.stderr)
        return None


def _subject(token: str) -> str | None:
    """The `sub` claim of a JWT, unverified (the server verified it): who is logged in."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return str(claims["sub"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


# declarations -----------------------------------------------------------------------


def _page_size(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("must be a whole number") from None
    if not 1 <= value <= MAX_PAGE:
        raise argparse.ArgumentTypeError(f"must be from 1 to {MAX_PAGE}")
    return value


def _common() -> argparse.ArgumentParser:
    """--json and --tz, which every client command takes."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print the API's JSON answer")
    common.add_argument(
        "--tz", metavar="ZONE", help="IANA zone to read and show times in (the system's)"
    )
    return common


def _paged(parser: argparse.ArgumentParser, default: int = 50) -> None:
    parser.add_argument("--limit", type=_page_size, default=default, help=f"1-{MAX_PAGE}")
    parser.add_argument("--cursor", help="the next page, as a previous listing printed it")


def register(sub: SubParsers) -> None:
    """Add the client's commands (URL and token: DUETIDE_URL/DUETIDE_TOKEN or login)."""
    common = _common()

    def command(
        parent: SubParsers, name: str, handler: Handler, help: str, with_id: str = ""
    ) -> argparse.ArgumentParser:
        parser = parent.add_parser(name, parents=[common], help=help, description=help)
        if with_id:
            parser.add_argument("id", metavar="ID", help=with_id)
        parser.set_defaults(func=_run(handler))
        return parser

    task = sub.add_parser("task", help="add, list, complete, reopen and remove tasks")
    tasks = task.add_subparsers(dest="action", required=True, metavar="ACTION")
    add = command(tasks, "add", task_add, "create a task, maybe recurring, maybe with reminders")
    add.add_argument("title")
    add.add_argument("--due", help=f"when it is due: {when.DUE_FORMS}")
    add.add_argument("--every", help=f"repeat it: {every.FORMS}")
    add.add_argument(
        "--remind", action="append", metavar="BEFORE", help="a reminder this long before due "
        f"({when.DURATION_FORMS}); repeatable"
    )  # fmt: skip
    add.add_argument("--tag", action="append", help="a tag; repeatable")
    add.add_argument("--priority", choices=PRIORITIES)
    add.add_argument("--note", help="the task's description")
    ls = command(tasks, "ls", task_ls, "list tasks")
    ls.add_argument("--tag")
    ls.add_argument("--status", choices=STATUSES)
    ls.add_argument("--priority", choices=PRIORITIES)
    ls.add_argument("--series", metavar="SERIES_ID", help="the occurrences of one series")
    ls.add_argument("--search", help="text in the title or description")
    ls.add_argument("--due-before", metavar="WHEN", help="same forms as `task add --due`")
    ls.add_argument("--due-after", metavar="WHEN")
    ls.add_argument("--sort", choices=SORTS)
    ls.add_argument("--desc", action="store_true", help="sort descending")
    _paged(ls)
    command(tasks, "done", task_done, "complete a task", "task id")
    command(tasks, "reopen", task_reopen, "reopen a completed task", "task id")
    command(tasks, "rm", task_rm, "delete a task (the open one of a series: skip it)", "task id")

    series = sub.add_parser("series", help="list, show, skip, pause, resume and end series")
    actions = series.add_subparsers(dest="action", required=True, metavar="ACTION")
    _paged(command(actions, "ls", series_ls, "list your series"))
    command(actions, "show", series_show, "a series and its next occurrences", "series id")
    for action, help in (
        ("skip", "skip the open occurrence"),
        ("pause", "pause a series"),
        ("resume", "resume a paused series"),
    ):
        command(actions, action, _series_action(action), help, "series id")
    command(actions, "end", series_end, "end a series, keeping its history", "series id")

    _paged(command(sub, "notifications", notifications, "delivered notifications, newest first"))

    sign_in = sub.add_parser(
        "login",
        help="check a URL and token against the API and save them",
        description=f"Saves them in {config.config_path()} (mode 0600); DUETIDE_URL and "
        "DUETIDE_TOKEN win over the file. Asks for what is not given (the token without "
        "echo; from standard input when it is not a terminal).",
    )
    sign_in.add_argument("--json", action="store_true", help="print what was saved as JSON")
    sign_in.add_argument("--url", help=f"the tasks API (default {config.DEFAULT_URL})")
    sign_in.add_argument(
        "--token", help="the bearer token ('-' or left out: asked, or read from stdin)"
    )
    sign_in.set_defaults(func=login)
