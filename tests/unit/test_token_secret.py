"""`duetide token` signs with the secret of the stack the user talks to, found through the
record a running `duetide up` leaves (`duetide_tools.local.running`), and never
generates one: which home wins, and what it says when there is none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from duetide_tools.local import running
from duetide_tools.local.running import RunningStack
from duetide_tools.local.token_secret import SecretNotFound, locate


def home_with_secret(path: Path, secret: str = "s" * 40) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "jwt-secret").write_text(secret + "\n")
    return path


def stack(home: Path, port: int = 8080, *, from_env: bool = False) -> RunningStack:
    return RunningStack(pid=4242, home=str(home), port=port, secret_from_env=from_env)


def test_duetide_home_wins_over_a_running_stack(tmp_path: Path):
    mine = home_with_secret(tmp_path / "mine")
    other = home_with_secret(tmp_path / "other")
    assert locate(str(mine), tmp_path / "default", [stack(other)]) == mine / "jwt-secret"


def test_a_duetide_home_without_a_secret_is_an_error_not_a_new_secret(tmp_path: Path):
    with pytest.raises(SecretNotFound, match="no JWT secret in DUETIDE_HOME"):
        locate(str(tmp_path / "empty"), tmp_path / "default", [])
    assert not (tmp_path / "empty").exists()


def test_without_duetide_home_the_running_stack_wins_over_the_default_home(tmp_path: Path):
    running_home = home_with_secret(tmp_path / "running")
    default = home_with_secret(tmp_path / "default")
    assert locate(None, default, [stack(running_home)]) == running_home / "jwt-secret"


def test_two_stacks_with_different_homes_are_named_not_guessed(tmp_path: Path):
    a, b = home_with_secret(tmp_path / "a"), home_with_secret(tmp_path / "b")
    with pytest.raises(SecretNotFound, match="set DUETIDE_HOME") as refused:
        locate(None, tmp_path / "default", [stack(a, 8080), stack(b, 8081)])
    assert str(a) in str(refused.value) and "127.0.0.1:8081" in str(refused.value)
    # Two stacks on one home share its secret.
    assert locate(None, tmp_path / "default", [stack(a, 8080), stack(a, 8081)]) == (
        a / "jwt-secret"
    )


def test_a_stack_signing_with_an_environment_secret_asks_for_that_secret(tmp_path: Path):
    home = home_with_secret(tmp_path / "home")
    with pytest.raises(SecretNotFound, match="set the same DUETIDE_JWT_SECRET"):
        locate(None, tmp_path / "default", [stack(home, from_env=True)])


def test_no_stack_uses_an_existing_default_secret_and_else_refuses(tmp_path: Path):
    default = tmp_path / "default"
    with pytest.raises(SecretNotFound, match="no running `duetide up` found"):
        locate(None, default, [])
    home_with_secret(default)
    assert locate(None, default, []) == default / "jwt-secret"


# ------------------------------------------------------------- the records


@pytest.fixture
def runtime_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "run"
    folder.mkdir()
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    return folder


def test_a_record_of_this_process_is_live_until_forgotten(runtime_dir: Path, tmp_path: Path):
    path = running.record(tmp_path / "home", 8123, secret_from_env=False)
    assert path.parent == runtime_dir / "duetide"
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    [found] = running.live()
    assert (found.pid, found.port, found.home) == (os.getpid(), 8123, str(tmp_path / "home"))
    running.forget(path)
    assert running.live() == []


def test_the_record_of_a_process_that_is_gone_is_ignored_and_removed(runtime_dir: Path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = runtime_dir / "duetide"
    folder.mkdir()
    stale = folder / f"up-{gone.pid}.json"
    record = {"pid": gone.pid, "home": "/nowhere", "port": 1, "secret_from_env": False}
    stale.write_text(json.dumps({**record, "started": "1"}))
    assert running.live() == []
    assert not stale.exists()
