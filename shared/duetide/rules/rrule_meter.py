"""Counted work for python-dateutil's rrule iteration, so a sparse rule cannot run away.

dateutil gives no way to bound its iteration from outside: between two instances it walks
every FREQ period (and, for MINUTELY, every minute step towards the next BYHOUR), and UNTIL
is only checked on instances, so ``FREQ=MINUTELY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO`` walks
about ten thousand days per instance and an impossible rule walks to year 9999. A wall-clock
timeout would make answers depend on the machine's load; counting work does not.

``meter(rule, m)`` swaps two of the rule's parsed parts for tuples that charge ``m`` when
dateutil looks at them, with the same contents, so the expansion is unchanged:

- ``_bysetpos`` is read once per period (``if bysetpos and timeset`` in ``rrule._iter``):
  its truth test charges ``PERIOD_WORK[freq]``, a weight for the period's day filtering,
  times one more for each BYSETPOS value (each lists the period's days again).
- ``_byhour`` and ``_byminute`` are searched on every step of HOURLY's and MINUTELY's hunt
  for the next BYHOUR/BYMINUTE (``__mod_distance`` and MINUTELY's loop over a day's
  minutes, up to 1440 steps per period): each ``in`` charges ``STEP_WORK``.

Every list dateutil searches with ``in`` while it filters a period's days (BYMONTH,
BYWEEKDAY, BYMONTHDAY, BYYEARDAY, BYSECOND, and BYHOUR/BYMINUTE above) is swapped for a
tuple of the same items in the same order that answers ``in`` from a set: a tuple
searched item by item made each day's test cost as much as the list is long, and a
145-value BYYEARDAY ran 5-6 times the units charged (0.5 s of CPU for a rule refused
within its budget, an audit, 2026-12-07), where the charges assume a constant test.

When the budget is spent the charge raises ``WorkExhausted`` inside dateutil's generator,
which ends it. This relies on ``rrule._iter`` of python-dateutil 2.9 (pinned ``<3`` in
pyproject.toml); ``tests/unit/test_recurrence_budget.py`` checks that each period and step
is charged, so a dateutil that stopped consulting these parts fails there, not in production.

Units are calibrated to roughly 0.1 microsecond of CPU each on the reference machine
(``scripts/bench recurrence_budget`` prints the figures), so a budget reads as CPU time
without depending on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Self

from dateutil.rrule import DAILY, HOURLY, MINUTELY, MONTHLY, WEEKLY, YEARLY, rrule

PERIOD_WORK = {YEARLY: 400, MONTHLY: 60, WEEKLY: 40, DAILY: 30, HOURLY: 35, MINUTELY: 45}
"""Work charged per FREQ period dateutil expands (a YEARLY period filters 366 days)."""
STEP_WORK = 4
"""Work charged per BYHOUR/BYMINUTE membership test (HOURLY/MINUTELY stepping)."""
INSTANCE_WORK = 40
"""Work charged per instance dateutil yields (duetide turns each into a zoned instant)."""


class WorkExhausted(Exception):
    """The budget ran out. Not a ValueError, so dateutil-quirk handlers never swallow it."""


@dataclass
class Meter:
    """A work budget and what has been charged against it; never charged past ``budget``."""

    budget: int
    used: int = 0

    def charge(self, units: int) -> None:
        if self.used + units > self.budget:
            raise WorkExhausted(f"work budget of {self.budget} units spent")
        self.used += units

    @property
    def left(self) -> int:
        return self.budget - self.used


class _Members(tuple[int, ...]):
    """A dateutil BY-list that answers ``in`` in constant time; a tuple all the same
    (dateutil also iterates some of them, in order)."""

    members: frozenset[int]

    @classmethod
    def of(cls, items: tuple[int, ...]) -> Self:
        found = cls(items)
        found.members = frozenset(items)
        return found

    def __contains__(self, value: object) -> bool:
        return value in self.members


_SEARCHED = ("_bymonth", "_byweekday", "_bymonthday", "_bynmonthday", "_byyearday", "_bysecond")
"""The parts ``rrule._iter`` tests days and times against with ``in``."""


class _PeriodProbe(tuple[int, ...]):
    """``rrule._bysetpos`` that charges a period each time dateutil tests whether it is set."""

    meter: Meter
    weight: int

    def __bool__(self) -> bool:
        self.meter.charge(self.weight)
        return len(self) > 0


class _StepProbe(_Members):
    """``rrule._byhour``/``_byminute`` that charges a step on each membership test."""

    meter: Meter

    def __contains__(self, value: object) -> bool:
        self.meter.charge(STEP_WORK)
        return value in self.members


def meter(rule: rrule, m: Meter) -> rrule:
    """Make ``rule`` charge ``m`` as it iterates (see the module docstring); returns it."""
    parts = vars(rule)  # dateutil's parsed parts: private, so its stubs do not declare them
    period = _PeriodProbe(parts["_bysetpos"] or ())
    period.meter, period.weight = m, PERIOD_WORK[parts["_freq"]] * (1 + len(period))
    parts["_bysetpos"] = period
    for name in _SEARCHED:
        if parts[name]:
            parts[name] = _Members.of(parts[name])
    for name in ("_byhour", "_byminute"):
        if parts[name]:
            step = _StepProbe.of(parts[name])
            step.meter = m
            parts[name] = step
    return rule
