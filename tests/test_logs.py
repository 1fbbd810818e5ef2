"""Quiet, useful logs: what a fit prints into a log file, and data_prep leaving the process's
warning filters and logger levels as it found them.

$ python -m pytest -q tests/test_logs.py
"""

from __future__ import annotations

import csv
import io
import logging
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from feature_store.console import quiet_lightning, show_path
from fusion.callbacks import EpochSummary
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv, tiny_models  # noqa: F401
from tests.fixtures_training import DEMO_CONFIG, REPO, small_store

# What every fit used to print, none of it actionable.
NOISE = (
    "The anonymous setting has no effect",  # W&B, for Lightning's anonymous=None
    "isinstance(treespec, LeafSpec)",  # torch's deprecation of Lightning's own code
    "litlogger",  # Lightning's advertisement
    "Run history:",  # W&B's footer...
    "Run summary:",
    "Tracking run with wandb version",  # ...and header
)
SUMMARY = re.compile(
    r"^epoch (\d+)/(\d+)  step (\d+)  train/loss (\S+)  val/loss (\S+)  "
    r"val/acc_top1 (\S+)  lr (\S+)  elapsed \d+:\d\d:\d\d$"
)


def test_show_path_is_relative_under_the_working_directory_else_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert show_path("runs/a/b.ckpt") == os.path.join("runs", "a", "b.ckpt")
    assert show_path(tmp_path / "runs" / "a") == os.path.join("runs", "a")  # absolute in
    assert show_path(tmp_path) == "."
    outside = tmp_path.parent / "elsewhere" / "x.csv"
    assert show_path(outside) == str(outside)  # not ../elsewhere/x.csv
    assert show_path("../elsewhere/x.csv") == str(outside)
    assert show_path("x", cwd=tmp_path / "sub") == str(tmp_path / "x")


def test_quiet_lightning_drops_only_the_advert_and_restores_everything(caplog):
    from lightning.pytorch.utilities import rank_zero_info

    lightning = logging.getLogger("lightning.pytorch")
    filters, level = list(warnings.filters), lightning.level
    with quiet_lightning(banners=False):
        assert lightning.level == logging.WARNING
        assert len(warnings.filters) == len(filters) + 1
    with caplog.at_level(logging.INFO), quiet_lightning():
        rank_zero_info("💡 Tip: try installing something")
        rank_zero_info("run directory: kept")
    assert list(warnings.filters) == filters and lightning.level == level
    assert caplog.messages == ["run directory: kept"]


def _logging_state() -> dict:
    loggers = {"": logging.getLogger()}
    loggers.update(
        (n, lg)
        for n, lg in logging.root.manager.loggerDict.items()
        if isinstance(lg, logging.Logger)
    )
    return {
        name: (lg.level, lg.disabled, lg.propagate, tuple(lg.filters), tuple(lg.handlers))
        for name, lg in loggers.items()
    }


def test_data_prep_leaves_warning_filters_and_logger_levels_as_it_found_them(
    tmp_path,
    tiny_models,  # noqa: F811
):
    from transformers.utils import logging as hf_logging

    import data_prep

    root = draw_kaggle_tree(tmp_path / "data", train=2, val=1, test=2, bad_images=False)
    # A first run imports everything data_prep imports lazily (imports may add filters).
    data_prep.main(prep_argv(root, tiny_models, tmp_path / "warm"))
    # A caller's own settings, unlike anything data_prep sets.
    lightning = logging.getLogger("lightning.pytorch")
    saved = list(warnings.filters), lightning.level, hf_logging.is_progress_bar_enabled()
    try:
        lightning.setLevel(logging.DEBUG)
        warnings.simplefilter("always", UserWarning)
        hf_logging.enable_progress_bar()
        filters, levels = list(warnings.filters), _logging_state()
        out = data_prep.main(prep_argv(root, tiny_models, tmp_path / "store"))
        assert (out / "manifest.json").is_file()  # a full run: models loaded, Trainer ran
        assert list(warnings.filters) == filters
        assert _logging_state() == levels
        assert hf_logging.is_progress_bar_enabled()
    finally:
        warnings.filters[:] = saved[0]
        lightning.setLevel(saved[1])
        if not saved[2]:
            hf_logging.disable_progress_bar()


@pytest.mark.parametrize("tty", [True, False])
def test_the_progress_bar_stays_on_a_terminal_and_leaves_a_log_file(monkeypatch, tty):
    class Stdout(io.StringIO):
        def isatty(self) -> bool:
            return tty

    monkeypatch.setattr(sys, "stdout", Stdout())
    assert EpochSummary.trainer_kwargs({}, []) == ({} if tty else {"enable_progress_bar": False})
    # Asked for explicitly, the bar stays whatever stdout is.
    assert EpochSummary.trainer_kwargs({"enable_progress_bar": True}, []) == {}


