"""Summaries of a py-spy profile in its `--format raw` output (collapsed stacks: one line
per distinct stack, `outer;...;inner count`).

py-spy leaves out idle threads by default (blocked in a system call: waiting for a
socket, a lock, the GIL), so a sample is a thread on the CPU. "Own" is where the CPU
was (the innermost frame), "total" includes everything a function called. Functions are
named without their line numbers, so one function is one entry; a package is the first
folder of the file py-spy names (`sqlalchemy`, `json`, `asyncio`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\((.*)\)$")


@dataclass(frozen=True)
class Summary:
    samples: int
    own: list[tuple[str, int]]
    total: list[tuple[str, int]]
    own_by_package: list[tuple[str, int]]
    total_in: list[tuple[str, int]]  # functions of the `focus` packages, with callees


def function_of(frame: str) -> str:
    return _LINE.sub(")", frame.strip())


def package_of(frame: str) -> str:
    """The package (or top-level module) of a frame's file, as py-spy shortens it:
    `sqlalchemy/orm/session.py` is sqlalchemy, `threading.py` threading."""
    found = _FILE.search(frame.strip())
    path = found.group(1).rsplit(":", 1)[0] if found else "?"
    return path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")


def summarize(raw: str, top: int = 15, focus: tuple[str, ...] = ()) -> Summary:
    """The `top` functions by own and by total time, own time by package, and the `top`
    functions by total time among those whose package is in `focus` (the application's
    own code, which the generic frames above it would crowd out of `total`)."""
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    samples = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if f.strip()]
        if not frames:
            continue
        samples += count
        own[function_of(frames[-1])] += count
        packages[package_of(frames[-1])] += count
        for name in {function_of(f) for f in frames}:
            total[name] += count
    focused = Counter({name: n for name, n in total.items() if package_of(name) in focus})
    return Summary(
        samples,
        own.most_common(top),
        total.most_common(top),
        packages.most_common(),
        focused.most_common(top),
    )
