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
