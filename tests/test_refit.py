"""The final refit (fusion/refit.py): train+val rows, the validated run's length, no
validation, RUN/refit.json, a submission from last.ckpt; refusals are one line, exit 2.

$ python -m pytest -q tests/test_refit.py
"""

from __future__ import annotations

import json
import math
import os
import re
import signal

import lightning as L
import numpy as np
import pytest
import torch

import train
from feature_store import load_features
from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store
from fusion.cli import FusionCLI
from fusion.datamodule import FeatureDataModule
from tests.fixtures_training import DEMO_CONFIG, read_csv
from tests.train_runner import start_paused

SETS = [
    SyntheticSet("left", dim=12, classes=(0.0, 0.6), separation=3.0),
    SyntheticSet("right", dim=8, classes=(0.4, 1.0), separation=3.0),
    SyntheticSet("zs", kind="scores", dim=None, rows=0.7, separation=3.0),
]
FEATURES = "[left, zs]"  # two named sets, not the rows' image/text
BATCH = 32
ROWS = {"train": 80, "val": 40, "test": 20}  # 5 classes x per_class below


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("refit") / "store"
    make_feature_sets_store(root, sets=SETS, num_classes=5,
                            per_class={"train": 16, "val": 8, "test": 4}, seed=0)  # fmt: skip
    return root


@pytest.fixture(scope="module")
def validated(store, tmp_path_factory):
    """A fit validated on val: two sets, the tensors loader, a weight-decay sweep."""
    run = tmp_path_factory.mktemp("validated") / "run"
    FusionCLI(args=["fit", "--config", DEMO_CONFIG, "--data.store", str(store),
                    "--data.features", FEATURES, "--data.batch_size", str(BATCH),
                    "--model.weight_decay_sweep", "[0.01, 1.0]", "--trainer.max_epochs", "4",
                    "--trainer.enable_progress_bar", "false", "--run_dir", str(run)])  # fmt: skip
    return run


@pytest.mark.parametrize("loader", ["tensors", "dataloader"])
def test_pooled_train_splits_are_the_rows_of_each_split_in_order(store, loader):
    dm = FeatureDataModule(
        str(store), features=["left", "zs"], train_splits=["train", "val"], loader=loader
    )
    assert dm.train_rows == ROWS["train"] + ROWS["val"] and not dm.validates
    dm.setup("fit")
    parts = [load_features(store, s, ["left", "zs"]) for s in ("train", "val")]
    assert dm.ids(dm.train_key) == parts[0].ids + parts[1].ids
    left, zs = dm.train_tensors()
    np.testing.assert_array_equal(left.numpy(), np.concatenate([p["left"] for p in parts]))
    np.testing.assert_array_equal(zs.numpy(), np.concatenate([p["zs"] for p in parts]))
    batches = list(dm.train_dataloader())
    labels = torch.cat([b["label"] for b in batches]).sort().values.numpy()
    np.testing.assert_array_equal(labels, np.sort(np.concatenate([p.labels for p in parts])))
    plain = FeatureDataModule(str(store), features=["left", "zs"])
    assert plain.train_rows == ROWS["train"] and plain.validates


class RowsSeen(L.Callback):
    """Rows trained on per epoch."""

    def __init__(self) -> None:
        self.rows: dict[int, int] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        epoch = trainer.current_epoch
        self.rows[epoch] = self.rows.get(epoch, 0) + len(batch["label"])


def refit_argv(validated, run) -> list[str]:
    return ["fit", "--config", str(validated / "config.yaml"), "--data.train_splits",
            "[train, val]", "--recipe.from_run", str(validated), "--run_dir", str(run),
            "--trainer.enable_progress_bar", "false"]  # fmt: skip


@pytest.fixture(scope="module")
def refitted(validated, tmp_path_factory):
    """The refit of ``validated``: its run directory, trainer and the rows it trained on."""
    run = tmp_path_factory.mktemp("refitted") / "run"
    seen = RowsSeen()
    cli = FusionCLI(args=refit_argv(validated, run), extra_callbacks=[seen])
    return run, cli.trainer, seen


