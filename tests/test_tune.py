"""train.py tune: a study completes, survives kill -9, and its best.yaml refits to its score."""

import inspect
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from fixtures_training import DEMO_CONFIG, REPO, read_csv, wandb_records

from feature_store.synthetic import make_synthetic_store
from fusion.cli import FusionCLI
from fusion.commands.tune import FINISHED, PruneOnVal, SearchSpaceError, load_space, run_tune
from fusion.heads import HEADS

SPACE = """
model.optimizer.lr: {low: 1.0e-3, high: 1.0e-2, log: true}
model.head_options.dropout: {low: 0.0, high: 0.5}
model.head_options.hidden_dims: {choices: [[16], [32, 16]]}
data.batch_size: {choices: [16, 32]}
"""


def _setup(root):
    store = root / "store"
    make_synthetic_store(store, num_classes=4, per_class={"train": 20, "val": 10, "test": 3},
                         noise=2.0, seed=0)  # fmt: skip
    space = root / "space.yaml"
    space.write_text(SPACE)
    args = ["--config", DEMO_CONFIG, "--data.store", str(store), "--search", str(space),
            "--trainer.max_epochs", "3", "--trainer.enable_progress_bar", "false",
            "--study_dir", str(root / "study")]  # fmt: skip
    return args


def _study(root):
    storage = f"sqlite:///{root / 'study' / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)  # the default name: demo@<store>
    assert name.startswith("demo@store-")
    return optuna.load_study(study_name=name, storage=storage)


def test_study_completes_and_best_yaml_refits_to_its_score(tmp_path):
    args = _setup(tmp_path)
    study_dir = run_tune([*args, "--n_trials", "3"])
    study = _study(tmp_path)
    assert len(study.get_trials(states=FINISHED)) == 3
    rows = read_csv(study_dir / "trials.csv")
    assert [int(r["number"]) for r in rows] == [0, 1, 2]
    for t in study.trials:  # each trial is a normal run directory with its sampled values
        config = (study_dir / "trials" / f"trial_{t.number}" / "config.yaml").read_text()
        assert f"lr: {t.params['model.optimizer.lr']}" in config
    assert (study_dir / "history.png").stat().st_size > 0
    # Each trial is a W&B run of the study's group (WANDB_MODE=offline in the tests).
    run_file = next((study_dir / "trials" / "trial_0" / "wandb").glob("offline-run-*/run-*.wandb"))
    groups = [
        r.run.run_group for r in wandb_records(run_file) if r.WhichOneof("record_type") == "run"
    ]
    assert groups and set(groups) == {study.study_name}
    best = study_dir / "best.yaml"
    cli = FusionCLI(args=["fit", "--config", str(best), "--run_dir", str(tmp_path / "refit")])
    assert float(cli.trainer.checkpoint_callback.best_model_score) == pytest.approx(
        study.best_value, abs=1e-6
    )
    # Rerunning with the same --n_trials finds the study finished and runs nothing.
    run_tune([*args, "--n_trials", "3"])
    assert len(_study(tmp_path).trials) == 3


def test_kill_9_then_rerun_finishes_without_repeating_trials(tmp_path):
    args = _setup(tmp_path)
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "train.py", "tune", *args, "--n_trials", "4"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            # Poll only once a trial directory exists: the study (and its SQLite schema) is
            # created by then; opening the database while the search creates it races on
            # Optuna's schema migration.
            if (tmp_path / "study" / "trials").is_dir():
                try:
                    if len(_study(tmp_path).get_trials(states=FINISHED)) >= 2:
                        break
                except (KeyError, optuna.exceptions.StorageInternalError):
                    pass  # the study is being created
            assert proc.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {t.number: (t.value, t.params) for t in _study(tmp_path).get_trials(states=FINISHED)}
    assert 2 <= len(before) < 4
    ckpts = {n: tmp_path / "study" / "trials" / f"trial_{n}" / "checkpoints" / "best.ckpt"
             for n in before}  # fmt: skip
    stamps = {n: p.stat().st_mtime_ns for n, p in ckpts.items()}
    run_tune([*args, "--n_trials", "4"])
    study = _study(tmp_path)
    finished = study.get_trials(states=FINISHED)
    assert len(finished) == 4
    # The trials finished before the kill are kept as they were, never run again.
    assert {t.number: (t.value, t.params) for t in finished if t.number in before} == before
    assert {n: p.stat().st_mtime_ns for n, p in ckpts.items()} == stamps
    assert all(t.number > max(before) for t in finished if t.number not in before)
    # A trial the kill interrupted is FAIL now, and its parameters were tried again.
    for t in study.get_trials(states=(optuna.trial.TrialState.FAIL,)):
        retried = optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number
        assert any(retried(r) == t.number and r.params == t.params for r in finished)
    assert not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


