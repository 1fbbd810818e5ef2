"""train.py validate / test / predict on a trained checkpoint: the metrics against an
independent computation, predict's submission against predict.py's, and no new run
directory, config file or W&B run anywhere.

$ python -m pytest -q tests/test_train_subcommands.py
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import predict
import train
from feature_store import load_arrays
from fusion.cli import FusionCLI
from fusion.predict import head_probs, load_head
from tests.fixtures_training import fit_cli, read_csv, small_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A store and one finished run on it, under ``ROOT/runs/demo/<run>``."""
    root = tmp_path_factory.mktemp("sub")
    store = small_store(root / "store")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    fit_cli(store, root / "runs" / "demo" / "r1", epochs=2)
    mp.undo()
    return root, store, root / "runs" / "demo" / "r1"


@pytest.fixture(autouse=True)
def offline_wandb(monkeypatch):
    # Offline, not disabled: a W&B run that were started would leave a wandb/ folder.
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def tree(root: Path) -> dict[str, float | None]:
    """Every file (with its modification time) and folder under ``root``."""
    return {
        str(p.relative_to(root)): p.stat().st_mtime if p.is_file() else None
        for p in sorted(root.rglob("*"))
    }


def expected_metrics(ckpt: Path, store: Path, split: str) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of the checkpoint on ``split``, without Lightning."""
    head, _ = load_head(ckpt)
    arrays = load_arrays(store, split)
    probs = head_probs(head, [arrays.image_emb, arrays.text_emb]).astype(np.float64)
    acc = float((probs.argmax(axis=1) == arrays.labels).mean())
    loss = float(-np.log(probs[np.arange(len(probs)), arrays.labels]).mean())
    return acc, loss


def score(*args: str) -> FusionCLI:
    return FusionCLI(args=[*args, "--trainer.enable_progress_bar", "false"])


@pytest.mark.parametrize(
    ("subcommand", "split_args", "prefix"),
    [("validate", [], "val"), ("test", ["--data.test_split", "val"], "test")],
)
def test_validate_and_test_score_the_checkpoint_and_write_nothing(
    trained, subcommand, split_args, prefix, capsys
):
    root, store, run = trained
    ckpt = run / "checkpoints" / "best.ckpt"
    before = tree(root)
    cli = score(subcommand, "--ckpt_path", str(ckpt), "--data.store", str(store), *split_args)
    metrics = cli.trainer.callback_metrics
    acc, loss = expected_metrics(ckpt, store, "val")
    assert float(metrics[f"{prefix}/acc_top1"]) == pytest.approx(acc, abs=1e-6)
    assert float(metrics[f"{prefix}/loss"]) == pytest.approx(loss, rel=1e-4)
    assert f"{prefix}/acc_top1" in capsys.readouterr().out  # Lightning's results table
    assert tree(root) == before  # no run directory, config, metrics or wandb/ anywhere
    assert cli.trainer.loggers == []


def test_test_on_the_unlabelled_split_says_which_split_to_use(trained, capsys):
    root, store, run = trained
    before = tree(root)
    argv = ["test", "--ckpt_path", str(run / "checkpoints" / "best.ckpt"), "--data.store"]
    with pytest.raises(SystemExit) as exit_:
        train.main([*argv, str(store)])
    assert exit_.value.code == 2
    assert "--data.test_split val" in capsys.readouterr().err
    assert tree(root) == before


def test_best_of_the_newest_run_of_the_experiment(trained, tmp_path):
    root, store, run = trained
    # `--config configs/demo.yaml --ckpt_path best` finds runs/demo/<newest>/checkpoints.
    cli = score(
        "validate", "--config", "configs/demo.yaml", "--ckpt_path", "best",
        "--runs_root", str(root / "runs"), "--data.store", str(store),
    )  # fmt: skip
    assert cli.ckpt_file == run / "checkpoints" / "best.ckpt"
    cli = score("validate", "--run_dir", str(run), "--data.store", str(store))
    assert cli.ckpt_file == run / "checkpoints" / "best.ckpt"


def test_predict_writes_predict_pys_submission(trained, tmp_path, capsys):
    root, store, run = trained
    ckpt = str(run / "checkpoints" / "best.ckpt")
    predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(tmp_path / "p.csv")])
    before = tree(root)
    train.main(["predict", "--ckpt_path", ckpt, "--data.store", str(store)])
    out = run / "predict" / "test" / "submission.csv"
    assert out.read_text() == (tmp_path / "p.csv").read_text()
    ours, theirs = np.load(out.with_name("submission.probs.npz")), np.load(tmp_path / "p.probs.npz")
    assert list(ours["ids"]) == list(theirs["ids"])
    np.testing.assert_allclose(ours["probs"], theirs["probs"], atol=1e-6)
    assert list(ours["class_names"]) == list(theirs["class_names"])
    # Only the submission, its probabilities and metadata are new, in RUN/predict/test/.
    after = tree(root)
    new = sorted(set(after) - set(before))
    rel = os.path.relpath(out.parent, root)
    assert new == [
        str(Path(rel).parent),
        rel,
        f"{rel}/submission.csv",
        f"{rel}/submission.json",
        f"{rel}/submission.probs.npz",
    ]
    assert all(after[k] == v for k, v in before.items())
    assert f"wrote {out}" in capsys.readouterr().out


def test_predict_out_and_split(trained, tmp_path):
    root, store, run = trained
    out = tmp_path / "val_sub.csv"
    argv = ["predict", "--ckpt_path", str(run / "checkpoints" / "best.ckpt")]
    train.main(
        [*argv, "--data.store", str(store), "--data.predict_split", "val", "--out", str(out)]
    )
    rows = read_csv(out)
    assert [r["Id"] for r in rows] == load_arrays(store, "val").ids


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no-checkpoint", r"scores a trained checkpoint: pass --ckpt_path"),
        ("no-run-of-experiment", r"no .*/runs/nothing/\*/checkpoints/best\.ckpt"),
        ("other-classes", r"does not match the store"),
        ("out-in-store", r"--out .* is inside the store"),
        ("missing-checkpoint", r"checkpoint not found"),
    ],
)
def test_scoring_bad_input_exits_2_and_writes_nothing(trained, tmp_path, case, message, capsys):
    root, store, run = trained
    ckpt = str(run / "checkpoints" / "best.ckpt")
    argv = {
        "no-checkpoint": ["validate", "--data.store", str(store)],
        "no-run-of-experiment": ["test", "--experiment", "nothing", "--ckpt_path", "best",
                                 "--runs_root", str(root / "runs"), "--data.store", str(store)],
        "other-classes": ["validate", "--ckpt_path", ckpt, "--data.store",
                          str(small_store(tmp_path / "s4", num_classes=4))],
        "out-in-store": ["predict", "--ckpt_path", ckpt, "--data.store", str(store),
                         "--out", str(store / "x.csv")],
        "missing-checkpoint": ["predict", "--ckpt_path", str(tmp_path / "no.ckpt"),
                               "--data.store", str(store)],
    }[case]  # fmt: skip
    before = tree(root)
    with pytest.raises(SystemExit) as exit_:
        train.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-2000:]
    lines = [line for line in err.splitlines() if line.startswith("train.py")]
    assert len(lines) == 1 and __import__("re").search(message, lines[0]), err[-2000:]
    assert "Traceback" not in err
    assert tree(root) == before
