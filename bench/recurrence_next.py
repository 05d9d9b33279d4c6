"""Next occurrence of old series: duetide's re-anchored `SeriesRule.next` against the
baseline of dateutil's `rrule.after()`, which iterates from DTSTART."""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

from dateutil.rrule import rrulestr

from duetide.rules.recurrence import parse

ZONE = ZoneInfo("Europe/Berlin")
CASES = {
    "daily from 10 years ago": ("FREQ=DAILY", datetime(2016, 11, 23, 9, 0)),
    "every 15 min 09:00-17:45 (BYHOUR+BYMINUTE) from 10 years ago": (
        "FREQ=DAILY;BYHOUR=9,10,11,12,13,14,15,16,17;BYMINUTE=0,15,30,45",
        datetime(2016, 11, 23, 9, 0),
    ),
    "last workday of month (BYSETPOS) from 10 years ago": (
        "FREQ=MONTHLY;BYDAY=MO,TU,WE,TH,FR;BYSETPOS=-1",
        datetime(2016, 11, 30, 9, 0),
    ),
}


def _timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000, max(samples) * 1000


def run(repeat: int = 20) -> list[dict[str, object]]:
    rows = []
    for name, (text, start) in CASES.items():
        rule = parse(text, "Europe/Berlin", start.replace(tzinfo=ZONE))
        baseline = rrulestr(text, dtstart=start)
        # The latest occurrence before "now" (2026-11-23): what a completion event names.
        now = datetime(2026, 11, 23, 12, 0)
        previous = baseline.before(now)
        assert previous is not None, name
        index = baseline.between(start, previous, inc=True).__len__() - 1
        previous_at = previous.replace(tzinfo=ZONE)
        ours = rule.next(previous_at, index)
        assert ours is not None
        expected = baseline.after(previous)
        assert ours.scheduled_at.replace(tzinfo=None) == expected, (name, ours, expected)
        ours_ms = _timed(functools.partial(rule.next, previous_at, index), repeat)
        base_ms = _timed(functools.partial(baseline.after, previous), repeat)
        rows.append(
            {
                "case": name,
                "duetide next() median ms": round(ours_ms[0], 3),
                "duetide max ms": round(ours_ms[1], 3),
                "dateutil after() median ms": round(base_ms[0], 3),
                "dateutil max ms": round(base_ms[1], 3),
                "speed-up": f"{base_ms[0] / ours_ms[0]:.0f}x",
            }
        )
    return rows


def describe() -> str:
    return "previous occurrence = the last one before 2026-11-23; both answers checked equal"


if __name__ == "__main__":
    for row in run():
        print(row)
