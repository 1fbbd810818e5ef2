"""The model's grouped options (issue 21): a config in the old flat form trains exactly as its
grouped form, and a checkpoint written with flat hyper-parameters still loads, predicts and
scores.

$ python -m pytest -q tests/test_fusion_options.py
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from feature_store import load_arrays
from fusion.cli import FusionCLI, regroup_argv
from fusion.heads import HeadSweep, SkipMLP, build_head
from fusion.module import RENAMED, grouped_hparams, head_options
from fusion.predict import head_probs, load_head
from tests.fixtures_training import REPO, fit_cli, small_store

# configs/concat.yaml as it was written before the options were grouped (flat, with a list
# as weight_decay), spelled out whole: the head, its network, SGD and the sweep.
OLD_CONCAT = {
    "seed_everything": 0,
    "model": {
        "head": "concat", "modality_dropout": 0.2, "hidden_dims": [32], "dropout": 0.3,
        "input_norm": "standardize", "label_smoothing": 0.0, "linear_skip": True,
        "optimizer": "sgd", "momentum": 0.9, "lr": 0.1, "weight_decay": [0.001, 0.01, 0.1],
        "schedule": "cosine", "warmup_fraction": 0.05,
        # An old RUN/config.yaml lists every option, also those concat never took.
        "fusion_dim": 512, "weighting": "penalty", "penalty_lambda": 0.1, "gate_hidden": 64,
        "branch_loss": 0.5,
    },
    "data": {"batch_size": 32},
}  # fmt: skip


@pytest.fixture(autouse=True)
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def _fit(store, run, *config_args):
    args = ["fit", *config_args, "--data.store", str(store), "--run_dir", str(run),
            "--trainer.max_steps", "12", "--trainer.max_epochs", "-1", "--trainer.logger",
            "false", "--trainer.enable_progress_bar", "false", "--model.head_options.hidden_dims",
            "[32]", "--data.batch_size", "32"]  # fmt: skip
    return FusionCLI(args=args)


@pytest.mark.slow
def test_an_old_flat_config_trains_exactly_as_its_grouped_form(tmp_path, capsys):
    store = small_store(tmp_path / "s")
    old = tmp_path / "old_concat.yaml"
    old.write_text(yaml.safe_dump(OLD_CONCAT))
    capsys.readouterr()
    before = _fit(store, tmp_path / "old", "--config", str(old)).model
    err = capsys.readouterr().err
    assert "--model.weight_decay is deprecated, read as --model.weight_decay_sweep" in err
    # set_penalty came after the groups: the flat form has none, so it is off here.
    after = _fit(store, tmp_path / "new", "--config", str(REPO / "configs" / "concat.yaml"),
                 "--model.head_options.set_penalty", "null")  # fmt: skip
    assert "deprecated" not in capsys.readouterr().err
    assert before.global_step == after.model.global_step == 12
    assert isinstance(before.head, HeadSweep) and len(before.head.members) == 3
    old_state, new_state = before.state_dict(), after.model.state_dict()
    assert list(old_state) == list(new_state)
    for name, value in old_state.items():
        assert torch.equal(value, new_state[name]), name
    # The same optimiser: SGD with momentum 0.9 at the same (batch-scaled) learning rate.
    for model in (before, after.model):
        opt = model.trainer.optimizers[0]
        assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9
        decays = sorted({g["weight_decay"] for g in opt.param_groups})
        assert decays == [0.0, 0.001, 0.01, 0.1]


def flat_hyper_parameters(hp: dict) -> dict:
    """``hp`` (grouped) as FusionModule saved it before the options were grouped: every
    option of every head, flat, with its value or the old default; a sweep as a list."""
    options, opt, sched = hp["head_options"], hp["optimizer"], hp["schedule"]
    old_defaults = {
        "input_norm": "standardize", "prior_sets": None, "linear_skip": False,
        "modality_dropout": 0.0, "fusion_dim": 512, "weighting": "penalty",
        "penalty_lambda": 0.1, "gate_hidden": 64, "branch_loss": 0.5,
    }  # fmt: skip
    flat = {k: hp[k] for k in ("head", "set_dims", "class_names", "label_smoothing")}
    # Only the options that existed then (an option added since, e.g. set_penalty, has no
    # flat name).
    flat.update({k: v if v is not None else old_defaults.get(k)
                 for k, v in options.items() if k in RENAMED})  # fmt: skip
    flat.update({k: v for k, v in opt.items() if k != "name"}, optimizer=opt["name"])
    flat.update({k: v for k, v in sched.items() if k != "name"}, schedule=sched["name"])
    flat["weight_decay"] = hp["weight_decay_sweep"] or opt["weight_decay"]
    return flat


def test_old_flat_command_line_options_are_read_as_their_grouped_names(capsys, monkeypatch):
    import fusion.cli

    monkeypatch.setattr(fusion.cli, "_ANNOUNCED", set())  # a new parse: each one announced
    argv = ["fit", "--model.lr", "0.1", "--model.optimizer", "sgd", "--model.weight_decay",
            "[0.1, 0.2]", "--model.schedule.name", "step", "--model.linear_skip=true",
            "--model.schedule={name: step}", "--data.batch_size", "8"]  # fmt: skip
    assert regroup_argv(argv) == [
        "fit", "--model.optimizer.lr", "0.1", "--model.optimizer.name", "sgd",
        "--model.weight_decay_sweep", "[0.1, 0.2]", "--model.schedule.name", "step",
        "--model.head_options.linear_skip=true", "--model.schedule={name: step}",
        "--data.batch_size", "8",
    ]  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 4 and all(line.startswith("train.py: --model.") for line in lines)
    assert lines[2].startswith(
        "train.py: --model.weight_decay is deprecated, read as --model.weight_decay_sweep"
    )


def test_flat_hyper_parameters_are_grouped_as_the_head_was_trained():
    """What a checkpoint from before --data.features and the groups holds, read back: the
    image/text dims as sets, options at their old defaults as unset (None: the head's own,
    the same value), options the head never took dropped (it dropped them), a list of weight
    decays as the sweep."""
    flat = {
        "head": "dual_logit", "image_dim": 4, "text_dim": 3, "class_names": ["a", "b"],
        "hidden_dims": [5], "dropout": 0.1, "input_norm": "standardize", "fusion_dim": 256,
        "penalty_lambda": 0.3, "weighting": "penalty", "gate_hidden": 64, "linear_skip": True,
        "optimizer": "sgd", "lr": 0.1, "momentum": 0.5, "weight_decay": [0.0, 0.1],
        "schedule": "step", "gamma": 0.5, "label_smoothing": 0.1,
    }  # fmt: skip
    assert grouped_hparams(flat) == {
        "head": "dual_logit", "set_dims": {"image": 4, "text": 3}, "class_names": ["a", "b"],
        "head_options": {"hidden_dims": [5], "dropout": 0.1, "input_norm": None,
                         "penalty_lambda": 0.3, "weighting": None, "linear_skip": True},
        "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.5},
        "schedule": {"name": "step", "gamma": 0.5},
        "weight_decay_sweep": [0.0, 0.1], "label_smoothing": 0.1,
    }  # fmt: skip
    head = build_head("dual_logit", set_dims={"image": 4, "text": 3}, num_classes=2,
                      **head_options(flat))  # fmt: skip
    assert isinstance(head, HeadSweep) and head.members[0].penalty_lambda == 0.3
    assert isinstance(head.members[0].branches[0], SkipMLP)
    # A grouped checkpoint is read as it is.
    grouped = grouped_hparams(flat)
    assert grouped_hparams(grouped) == grouped


@pytest.fixture(scope="module")
def old_checkpoint(tmp_path_factory):
    """A trained concat sweep's best.ckpt and a copy with flat (old) hyper-parameters."""
    root = tmp_path_factory.mktemp("old")
    store = small_store(root / "store")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    fit_cli(store, root / "run", "--model.head", "concat", "--model.head_options.linear_skip",
            "true", "--model.head_options.modality_dropout", "0.2", "--model.weight_decay_sweep",
            "[0.0, 0.1]", "--trainer.logger", "false", epochs=2)  # fmt: skip
    mp.undo()
    new = root / "run" / "checkpoints" / "best.ckpt"
    ckpt = torch.load(new, weights_only=True)
    ckpt["hyper_parameters"] = flat_hyper_parameters(ckpt["hyper_parameters"])
    old = root / "old.ckpt"
    torch.save(ckpt, old)
    return store, new, old


