"""`duetide task|series|notifications|login` against the tasks function served on loopback
(`python -m duetide.web.serve`, SQLite), with real tokens: what it prints, its exit codes,
and what it changed on the server, read back over HTTP."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import requests
from sqlmodel import Session, create_engine

from duetide.config import Settings
from duetide.storage.models import Notification, utcnow
from duetide.web.auth import issue_local_token
from duetide_tools.cli import main
from duetide_tools.client import commands, transport
from duetide_tools.local.broker import free_loopback_port
from tests.integration.test_http_edge import SECRET, served
from tests.support import dribbling_server

ROOT = Path(__file__).resolve().parents[2]
BERLIN = ZoneInfo("Europe/Berlin")


@dataclass(frozen=True)
class Server:
    url: str
    home: Path

    def token(self, user: str) -> str:
        return issue_local_token(user, Settings(duetide_jwt_secret=SECRET))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    home = tmp_path_factory.mktemp("cli-api")
    with served(home) as port:
        yield Server(f"http://127.0.0.1:{port}", home)


@dataclass(frozen=True)
class Ran:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


@dataclass(frozen=True)
class User:
    """A user of its own per test, its token, and the API read directly (not by the CLI)."""

    name: str
    token: str
    url: str

    def api(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"}
        answer = requests.request(method, self.url + path, headers=headers, timeout=10, **kwargs)
        assert answer.status_code < 300, answer.text
        return answer.json() if answer.content else None


@pytest.fixture
def user(server: Server) -> User:
    name = f"cli-{uuid.uuid4().hex[:8]}"
    return User(name, server.token(name), server.url)


@pytest.fixture
def cli(
    server: Server,
    user: User,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Callable[..., Ran]:
    """`duetide ARGS` in this process, as `user` through the environment, config in tmp."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("DUETIDE_URL", server.url)
    monkeypatch.setenv("DUETIDE_TOKEN", user.token)

    def run(*argv: str) -> Ran:
        capsys.readouterr()
        code = main(list(argv))
        out, err = capsys.readouterr()
        return Ran(code, out, err)

    return run


def test_add_sends_the_recurrence_due_time_and_reminder_the_words_mean(
    cli: Callable[..., Ran], user: User
) -> None:
    today = datetime.now(BERLIN).date()
    ran = cli(
        "task", "add", "Water plants", "--every", "2 days", "--due", "tomorrow 09:00",
        "--remind", "15m", "--tag", "home", "--tz", "Europe/Berlin", "--json",
    )  # fmt: skip
    assert ran.code == 0, ran.err
    created = ran.json()
    stored = user.api("GET", f"/tasks/{created['id']}")
    assert stored == created
    due = datetime.fromisoformat(stored["due_at"])
    if datetime.now(BERLIN).date() == today:  # not across midnight in Berlin
        assert due == datetime.combine(today + timedelta(days=1), datetime.min.time(), BERLIN) + (
            timedelta(hours=9)
        )
    [reminder] = stored["reminders"]
    assert datetime.fromisoformat(reminder["fire_at"]) == due - timedelta(minutes=15)
    assert stored["tags"] == ["home"]
    series = user.api("GET", f"/series/{stored['series_id']}")
    assert (series["rrule"], series["timezone"]) == ("FREQ=DAILY;INTERVAL=2", "Europe/Berlin")


@pytest.mark.parametrize(
    ("words", "rrule"),
    [
        ("every weekday", "FREQ=WEEKLY;BYDAY=MO,TU,WE,TH,FR"),
        ("every 2 weeks on mon,wed", "FREQ=WEEKLY;INTERVAL=2;BYDAY=MO,WE"),
        ("monthly", "FREQ=MONTHLY"),
        ("month on the last day", "FREQ=MONTHLY;BYMONTHDAY=-1"),
        ("FREQ=YEARLY;BYMONTH=3", "FREQ=YEARLY;BYMONTH=3"),
    ],
)
def test_every_reaches_the_api_as_its_rule(
    cli: Callable[..., Ran], user: User, words: str, rrule: str
) -> None:
    ran = cli("task", "add", "Rule", "--every", words, "--due", "2027-01-04 09:00", "--tz", "UTC")
    assert ran.code == 0, ran.err
    [series] = user.api("GET", "/series")["items"]
    assert series["rrule"] == rrule
    assert "Rule" in ran.out and series["id"] in ran.out


