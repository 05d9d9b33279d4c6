"""`duetide up`'s check that its API port is free."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from duetide_tools.local.stack import Stack, StackError, _check_port_free, project_root


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
    _check_port_free(port)


def test_a_port_a_server_listens_on_is_in_use() -> None:
    with (
        socket.create_server(("127.0.0.1", 0)) as listener,
        pytest.raises(StackError, match="is in use"),
    ):
        _check_port_free(listener.getsockname()[1])


def test_a_start_refused_for_its_port_logs_no_stop(tmp_path: Path) -> None:
    """up.log said "stopped in 0.00 s" after each start refused at once."""
    (tmp_path / "logs").mkdir()  # a previous run's
    with socket.create_server(("127.0.0.1", 0)) as listener:
        stack = Stack(root=project_root(), home=tmp_path, port=listener.getsockname()[1])
        with pytest.raises(StackError, match="is in use"):
            stack.start()
        stack.stop()
    assert not (tmp_path / "logs" / "up.log").exists()
