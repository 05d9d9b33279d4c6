"""What a stopping stack's broker still holds for its readers (the I/O against the
embedded broker is in tests/integration/test_local_backlog.py)."""

from __future__ import annotations

from kafka import TopicPartition

from duetide_tools.local.backlog import not_taken

EVENTS = [TopicPartition("events", 0), TopicPartition("events", 1)]
DEAD = TopicPartition("dead-letters", 0)
READERS = {"events": ["recurrence", "notify"], "dead-letters": []}


def test_every_reader_at_every_end_and_no_dead_letter_leaves_nothing():
    ends = {EVENTS[0]: 7, EVENTS[1]: 3, DEAD: 0}
    committed = {"recurrence": {EVENTS[0]: 7, EVENTS[1]: 3}, "notify": {EVENTS[0]: 7, EVENTS[1]: 3}}
    assert not_taken({}, ends, committed, READERS) == 0


def test_each_reader_behind_counts_what_it_has_not_taken():
    ends = {EVENTS[0]: 7, EVENTS[1]: 3, DEAD: 0}
    committed = {"recurrence": {EVENTS[0]: 5, EVENTS[1]: 3}, "notify": {EVENTS[0]: 7, EVENTS[1]: 2}}
    assert not_taken({}, ends, committed, READERS) == 3


def test_a_group_that_never_committed_on_a_partition_has_taken_none_of_it():
    ends = {EVENTS[0]: 7, EVENTS[1]: 3, DEAD: 0}
    committed = {"recurrence": {EVENTS[0]: 7, EVENTS[1]: -1}, "notify": {EVENTS[0]: 7}}
    assert not_taken({}, ends, committed, READERS) == 6


def test_records_on_a_topic_nobody_reads_count_from_its_start():
    ends = {EVENTS[0]: 0, EVENTS[1]: 0, DEAD: 5}
    assert not_taken({DEAD: 2}, ends, {}, READERS) == 3


def test_an_offset_past_the_end_or_before_the_start_counts_within_the_partition():
    ends = {EVENTS[0]: 7, EVENTS[1]: 3, DEAD: 0}
    starts = {EVENTS[0]: 4, EVENTS[1]: 0, DEAD: 0}
    committed = {"recurrence": {EVENTS[0]: 1, EVENTS[1]: 9}, "notify": {EVENTS[0]: 7, EVENTS[1]: 3}}
    assert not_taken(starts, ends, committed, READERS) == 3
