"""The per-user read budget's arithmetic, on a clock the test moves."""

from __future__ import annotations

import threading

import pytest

from duetide.services.ratelimit import ReadBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_minutes_reads_come_at_once_then_one_per_refill(clock: Clock) -> None:
    budget = ReadBudget(60, clock=clock)  # one read a second

    assert [budget.take("alice") for _ in range(60)] == [0.0] * 60
    assert budget.take("alice") == pytest.approx(1.0)
    clock.now += 0.25
    assert budget.take("alice") == pytest.approx(0.75)  # a refused read takes nothing
    clock.now += 0.75
    assert budget.take("alice") == 0.0
    assert budget.take("alice") == pytest.approx(1.0)


def test_an_idle_bucket_refills_to_a_minute_and_no_more(clock: Clock) -> None:
    budget = ReadBudget(6, clock=clock)
    for _ in range(6):
        budget.take("alice")
    clock.now += 3600

    assert [budget.take("alice") for _ in range(7)][-2:] == [0.0, pytest.approx(10.0)]


def test_a_costly_read_takes_more_and_waits_for_as_many(clock: Clock) -> None:
    budget = ReadBudget(60, clock=clock)
    assert budget.take("alice", 55) == 0.0

    assert budget.take("alice", 10) == pytest.approx(5.0)  # 5 left, 5 to wait for
    assert budget.take("alice", 5) == 0.0  # the refusal took nothing
    clock.now += 60
    assert budget.take("alice", 600) == 0.0  # above the budget: a full bucket serves it
    assert budget.take("alice", 600) == pytest.approx(60.0)


def test_each_user_has_a_bucket(clock: Clock) -> None:
    budget = ReadBudget(2, clock=clock)
    budget.take("alice")
    budget.take("alice")

    assert budget.take("alice") > 0
    assert budget.take("bob") == 0.0


def test_buckets_are_bounded_and_the_least_recently_used_is_forgotten(clock: Clock) -> None:
    budget = ReadBudget(1, max_users=3, clock=clock)
    for user in ("alice", "bob", "carol"):
        budget.take(user)
    budget.take("alice")  # refused, and now the most recently used

    budget.take("dave")  # a fourth user: bob's bucket goes

    assert len(budget._buckets) == 3
    assert budget.take("bob") == 0.0  # forgotten: a full bucket, as for a new user
    assert budget.take("alice") > 0  # kept: still empty


def test_concurrent_reads_take_exactly_the_budget(clock: Clock) -> None:
    budget = ReadBudget(100, clock=clock)
    served: list[bool] = []
    start = threading.Barrier(8)

    def reader() -> None:
        start.wait()
        for _ in range(50):
            served.append(budget.take("alice") == 0.0)

    threads = [threading.Thread(target=reader) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert served.count(True) == 100 and len(served) == 400