@pytest.mark.slow
def test_a_refit_trains_on_train_and_val_for_the_validated_length_and_submits(
    store, validated, refitted, tmp_path, capsys
):
    best = torch.load(validated / "checkpoints" / "best.ckpt", weights_only=True)
    run, trainer, seen = refitted
    # Every train and val row, once an epoch.
    assert seen.rows[0] == ROWS["train"] + ROWS["val"]
    # As many epochs as the validated best checkpoint: its steps at ceil(80/32) = 3 a
    # epoch become steps at ceil(120/32) = 4 an epoch; its 4-epoch schedule alike.
    then, now = math.ceil(ROWS["train"] / BATCH), math.ceil((ROWS["train"] + ROWS["val"]) / BATCH)
    steps = round(best["global_step"] * now / then)
    assert trainer.global_step == steps
    assert trainer.max_steps == 4 * now
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == steps
    # No validation, no early stopping, no best: last.ckpt is the model.
    assert not (run / "checkpoints" / "best.ckpt").exists()
    assert not (run / "val_predictions.csv").exists()
    assert not any(k.startswith("val/") for k in read_csv(run / "metrics.csv")[0])
    # The validated run's chosen weight decay, one head.
    decays = best["hyper_parameters"]["weight_decay_sweep"]
    chosen = decays[int(best["state_dict"]["head.selected"])]
    assert last["hyper_parameters"]["optimizer"]["weight_decay"] == chosen
    assert last["hyper_parameters"]["weight_decay_sweep"] is None
    assert "head.selected" not in last["state_dict"]
    marker = json.loads((run / "refit.json").read_text())
    assert marker["validated"]["run"] == str(validated)
    assert marker["validated"]["best_step"] == best["global_step"]
    assert marker["train_splits"] == ["train", "val"]
    assert marker["train_rows"] == ROWS["train"] + ROWS["val"]
    assert marker["steps"] == steps
    # The fit's submission comes from last.ckpt; `train.py predict --run_dir` picks it too.
    submission = read_csv(run / "submission.csv")
    assert [r["Id"] for r in submission] == load_features(store, "test", []).ids
    train.main(["predict", "--config", str(run / "config.yaml"), "--run_dir", str(run),
                "--data.store", str(store), "--out", str(tmp_path / "again.csv")])  # fmt: skip
    assert read_csv(tmp_path / "again.csv") == submission
    # A refit trained on the val rows a stack is fitted on: not a stack member.
    with pytest.raises(SystemExit) as exit_:
        train.main(["stack", "--checkpoint", str(validated / "checkpoints" / "best.ckpt"),
                    "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
                    "--data.store", str(store)])  # fmt: skip
    assert exit_.value.code == 2 and "is a refit" in capsys.readouterr().err


@pytest.mark.slow
def test_a_refit_stopped_by_sigterm_resumes_to_the_same_weights(validated, refitted, tmp_path):
    run, flag = tmp_path / "run", tmp_path / "paused"
    proc = start_paused(refit_argv(validated, run), flag, 2)
    os.killpg(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 143, err[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    FusionCLI(args=[*refit_argv(validated, run), "--ckpt_path", "last"])
    whole = torch.load(refitted[0] / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert resumed["global_step"] == whole["global_step"]
    for key, value in whole["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, rtol=0, atol=0)


REFUSED = [
    ("no-from-run", ["--data.train_splits", "[train, val]"], r"add --recipe\.from_run RUN"),
    ("early-stopping", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{run}",
                        "--early_stopping.patience", "3"], r"^train\.py: error: --early_stopping"),
    ("validation", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{run}",
                    "--trainer.check_val_every_n_epoch=2"], r"check_val_every_n_epoch: a refit"),
    ("own-length", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{run}",
                    "--trainer.max_epochs", "9"], r"--trainer\.max_epochs: a refit"),
    ("unknown-split", ["--data.train_splits", "[train, valid]"], r"has no split 'valid'"),
    ("missing-run", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{tmp}/nope"],
     r"from_run .*nope is not a run directory"),
    ("no-best", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{tmp}"],
     r"has no checkpoints/best\.ckpt"),
    ("from-run-alone", ["--recipe.from_run", "{run}"], r"add --data\.train_splits"),
    ("other-model", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{run}",
                     "--model.head_options.dropout", "0.5"],
     r"validated another model: --model\.head_options\.dropout 0\.5 \(validated: 0\.2\)"),
    ("with-folds", ["--data.train_splits", "[train, val]", "--recipe.from_run", "{run}",
                    "--data.folds", "3"], r"--data\.folds 3: the folds pool"),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "message"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED]
)
def test_a_refit_that_cannot_be_one_is_refused_in_one_line(
    store, validated, tmp_path, extra, message, capsys
):
    runs = tmp_path / "runs"
    extra = [e.format(run=validated, tmp=tmp_path) for e in extra]
    argv = ["fit", "--config", str(validated / "config.yaml"), "--data.store", str(store),
            "--runs_root", str(runs), *extra]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    ours = [line for line in err.splitlines() if line.startswith("train.py")]
    assert len(ours) == 1 and "Traceback" not in err, err[-2000:]
    assert re.search(message, ours[0]), ours[0]
    assert not runs.exists() or not any(runs.rglob("*"))
