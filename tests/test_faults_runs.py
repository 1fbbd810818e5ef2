"""Fault probes of training runs (issue 9): resume, signals, run directories.

$ python -m pytest -q tests/test_faults_runs.py

Each test is one probe of the table in tests/test_faults.py's module docstring; the
kill -9 and SIGTERM probes send real signals to a ``train.py`` subprocess that
tests/train_runner.py pauses at a known step.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from fusion.cli import ResumeError, RunDirError
from tests.fixtures_training import DEMO_CONFIG, fit_cli, read_csv, small_store
from tests.train_runner import start_paused

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
STEPS_PER_EPOCH = 4  # 5 classes x 24 train rows, batch 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def assert_each_epoch_once(run: Path, epochs: int) -> None:
    rows = read_csv(run / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r["fusion/alpha"]]
    assert steps == list(range(epochs * STEPS_PER_EPOCH))
    for key in ("val/acc_top1", "train/loss"):
        assert [int(r["epoch"]) for r in rows if r[key]] == list(range(epochs)), key
    umask = os.umask(0)
    os.umask(umask)
    for name in ("metrics.csv", "val_predictions.csv", "config.yaml"):
        if (run / name).exists():  # rewritten on resume: still an ordinary file mode
            assert (run / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_last_ckpt_is_the_last_epoch_not_the_best(store, tmp_path):
    run = tmp_path / "run"
    cli = fit_cli(store, run, epochs=4)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert last["global_step"] == cli.trainer.global_step == 4 * STEPS_PER_EPOCH
    assert last["epoch"] == 3
    assert best["epoch"] < 3  # val accuracy peaks early here: the probe needs best != last


def _paused_fit(store: Path, run: Path, flag: Path, *extra: str) -> subprocess.Popen:
    return start_paused(["fit", "--config", DEMO_CONFIG, "--data.store", str(store),
                         "--data.batch_size", "32", "--run_dir", str(run), "--trainer.max_epochs",
                         "4", "--trainer.enable_progress_bar", "false", *extra], flag, 10)  # fmt: skip


def test_kill_9_mid_epoch_then_resume_has_every_epoch_once(store, tmp_path):
    run, flag = tmp_path / "run", tmp_path / "paused"
    proc = _paused_fit(store, run, flag)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 2 * STEPS_PER_EPOCH  # end of epoch 1, not the best epoch
    # Rows past the checkpoint reached the disk before the kill (flushed at the pause).
    logged = [int(r["step"]) for r in read_csv(run / "metrics.csv") if r["fusion/alpha"]]
    assert max(logged) > 2 * STEPS_PER_EPOCH
    resumed = fit_cli(store, run, "--ckpt_path", "last", epochs=4)
    assert resumed.trainer.global_step == 4 * STEPS_PER_EPOCH
    assert_each_epoch_once(run, 4)


def test_sigterm_saves_state_exits_143_and_resume_finishes(store, tmp_path):
    run, flag = tmp_path / "run", tmp_path / "paused"
    proc = _paused_fit(store, run, flag)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    assert "stopped by SIGTERM" in err and "--ckpt_path last" in err
    assert not (run / "val_predictions.csv").exists()  # the run is not finished
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10  # the current state, not the last epoch end
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] <= 2 * STEPS_PER_EPOCH  # best is never overwritten
    resumed = fit_cli(store, run, "--ckpt_path", "last", epochs=4)
    assert resumed.trainer.global_step == 4 * STEPS_PER_EPOCH
    assert (run / "val_predictions.csv").is_file()
    assert_each_epoch_once(run, 4)


def test_rerunning_a_saved_config_starts_a_new_run(store, tmp_path):
    runs = tmp_path / "runs"
    base = ["--data.store", str(store), "--runs_root", str(runs),
            "--trainer.enable_progress_bar", "false", "--trainer.max_epochs", "1"]  # fmt: skip
    from fusion.cli import FusionCLI

    def fit(config: str, *extra: str) -> Path:
        cli = FusionCLI(args=["fit", "--config", config, *base, *extra])
        return Path(cli.trainer.default_root_dir)

    first = fit(DEMO_CONFIG)
    before = snapshot(first)
    saved = first / "config.yaml"
    text = saved.read_text()
    assert "experiment: demo" in text and str(first) not in text  # no run paths saved
    again = fit(str(saved))
    assert again != first and again.parent == first.parent == runs / "demo"
    assert snapshot(first) == before  # no best-v1.ckpt, nothing appended
    assert sorted(p.name for p in (again / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    # --ckpt_path last with the saved config resumes the newest run of *its* experiment.
    assert fit(str(saved), "--ckpt_path", "last", "--trainer.max_epochs", "2") == again
    assert snapshot(first) == before


def test_old_saved_config_with_run_paths_is_named_after_its_experiment(store, tmp_path):
    run = tmp_path / "runs" / "concat" / "20250101-000000"
    fit_cli(store, run, epochs=1)
    # What configs saved before this fix held: the run's own paths, and a config name.
    text = (run / "config.yaml").read_text().replace("experiment: demo", "experiment: null")
    text = text.replace("default_root_dir: null", f"default_root_dir: {run}")
    text = text.replace("  dirpath: null", f"  dirpath: {run / 'checkpoints'}")
    (run / "config.yaml").write_text(text)
    before = snapshot(run)
    from fusion.cli import FusionCLI

    cli = FusionCLI(args=["fit", "--config", str(run / "config.yaml"), "--runs_root",
                          str(tmp_path / "runs"), "--trainer.max_epochs", "1"])  # fmt: skip
    new = Path(cli.trainer.default_root_dir)
    assert new.parent == run.parent and new != run
    assert snapshot(run) == before


def test_new_fit_into_an_existing_run_is_refused(store, tmp_path):
    run = tmp_path / "run"
    fit_cli(store, run, epochs=1)
    before = snapshot(run)
    with pytest.raises(RunDirError, match="existing run"):
        fit_cli(store, run, epochs=1)
    assert snapshot(run) == before


def test_failed_resume_with_another_head_changes_nothing(store, tmp_path):
    run = tmp_path / "run"
    fit_cli(store, run, epochs=1)
    before = snapshot(run)
    with pytest.raises(ResumeError, match="head: checkpoint 'dual_logit', config 'concat'"):
        fit_cli(store, run, "--ckpt_path", "last", "--model.head", "concat", epochs=2)
    with pytest.raises(ResumeError, match="weights differ"):
        fit_cli(store, run, "--ckpt_path", "last", "--model.head_options.hidden_dims", "[64]", epochs=2)
    assert snapshot(run) == before
