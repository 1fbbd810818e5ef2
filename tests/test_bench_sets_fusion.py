"""bench/bench_sets_fusion.py runs to its end (a smoke run at tiny sizes), so it cannot rot."""

import json
import os
import subprocess
import sys

import pytest

from tests.fixtures_training import REPO


@pytest.mark.slow
def test_bench_sets_fusion_smoke_run_writes_its_tables(tmp_path):
    cmd = [
        sys.executable, "bench/bench_sets_fusion.py", "--tiny", "--stores", "halves,one-signal",
        "--stores_dir", str(tmp_path / "stores"), "--runs", str(tmp_path / "runs"),
        "--pipelines", "sets_weighted,sets_weighted+prior,concat", "--probe_cs", "0.1,1",
        "--json", str(tmp_path / "out.json"), "--md", str(tmp_path / "out.md"),
        "--", "--trainer.max_steps", "12",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads((tmp_path / "out.json").read_text())
    assert set(out) == {"halves", "one-signal"}
    halves = out["halves"]["rows"]
    sets = ["backbone_a", "backbone_b", "caption_text", "zeroshot"]
    expected = {*(f"probe:{s}" for s in sets), "probe:concat", "sets_weighted",
                "sets_weighted+prior", "concat", "stack:sets", "stack:sets+concat"}  # fmt: skip
    assert set(halves) == expected
    # One weight per set in the weighted head (shares summing to 1), the prior's own.
    weights = halves["sets_weighted"]["weights"]
    assert list(weights) == sets and abs(sum(weights.values()) - 1) < 1e-6
    assert "prior:zeroshot" in halves["sets_weighted+prior"]["weights"]
    for row in halves.values():
        assert 0 <= row["test"] <= 1
    summary = out["one-signal"]["summary"]
    assert summary["best_single_probe"]["name"].startswith("probe:")
    assert 0 < summary["bayes_all"] <= 1
    # The stacks' weights: one share per member, the concat fit one more member.
    assert list(halves["stack:sets+concat"]["weights"]) == [*sets, "concat"]
    table = (tmp_path / "out.md").read_text()
    assert "### `halves`" in table and "| sets_weighted+prior |" in table
    # --merge: two runs' rows as one, no fit; the tables again.
    one = {"halves": out["halves"]}
    (tmp_path / "one.json").write_text(json.dumps(one))
    (tmp_path / "two.json").write_text(json.dumps({"one-signal": out["one-signal"]}))
    merge = [sys.executable, "bench/bench_sets_fusion.py", "--merge", str(tmp_path / "one.json"),
             str(tmp_path / "two.json"), "--json", str(tmp_path / "merged.json")]  # fmt: skip
    proc = subprocess.run(merge, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "merged.json").read_text()) == out
