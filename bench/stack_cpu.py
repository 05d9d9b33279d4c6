"""Where a stack's CPU goes: the seconds each of its processes spent over a run, by what
the process is, per unit of work (a completion, a reminder).

A stack's processes are found by their environment (the DUETIDE_HOME they were started
with) and PostgreSQL's by name; the CPU is user + system time from /proc, threads
included, so a process's idle waiting costs nothing here.
"""

from __future__ import annotations

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

Snapshot = dict[int, tuple[str, float]]


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` (its threads included), from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def label(pid: int) -> str:
    """What a process of the stack is: a function by its --target, else by its program."""
    command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    if b"--target" in command:
        return command[command.index(b"--target") + 1].decode()
    if Path(f"/proc/{pid}/comm").read_text().strip() == "postgres":
        return "postgres (every backend on the machine)"
    program = Path(command[0].decode(errors="replace")).name
    if program.startswith("tansu"):
        return "broker (tansu)"
    return "dispatchers and ping (duetide up)" if program.startswith("python") else program


def stack_processes(home: Path) -> list[int]:
    """The stack's processes (their environment names its DUETIDE_HOME) and PostgreSQL's,
    this process left out (its own share is the caller's to add)."""
    marker = f"DUETIDE_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            postgres = (entry / "comm").read_text().strip() == "postgres"
            if postgres or marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def snapshot(home: Path) -> Snapshot:
    taken = {}
    for pid in stack_processes(home):
        try:
            taken[pid] = (label(pid), cpu_seconds(pid))
        except OSError:  # gone meanwhile (a PostgreSQL backend)
            continue
    return taken


def per_unit(
    before: Snapshot, after: Snapshot, own: tuple[str, float], units: int
) -> dict[str, float]:
    """ms of CPU per unit of work by process kind between two snapshots, with this
    process's own seconds (`own`: its label and seconds) beside them, and `all`."""
    spent: dict[str, float] = {own[0]: own[1]}
    for pid, (kind, seconds) in after.items():
        spent[kind] = spent.get(kind, 0.0) + seconds - before.get(pid, (kind, 0.0))[1]
    per = {kind: round(s * 1000 / max(units, 1), 2) for kind, s in spent.items()}
    per["all"] = round(sum(per.values()), 2)
    return per


def table(columns: dict[str, dict[str, float]]) -> str:
    """A Markdown table of `per_unit` results: a row per process kind, costliest first,
    `all` last, and a column per run (its name the key of `columns`)."""
    kinds = sorted({kind for per in columns.values() for kind in per} - {"all"})
    kinds.sort(key=lambda kind: -max(per.get(kind, 0.0) for per in columns.values()))
    lines = ["| process | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for kind in [*kinds, "all"]:
        cells = " | ".join(str(per.get(kind, "")) for per in columns.values())
        lines.append(f"| {kind} | {cells} |")
    return "\n".join(lines)


def tree_cpu_seconds(pid: int) -> float:
    """`cpu_seconds` of `pid` and of its children's children and so on (a gunicorn master
    and its worker), those alive at the time of the call."""
    total, pending = 0.0, [pid]
    while pending:
        current = pending.pop()
        try:
            total += cpu_seconds(current)
            for task in Path(f"/proc/{current}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
        except OSError:  # gone meanwhile
            continue
    return total
