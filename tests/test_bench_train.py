"""bench/bench_train.py runs to its end (a smoke run at tiny sizes), so it cannot rot."""

import os
import subprocess
import sys

import pytest

from tests.fixtures_training import REPO


@pytest.mark.slow
def test_bench_train_smoke_run_prints_its_tables():
    cmd = [
        sys.executable, "bench/bench_train.py", "--rows", "2000", "--dim", "32",
        "--classes", "20", "--hidden", "64", "--rounds", "1", "--batch_sizes", "64",
        "--predict_rows", "200", "--original_rows", "300", "--threads", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for row in ("plain loop (fp32 floor)", "| trainer, s/epoch", "| trainer, DataLoader, s/epoch",
                "**trainer / plain**", "original HF-rows path", "batched `predict_probs`",
                "**speed-up**"):  # fmt: skip
        assert row in out, row