def test_pruning_callback_stops_a_trial(tmp_path):
    args = _setup(tmp_path)
    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.ThresholdPruner(
        lower=1.01))  # fmt: skip  # every value is below: prune at the first report
    trial = study.ask()
    fit_args = [a for a in args if a not in ("--search", "--study_dir")]
    fit_args = ["fit", *fit_args[:2], "--data.store", args[3], "--trainer.max_epochs", "3",
                "--trainer.enable_progress_bar", "false", "--run_dir", str(tmp_path / "r")]  # fmt: skip
    with pytest.raises(optuna.TrialPruned):
        FusionCLI(args=fit_args, extra_callbacks=[PruneOnVal(trial)])
    epochs = {r["epoch"] for r in read_csv(tmp_path / "r" / "metrics.csv") if r.get("val/acc_top1")}
    assert epochs == {"0"}
    assert list(study.trials[0].intermediate_values) == [33]  # percent of the planned steps


def test_bad_search_space_is_refused(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("model.optimizer.lr: {low: 0.1, high: 0.01}\n")
    with pytest.raises(SearchSpaceError, match="model.optimizer.lr"):
        load_space(bad)
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space(tmp_path / "none.yaml")


@pytest.mark.parametrize("space", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=str)
def test_every_search_space_parses_as_its_config_options(space, capsys):
    from fusion.commands.tune import suggest

    config = REPO / "configs" / space.name
    assert config.is_file(), f"{space} has no experiment config beside it"
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    overrides = suggest(trial, load_space(space))
    with pytest.raises(SystemExit) as exc:  # --print_config parses, type-checks, prints, exits 0
        FusionCLI(args=["fit", "--config", str(config), *overrides, "--print_config"])
    assert exc.value.code in (0, None)
    printed = capsys.readouterr().out
    assert f"lr: {trial.params['model.optimizer.lr']}" in printed


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tune", "--config", DEMO_CONFIG], "--n_trials"),
        (
            ["tune", "--config", DEMO_CONFIG, "--n_trials", "2", "--search", "nope.yaml"],
            "nope.yaml not found",
        ),  # fmt: skip
        (["tune", "--config", DEMO_CONFIG, "--n_trials", "2", "--run_dir", "x"], "--run_dir"),
        (["cv", "--config", DEMO_CONFIG], "--data.folds"),
        (["cv", "--config", DEMO_CONFIG, "--data.folds", "3", "--data.fold", "1"], "--data.fold"),
    ],
)
def test_bad_tune_and_cv_arguments_exit_2(argv, message, capsys):
    import train

    with pytest.raises(SystemExit) as exc:
        train.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_storage_url_keeps_the_study_in_that_database(tmp_path):
    args = _setup(tmp_path)
    url = f"sqlite:///{tmp_path / 'shared.db'}"  # stands for postgresql://... here
    run_tune([*args, "--n_trials", "2", "--storage", url, "--study_name", "shared",
              "--pruner", "none"])  # fmt: skip
    study = optuna.load_study(study_name="shared", storage=url)
    assert len(study.get_trials(states=FINISHED)) == 2
    assert not (tmp_path / "study" / "study.db").exists()
    assert (tmp_path / "study" / "best.yaml").is_file()


