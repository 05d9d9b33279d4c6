"""The time zone names a user may give: IANA's, the same on every replica.

`ZoneInfo` also opens whatever file the host's zone folder holds under a name:
`localtime` (the host's own zone, so replicas on differently set-up hosts computed
different times for one series), `right/...` (clocks counting leap seconds, 27 s off)
and `posix/...`. A name is taken if IANA's list (the tzdata package's `zones`) has it.
"""

from __future__ import annotations

import functools
import zoneinfo
from importlib import resources


@functools.cache
def names() -> frozenset[str]:
    """IANA's zone names (read once, under a millisecond); without the tzdata package,
    what the host lists that is not its own zone."""
    try:
        return frozenset(resources.files("tzdata").joinpath("zones").read_text().split())
    except (ModuleNotFoundError, FileNotFoundError):
        return frozenset(zoneinfo.available_timezones()) - {"localtime"}


def is_iana(name: object) -> bool:
    return isinstance(name, str) and name in names()
