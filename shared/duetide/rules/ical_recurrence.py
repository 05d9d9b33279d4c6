"""A series' future as RFC 5545 recurrence properties, for the calendar export.

Pure: a stored rule and its open occurrence in, DTSTART and RRULE (or RDATEs) out.

The exported recurrence starts at the open occurrence, not at the rule's DTSTART: what
is done, skipped or missed is behind it, and a calendar app shows what is to do. So:

- COUNT is what is left of it: the open occurrence is number ``local_index`` of the rule
  (0 is the rule's DTSTART), and the recurrence set counts from itself.
- UNTIL becomes the inclusive UTC instant duetide reads it as (RFC 5545 3.3.10 wants UTC
  with a zoned DTSTART; duetide also takes a floating time or a date, up to its day's end).
- DTSTART is the occurrence's nominal wall time where it was moved by a DST gap (02:30 on
  the night clocks go to 03:30): RFC 5545 3.3.5 reads a time that does not exist with the
  offset before the gap, which is the instant duetide chose, and the occurrences after it
  keep 02:30 as their time of day, as duetide's do.
- A rule whose month ends are clamped (``month_end="clamp"``: "the 31st, or the month's
  last day") cannot be an RRULE (RFC 7529's SKIP needs RSCALE, which few apps read): its
  next ``RDATE_OCCURRENCES`` occurrences, from duetide's own rule, are RDATEs instead.
  A calendar app then shows that many; the feed shows more as they come nearer.
- In completion mode each occurrence follows from when the one before was done; the
  exported rule is the plan for each done when due (what ``forecast`` shows too). An open
  occurrence whose due time was moved is exported apart (``open_apart``), and the
  recurrence starts at the occurrence completing it when due makes. Hourly
  and minutely, that is a fixed elapsed time, which readers step as wall-clock time in a
  zoned DTSTART (an hour off after a DST change): its DTSTART is in UTC.
- A schedule-mode series that catches up to the future (``catch_up="next_future"``) and
  whose open occurrence is overdue will never make the occurrences between it and now
  (completing it records them missed). Exported from the open one, a calendar app listed
  each of them as a to-do. Its recurrence starts instead at the occurrence completing
  would make (``next()`` at ``now``), and the open one is exported apart from it
  (``open_apart``), as a one-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from duetide.rules.recurrence import NEXT_WORK, RecurrenceError, SeriesRule, forecast_budget
from duetide.rules.rrule_meter import Meter

RDATE_OCCURRENCES = 12
"""How many occurrences after the open one a series that no RRULE can say exports."""
SERIES_WORK = 2 * NEXT_WORK + forecast_budget(RDATE_OCCURRENCES)
"""The most one series' export may cost, in ``rrule_meter`` units: its catch-up, its
nominal time and its RDATEs. An export of many series checks what it has left against
this first."""


@dataclass(frozen=True)
class ExportedRecurrence:
    """DTSTART (aware, in the series' zone) and either an RRULE or the RDATEs after it;
    ``work``: what working it out cost."""

    dtstart: datetime
    rrule: str | None
    rdates: tuple[datetime, ...] = ()
    work: int = 0
    open_apart: bool = False
    """The open occurrence is not the first of this recurrence (see the module's
    docstring): it is exported on its own."""
    alone: bool = False
    """Nothing recurs: the open occurrence is exported alone (the series ends among the
    ones its catch-up skips, or the catch-up ran out of work among them)."""


def export(
    rule: SeriesRule,
    open_at: datetime,
    local_index: int,
    now: datetime,
    due_at: datetime | None = None,
) -> ExportedRecurrence:
    """The recurrence from the open occurrence (``open_at``, number ``local_index`` of
    ``rule``, due at ``due_at``) on, or from the one completing it makes where that is not
    the rule's next: it skips the ones up to ``now``, or (completion mode) the open one
    is due at another time than its schedule's, and the next follows from that. Within
    ``SERIES_WORK``; ``work`` says what it cost, whatever came of it."""
    spent, apart = 0, False
    zone = ZoneInfo(rule.timezone)
    if rule.policy.mode == "completion" and due_at is not None and due_at != open_at:
        # Exported from its schedule, a moved occurrence's successors were the days the
        # schedule gives, not those completing it when due makes, which `forecast`
        # shows and the recurrence creates (an audit, 2026-12-07).
        following = Meter(NEXT_WORK)
        try:
            ahead = rule.next(open_at, local_index, completed_at=due_at, work=following)
        except RecurrenceError:
            ahead, following.used = None, following.budget
        if ahead is None:
            return ExportedRecurrence(
                open_at.astimezone(zone), None, (), following.used, True, True
            )
        open_at, local_index, spent, apart = ahead.scheduled_at, ahead.index, following.used, True
    elif (
        rule.policy.mode == "schedule" and rule.policy.catch_up == "next_future" and open_at <= now
    ):
        catching_up = Meter(NEXT_WORK)
        try:
            ahead = rule.next(open_at, local_index, now=now, work=catching_up)
        except RecurrenceError:  # over its budget before any occurrence
            ahead, catching_up.used = None, catching_up.budget
        if ahead is None or not ahead.caught_up:  # a past one would list the rest again
            return ExportedRecurrence(
                open_at.astimezone(zone), None, (), catching_up.used, True, True
            )
        open_at, local_index, spent, apart = ahead.scheduled_at, ahead.index, catching_up.used, True
    start = open_at.astimezone(zone)
    if rule.clamp_day is not None:
        return _with_rdates(rule, start, local_index, spent, apart)
    if rule.steps_elapsed_time:
        elapsed = _rrule_from(rule, local_index)
        return ExportedRecurrence(open_at.astimezone(UTC), elapsed, (), spent, apart)
    anchoring = Meter(NEXT_WORK)
    nominal = rule.nominal_of(open_at, local_index, anchoring)
    spent += anchoring.used
    if nominal is not None:
        try:
            start = datetime.fromisoformat(nominal).replace(tzinfo=zone)
        except ValueError:  # a day past the month's end: only a clamp has one
            return _with_rdates(rule, start, local_index, spent, apart)
    return ExportedRecurrence(start, _rrule_from(rule, local_index), (), spent, apart)


def _rrule_from(rule: SeriesRule, local_index: int) -> str:
    """The stored rule in RFC 5545's spelling (duetide reads it case-insensitively, with
    blanks around its parts), with COUNT and UNTIL as the module's docstring says."""
    parts: list[str] = []
    for item in rule.rrule.upper().split(";"):
        name, _, value = (text.strip() for text in item.partition("="))
        if name == "COUNT":
            parts.append(f"COUNT={max(1, int(value) - local_index)}")
        elif name and name != "UNTIL":
            parts.append(f"{name}={value}")
    if rule.until is not None:
        parts.append(f"UNTIL={rule.until.astimezone(UTC):%Y%m%dT%H%M%SZ}")
    return ";".join(parts)


def _with_rdates(
    rule: SeriesRule, start: datetime, local_index: int, spent: int, apart: bool
) -> ExportedRecurrence:
    """Up to ``RDATE_OCCURRENCES`` occurrences after the open one (``start``), as
    materialisation yields them (in completion mode: each completed when due), in one
    walk of the rule: as many ``next()`` calls re-anchored it each time, ten times the
    work for a rule of many times a day (a calendar of 500 took 14 s to export). What
    was found within the walk's budget, if it ran out first."""
    following = rule.preview_after(
        start, local_index, RDATE_OCCURRENCES, completed_at=start, now=start
    )
    return ExportedRecurrence(start, None, following.occurrences, spent + following.work, apart)
