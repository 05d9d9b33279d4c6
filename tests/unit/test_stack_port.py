"""`duetide up`'s check that its API port is free."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from duetide_tools.local.stack import (
    Stack,
    StackError,
    _lock_home,
    listen,
    project_root,
)


def test_a_port_whose_last_connections_wait_in_time_wait_is_free() -> None:
    """Right after a stop, `up` said the port was in use: the server's side of each
    connection it had closed sat in TIME_WAIT, which a plain bind refuses."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as client:
            served, _ = listener.accept()
            served.close()  # the server closes first: its address goes to TIME_WAIT
            assert client.recv(1) == b""
    with pytest.raises(OSError), socket.socket() as plain:
        plain.bind(("127.0.0.1", port))  # what the check did
    listen(port).close()


def test_a_port_a_server_listens_on_is_in_use() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(StackError, match="is in use"),
    ):
        listen(listener.getsockname()[1])


def test_a_start_refused_for_its_port_logs_no_stop(tmp_path: Path) -> None:
    """up.log said "stopped in 0.00 s" after each start refused at once."""
    (tmp_path / "logs").mkdir()  # a previous run's
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stack = Stack(root=project_root(), home=tmp_path, port=listener.getsockname()[1])
        with pytest.raises(StackError, match="is in use"):
            stack.start()
        stack.stop()
    assert not (tmp_path / "logs" / "up.log").exists()


def test_a_second_up_on_the_same_data_folder_is_refused_until_the_first_ends(
    tmp_path: Path,
) -> None:
    """Only the port was checked: a second `up` on another port ran a whole stack on the
    same data, sent the first one's events again and overwrote its broker's marker."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_THE_HOME, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with socket.create_server(("127.0.0.1", 0)) as taken:
            free = taken.getsockname()[1]  # closed below: the port is free, the home not
        stack = Stack(root=project_root(), home=tmp_path, port=free)
        with pytest.raises(StackError, match=f"already runs .* pid {holder.pid}, API port 8080"):
            stack.start()
        stack.stop()
        assert not (tmp_path / "duetide.db").exists()  # nothing of the home was touched
    finally:
        holder.kill()  # as a SIGKILLed `up`: the kernel lets its lock go
        holder.wait()
    lock = _lock_home(tmp_path, free)
    assert lock is not None
    lock.close()


HOLD_THE_HOME = """
import sys
from pathlib import Path
from duetide_tools.local.stack import _lock_home
held = _lock_home(Path(sys.argv[1]), 8080)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_database_that_takes_no_writes_is_refused_at_the_start(tmp_path: Path) -> None:
    """A database file this user cannot write passed the start, its migrations having
    nothing to write, and every write was then a 503 "retry" (an audit, 2026-12-07).
    Here the file is opened read-only, as SQLite opens one it may not write."""
    from duetide.storage import migrate
    from duetide_tools.local.broker import free_loopback_port

    database = tmp_path / "duetide.db"
    migrate.upgrade(f"sqlite:///{database}")
    stack = Stack(
        root=project_root(),
        home=tmp_path / "home",
        port=free_loopback_port(),
        database_url=f"sqlite:///file:{database}?mode=ro&uri=true",
    )
    with pytest.raises(StackError, match="takes no writes: attempt to write a readonly"):
        stack.start()
    stack.stop()


def test_a_file_that_is_no_database_is_named_at_the_start(tmp_path: Path) -> None:
    """SQLite's `file is not a database` did not say which file (an audit, 2026-12-07)."""
    from duetide_tools.local.broker import free_loopback_port

    database = tmp_path / "duetide.db"
    database.write_bytes(b"not a database, " * 512)
    stack = Stack(root=project_root(), home=tmp_path, port=free_loopback_port())
    with pytest.raises(StackError, match=f"{database} cannot be migrated: file is not a database"):
        stack.start()
    stack.stop()


def test_the_banner_names_the_database_without_its_password(tmp_path: Path) -> None:
    """`up` printed DATABASE_URL whole, password and all, even with --quiet: into
    terminals, CI logs and `duetide up | tee` (an audit, 2026-12-07)."""
    from typing import Any, cast

    from duetide_tools.cli import _banner
    from duetide_tools.local.stack import FunctionProcess
    from duetide_tools.manifests import ServiceSpec

    stack = Stack(
        root=project_root(),
        home=tmp_path,
        database_url="postgresql+psycopg://app:CANARY-PASSWORD@127.0.0.1:5432/duetide",
        bootstrap_servers="127.0.0.1:9092",
    )
    with listen(0) as listener:
        tasks = FunctionProcess(
            ServiceSpec("duetide-tasks", "tasks"), listener, cast(Any, None), tmp_path
        )
        stack.functions["tasks"] = tasks
        shown = _banner(stack, "a-token", "me", 1.0)
        url = tasks.url
    assert "CANARY-PASSWORD" not in shown
    assert "postgresql+psycopg://app:***@127.0.0.1:5432/duetide" in shown
    # Not on 8080, where the client looks by default: every `duetide` command was
    # "connection refused" until the user found DUETIDE_URL (an audit, 2026-12-07).
    assert f"export DUETIDE_URL={url}" in shown
