"""Children of `duetide up` that die with it, even when it is SIGKILLed.

Each child runs in its own session (so a Ctrl-C in the terminal reaches `up` alone and
`up` stops them in order), which also means nothing kills them when `up` dies without a
chance to clean up: they would hold their ports and the next `up` would refuse to start.
On Linux the kernel can send a signal to a process when its parent dies
(`prctl(PR_SET_PDEATHSIG)`); it survives `execve`, so this module is a tiny wrapper that
sets it and then execs the real command, keeping the pid:

    python -m duetide_tools.local.orphans PARENT_PID COMMAND [ARG ...]

It is a wrapper rather than a `preexec_fn` because `up` forks while threads run (log
pumps, dispatchers, the supervisor), and running Python between fork and exec in a
threaded parent can deadlock. The kernel's "parent" is the *thread* that forked: the
stack spawns from its main thread and its supervisor thread, which both outlive the
children (see `duetide_tools.local.stack`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def supported() -> bool:
    return sys.platform.startswith("linux")


def guarded(command: list[str]) -> list[str]:
    """`command` wrapped so that it is SIGKILLed when this process dies (Linux only)."""
    if not supported():
        return command
    return [sys.executable, "-m", "duetide_tools.local.orphans", str(os.getpid()), *command]


def main(argv: list[str]) -> None:
    parent, command = int(argv[0]), argv[1:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
