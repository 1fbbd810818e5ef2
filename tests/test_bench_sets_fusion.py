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


def _bench():
    sys.path.insert(0, str(REPO / "bench"))
    import bench_sets_fusion

    return bench_sets_fusion


def test_a_row_over_seeds_is_their_mean_with_the_spread_in_the_table():
    bench = _bench()
    fits = [
        {"val": 0.70, "test": 0.76, "steps": 10, "weights": {"a": 1.0}, "seconds": 2.0},
        {"val": 0.80, "test": 0.78, "steps": 12, "weights": {"a": 0.5}, "seconds": 3.0},
        {"val": 0.75, "test": 0.71, "steps": 11, "weights": {"a": 0.2}, "seconds": 1.0},
    ]
    row = bench.over_seeds(fits)
    assert row["test"] == pytest.approx((0.76 + 0.78 + 0.71) / 3)
    assert row["val"] == pytest.approx(0.75)
    assert row["test_seeds"] == [0.76, 0.78, 0.71] and row["seconds"] == 6.0
    assert row["weights"] == {"a": 1.0} and row["steps"] == 10  # the first seed's
    assert bench.over_seeds(fits[:1]) == fits[0]  # one seed: the row as it is
    rows = {"probe:a": {"val": 0.8, "test": 0.77, "seconds": 1}, "concat": row}
    results = {"s": {"rows": rows, "summary": bench.summary("s", rows, {"all": 0.9, "sets": {}})}}
    assert "| concat | 0.750 | 0.750 (0.710-0.780) |" in bench.markdown(results)
    # The goals read the mean: 2 points under the best single probe.
    assert "`concat` -2.0" in bench.goals(results)
    # A row of one seed (merged from another run) is listed but not ranked against means.
    rows["lucky"] = {"val": 0.9, "test": 0.99, "seconds": 1}
    summary = bench.summary("s", rows, {"all": 0.9, "sets": {}})
    assert summary["best_pipeline"]["name"] == "concat" and summary["seeds"] == 3
    assert "`concat` 0.750 (mean of 3 seeds)" in bench.goals({"s": {"rows": rows, "summary": summary}})


def test_the_goals_judge_the_recipes_and_list_the_comparisons_apart():
    # A comparison (the report's trained-weight configs, an ablation) 7 points under the best
    # single probe is listed in its own column, and one above every recipe is not ranked.
    bench = _bench()
    rows = {
        "probe:a": {"val": 0.8, "test": 0.78, "seconds": 1},
        "sets_weighted": {"val": 0.8, "test": 0.775, "seconds": 1},
        "concat": {"val": 0.8, "test": 0.76, "seconds": 1},
        "weighted_penalty": {"val": 0.7, "test": 0.71, "seconds": 1},
        "sets_valmix_bl0": {"val": 0.9, "test": 0.79, "seconds": 1},
    }
    summary = bench.summary("s", rows, {"all": 0.9, "sets": {}})
    assert summary["best_pipeline"]["name"] == "sets_weighted"
    assert summary["worst_pipeline"]["name"] == "concat"
    results = {"s": {"rows": rows, "summary": summary}}
    line = bench.goals(results).splitlines()[-1]
    assert line.endswith("| `concat` -2.0 | `weighted_penalty` -7.0 |"), line
    table = bench.markdown(results)
    assert "| weighted_penalty (comparison) | 0.700 |" in table and "| concat | 0.800 |" in table
    rows.pop("concat")
    summary = bench.summary("s", rows, {"all": 0.9, "sets": {}})
    assert bench.goals({"s": {"rows": rows, "summary": summary}}).splitlines()[-1].endswith(
        "| none | `weighted_penalty` -7.0 |"
    )


def test_bad_seeds_are_refused_in_one_line():
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for bad in ("0,x", ","):
        proc = subprocess.run(
            [sys.executable, "bench/bench_sets_fusion.py", "--seeds", bad, "--no-probe"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 2 and "--seeds" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_bench_sets_fusion_fits_each_seed_in_its_own_run_directories(tmp_path):
    cmd = [
        sys.executable, "bench/bench_sets_fusion.py", "--tiny", "--stores", "one-signal",
        "--stores_dir", str(tmp_path / "stores"), "--runs", str(tmp_path / "runs"),
        "--pipelines", "concat", "--no-probe", "--no-stack", "--seeds", "0,1",
        "--json", str(tmp_path / "out.json"), "--", "--trainer.max_steps", "12",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    row = json.loads((tmp_path / "out.json").read_text())["one-signal"]["rows"]["concat"]
    assert len(row["test_seeds"]) == 2
    assert row["test"] == pytest.approx(sum(row["test_seeds"]) / 2)
    for seed in (0, 1):
        assert (tmp_path / "runs" / f"seed{seed}" / "one-signal" / "concat" / "checkpoints" / "best.ckpt").is_file()
    # Each seed's fit is its own: seed 1's checkpoint differs from seed 0's.
    import torch

    w = [torch.load(tmp_path / "runs" / f"seed{s}" / "one-signal" / "concat" / "checkpoints" / "best.ckpt",
                    weights_only=True, map_location="cpu")["state_dict"] for s in (0, 1)]  # fmt: skip
    assert any(not torch.equal(w[0][k], w[1][k]) for k in w[0] if w[0][k].is_floating_point())
    # One seed other than 0 is that seed: the same fit as seed 1 above, in its own directory.
    one = [*cmd[: cmd.index("--seeds") + 1], "1", "--runs", str(tmp_path / "one"),
           "--json", str(tmp_path / "one.json"), "--", "--trainer.max_steps", "12"]  # fmt: skip
    # (the later --runs and --json win over the ones before --seeds)
    proc = subprocess.run(one, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = json.loads((tmp_path / "one.json").read_text())["one-signal"]["rows"]["concat"]
    assert alone["test"] == row["test_seeds"][1]
    assert (tmp_path / "one" / "seed1" / "one-signal" / "concat" / "checkpoints" / "best.ckpt").is_file()