def test_control_characters_from_the_api_are_shown_not_obeyed(
    cli: Callable[..., Ran], user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A title is whatever its writer sent (a producing system's command, say): printed
    as it was, `\x1b]52;c;...\x07` set the reader's clipboard in terminals that allow it,
    and an error message could do the same on stderr."""
    title = "pay \x1b]52;c;cm0gLXJmIH4=\x07rent \x9b31m \u202eevil"
    user.api("POST", "/tasks", json={"title": title})
    listed = cli("task", "ls")
    assert listed.code == 0 and "pay " in listed.out
    for control in ("\x1b", "\x07", "\x9b", "\u202e"):
        assert control not in listed.out
    assert "\\x1b]52;c;" in listed.out  # shown as its escape
    body = json.dumps({"error": {"code": "x", "message": "no\x1b[2J", "details": []}})
    head = f"HTTP/1.1 400 Bad\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    with answering(monkeypatch, (head + "\r\n\r\n" + body).encode()):
        refused = cli("task", "ls")
    assert refused.code == 1 and "\x1b" not in refused.err and "no\\x1b[2J" in refused.err


def test_ls_prints_a_table_filtered_as_asked_and_json_as_the_api_answers(
    cli: Callable[..., Ran], user: User
) -> None:
    rent = user.api(
        "POST",
        "/tasks",
        json={"title": "Pay rent", "tags": ["home"], "due_at": "2027-01-01T09:00:00Z"},
    )
    user.api("POST", "/tasks", json={"title": "Call Bob", "due_at": "2027-02-01T09:00:00Z"})
    done = user.api("POST", "/tasks", json={"title": "Old chore", "tags": ["home"]})
    user.api("POST", f"/tasks/{done['id']}/complete")

    table = cli("task", "ls", "--tz", "Europe/Berlin")
    assert table.code == 0, table.err
    heading, *rows = table.out.splitlines()
    assert heading.split() == ["ID", "STATUS", "DUE", "PRIORITY", "TAGS", "SERIES", "TITLE"]
    assert len(rows) == 3
    [rent_row] = [row for row in rows if rent["id"] in row]
    assert "2027-01-01 10:00" in rent_row and "home" in rent_row and rent_row.endswith("Pay rent")

    home_open = cli("task", "ls", "--tag", "home", "--status", "open")
    assert [row.split()[0] for row in home_open.out.splitlines()[1:]] == [rent["id"]]
    early = cli("task", "ls", "--due-before", "2027-01-15", "--tz", "UTC")
    assert [row.split()[0] for row in early.out.splitlines()[1:]] == [rent["id"]]
    late = cli("task", "ls", "--due-after", "2027-01-15", "--json")
    assert [t["title"] for t in late.json()["items"]] == ["Call Bob"]

    first = cli("task", "ls", "--sort", "due_at", "--desc", "--limit", "1", "--status", "open")
    assert "Call Bob" in first.out and "Pay rent" not in first.out
    cursor = first.out.splitlines()[-1].split("--cursor ")[1].rstrip(")")
    second = cli("task", "ls", "--sort", "due_at", "--desc", "--limit", "1", "--status", "open",
                 "--cursor", cursor)  # fmt: skip
    assert "Pay rent" in second.out

    listing = cli("task", "ls", "--json", "--sort", "title")
    assert listing.json() == user.api("GET", "/tasks?sort=title")
    assert cli("task", "ls", "--tag", "nothing").out == "no tasks\n"


def test_done_reopen_and_rm_change_the_task_on_the_server(
    cli: Callable[..., Ran], user: User
) -> None:
    task = user.api("POST", "/tasks", json={"title": "Pay rent"})
    path = f"/tasks/{task['id']}"

    done = cli("task", "done", task["id"])
    assert done.code == 0 and "done" in done.out and task["id"] in done.out
    assert user.api("GET", path)["status"] == "done"
    reopened = cli("task", "reopen", task["id"], "--json")
    assert reopened.json()["status"] == "open" == user.api("GET", path)["status"]

    removed = cli("task", "rm", task["id"])
    assert (removed.code, removed.out) == (0, f"deleted {task['id']}\n")
    assert user.api("GET", "/tasks")["items"] == []
    other = user.api("POST", "/tasks", json={"title": "Another"})
    # a 204 has no answer; --json printed nothing, and a script reading it got no input
    assert cli("task", "rm", other["id"], "--json").json() == {
        "id": other["id"], "outcome": "deleted"
    }  # fmt: skip


def test_rm_of_the_open_occurrence_skips_it_and_shows_the_next(
    cli: Callable[..., Ran], user: User
) -> None:
    first = cli("task", "add", "Gym", "--every", "daily", "--due", "2027-01-04 07:00", "--json")
    occurrence = first.json()
    ran = cli("task", "rm", occurrence["id"])
    assert ran.code == 0, ran.err
    [following] = user.api("GET", f"/tasks?series_id={occurrence['series_id']}&status=open")[
        "items"
    ]
    assert ran.out.startswith(f"skipped {occurrence['id']}")
    assert following["id"] in ran.out and following["due_at"] > occurrence["due_at"]


def test_a_first_due_time_the_rule_does_not_give_is_kept_and_noted(
    cli: Callable[..., Ran], user: User
) -> None:
    """RFC 5545 makes the first due time the first occurrence whatever the rule: a
    Tuesday for `--every weekend` was taken without a word."""
    tuesday = ("task", "add", "Hike", "--due", "2027-01-05 09:00", "--tz", "UTC")
    off = cli(*tuesday, "--every", "weekend")
    assert off.code == 0, off.err
    assert "not one the rule gives" in off.err and "next 2027-01-09 09:00 UTC" in off.err
    on = cli("task", "add", "Gym", "--due", "2027-01-09 09:00", "--tz", "UTC", "--every", "weekend")
    assert on.code == 0 and on.err == ""
    assert len(user.api("GET", "/series")["items"]) == 2
    # said after the answer: of a rule the API refuses, only the refusal (an audit, 2026-12-07)
    refused = cli(*tuesday, "--every", "FREQ=WEEKLY;BYDAY=+1MO")
    assert refused.code == 1 and "not one the rule gives" not in refused.err


def test_a_recurring_task_in_a_zone_with_no_iana_name_asks_for_one(
    cli: Callable[..., Ran], user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The series took UTC, silently: 09:00 in a POSIX TZ's zone became 09:00 UTC."""
    monkeypatch.setenv("TZ", "CET-1CEST,M3.5.0,M10.5.0/3")
    ran = cli("task", "add", "Water", "--every", "daily", "--due", "2027-01-04 09:00")
    assert ran.code == 2 and "--tz" in ran.err, ran.err
    assert user.api("GET", "/tasks")["items"] == []
    given = cli("task", "add", "Water", "--every", "daily", "--due", "2027-01-04 09:00",
                "--tz", "Europe/Berlin", "--json")  # fmt: skip
    assert given.json()["due_at"] == "2027-01-04T09:00:00+01:00"


def test_series_commands_list_show_skip_pause_resume_and_end(
    cli: Callable[..., Ran], user: User
) -> None:
    cli("task", "add", "Water", "--every", "2 days", "--due", "2027-01-04 09:00", "--tz", "UTC")
    [series] = user.api("GET", "/series")["items"]
    sid = series["id"]

    listing = cli("series", "ls")
    assert listing.out.splitlines()[0].split() == [
        "ID", "STATUS", "LATEST", "RULE", "TIMEZONE", "TITLE",
    ]  # fmt: skip
    assert sid in listing.out and "FREQ=DAILY;INTERVAL=2" in listing.out
    assert cli("series", "ls", "--json").json() == user.api("GET", "/series")

    shown = cli("series", "show", sid, "--tz", "UTC")
    assert "open      2027-01-04 09:00 UTC" in shown.out, shown.out
    assert "next      2027-01-06 09:00 UTC, 2027-01-08 09:00 UTC" in shown.out, shown.out
    [first] = user.api("GET", f"/tasks?series_id={sid}&status=open")["items"]
    moved = {"due_at": "2027-01-04T15:00:00Z"}  # listed twice, as if two were due that day
    user.api("PATCH", f"/tasks/{first['id']}", json=moved)
    moved_out = cli("series", "show", sid, "--tz", "UTC").out
    assert "open      2027-01-04 15:00 UTC" in moved_out
    assert "next      2027-01-06 09:00" in moved_out
    assert cli("series", "show", sid, "--json").json() == user.api("GET", f"/series/{sid}")

    skipped = cli("series", "skip", sid, "--json").json()
    assert skipped["last_scheduled_at"].startswith("2027-01-06T09:00")
    [open_one] = user.api("GET", f"/tasks?series_id={sid}&status=open")["items"]
    assert open_one["due_at"].startswith("2027-01-06T09:00")

    assert cli("series", "pause", sid).code == 0
    assert user.api("GET", f"/series/{sid}")["status"] == "paused"
    resumed = cli("series", "resume", sid)
    assert resumed.code == 0 and "active" in resumed.out
    assert user.api("GET", f"/series/{sid}")["status"] == "active"

    ended = cli("series", "end", sid, "--json")
    assert ended.json() == {"id": sid, "outcome": "ended"}
    assert user.api("GET", f"/series/{sid}")["status"] == "ended"


def test_notifications_lists_the_users_deliveries(
    cli: Callable[..., Ran], user: User, server: Server
) -> None:
    assert cli("notifications").out == "no notifications\n"
    task = user.api("POST", "/tasks", json={"title": "Call back"})
    engine = create_engine(f"sqlite:///{server.home / 'duetide.db'}")
    common = {"owner": user.name, "task_id": task["id"], "scheduled_at": utcnow()}
    with Session(engine) as session:
        session.add(Notification(reminder_id=str(uuid.uuid4()), channel="log", **common))
        session.add(
            Notification(
                reminder_id=str(uuid.uuid4()),
                channel="email",
                status="failed",
                detail="no mail",
                **common,
            )
        )
        session.commit()
    engine.dispose()

    table = cli("notifications")
    heading, *rows = table.out.splitlines()
    assert heading.split() == ["DELIVERED", "STATUS", "CHANNEL", "TASK", "DETAIL"]
    assert sorted(row.split()[3:5] for row in rows) == [  # after a date, time and zone
        ["delivered", "log"], ["failed", "email"],
    ]  # fmt: skip
    assert any(row.endswith("no mail") for row in rows)
    assert cli("notifications", "--json").json() == user.api("GET", "/notifications")


def test_api_errors_go_to_stderr_with_exit_code_1(cli: Callable[..., Ran], user: User) -> None:
    missing = cli("task", "done", str(uuid.uuid4()))
    assert missing.code == 1 and missing.out == ""
    assert "404 not_found" in missing.err and missing.err.startswith("duetide: ")

    invalid = cli("task", "add", " ")
    assert invalid.code == 1
    assert "422 validation_failed" in invalid.err and "  title: " in invalid.err

    task = user.api("POST", "/tasks", json={"title": "t"})
    assert cli("task", "reopen", task["id"]).code == 0  # reopening an open task: no-op
    sneaky = cli("task", "done", f"../../series/{task['id']}")
    assert sneaky.code == 1 and user.api("GET", f"/tasks/{task['id']}")["status"] == "open"


def test_usage_errors_exit_2_and_send_nothing(cli: Callable[..., Ran], user: User) -> None:
    for argv in (
        ("task", "add", "x", "--every", "fortnight-ish", "--due", "tomorrow"),
        ("task", "add", "x", "--due", "someday"),
        ("task", "add", "x", "--due", "tomorrow", "--remind", "15x"),
        ("task", "add", "x", "--every", "daily"),
        ("task", "add", "x", "--every", "", "--due", "tomorrow"),  # was a one-off, silently
        # a series starting in the hour the clocks skip: every occurrence moved with it
        (
            "task",
            "add",
            "x",
            "--every",
            "daily",
            "--due",
            "2027-03-28T02:30",
            "--tz",
            "Europe/Berlin",
        ),
        ("task", "add", "x", "--due", "tomorrow", "--tz", "Mars/Olympus"),
        ("task", "ls", "--due-before", "whenever"),
    ):
        ran = cli(*argv)
        assert ran.code == 2, argv
        assert ran.err.startswith("duetide: ") and ran.out == ""
    assert "try daily, weekly" in cli("task", "add", "x", "--every", "often", "--due", "fri").err
    assert user.api("GET", "/tasks")["items"] == []
    with pytest.raises(SystemExit) as exited:  # argparse's own checks
        cli("task", "ls", "--limit", "500")
    assert exited.value.code == 2


def test_a_refused_token_and_a_missing_one(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DUETIDE_TOKEN", "not-a-token")
    refused = cli("task", "ls")
    assert refused.code == 1 and "401" in refused.err and "duetide login" in refused.err
    monkeypatch.delenv("DUETIDE_TOKEN")
    missing = cli("task", "ls")
    assert missing.code == 2 and "no token" in missing.err and "duetide login" in missing.err


def test_an_add_whose_every_try_was_refused_does_not_say_it_may_have_been_made(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused connection sends nothing: "the request may have been carried out" sent
    the user looking for a task that could not exist (an audit, 2026-12-07)."""
    monkeypatch.setattr(transport, "RESEND_WAITS", (0.0,))
    monkeypatch.setenv("DUETIDE_URL", f"http://127.0.0.1:{free_loopback_port()}")
    ran = cli("task", "add", "Pay rent")
    assert ran.code == 1 and "connection refused" in ran.err, ran.err
    assert "carried out" not in ran.err


def test_connection_refused_names_the_url_and_scripts_up(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("DUETIDE_URL", url)
    ran = cli("task", "ls")
    assert ran.code == 1
    assert url in ran.err and "connection refused" in ran.err and "scripts/up" in ran.err
    monkeypatch.setenv("DUETIDE_URL", url.removeprefix("http://"))
    schemeless = cli("task", "ls")
    assert schemeless.code == 2 and "must start with http://" in schemeless.err


@pytest.mark.parametrize(
    ("url", "token"),
    [
        (None, "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJtZSJ9\r.SECRETSIG"),  # (at its end: stripped)
        (None, "tok\u20acn-SECRETSIG"),
        ("http://[::1", None),
        ("http://127.0.0.1:9/\u20ac", None),
        ("http://me:SECRETSIG@127.0.0.1:9", None),  # every message naming the URL showed it
    ],
)
def test_a_token_or_url_http_cannot_carry_is_a_usage_error_that_never_shows_the_token(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch, url: str | None, token: str | None
) -> None:
    """http.client's header check raised with the whole token in its message."""
    if url is not None:
        monkeypatch.setenv("DUETIDE_URL", url)
    if token is not None:
        monkeypatch.setenv("DUETIDE_TOKEN", token)
    ran = cli("task", "ls")
    assert ran.code == 2 and ran.err.startswith("duetide: ") and ran.err.count("\n") == 1
    assert "SECRETSIG" not in ran.err + ran.out


@contextlib.contextmanager
def answering(
    monkeypatch: pytest.MonkeyPatch, head: bytes, drip: bytes = b""
) -> Iterator[threading.Event]:
    """A loopback server that answers one request with `head`, then sends `drip` a byte
    every 0.3 s and closes; DUETIDE_URL points at it. Yields an event set once the
    server has sent all it had."""
    with dribbling_server(drip, 0.3, head, reads_request=True) as (port, sent_all):
        monkeypatch.setenv("DUETIDE_URL", f"http://127.0.0.1:{port}")
        yield sent_all


@pytest.mark.parametrize(
    ("head", "drip"),
    [
        pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", b" " * 200, id="body"),
        pytest.param(b"HTTP/1.1 200 OK\r\n", b"X-Slow: " + b"a" * 192, id="headers"),
        pytest.param(b"HTTP/1.1 2", b"00 OK\r\n" + b"X: y\r\n" * 30, id="status-line"),
        pytest.param(
            b"HTTP/1.1 500 Oops\r\nContent-Length: 1000\r\n\r\n", b" " * 200, id="error-body"
        ),
    ],
)
def test_an_answer_sent_a_byte_at_a_time_ends_at_the_clients_timeout(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch, head: bytes, drip: bytes
) -> None:
    """The socket's timeout bounds one read: a server sending a byte every 0.3 s, of its
    body or of its status line and headers, held the client until it stopped (a minute
    here, without end in general)."""
    monkeypatch.setattr(commands, "Api", functools.partial(transport.Api, timeout_s=1.0))
    with answering(monkeypatch, head, drip) as sent_all:
        ran = cli("task", "ls")
        assert not sent_all.is_set()  # the client gave up while the server still sent
    assert ran.code == 1 and "within 1 s" in ran.err, ran.err


def test_a_proxy_answering_connect_a_byte_at_a_time_ends_at_the_clients_timeout(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The deadline watched a connection only once it was set up: an HTTPS proxy
    dribbling its answer to CONNECT held the client as long as it went on. (The TLS
    handshake after it has a deadline of its own: `ssl` bounds the whole handshake by
    the socket's timeout.)"""
    monkeypatch.setattr(commands, "Api", functools.partial(transport.Api, timeout_s=1.0))
    with answering(monkeypatch, b"HTTP/1.1 2", b"00 Connection established\r\n" * 8) as sent_all:
        proxy = urllib.request.ProxyHandler({"https": os.environ["DUETIDE_URL"]})
        handlers = (transport._NoRedirects, transport._HTTPHandler, transport._HTTPSHandler)
        monkeypatch.setattr(transport, "_OPENER", urllib.request.build_opener(proxy, *handlers))
        monkeypatch.setenv("DUETIDE_URL", "https://duetide.invalid")
        ran = cli("task", "ls")
        assert not sent_all.is_set()  # the client gave up while the proxy still sent
    assert ran.code == 1 and "within 1 s" in ran.err, ran.err


def test_an_answer_cut_short_of_its_length_is_an_error_not_the_part_sent(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch
) -> None:
    """http.client's `read1` returns a body short of its Content-Length without a word:
    `[]` of a promised 200 bytes read as an empty list of tasks."""
    with answering(monkeypatch, b"HTTP/1.1 200 OK\r\nContent-Length: 200\r\n\r\n[]"):
        ran = cli("task", "ls", "--json")
    assert ran.code == 1 and "cannot reach the duetide API" in ran.err, ran.err
    assert ran.out == ""


@pytest.mark.parametrize(
    ("body", "command"),
    [
        (b'{"count": 3}', ("task", "ls")),
        (b"[1, 2]", ("task", "ls")),
        (b'{"items": [1, 2]}', ("task", "ls")),
        (b"[]", ("task", "rm", "abc")),  # was `deleted abc`, exit 0
    ],
)
def test_an_answer_that_is_not_the_apis_shape_says_so(
    cli: Callable[..., Ran], monkeypatch: pytest.MonkeyPatch, body: bytes, command: tuple[str]
) -> None:
    """Something else at DUETIDE_URL answering JSON: "unexpected KeyError" (exit 1), or a
    deletion reported done (an audit, 2026-12-07)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
    with answering(monkeypatch, head + body):
        ran = cli(*command)
    assert ran.code == 1 and "did not answer as the duetide API does" in ran.err, ran.err
    assert "unexpected" not in ran.err and ran.out == ""


@contextlib.contextmanager
def losing_first_answer(
    upstream: str, then_drop: int = 0, then: bool = True, instead: bytes = b""
) -> Iterator[str]:
    """A loopback proxy to `upstream` that passes each request on and, for the first
    one, closes the client's connection instead of passing the answer back (or answers
    `instead`): the request was made, its answer lost. The `then_drop` connections after
    it are closed unread (the API restarting), and the next one passed on (`then`).
    Yields the proxy's URL."""
    host, port = urllib.parse.urlsplit(upstream).hostname, urllib.parse.urlsplit(upstream).port
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    lost = threading.Event()

    def relay(client: socket.socket) -> None:
        with client, socket.create_connection((host, port), timeout=10) as server:
            client.settimeout(10)
            request = b""
            while b"\r\n\r\n" not in request:
                request += client.recv(65536)
            head, _, body = request.partition(b"\r\n\r\n")
            length = next(
                (int(line.split(b":")[1]) for line in head.split(b"\r\n")
                 if line.lower().startswith(b"content-length:")), 0,
            )  # fmt: skip
            while len(body) < length:
                body += client.recv(65536)
            server.sendall(head + b"\r\n\r\n" + body)
            answer = b""
            while chunk := server.recv(65536):  # urllib asks the server to close after it
                answer += chunk
            client.sendall(answer if lost.is_set() else instead)
            lost.set()

    def serve() -> None:
        with contextlib.suppress(OSError):
            relay(listener.accept()[0])
            for _ in range(then_drop):
                listener.accept()[0].close()
            if then:
                relay(listener.accept()[0])

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        thread.join(timeout=10)


def test_add_whose_answer_was_lost_is_sent_again_and_makes_one_task(
    cli: Callable[..., Ran], user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first answer never comes back, though the task was made: the CLI sends the
    request again with its Idempotency-Key and gets the first's answer, not a second task."""
    with losing_first_answer(user.url) as proxy:
        monkeypatch.setenv("DUETIDE_URL", proxy)
        ran = cli("task", "add", "Pay rent", "--json")

    assert ran.code == 0, ran.err
    (task,) = user.api("GET", "/tasks")["items"]
    assert task["title"] == "Pay rent" and ran.json()["id"] == task["id"]


def test_add_whose_answer_was_lost_waits_for_the_api_to_come_back_or_says_it_may_be_made(
    cli: Callable[..., Ran], user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resend went at once, into a function still restarting (about 3 s on the local
    stack), and the error did not say that the first may have been made."""
    with losing_first_answer(user.url, then_drop=2) as proxy:
        monkeypatch.setenv("DUETIDE_URL", proxy)
        ran = cli("task", "add", "Pay rent", "--json")
    assert ran.code == 0, ran.err
    (task,) = user.api("GET", "/tasks")["items"]
    assert ran.json()["id"] == task["id"]

    with losing_first_answer(user.url, then_drop=len(transport.RESEND_WAITS), then=False) as proxy:
        monkeypatch.setenv("DUETIDE_URL", proxy)
        gone = cli("task", "add", "Call Bob")
    assert gone.code == 1 and "may have been carried out" in gone.err, gone.err
    assert len(user.api("GET", "/tasks")["items"]) == 2  # it was: `task ls` shows it


def test_add_answered_503_as_its_commit_was_cut_is_sent_again_and_makes_one_task(
    cli: Callable[..., Ran], user: User, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The API's database connection was lost during the commit: its 503 says the task
    may have been made. The CLI sends it again with its key (the user, told to, could
    not: the key was the CLI's), and shows the one task."""
    body = json.dumps(
        {"error": {"code": "unavailable", "message": "the change may have been saved"}}
    ).encode()
    unknown = (
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        b"Retry-After: 1\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
    )
    with losing_first_answer(user.url, instead=unknown) as proxy:
        monkeypatch.setenv("DUETIDE_URL", proxy)
        ran = cli("task", "add", "Pay rent", "--json")
    assert ran.code == 0, ran.err
    (task,) = user.api("GET", "/tasks")["items"]
    assert ran.json()["id"] == task["id"]


def test_login_checks_then_saves_a_private_file_that_commands_use(
    cli: Callable[..., Ran], user: User, server: Server, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.delenv("DUETIDE_URL")
    monkeypatch.delenv("DUETIDE_TOKEN")
    path = tmp_path / "config" / "duetide" / "config.json"

    refused = cli("login", "--url", server.url, "--token", "not-a-token")
    assert refused.code == 1 and "refused the token" in refused.err
    unreachable = f"http://127.0.0.1:{free_loopback_port()}"
    assert cli("login", "--url", unreachable, "--token", user.token).code == 1
    assert not path.exists()

    ran = cli("login", "--url", server.url + "/", "--token", user.token)
    assert ran.code == 0, ran.err
    assert f"as {user.name}" in ran.out and str(path) in ran.out
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert json.loads(path.read_text()) == {"url": server.url, "token": user.token}

    user.api("POST", "/tasks", json={"title": "Mine"})
    assert "Mine" in cli("task", "ls").out  # from the file alone


def test_the_environment_wins_over_the_file_each_variable_on_its_own(
    cli: Callable[..., Ran], user: User, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("login", "--url", server.url, "--token", user.token).code == 0
    user.api("POST", "/tasks", json={"title": "Mine"})
    other = server.token(f"other-{uuid.uuid4().hex[:8]}")
    monkeypatch.delenv("DUETIDE_URL")

    monkeypatch.setenv("DUETIDE_TOKEN", other)  # another user's token in the environment
    assert cli("task", "ls").out == "no tasks\n"
    monkeypatch.delenv("DUETIDE_TOKEN")
    assert "Mine" in cli("task", "ls").out

    dead = f"http://127.0.0.1:{free_loopback_port()}"
    monkeypatch.setenv("DUETIDE_URL", dead)  # the file's token, the environment's URL
    ran = cli("task", "ls")
    assert ran.code == 1 and dead in ran.err
    monkeypatch.setenv("DUETIDE_URL", "")  # empty is unset
    assert "Mine" in cli("task", "ls").out


def test_a_damaged_config_file_is_replaced_by_login_and_unread_with_the_environment(
    cli: Callable[..., Ran], user: User, server: Server, tmp_path: Path
) -> None:
    """A corrupt file stopped every command, with both variables set, and `login` too,
    whose message said to run `login` again (an audit, 2026-12-07)."""
    path = tmp_path / "config" / "duetide" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_text("{bad")
    user.api("POST", "/tasks", json={"title": "Mine"})
    assert "Mine" in cli("task", "ls").out  # DUETIDE_URL and DUETIDE_TOKEN: the file unread
    ran = cli("login", "--url", server.url, "--token", user.token)
    assert ran.code == 0, ran.err
    assert json.loads(path.read_text()) == {"url": server.url, "token": user.token}


def duetide(*argv: str, env: dict[str, str], stdin: str = "") -> subprocess.CompletedProcess[str]:
    """The command as a user runs it: a process of its own, no terminal."""
    return subprocess.run(
        [sys.executable, "-m", "duetide_tools.cli", *argv],
        env=env, input=stdin, capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_command_as_a_process_logs_in_from_stdin_and_works(
    server: Server, user: User, tmp_path: Path
) -> None:
    path = ROOT / "shared"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("DUETIDE_")},
        "PYTHONPATH": os.pathsep.join([str(path), str(path / "tools")]),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
        "TZ": "UTC",
    }
    login = duetide("login", "--url", server.url, env=env, stdin=user.token + "\n")
    assert login.returncode == 0, login.stderr
    added = duetide("task", "add", "Pay rent", "--due", "2027-01-01 09:00", "--json", env=env)
    assert added.returncode == 0, added.stderr
    assert json.loads(added.stdout)["due_at"] == "2027-01-01T09:00:00+00:00"
    listed = duetide("task", "ls", env=env)
    assert listed.returncode == 0 and "2027-01-01 09:00" in listed.stdout
    usage = duetide("task", "frobnicate", env=env)
    assert usage.returncode == 2 and "invalid choice" in usage.stderr
