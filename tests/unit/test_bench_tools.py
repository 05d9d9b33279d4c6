"""The helpers bench/api_mix.py reports with: py-spy summaries, merged wrk latencies."""

from __future__ import annotations

from bench.api_mix import QUANTILES, _merged
from bench.pyspy import package_of, summarize


def test_a_profile_summary_counts_own_time_at_the_innermost_frame_and_total_once_per_stack() -> (
    None
):
    run, get = "run (threading.py:982)", "get (sqlalchemy/orm/session.py:10)"
    raw = "\n".join(
        [
            f"{run};handle (duetide/web/api.py:612);{get} 6",
            f"{run};handle (duetide/web/api.py:613);handle (duetide/web/api.py:700) 3",
            f"{run} 1",
        ]
    )
    found = summarize(raw, top=3, focus=("duetide",))
    assert found.samples == 10
    assert found.own == [
        ("get (sqlalchemy/orm/session.py)", 6),
        ("handle (duetide/web/api.py)", 3),
        ("run (threading.py)", 1),
    ]
    # a recursive function counts once per stack, and line numbers do not split it
    assert found.total[:2] == [("run (threading.py)", 10), ("handle (duetide/web/api.py)", 9)]
    assert dict(found.own_by_package) == {"sqlalchemy": 6, "duetide": 3, "threading": 1}
    assert found.total_in == [("handle (duetide/web/api.py)", 9)]


def test_a_frame_belongs_to_the_first_folder_of_its_file() -> None:
    assert package_of("execute (psycopg/cursor.py:97)") == "psycopg"
    assert package_of("Thread.run (threading.py:982)") == "threading"
    assert package_of("<module> (<string>:1)") == "<string>"


def _wrk_output(requests: int, per_s: float, quantile_us: list[int], non_2xx: int = 0) -> str:
    lines = [
        f"  {requests} requests in 20.00s, 1.00MB read",
        *([f"  Non-2xx or 3xx responses: {non_2xx}"] if non_2xx else []),
        f"Requests/sec:    {per_s}",
        "mix get 3",
        "status 200 7",
    ]
    return "\n".join(lines + [f"quantile {value}" for value in quantile_us])


def test_merged_wrk_runs_weigh_each_run_by_its_requests() -> None:
    fast = [1000] * QUANTILES  # 300 requests, all 1 ms
    slow = [1000 * (i // (QUANTILES // 10) + 10) for i in range(QUANTILES)]  # 10 ms to 19 ms
    merged = _merged([_wrk_output(300, 15.0, fast), _wrk_output(100, 5.0, slow, non_2xx=2)])
    assert (merged.requests, merged.per_s, merged.failed) == (400, 20.0, 2)
    assert merged.mix == {"get": 6} and merged.statuses == {"200": 14}
    assert merged.p50_ms == 1.0  # three quarters of the requests took 1 ms
    assert merged.p99_ms == 19.0  # the slowest 4% of the slow run's quarter