def test_a_diverging_trial_fails_alone(tmp_path):
    args = _setup(tmp_path)
    space = tmp_path / "space.yaml"
    space.write_text("model.optimizer.lr: {choices: [1.0e+30]}\n")  # the loss is not finite at once
    study_dir = run_tune([*args, "--n_trials", "1"])
    states = [t.state for t in _study(tmp_path).trials]
    assert states == [optuna.trial.TrialState.FAIL]
    assert not (study_dir / "best.yaml").exists()


def _in_space(value, spec: dict) -> bool:
    import json

    if "choices" in spec:
        return json.dumps(value) in [json.dumps(c) for c in spec["choices"]]
    return isinstance(value, int | float) and spec["low"] <= value <= spec["high"]


@pytest.mark.parametrize("space", sorted((REPO / "configs" / "search").glob("*.yaml")), ids=str)
def test_every_search_space_holds_its_config_own_values(space, capsys):
    """The config's lr, optimiser, weight decay (and every other searched option), as
    LightningCLI resolves the config, lie inside its search space."""
    import yaml

    from fusion.commands.tune import config_params

    config = REPO / "configs" / space.name
    with pytest.raises(SystemExit):
        FusionCLI(args=["fit", "--config", str(config), "--print_config"])
    resolved = yaml.safe_load(capsys.readouterr().out)
    spec = load_space(space)
    head = resolved["model"]["head"]
    for name, rule in spec.items():
        value = resolved
        for part in name.split("."):
            value = value[part]
        if value is None and name.startswith("model.head_options."):  # the head's default
            value = inspect.signature(HEADS[head].__init__).parameters[part].default
        assert _in_space(value, rule), f"{space.name}: {name} {value!r} is outside {rule}"
    assert "model.optimizer.lr" in spec  # each space searches the lr of the config's own optimiser
    if "model.optimizer.name" in spec:
        assert _in_space(resolved["model"]["optimizer"]["name"], spec["model.optimizer.name"])
    # What trial 0 is built from: every searched option, none left to the sampler.
    params, outside = config_params(["--config", str(config)], spec)
    assert outside == [] and set(params) == set(spec)


def test_a_new_study_starts_with_the_config_as_trial_0(tmp_path, capsys):
    import json

    args = _setup(tmp_path)
    space = tmp_path / "space.yaml"  # holds configs/demo.yaml's values, among others
    space.write_text(
        "model.optimizer.lr: {low: 1.0e-4, high: 0.1, log: true}\n"
        "model.head_options.dropout: {low: 0.0, high: 0.5}\n"
        "model.head_options.hidden_dims: {choices: [[16], [128], [32, 16]]}\n"
        "data.batch_size: {choices: [32, 16]}\n"
        "model.head_options.penalty_lambda: {low: 0.01, high: 1.0, log: true}\n"
    )
    study_dir = run_tune([*args, "--n_trials", "2", "--pruner", "none"])
    out = capsys.readouterr().out
    assert "tune: trial 0 is the config's own values\n" in out
    trial0 = _study(tmp_path).trials[0]
    decoded = {k: json.loads(v) if isinstance(v, str) else v for k, v in trial0.params.items()}
    assert decoded == {
        "model.optimizer.lr": 0.003,
        "model.head_options.dropout": 0.2,
        "model.head_options.hidden_dims": [128],
        "data.batch_size": 16,
        "model.head_options.penalty_lambda": 0.1,
    }
    config = (study_dir / "trials" / "trial_0" / "config.yaml").read_text()
    assert "lr: 0.003\n" in config and "- 128\n" in config and "batch_size: 16\n" in config
    # One line per trial (tests/test_logs.py checks Optuna's own lines are gone).
    lines = [line for line in out.splitlines() if line.startswith("tune: trial ")]
    assert [line.split()[2] for line in lines[1:]] == ["0", "1"]
    assert lines[1].startswith(f"tune: trial 0 val/acc_top1 {trial0.value:.4f}; best ")
    # A resumed study gets no second copy of the config.
    run_tune([*args, "--n_trials", "3", "--pruner", "none"])
    assert "trial 0 is the config" not in capsys.readouterr().out
    assert len(_study(tmp_path).trials) == 3
