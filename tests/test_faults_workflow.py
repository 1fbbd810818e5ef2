"""Fault probes of the Kaggle workflow (issue 21): Ctrl-C, stack, cv, tune, ensemble.

$ python -m pytest -q tests/test_faults_workflow.py

Each test is one fault a careless user ran into: it failed (a traceback, lost work or a
leaked score) before the fix. Signals are real, sent to a ``train.py`` subprocess that
tests/train_runner.py pauses at a known step.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fusion.cli import FusionCLI
from tests.fixtures_training import REPO, read_csv, small_store

pytestmark = pytest.mark.slow
CONCAT = str(REPO / "configs" / "concat.yaml")  # the recipe sets the length (max_steps)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}


def _fit_args(store: Path, run: Path, *extra: str, steps: int = 24) -> list[str]:
    return ["fit", "--config", CONCAT, "--data.store", str(store), "--data.batch_size", "32",
            "--run_dir", str(run), "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", "1",
            "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip


def _paused(args: list[str], flag: Path, step: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.train_runner", "--pause-at-step", str(step),
           "--flag", str(flag), "--", *args]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "train.py never reached the pause"
        time.sleep(0.1)
    return proc


def _train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=REPO, env=_env(),
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for word in words:
        assert word in lines[-1], lines[-1]
    return lines[-1]


# --- Ctrl-C during fit, then --ckpt_path last -------------------------------------------


def test_ctrl_c_saves_the_current_state_and_the_advised_resume_finishes(store, tmp_path):
    run = tmp_path / "run"
    args = _fit_args(store, run)
    proc = _paused(args, tmp_path / "paused", step=10)
    os.killpg(proc.pid, signal.SIGINT)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err[-3000:]
    last_line = err.strip().splitlines()[-1]
    assert "Ctrl-C" in last_line and f"--ckpt_path last --run_dir {run}" in last_line
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 10  # the state at the Ctrl-C, not the last epoch end
    resumed = _train(*args, "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    rows = read_csv(run / "metrics.csv")
    lr = next(k for k in rows[0] if k.startswith("lr-"))  # LearningRateMonitor: every step
    steps = [int(r["step"]) for r in rows if r[lr]]
    assert steps == list(range(24))  # every step once: nothing lost, nothing repeated


def test_resume_from_an_epoch_end_checkpoint_keeps_early_stopping_state(store, tmp_path):
    # A checkpoint saved at an epoch's end (kill -9 then, or a Ctrl-C before this fix) is
    # resumed by running that epoch's end again, before any validation of the new process.
    run = tmp_path / "run"
    FusionCLI(args=_fit_args(store, run, "--early_stopping.patience", "7", steps=8))
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    key = "EarlyStopping{'monitor': 'val/acc_top1', 'mode': 'max'}"
    assert saved["global_step"] == 8 and key in saved["callbacks"]
    cli = FusionCLI(args=_fit_args(store, run, "--early_stopping.patience", "7",
                                   "--ckpt_path", "last", steps=16))  # fmt: skip
    assert cli.trainer.global_step == 16
    stopping = cli.trainer.early_stopping_callback
    # The restored state carried on: best score of all 4 epochs, as one fit would have.
    accs = [float(r["val/acc_top1"]) for r in read_csv(run / "metrics.csv") if r["val/acc_top1"]]
    assert len(accs) == 4 and float(stopping.best_score) == pytest.approx(max(accs))


# --- two fits of one experiment in the same second ---------------------------------------


def test_two_fits_started_in_the_same_second_get_two_run_directories(store, tmp_path, monkeypatch):
    import fusion.cli

    monkeypatch.setattr(fusion.cli.time, "strftime", lambda fmt: "20260101-120000")
    args = ["--config", CONCAT, "--data.store", str(store), "--runs_root", str(tmp_path / "runs"),
            "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    original, others = FusionCLI.instantiate_trainer, []

    def second_fit_meanwhile(self, **kwargs):
        # The first fit has picked its directory and not written it yet: the second starts.
        if not others:
            others.append(None)
            others[0] = FusionCLI(args=["fit", *args])
        return original(self, **kwargs)

    monkeypatch.setattr(FusionCLI, "instantiate_trainer", second_fit_meanwhile)
    first = FusionCLI(args=["fit", *args])
    runs = {Path(first.trainer.default_root_dir), Path(others[0].trainer.default_root_dir)}
    assert runs == {
        tmp_path / "runs" / "concat" / n for n in ("20260101-120000", "20260101-120000-1")
    }
    for run in runs:  # each holds its own fit, whole
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
    monkeypatch.setattr(FusionCLI, "instantiate_trainer", original)
    with pytest.raises(Exception, match="manifest.json"):  # refused: nothing left behind
        FusionCLI(args=["fit", *args, "--data.store", str(tmp_path / "none"), "--runs_root",
                        str(tmp_path / "other")])  # fmt: skip
    assert not (tmp_path / "other").exists()
