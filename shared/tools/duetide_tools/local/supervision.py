"""What `duetide up` does when one of its children dies: the restart policy and its record.

Pure functions only; `duetide_tools.local.stack` watches the processes and acts on them.
A child that dies is started again after a delay that doubles with each death in a row
(0.5 s, 1 s, 2 s, ... capped at 30 s), so a child that cannot start does not spin; a
child that stayed up for a healthy period starts the count again from the shortest delay.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from datetime import datetime

BASE_DELAY_S = 0.5
MAX_DELAY_S = 30.0
HEALTHY_AFTER_S = 10.0


@dataclass(frozen=True)
class RestartPolicy:
    base_s: float = BASE_DELAY_S
    cap_s: float = MAX_DELAY_S
    healthy_after_s: float = HEALTHY_AFTER_S

    def failures_after(self, failures: int, uptime_s: float) -> int:
        """The deaths in a row, counting this one: a healthy run starts the count over."""
        return 1 if uptime_s >= self.healthy_after_s else failures + 1

    def delay(self, failures: int) -> float:
        """The wait before the restart that follows `failures` deaths in a row (>= 1)."""
        return min(self.cap_s, self.base_s * 2 ** max(0, failures - 1))


def describe_exit(returncode: int | None) -> str:
    """ "killed by SIGKILL", "exited with code 3": how a child ended, for the console."""
    if returncode is None:
        return "is running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


@dataclass(frozen=True)
class Restart:
    """One death of a supervised child and the restart it got (`duetide up` keeps a list)."""

    child: str  # a function's name, or "broker"
    pid: int  # the process that died
    returncode: int  # negative: the signal that killed it
    failures: int  # deaths in a row, this one included
    delay_s: float  # the wait before the new process was started
    died_at: datetime  # when the supervisor noticed

    def line(self) -> str:
        return (
            f"{self.child} (pid {self.pid}) {describe_exit(self.returncode)}; "
            f"restarting in {self.delay_s:g} s"
            + (f" (death {self.failures} in a row)" if self.failures > 1 else "")
        )
