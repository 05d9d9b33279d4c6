"""The restart policy of `duetide up` and how it reports a death."""

from __future__ import annotations

import signal
from datetime import UTC, datetime

from duetide_tools.local.supervision import Restart, RestartPolicy, describe_exit


def test_the_delay_doubles_with_each_death_in_a_row_up_to_the_cap():
    policy = RestartPolicy(base_s=0.5, cap_s=30.0)
    assert [policy.delay(n) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]


def test_a_healthy_run_starts_the_count_over():
    policy = RestartPolicy(healthy_after_s=10.0)
    assert policy.failures_after(0, uptime_s=0.1) == 1
    assert policy.failures_after(4, uptime_s=2.0) == 5  # crash loop: longer waits
    assert policy.failures_after(4, uptime_s=10.0) == 1  # it ran long enough: shortest wait


def test_exits_are_described_by_code_or_signal():
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(-signal.SIGTERM) == "killed by SIGTERM"
    assert describe_exit(3) == "exited with code 3"
    assert describe_exit(-200) == "killed by signal 200"
    assert describe_exit(None) == "is running"


def test_a_restart_says_which_child_how_it_ended_and_when_it_comes_back():
    at = datetime(2026, 1, 1, tzinfo=UTC)
    first = Restart("recurrence", 41, -signal.SIGKILL, 1, 0.5, at)
    assert first.line() == "recurrence (pid 41) killed by SIGKILL; restarting in 0.5 s"
    again = Restart("broker", 42, 1, 3, 2.0, at)
    assert again.line() == (
        "broker (pid 42) exited with code 1; restarting in 2 s (death 3 in a row)"
    )