@pytest.mark.slow
def test_an_old_flat_checkpoint_loads_and_predicts_as_it_was_trained(old_checkpoint):
    store, new, old = old_checkpoint
    flat = torch.load(old, weights_only=True)["hyper_parameters"]
    assert (flat["optimizer"], flat["linear_skip"], flat["weight_decay"]) == ("adamw", True, [0.0, 0.1])
    head_new, _ = load_head(new)
    head_old, hp = load_head(old)
    assert isinstance(head_old, HeadSweep) and len(head_old.members) == 2
    assert int(head_old.selected) == int(head_new.selected)
    arrays = load_arrays(store, "test")
    inputs = [arrays.image_emb, arrays.text_emb]
    np.testing.assert_array_equal(head_probs(head_old, inputs), head_probs(head_new, inputs))


@pytest.mark.slow
def test_validate_scores_an_old_checkpoint_as_the_new_one(old_checkpoint, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    store, new, old = old_checkpoint
    scores = []
    for ckpt in (new, old):
        cli = FusionCLI(args=["validate", "--ckpt_path", str(ckpt), "--data.store", str(store),
                              "--trainer.enable_progress_bar", "false"])  # fmt: skip
        scores.append({k: float(v) for k, v in cli.trainer.callback_metrics.items()})
        # The module rebuilt from the file's hyper-parameters, grouped: the trained head.
        hp = cli.model.hparams
        assert hp.head_options["linear_skip"] is True and hp.weight_decay_sweep == [0.0, 0.1]
    assert scores[0] == scores[1] and "val/acc_top1" in scores[0]
