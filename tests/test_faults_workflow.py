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
from pathlib import Path

import pytest
import torch

from fusion.cli import FusionCLI
from tests.fixtures_training import REPO, read_csv, small_store
from tests.train_runner import start_paused

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
    proc = start_paused(args, tmp_path / "paused", step=10)
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
    import fusion.runs

    monkeypatch.setattr(fusion.runs.time, "strftime", lambda fmt: "20260101-120000")
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


# --- train.py cv ------------------------------------------------------------------------


def _cv_args(store: Path, cv_dir: Path, *extra: str) -> list[str]:
    return ["--config", CONCAT, "--data.store", str(store), "--data.batch_size", "32",
            "--trainer.max_steps", "8", "--trainer.enable_progress_bar", "false",
            "--trainer.logger", "false", "--cv_dir", str(cv_dir), *extra]  # fmt: skip


def _mtimes(cv_dir: Path) -> dict[str, int]:
    return {str(p.relative_to(cv_dir)): p.stat().st_mtime_ns for p in cv_dir.rglob("*.ckpt")}


def test_cv_without_test_predictions_marks_folds_done_and_reads_folds_from_config(
    store, tmp_path, capsys
):
    from fusion.commands.cv import run_cv

    config = tmp_path / "cv2.yaml"  # data.folds as a dotted key, the way configs/ set values
    config.write_text(f"config: {CONCAT}\ndata.folds: 2\n")
    cv_dir = tmp_path / "cv"
    args = ["--config", str(config), *_cv_args(store, cv_dir, "--data.predict_split", "")[2:]]
    run_cv(args)
    assert sorted(p.name for p in cv_dir.iterdir() if p.is_dir()) == ["fold_0", "fold_1"]
    assert (
        not list(cv_dir.glob("fold_*/test.probs.npz")) and not (cv_dir / "submission.csv").exists()
    )
    before = _mtimes(cv_dir)
    capsys.readouterr()
    run_cv(args)  # the rerun trains nothing: both folds are done
    out = capsys.readouterr().out
    assert "fold 0 already done" in out and "fold 1 already done" in out
    assert _mtimes(cv_dir) == before


def test_cv_on_a_store_without_the_test_split_refuses_before_training(tmp_path):
    no_test = small_store(tmp_path / "s", per_class={"train": 24, "val": 8})
    cv_dir = tmp_path / "cv"
    done = _train("cv", *_cv_args(no_test, cv_dir, "--data.folds", "2"))
    _one_line_error(done, 2, "no 'test' split", "--data.predict_split ''")
    assert not list(cv_dir.glob("fold_*"))  # refused before fold 0 trained


def test_a_second_cv_on_the_same_directory_is_refused_and_sigterm_advice_works(store, tmp_path):
    import train

    cv_dir = tmp_path / "cv"
    args = ["cv", *_cv_args(store, cv_dir, "--data.folds", "2")]
    proc = start_paused(args, tmp_path / "paused", step=6)  # fold 0, part-way
    ckpts = _mtimes(cv_dir)
    assert ckpts  # fold 0 has saved an epoch
    with pytest.raises(SystemExit) as second:
        train.main(args)
    assert second.value.code == 2 and f"pid {proc.pid}" in str(second.value)
    assert _mtimes(cv_dir) == ckpts  # the first process's unfinished fold is untouched
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    advice = err.strip().splitlines()[-1]
    assert "same `train.py cv` command" in advice and "fold 0" in advice
    assert not (cv_dir / "cv.lock").exists()
    # What the advice says: the same command finishes the CV.
    train.main(args)
    assert all((cv_dir / f"fold_{f}" / "fold.done").is_file() for f in (0, 1))
    assert (cv_dir / "submission.csv").is_file()


def test_a_stale_cv_lock_is_taken_over(store, tmp_path):
    import json
    import socket

    from fusion.commands.cv import CvError, CvLock

    cv_dir = tmp_path / "cv"
    cv_dir.mkdir()
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    lock = cv_dir / "cv.lock"
    lock.write_text(json.dumps({"pid": int(gone), "host": socket.gethostname()}))
    with CvLock(cv_dir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()
    lock.write_text(json.dumps({"pid": 1, "host": "another-host"}))  # not ours to judge
    with pytest.raises(CvError, match="another-host"):  # train.py cv prints it, exits 2
        CvLock(cv_dir).__enter__()
    assert json.loads(lock.read_text())["host"] == "another-host"


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["cv", "--data.folds", "five"], ["--data.folds", "'five'"]),
        (["tune", "--n_trials", "many"], ["--n_trials", "'many'"]),
        (["tune", "--n_trials", "2", "--seed", "x"], ["--seed", "'x'"]),
        (["tune", "--n_trials", "2", "--pruner", "mean"], ["--pruner", "mean", "median"]),
    ],
)
def test_bad_values_of_cv_and_tune_options_are_one_line(argv, words, capsys):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main([*argv, "--config", CONCAT])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(w in err[0] for w in words), err


