"""What `duetide` refuses before it does anything, and how it reports a failure it did not
expect: one line on stderr, a usage error with exit code 2, never a traceback."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from duetide.config import get_settings
from duetide_tools.cli import main, stop_on_signals


@pytest.fixture(autouse=True)
def fresh_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.delenv("DUETIDE_JWT_SECRET", raising=False)
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.mark.parametrize(
    "argv",
    [
        ["up", "--port", "99999"],  # was served on 99999 mod 65536
        ["run", "tasks", "--port", "0"],
        ["run", "tasks", "--port", "eighty"],
        ["deadletters", "list", "--limit", "0"],
        ["deadletters", "list", "--limit", "many"],
        ["outbox", "requeue", "--since", "9999-12-31T23:00-05:00"],  # past 9999 in UTC
    ],
)
def test_an_argument_out_of_range_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == 2
    assert "Traceback" not in capsys.readouterr().err


def test_token_refuses_an_empty_secret_file_and_an_empty_user(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / "jwt-secret").write_text("\n")
    assert main(["token", "me"]) == 1
    assert "is empty" in capsys.readouterr().err
    (home / "jwt-secret").write_text("s" * 40)
    assert main(["token", " "]) == 2
    assert "printable" in capsys.readouterr().err
    # what the API refuses (a 401 for the token made) or takes as another user
    for user in ("u" * 256, " me ", "me\t"):
        assert main(["token", user]) == 2, user
    assert main(["token", "me"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a JWT: header.claims.signature


def test_a_database_that_is_not_there_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A closed loopback port: refused at once, nothing leaves the machine.
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql+psycopg://duetide:PASSWORD-XYZ@127.0.0.1:9/duetide"
    )
    monkeypatch.delenv("DUETIDE_DEBUG", raising=False)
    assert main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("duetide: database error: ") and err.count("\n") == 1
    assert "PASSWORD-XYZ" not in err and "Traceback" not in err


def test_outbox_requeue_without_a_database_there_says_so_and_makes_none(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """With DUETIDE_HOME unset, for a stack run with another home, it made an empty
    database in the default home and said "no such table: outbox" (an audit, 2026-12-07)."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("DUETIDE_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    assert main(["outbox", "requeue", "--since", "2026-12-07T23:59Z"]) == 1
    err = capsys.readouterr().err
    assert "no duetide database at" in err and "DUETIDE_HOME" in err
    assert not (tmp_path / "home" / "duetide.db").exists()


def test_up_stops_on_a_closed_terminal_unless_run_under_nohup() -> None:
    """SIGHUP killed `up` at once (no clean stop recorded); under `nohup` it is ignored,
    and must stay so: the stack is meant to outlive the terminal."""
    before = {number: signal.getsignal(number) for number in STOPS}
    try:

        def stop(signum: int, frame: object) -> None:
            pass

        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        stop_on_signals(stop)
        assert all(signal.getsignal(number) is stop for number in STOPS)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup
        stop_on_signals(stop)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        for number, handler in before.items():
            signal.signal(number, handler)


STOPS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
