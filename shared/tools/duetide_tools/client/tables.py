"""The API's answers as plain-text tables and lines, times in the reader's zone."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from typing import Any

MAX_CELL = 48
_CONTROLS = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
"""What a terminal would act on rather than show: C0 but tab and line feed, DEL, C1
(0x9b is CSI in 8-bit terminals), and the bidirectional overrides that reorder a line."""


def terminal_text(text: str) -> str:
    """`text` with every control a terminal would act on shown as its escape. A title is
    whatever its writer sent (a producing system's command, say): `\x1b]52;c;...\x07`
    printed by `task ls` would have set the reader's clipboard."""
    return _CONTROLS.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def when(value: str | None, zone: tzinfo) -> str:
    """An RFC 3339 instant as `YYYY-MM-DD HH:MM` with the reader's zone's abbreviation
    (`UTC`, `CET`); "-" for none. Without it, `14:00` beside a series' `America/New_York`
    read as 14:00 in New York."""
    if not value:
        return "-"
    try:
        return datetime.fromisoformat(value).astimezone(zone).strftime("%Y-%m-%d %H:%M %Z")
    except ValueError:
        return value


def _columns(char: str) -> int:
    """The terminal columns `char` takes: two for East Asian wide and full-width ones
    (CJK, most emoji), none for a combining mark."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in "WF" else 1


def _width(text: str) -> int:
    return sum(_columns(char) for char in text)


def _cell(value: object) -> str:
    """One line, its controls escaped, at most MAX_CELL columns: measured in characters,
    a tag `家` pushed every column after it one cell right (an audit, 2026-12-07)."""
    text = terminal_text(" ".join(str(value).split()))
    if _width(text) <= MAX_CELL:
        return text
    kept, used = [], 0
    for char in text:
        used += _columns(char)
        if used > MAX_CELL - 1:
            break
        kept.append(char)
    return "".join(kept) + "…"


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, Callable[..., Any]]]) -> str:
    """Left-aligned columns under upper-case headings; the last column is not padded."""
    cells = [[_cell(render(row)) for _, render in columns] for row in rows]
    heads = [name for name, _ in columns]
    widths = [max([len(h)] + [_width(r[i]) for r in cells]) for i, h in enumerate(heads)]
    lines = [heads, *cells]
    return "\n".join(
        "  ".join(c + " " * (w - _width(c)) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def tasks(items: Sequence[dict[str, Any]], zone: tzinfo) -> str:
    return table(
        items,
        [
            ("ID", lambda t: t["id"]),
            ("STATUS", lambda t: t["status"]),
            ("DUE", lambda t: when(t.get("due_at"), zone)),
            ("PRIORITY", lambda t: t["priority"]),
            ("TAGS", lambda t: ",".join(t.get("tags") or []) or "-"),
            ("SERIES", lambda t: "yes" if t.get("series_id") else "-"),
            ("TITLE", lambda t: t["title"]),
        ],
    )


def task_line(task: dict[str, Any], zone: tzinfo) -> str:
    due = when(task.get("due_at"), zone)
    extra = f", series {task['series_id']}" if task.get("series_id") else ""
    return f"{task['id']}  {task['status']}  due {due}  {task['title']}{extra}"


def series(items: Sequence[dict[str, Any]], zone: tzinfo) -> str:
    return table(
        items,
        [
            ("ID", lambda s: s["id"]),
            ("STATUS", lambda s: s["status"]),
            ("LATEST", lambda s: when(s.get("last_scheduled_at"), zone)),
            ("RULE", lambda s: s["rrule"]),
            ("TIMEZONE", lambda s: s["timezone"]),
            ("TITLE", lambda s: s["title"]),
        ],
    )


def series_detail(
    found: dict[str, Any], open_one: dict[str, Any] | None, upcoming: Sequence[str], zone: tzinfo
) -> str:
    """The series, its open occurrence (at its due time, which may have been moved from
    its scheduled one) and the occurrences after it."""
    lines = [
        f"{found['id']}  {found['status']}  {found['title']}",
        f"  rule      {found['rrule']}  ({found['timezone']})",
        f"  policies  mode={found['mode']} month_end={found['month_end']} "
        f"catch_up={found['catch_up']}",
        f"  started   {when(found['start'], zone)}",
        f"  latest    {when(found['last_scheduled_at'], zone)} (occurrence {found['last_index']})",
    ]
    if open_one is not None:
        lines.append(f"  open      {when(open_one.get('due_at'), zone)}  {open_one['id']}")
    if upcoming:
        lines.append("  next      " + ", ".join(when(at, zone) for at in upcoming))
    return "\n".join(lines)


def notifications(items: Sequence[dict[str, Any]], zone: tzinfo) -> str:
    return table(
        items,
        [
            ("DELIVERED", lambda n: when(n["delivered_at"], zone)),
            ("STATUS", lambda n: n["status"]),
            ("CHANNEL", lambda n: n["channel"]),
            ("TASK", lambda n: n["task_id"]),
            ("DETAIL", lambda n: n.get("detail") or "-"),
        ],
    )