def test_a_fit_into_a_log_file_prints_one_line_per_epoch_and_no_noise(tmp_path):
    """``python train.py fit ... > log.txt 2>&1``, W&B offline as on a machine with no key."""
    store = small_store(tmp_path / "store")
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_QUIET")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    epochs = 3
    cmd = [sys.executable, str(REPO / "train.py"), "fit", "--config", DEMO_CONFIG,
           "--data.store", str(store), "--trainer.max_epochs", str(epochs)]  # fmt: skip
    proc = subprocess.run(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    log = proc.stdout
    assert proc.returncode == 0, log[-3000:]
    for noise in NOISE:
        assert noise not in log, noise
    assert f"Epoch {epochs - 1}/{epochs - 1}" not in log  # no progress-bar frame in a file
    summaries = [m for m in map(SUMMARY.match, log.splitlines()) if m]
    assert [int(m[1]) for m in summaries] == list(range(epochs))
    assert {int(m[2]) for m in summaries} == {epochs - 1}
    # Paths relative to where the command ran.
    run_line = re.search(r"^run directory: (\S+)$", log, re.M)
    assert run_line and re.fullmatch(r"runs/demo/\d{8}-\d{6}", run_line[1])
    run = tmp_path / run_line[1]
    assert f"wandb sync {run_line[1]}/wandb/offline-run-*" in log
    # The printed values are the logged ones (metrics.csv), epoch by epoch.
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    train = {int(r["epoch"]): r for r in rows if r["train/loss"]}
    val = {int(r["epoch"]): r for r in rows if r["val/acc_top1"]}
    for m in summaries:
        epoch = int(m[1])
        assert int(m[3]) == int(train[epoch]["step"]) + 1  # logged at the epoch's last step
        assert float(m[4]) == pytest.approx(float(train[epoch]["train/loss"]), abs=1e-4)
        assert float(m[5]) == pytest.approx(float(val[epoch]["val/loss"]), abs=1e-4)
        assert float(m[6]) == pytest.approx(float(val[epoch]["val/acc_top1"]), abs=1e-4)
    assert Path(run / "checkpoints" / "best.ckpt").is_file()


# What a first afternoon's logs used to hold (issue 22), none of it actionable.
NOISE_22 = (
    "Total FLOPs",  # Lightning's 13-line model summary...
    "Trainable params",
    "worker processes in total",  # torch: more DataLoader workers than cores
    "is smaller than the logging interval",  # Lightning: log_every_n_steps > batches
    "this step is already reported",  # Optuna: two validations in one percent
    "WANDB_MODE=dryrun",  # Lightning's WandbLogger rewrote the user's offline
    "it/s]",  # a progress bar's frame in a file
    "Loading weights",  # transformers' bar
)
OPTUNA_INFO = re.compile(r"^\[I \d{4}-\d\d-\d\d", re.M)


def _run_logged(args: list[str], cwd: Path) -> str:
    """``python train.py ARGS > log 2>&1`` with W&B offline as the user exported it."""
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_QUIET")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return proc.stdout


def _assert_quiet(log: str) -> None:
    for noise in (*NOISE, *NOISE_22):
        assert noise not in log, noise
    assert not OPTUNA_INFO.search(log)


def test_a_fit_validate_and_test_into_a_log_file_hold_none_of_the_noise(tmp_path):
    """configs/linear.yaml as shipped (log interval 50, the model summary's default) on a
    demo-sized store, with more DataLoader workers than this machine has cores."""
    from feature_store.console import cpu_cores

    store = small_store(tmp_path / "store")  # 120 train rows: 2 batches per epoch
    workers = cpu_cores() + 2
    log = _run_logged(
        [
            "fit",
            "--config",
            str(REPO / "configs" / "linear.yaml"),
            "--data.store",
            str(store),
            "--trainer.max_epochs",
            "2",
            "--data.num_workers",
            str(workers),
            "--run_dir",
            str(tmp_path / "run"),
        ],  # fmt: skip
        tmp_path,
    )
    _assert_quiet(log)
    assert log.count(f"--data.num_workers {workers}: this machine has {cpu_cores()} CPU") == 1
    plan = [line for line in log.splitlines() if line.startswith("fit: ")]
    assert len(plan) == 1 and plan[0].startswith("fit: 4 steps (2.0 epochs of 120 rows)")
    ckpt = tmp_path / "run" / "checkpoints" / "best.ckpt"
    for sub in ("validate", "test"):
        log = _run_logged(
            [sub, "--ckpt_path", str(ckpt), "--data.store", str(store), "--data.test_split", "val"],
            tmp_path,
        )
        _assert_quiet(log)
        assert f"{'val' if sub == 'validate' else 'test'}/acc_top1" in log


def test_a_tune_into_a_log_file_says_one_line_per_trial_and_keeps_wandb_offline(tmp_path):
    store = small_store(tmp_path / "store")
    log = _run_logged(
        [
            "tune",
            "--config",
            str(REPO / "configs" / "linear.yaml"),
            "--data.store",
            str(store),
            "--n_trials",
            "2",
            "--pruner",
            "median",
            "--trainer.max_epochs",
            "2",
            # two validations per epoch: the same percent of the run reported twice
            "--trainer.val_check_interval",
            "0.5",
            "--study_dir",
            str(tmp_path / "study"),
        ],  # fmt: skip
        tmp_path,
    )
    _assert_quiet(log)
    assert log.count("W&B offline: WANDB_MODE=offline") == 2  # every trial, as exported
    trials = [line for line in log.splitlines() if re.match(r"tune: trial \d+ (val|pruned)", line)]
    assert [line.split()[2] for line in trials] == ["0", "1"]
    assert "tune: trial 0 is the config's own values" in log
