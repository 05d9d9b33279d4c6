"""ISO 8601 durations as the API shows them: the readable form a person would write.

Durations are stored as whole seconds, so the text a client sent is not kept; the
answer is its canonical form instead, largest units first and none of them zero:
`PT15M` for 900 s (never `PT900S`), `P1D`, `PT1H30M`, `P1DT2H`. Days are 24 hours, as
everywhere in the API (a reminder `P1D` before a due time is 86,400 s before it).
"""

from __future__ import annotations

_UNITS = (("D", 86_400), ("H", 3_600), ("M", 60), ("S", 1))


def iso_duration(seconds: int) -> str:
    """`seconds` (0 or more) as `PnDTnHnMnS` with the zero parts left out; 0 is `PT0S`."""
    if seconds < 0:
        raise ValueError("a duration here is never negative")
    parts: dict[str, int] = {}
    rest = seconds
    for unit, size in _UNITS:
        parts[unit], rest = divmod(rest, size)
    days = f"{parts['D']}D" if parts["D"] else ""
    time = "".join(f"{parts[u]}{u}" for u in "HMS" if parts[u])
    if not days and not time:
        return "PT0S"
    return "P" + days + (f"T{time}" if time else "")