# --- train.py stack -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_fits(store, tmp_path_factory):
    """Two trained heads' best checkpoints on ``store``."""
    root = tmp_path_factory.mktemp("fits")
    ckpts = []
    for head in ("visual_only", "text_only"):
        # configs/concat.yaml's modality_dropout and set_penalty: a single-set head takes
        # neither.
        FusionCLI(args=_fit_args(store, root / head, "--model.head", head, "--trainer.logger",
                                 "false", "--model.head_options.modality_dropout", "null",
                                 "--model.head_options.set_penalty", "null",
                                 steps=8))  # fmt: skip
        ckpts.append(str(root / head / "checkpoints" / "best.ckpt"))
    return ckpts


@pytest.fixture(scope="module")
def cv_dir(store, tmp_path_factory):
    from fusion.commands.cv import run_cv

    return run_cv(_cv_args(store, tmp_path_factory.mktemp("cv") / "cv2", "--data.folds", "2"))


def _stack(*argv: str):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(["stack", *argv])
    return exc.value


def test_stack_refuses_cv_fold_checkpoints_and_points_to_cv(store, cv_dir, tmp_path, capsys):
    folds = [str(p) for p in sorted(cv_dir.glob("fold_*/checkpoints/best.ckpt"))]
    assert len(folds) == 2
    runs = tmp_path / "runs"
    exc = _stack("--checkpoint", folds[0], "--checkpoint", folds[1], "--data.store", str(store),
                 "--runs_root", str(runs))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.code == 2 and len(err) == 1 and f"--cv {cv_dir}" in err[0], err
    assert not runs.exists()


def test_stack_on_one_val_row_per_class_is_one_line(two_fits, tmp_path, capsys):
    tiny_val = small_store(tmp_path / "s", per_class={"train": 24, "val": 1, "test": 4})
    runs = tmp_path / "runs"
    exc = _stack("--checkpoint", two_fits[0], "--checkpoint", two_fits[1], "--data.store",
                 str(tiny_val), "--runs_root", str(runs))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.code == 2 and len(err) == 1 and "at most one per class" in err[0], err
    assert not runs.exists()


def test_stack_into_a_directory_that_cannot_be_created_is_one_line(
    store, two_fits, tmp_path, capsys
):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    exc = _stack("--checkpoint", two_fits[0], "--checkpoint", two_fits[1], "--data.store",
                 str(store), "--run_dir", str(blocker / "run"))  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        exc.code == 2 and len(err) == 1 and f"cannot create the run directory {blocker}" in err[0]
    )
    assert blocker.read_text() == "not a directory"


# --- predict.py ensemble ------------------------------------------------------------------


def _ensemble(*argv: str, capsys) -> tuple[int, list[str]]:
    from fusion.commands.ensemble import main as ensemble_main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        ensemble_main(list(argv))
    return exc.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.fixture(scope="module")
def member_files(store, two_fits, tmp_path_factory):
    """Each fit's test probabilities (predict.py's OUT.probs.npz) and its val.probs.npz."""
    from fusion.commands.predict import main as predict_main

    root = tmp_path_factory.mktemp("members")
    tests, vals = [], []
    for n, ckpt in enumerate(two_fits):
        predict_main(
            ["--checkpoint", ckpt, "--store", str(store), "--out", str(root / f"m{n}.csv")]
        )
        tests.append(str(root / f"m{n}.probs.npz"))
        vals.append(str(Path(ckpt).parents[1] / "val.probs.npz"))
    return tests, vals


def test_ensemble_refuses_fit_on_files_in_another_order(member_files, tmp_path, capsys):
    from fusion.ensemble import load_probs

    tests, vals = member_files
    out = tmp_path / "ens.csv"
    code, err = _ensemble("--probs", tests[0], "--probs", tests[1], "--fit_on", vals[1],
                          "--fit_on", vals[0], "--out", str(out), capsys=capsys)  # fmt: skip
    assert code == 2 and len(err) == 1 and "--probs order" in err[0] and vals[1] in err[0]
    assert not out.exists()
    from fusion.commands.ensemble import main as ensemble_main

    ensemble_main(["--probs", tests[0], "--probs", tests[1], "--fit_on", vals[0],
                   "--fit_on", vals[1], "--out", str(out)])  # fmt: skip
    assert load_probs(tmp_path / "ens.probs.npz").ids == load_probs(tests[0]).ids


def test_ensemble_out_paths_that_would_clash_are_refused(member_files, cv_dir, tmp_path, capsys):
    tests, _ = member_files
    members = ["--probs", tests[0], "--probs", tests[1]]
    # The CSV and its metadata would be one file.
    code, err = _ensemble(*members, "--out", str(tmp_path / "x.json"), capsys=capsys)
    assert code == 2 and len(err) == 1 and "three files" in err[0]
    assert not (tmp_path / "x.json").exists()
    # CV/oof.csv's probabilities would be the CV's own oof.probs.npz.
    oof = cv_dir / "oof.probs.npz"
    before = oof.read_bytes()
    code, err = _ensemble(*members, "--out", str(cv_dir / "oof.csv"), capsys=capsys)
    assert code == 2 and len(err) == 1 and str(oof) in err[0]
    assert oof.read_bytes() == before and not (cv_dir / "oof.csv").exists()
    # An earlier ensemble's own output is replaced by a rerun.
    from fusion.commands.ensemble import main as ensemble_main

    for _ in range(2):
        ensemble_main([*members, "--out", str(tmp_path / "ens.csv")])


