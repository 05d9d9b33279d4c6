"""What a new `duetide up` sends again: everything sent since the last run's embedded
broker started, as the stack keeps that time in its home (the broker's records were in
its memory only)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from duetide_tools.local.stack import BROKER_START_FILE, Stack


def stack_on(home: Path, messages: list[str]) -> Stack:
    return Stack(root=home, home=home, report=messages.append)


def test_a_home_no_broker_ran_on_has_nothing_to_send_again(tmp_path: Path) -> None:
    messages: list[str] = []
    assert stack_on(tmp_path, messages)._last_broker_start() is None
    assert messages == []


def test_the_last_runs_broker_start_is_read_back_to_the_microsecond(tmp_path: Path) -> None:
    started = datetime(2026, 12, 4, 17, 51, 24, 517482, tzinfo=UTC)
    (tmp_path / BROKER_START_FILE).write_text(started.isoformat() + "\n")
    assert stack_on(tmp_path, [])._last_broker_start() == started


def test_a_kept_start_that_is_not_a_time_is_ignored_and_said(tmp_path: Path) -> None:
    (tmp_path / BROKER_START_FILE).write_text("yesterday\n")
    messages: list[str] = []
    assert stack_on(tmp_path, messages)._last_broker_start() is None
    assert messages == [
        f"duetide: {tmp_path / BROKER_START_FILE} is not a time ('yesterday'); ignored"
    ]
