"""OffsetTrail: which of a poll's records follow on, and what becomes of a hole."""

from __future__ import annotations

from duetide_tools.local.eventing import HOLE_RECHECK_S, Followed, OffsetTrail


def test_the_first_records_of_an_assignment_start_the_trail_wherever_they_are() -> None:
    trail = OffsetTrail()
    assert trail.follow([40, 41, 42], now=0.0) == Followed(3)
    assert trail.next_offset == 43


def test_records_that_follow_on_are_all_taken() -> None:
    trail = OffsetTrail(next_offset=5)
    assert trail.follow([5, 6], now=0.0) == Followed(2)
    assert trail.follow([7], now=0.0) == Followed(1)
    assert trail.next_offset == 8


def test_a_hole_cuts_the_records_there_and_asks_for_them_again() -> None:
    trail = OffsetTrail(next_offset=5)
    assert trail.follow([5, 6, 9, 10], now=0.0) == Followed(2, refetch_from=7)
    assert trail.next_offset == 7
    assert trail.follow([9, 10], now=HOLE_RECHECK_S / 2) == Followed(0, refetch_from=7)


def test_a_hole_filled_when_fetched_again_is_reported_and_closed() -> None:
    trail = OffsetTrail(next_offset=7)
    trail.follow([9], now=0.0)
    assert trail.follow([7, 8, 9], now=0.01) == Followed(3, filled=7)
    assert trail.hole is None and trail.next_offset == 10


def test_a_hole_still_there_after_the_recheck_is_passed_over_once() -> None:
    trail = OffsetTrail(next_offset=7)
    trail.follow([9], now=0.0)
    assert trail.follow([9, 10], now=HOLE_RECHECK_S) == Followed(2, passed=(7,))
    assert trail.hole is None
    # a second hole further on gets its own recheck
    assert trail.follow([12], now=HOLE_RECHECK_S) == Followed(0, refetch_from=11)


def test_a_new_hole_restarts_the_clock() -> None:
    trail = OffsetTrail(next_offset=7)
    trail.follow([9], now=0.0)
    trail.follow([7, 8, 12], now=0.05)  # 7 filled, then a hole at 9
    assert trail.hole == (9, 0.05)
    assert trail.follow([12], now=HOLE_RECHECK_S) == Followed(0, refetch_from=9)
