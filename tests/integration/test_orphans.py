"""A child started through `duetide_tools.local.orphans` dies with its parent, even on SIGKILL.

Real processes: a parent Python process spawns a long sleep in its own session (as
`duetide up` spawns its children), the test SIGKILLs the parent and awaits the child's end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from duetide_tools.local import orphans
from tests.support import wait_for

pytestmark = pytest.mark.skipif(not orphans.supported(), reason="PR_SET_PDEATHSIG is Linux only")

SHARED = str(Path(orphans.__file__).resolve().parents[2])
PARENT = """
import subprocess, sys
from duetide_tools.local import orphans
command = orphans.guarded(["sleep", "60"]) if sys.argv[1] == "guarded" else ["sleep", "60"]
child = subprocess.Popen(command, start_new_session=True)
print(child.pid, flush=True)
child.wait()
"""


def alive(pid: int) -> bool:
    """Running (not a zombie awaiting its reaper, not gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def spawn_parent(mode: str) -> tuple[subprocess.Popen[str], int]:
    env = {**os.environ, "PYTHONPATH": SHARED}
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT, mode], env=env, stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    wait_for(lambda: Path(f"/proc/{child}/cmdline").read_bytes().startswith(b"sleep"), "exec")
    return parent, child


def test_a_guarded_child_is_killed_when_its_parent_is_sigkilled():
    parent, child = spawn_parent("guarded")
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait(timeout=10)
    wait_for(lambda: not alive(child), "the child to die with its parent", timeout_s=10)


def test_without_the_guard_the_child_outlives_its_parent():
    """The failure the guard prevents (so the test above can tell the difference)."""
    parent, child = spawn_parent("plain")
    try:
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_the_guard_keeps_the_pid_and_the_exit_status_of_the_command():
    process = subprocess.Popen(orphans.guarded(["sh", "-c", "exit 7"]))
    assert process.wait(timeout=10) == 7


def test_a_parent_already_gone_when_the_guard_runs_means_no_child():
    """The race between the parent's death and prctl: the wrapper checks its parent."""
    wrapper = [sys.executable, "-m", "duetide_tools.local.orphans", "1", "sleep", "60"]
    process = subprocess.Popen(wrapper, env={**os.environ, "PYTHONPATH": SHARED})
    assert process.wait(timeout=10) == 1
