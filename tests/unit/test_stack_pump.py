"""`duetide up` copies a function's output by the chunk: the log file gets every byte, the
console whole lines, each with the function's name."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from duetide_tools.local import stack


def test_the_log_gets_every_byte_and_the_console_whole_named_lines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stack, "_PUMP_CHUNK", 7)  # lines split across reads
    output = b'{"event": "one"}\n{"event": "two"}\nno newline at the end'
    log = tmp_path / "notify.log"
    stack._pump("notify", io.BufferedReader(io.BytesIO(output)), log, echo=True)
    assert log.read_bytes() == output
    assert capsys.readouterr().out.splitlines() == [
        '[notify] {"event": "one"}',
        '[notify] {"event": "two"}',
        "[notify] no newline at the end",
    ]


class _ClosedConsole(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_a_console_that_went_away_stops_the_echo_not_the_copy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`duetide up | cat` and the cat killed: the pump ended at its first line, nothing
    read the function's output, and the function hung in its logging (an audit)."""
    monkeypatch.setattr(stack, "_PUMP_CHUNK", 7)
    output = b"line\n" * 1000
    stream = io.BufferedReader(io.BytesIO(output))
    monkeypatch.setattr("sys.stdout", _ClosedConsole())
    log = tmp_path / "tasks.log"
    stack._pump("tasks", stream, log, echo=True)
    assert log.read_bytes() == output  # every byte, read to the end
    assert "no longer shown on the console" in capsys.readouterr().err


@pytest.mark.parametrize("where", ["a directory", "a full disk"])
def test_a_log_file_that_cannot_be_written_is_said_once_and_the_output_still_read(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A full disk (here /dev/full, which answers every write with ENOSPC) or a log
    file made unwritable: each ended the pump, and the function hung (an audit)."""
    monkeypatch.setattr(stack, "_PUMP_CHUNK", 7)
    log = tmp_path if where == "a directory" else Path("/dev/full")
    output = b"line\n" * 1000
    stream = io.BufferedReader(io.BytesIO(output))
    stack._pump("tasks", stream, log, echo=True)
    assert stream.read() == b""  # read to the end
    captured = capsys.readouterr()
    assert captured.out.count("[tasks] line\n") == 1000  # the console still gets it all
    assert captured.err.count("cannot be written") == 1