def test_a_truncated_probs_file_is_one_line_naming_it(member_files, tmp_path, capsys):
    tests, _ = member_files
    cut = tmp_path / "cut.probs.npz"
    data = Path(tests[1]).read_bytes()
    for size in (len(data) // 2, len(data) - 30):  # cut in an array, or in the zip directory
        cut.write_bytes(data[:size])
        code, err = _ensemble("--probs", tests[0], "--probs", str(cut), "--out",
                              str(tmp_path / "e.csv"), capsys=capsys)  # fmt: skip
        assert code == 2 and len(err) == 1 and str(cut) in err[0], err


# --- train.py tune ------------------------------------------------------------------------

SPACE = "model.optimizer.lr: {low: 1.0e-3, high: 1.0e-2, log: true}\nmodel.head_options.dropout: {low: 0.0, high: 0.5}\n"


def _tune_args(store: Path, root: Path, *extra: str) -> list[str]:
    space = root / "space.yaml"
    space.write_text(SPACE)
    return ["--config", CONCAT, "--data.store", str(store), "--data.batch_size", "32",
            "--search", str(space), "--trainer.max_steps", "8", "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false", "--study_dir", str(root / "study"),
            *extra]  # fmt: skip


def _trials(root: Path) -> list:
    import optuna

    storage = f"sqlite:///{root / 'study' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


def test_a_resumed_tune_draws_new_parameters(store, tmp_path):
    from fusion.commands.tune import run_tune

    args = _tune_args(store, tmp_path, "--pruner", "none")
    run_tune([*args, "--n_trials", "2"])
    run_tune([*args, "--n_trials", "4"])
    params = [t.params for t in _trials(tmp_path)]
    assert len(params) == 4
    assert not [p for p in params[2:] if p in params[:2]], params  # no finished trial replayed


def test_the_default_study_is_the_stores(store, tmp_path):
    from fusion.commands.tune import run_tune

    other = small_store(tmp_path / "other", seed=1)
    runs = tmp_path / "runs"
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    dirs = []
    for data in (store, other):
        args = ["--config", CONCAT, "--data.store", str(data), "--search", str(space),
                "--runs_root", str(runs), "--trainer.max_steps", "4", "--data.batch_size", "32", "--trainer.logger",
                "false", "--trainer.enable_progress_bar", "false", "--n_trials", "1"]  # fmt: skip
        dirs.append(run_tune(args))
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent == runs / "concat"
    for study_dir in dirs:  # each store's study has its own first trial
        import optuna

        storage = f"sqlite:///{study_dir / 'study.db'}"
        (name,) = optuna.get_all_study_names(storage)
        assert (
            name.startswith("concat@")
            and len(optuna.load_study(study_name=name, storage=storage).trials) == 1
        )


def test_a_second_tune_leaves_the_first_ones_running_trial_alone(store, tmp_path):
    import optuna

    from fusion.commands.tune import run_tune

    args = _tune_args(store, tmp_path, "--pruner", "none")
    first = start_paused(["tune", *args, "--n_trials", "2"], tmp_path / "paused", step=3)
    try:
        run_tune([*args, "--n_trials", "1"])  # a second process joins the study
        trials = _trials(tmp_path)
        assert [t.state for t in trials] == [optuna.trial.TrialState.RUNNING,
                                             optuna.trial.TrialState.COMPLETE]  # fmt: skip
        assert trials[0].user_attrs["pid"] == first.pid
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    # Its process is gone now: the next run fails that trial and tries its parameters again.
    run_tune([*args, "--n_trials", "2"])
    trials = _trials(tmp_path)
    assert trials[0].state == optuna.trial.TrialState.FAIL
    retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
    assert [t.params for t in trials if retried(t) == 0] == [trials[0].params]


@pytest.mark.parametrize("storage", ["damaged", "postgresql://user:pw@localhost/db"])
def test_a_study_storage_that_cannot_be_opened_is_one_line(store, tmp_path, storage):
    args = _tune_args(store, tmp_path, "--n_trials", "1")
    if storage == "damaged":
        (tmp_path / "study").mkdir()
        (tmp_path / "study" / "study.db").write_bytes(b"not a database" * 100)
    else:
        args += ["--storage", storage]  # psycopg2 is not installed here
    done = _train("tune", *args)
    line = _one_line_error(done, 2, "cannot open the study storage")
    assert ("study.db" in line) if storage == "damaged" else ("driver" in line)
