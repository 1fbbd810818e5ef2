"""train.py end to end: run directory contract, resume, W&B offline, seeding, the demo path."""

import sys

import pytest
import torch

import train
from fusion.cli import ResumeError
from fusion.predict import load_head
from tests.fixtures_training import (
    fit_cli,
    read_csv,
    small_store,
    wandb_history,
    wandb_run_files,
)

pytestmark = pytest.mark.slow

METRICS = {"train/loss", "train/acc_top1", "train/acc_top5", "val/loss", "val/acc_top1"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("store") / "s")


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def test_fit_writes_the_run_directory_contract(store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    cli = fit_cli(store, run, epochs=2)
    assert cli.trainer.default_root_dir == str(run)
    for name in ("config.yaml", "metrics.csv", "alpha_beta.png", "val_predictions.csv"):
        assert (run / name).is_file(), name
    assert (run / "checkpoints" / "best.ckpt").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    rows = read_csv(run / "metrics.csv")
    assert METRICS | {"val/acc_top5", "fusion/alpha", "fusion/beta"} <= set(rows[0])
    steps = cli.trainer.global_step
    alphas = [r for r in rows if r["fusion/alpha"]]
    assert len(alphas) == steps  # every step
    val = read_csv(run / "val_predictions.csv")
    assert [r["id"] for r in val] == [f"val_{i:05d}" for i in range(len(val))]
    assert all(0 <= int(r["pred"]) < 5 and 0 < float(r["confidence"]) <= 1 for r in val)
    # Checkpoints: plain hyper-parameters, loadable with weights_only=True.
    ckpt = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    hp = ckpt["hyper_parameters"]
    assert (hp["head"], hp["set_dims"]) == ("dual_logit", {"image": 16, "text": 12})
    assert hp["class_names"] == [f"class_{i:03d}" for i in range(5)]
    # W&B ran offline into RUN/wandb and its history holds alpha/beta of every step.
    runs = wandb_run_files(run)
    history = wandb_history(runs[0])
    logged = [float(r["fusion/alpha"]) for r in history if "fusion/alpha" in r]
    assert len(logged) == steps
    assert logged == pytest.approx([float(r["fusion/alpha"]) for r in alphas])
    assert any("fusion/alpha_beta/_type" in r for r in history)  # the PNG, as a W&B image


def test_resume_from_last_continues_the_step_count(store, tmp_path, no_wandb):
    run = tmp_path / "run"
    first = fit_cli(store, run, epochs=2)
    steps_first = first.trainer.global_step
    resumed = fit_cli(store, run, "--ckpt_path", "last", epochs=4)
    assert resumed.trainer.global_step == 2 * steps_first
    rows = read_csv(run / "metrics.csv")
    steps = [int(r["step"]) for r in rows if r["fusion/alpha"]]
    assert steps == list(range(2 * steps_first))  # appended, not restarted
    assert len(resumed.model.alpha_beta_history) == 2 * steps_first
    epochs = sorted({int(r["epoch"]) for r in rows if r["val/acc_top1"]})
    assert epochs == [0, 1, 2, 3]


def test_resume_without_a_checkpoint_is_an_error(store, tmp_path, no_wandb):
    with pytest.raises(ResumeError, match="last.ckpt"):
        fit_cli(store, tmp_path / "empty", "--ckpt_path", "last")
    assert not (tmp_path / "empty").exists()


def test_resume_last_finds_the_newest_run_of_the_config(store, tmp_path, no_wandb):
    args = ("--runs_root", str(tmp_path / "runs"))
    base = ["fit", "--config", "configs/demo.yaml", "--data.store", str(store), *args]
    base += ["--trainer.enable_progress_bar", "false"]
    from fusion.cli import FusionCLI

    with pytest.raises(ResumeError):
        FusionCLI(args=[*base, "--ckpt_path", "last"])
    first = FusionCLI(args=[*base, "--trainer.max_epochs", "1"])
    run = first.trainer.default_root_dir
    assert run.startswith(str(tmp_path / "runs" / "demo"))
    again = FusionCLI(args=[*base, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    assert again.trainer.default_root_dir == run
    assert again.trainer.global_step == 2 * first.trainer.global_step


def test_same_seed_same_metrics(store, tmp_path, no_wandb):
    a = fit_cli(store, tmp_path / "a", epochs=2)
    b = fit_cli(store, tmp_path / "b", epochs=2)
    c = fit_cli(store, tmp_path / "c", "--seed_everything", "1", epochs=2)

    def numbers(run):
        return [
            {k: v for k, v in r.items() if k in METRICS | {"fusion/alpha"}}
            for r in read_csv(run / "metrics.csv")
        ]

    assert numbers(tmp_path / "a") == numbers(tmp_path / "b")
    assert numbers(tmp_path / "a") != numbers(tmp_path / "c")
    ha, _ = load_head(tmp_path / "a" / "checkpoints" / "last.ckpt")
    hb, _ = load_head(tmp_path / "b" / "checkpoints" / "last.ckpt")
    for (name, pa), pb in zip(ha.state_dict().items(), hb.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.trainer.global_step == b.trainer.global_step == c.trainer.global_step


def test_logger_off_writes_no_logs(store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = tmp_path / "run"
    fit_cli(store, run, "--trainer.logger", "false", epochs=1)
    assert not (run / "metrics.csv").exists()
    assert not (run / "wandb").exists()
    assert (run / "checkpoints" / "last.ckpt").is_file()


def test_no_argument_demo_trains_and_writes_a_submission(tmp_path, monkeypatch, capsys):
    # The no-argument path on a ready store (building it is data_prep's job, tested there).
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    small_store(tmp_path / "stores" / "demo", per_class={"train": 12, "val": 4, "test": 3})
    paths = train.run_demo(overrides=["--trainer.max_epochs=2"])
    out = capsys.readouterr().out
    assert "submission" in out and str(paths["run directory"]) in out
    rows = read_csv(paths["submission"])
    assert [r["Id"] for r in rows] == [f"test_{i:05d}" for i in range(15)]
    assert all(0 <= int(r["Category"]) < 5 for r in rows)
    assert (
        paths["run directory"].parent == tmp_path / "runs" / "demo"
        or (tmp_path / paths["run directory"]).parent == tmp_path / "runs" / "demo"
    )


def test_demo_without_data_prep_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(sys.modules, "data_prep", None)  # import fails
    with pytest.raises(SystemExit, match="data_prep"):
        train.build_demo_store(tmp_path / "stores" / "demo")


def test_train_main_turns_bad_input_into_a_one_line_error(store, tmp_path, no_wandb):
    args = ["fit", "--config", "configs/demo.yaml", "--run_dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit, match="manifest.json not found"):
        train.main([*args, "--data.store", str(tmp_path / "missing")])
    with pytest.raises(SystemExit, match="--ckpt_path last: no checkpoint"):
        train.main([*args, "--data.store", str(store), "--ckpt_path", "last"])


def test_a_cli_built_without_running_leaves_no_wandb_run(store, tmp_path, monkeypatch):
    """FusionCLI(run=False) (the Python API, tests) builds a Trainer that may never train:
    its W&B run must not start, or the next fit in the process would log into it."""
    import wandb

    from fusion.cli import FusionCLI
    from tests.fixtures_training import DEMO_CONFIG

    monkeypatch.setenv("WANDB_MODE", "offline")
    FusionCLI(args=["--config", DEMO_CONFIG, "--data.store", str(store),
                    "--run_dir", str(tmp_path / "run")], run=False)  # fmt: skip
    assert wandb.run is None
