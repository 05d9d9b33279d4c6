"""The atheris target in CI: every seed replays cleanly, then a bounded coverage-guided run.

A crash leaves the input in the test's tmp_path (`crash-*`) and its Base64 in the output;
add it to tests/fuzz/corpus/ as `regression_<what>` once fixed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
SEEDS = HERE / "corpus"
FUZZ_SECONDS = int(os.environ.get("DUETIDE_FUZZ_SECONDS", "20"))

pytest.importorskip("atheris", reason="atheris has wheels for Linux and Python < 3.13 only")


@pytest.mark.parametrize("seed", sorted(p.name for p in SEEDS.iterdir()))
def test_seed_inputs_replay_without_a_crash(seed: str) -> None:
    from tests.fuzz.fuzz_inputs import test_one_input

    test_one_input((SEEDS / seed).read_bytes())


def test_fuzzing_cloudevents_and_rrules_finds_no_crash(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"  # new inputs go here, never into the checked-in seeds
    shutil.copytree(SEEDS, corpus)
    command = [
        *(sys.executable, str(HERE / "fuzz_inputs.py"), str(corpus)),
        f"-max_total_time={FUZZ_SECONDS}",
        "-timeout=10",  # one input slower than this is a finding (unbounded expansion)
        "-rss_limit_mb=2048",
        "-max_len=1024",
        f"-dict={HERE / 'fuzz.dict'}",
        f"-artifact_prefix={tmp_path}/",
        "-print_final_stats=1",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=FUZZ_SECONDS + 120
    )
    output = result.stderr + result.stdout
    assert result.returncode == 0, output[-6000:]
    assert "Done " in output, output[-3000:]
