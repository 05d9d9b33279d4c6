"""Where a topic read starts and stops (the I/O is in tests/integration/test_deadletters.py)."""

from __future__ import annotations

from duetide_tools.topic_reader import caught_up, first_offsets, targets


def test_a_read_waits_for_every_partitions_first_fetch():
    assert targets({0: 5, 1: None}, {0: 5, 1: 9}) is None


def test_the_listed_end_of_a_burst_is_too_low_and_the_fetch_high_watermark_wins():
    # Offsets 0-4 written as batches [0], [1], [2, 3, 4]: Tansu lists the end as 3.
    stop_at = targets({0: 5}, {0: 3})
    assert stop_at == {0: 5}
    assert not caught_up({0: 3}, stop_at)  # where the old reader stopped
    assert caught_up({0: 5}, stop_at)


def test_a_listed_end_beyond_the_fetched_high_watermark_is_read_to_as_well():
    assert targets({0: 2, 1: 0}, {0: 4, 1: 0}) == {0: 4, 1: 0}
    assert caught_up({0: 4, 1: 0}, {0: 4, 1: 0})
    assert not caught_up({0: 3, 1: 0}, {0: 4, 1: 0})


def test_a_limit_starts_before_the_listed_end_but_never_before_the_beginning():
    assert first_offsets({0: 0, 1: 7}, {0: 3, 1: 9}, None) == {0: 0, 1: 7}
    assert first_offsets({0: 0, 1: 7}, {0: 3, 1: 9}, 2) == {0: 1, 1: 7}
