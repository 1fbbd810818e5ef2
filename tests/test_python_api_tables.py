"""The Python API's DataFrames (sketchfusion/tables.py) hold exactly what their files hold,
read here independently with the ``csv`` module and numpy; the files are the command lines'
own writers' output, ids that pandas would mangle ("0012", "NA") included.

$ python -m pytest -q tests/test_python_api_tables.py
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

import sketchfusion as sf
from feature_store.synthetic import make_synthetic_store
from fusion.commands import tune
from fusion.commands.probe import run_probe
from fusion.predict import write_predictions_csv
from fusion.submission import save_probs, write_submission

IDS = ["0012", "NA", "null", "img_3"]  # leading zero and pandas' NA words: ids all the same


def assert_same_as_csv(table: pd.DataFrame, path: Path) -> None:
    """``table`` equals ``path`` read with the csv module: the header, then every column,
    as numbers where every non-blank cell is one (blank: NaN), else as the cells' text."""
    with path.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    assert list(table.columns) == header and len(table) == len(rows)
    for j, name in enumerate(header):
        cells = [r[j] for r in rows]
        try:
            want = [float(c) if c != "" else math.nan for c in cells]
        except ValueError:
            got = ["" if isinstance(v, float) and math.isnan(v) else str(v) for v in table[name]]
            assert got == cells, name
            continue
        if name in ("id", "Id"):  # numeric-looking ids stay text
            assert table[name].tolist() == cells, name
            continue
        np.testing.assert_array_equal(table[name].to_numpy(dtype=float), want, err_msg=name)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables") / "store"
    make_synthetic_store(root, num_classes=3, per_class={"train": 8, "val": 4, "test": 3})
    return root


def test_a_probe_runs_tables(store, tmp_path, monkeypatch):
    """train.py probe writes metrics.csv (features as text), val_predictions.csv and a
    submission with its probabilities: the readers take the run directory."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = run_probe(["--data.store", str(store), "--run_dir", str(tmp_path / "probe")])
    assert_same_as_csv(sf.metrics(run), run / "metrics.csv")
    assert_same_as_csv(sf.val_predictions(run), run / "val_predictions.csv")
    assert_same_as_csv(sf.submission(run), run / "submission.csv")
    assert_same_as_csv(sf.submission(run / "submission.csv"), run / "submission.csv")
    probs = sf.probabilities(run)  # submission.probs.npz: the test split, no labels
    with np.load(run / "submission.probs.npz") as z:
        assert probs.index.tolist() == z["ids"].tolist() and "label" not in probs
        assert list(probs.columns) == z["class_names"].tolist()
        np.testing.assert_array_equal(probs.to_numpy(), z["probs"])


def test_ids_pandas_would_mangle_stay_text(tmp_path):
    probs = np.array([[0.7, 0.3], [0.2, 0.8], [0.6, 0.4], [0.1, 0.9]], dtype=np.float32)
    labels = np.array([0, 1, 1, 1])
    write_predictions_csv(tmp_path / "val_predictions.csv", IDS, labels, probs)
    write_submission(tmp_path / "sub.csv", IDS, probs, class_names=["a", "b"])
    preds, sub = sf.val_predictions(tmp_path), sf.submission(tmp_path / "sub.csv")
    assert preds["id"].tolist() == IDS and sub["Id"].tolist() == IDS
    assert_same_as_csv(preds, tmp_path / "val_predictions.csv")
    assert_same_as_csv(sub, tmp_path / "sub.csv")
    assert sub["Category"].tolist() == probs.argmax(1).tolist()


def test_out_of_fold_probabilities_of_a_cv_directory(tmp_path):
    cv = tmp_path / "cv5"
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=len(IDS)).astype(np.float32)
    labels = np.array([2, 0, 1, 1])
    names = ["cat", "dog", "0"]  # a class named like a number stays a column name
    save_probs(cv / "oof.probs.npz", IDS, probs, class_names=names, labels=labels)
    table = sf.probabilities(cv)
    assert table.index.name == "id" and table.index.tolist() == IDS
    assert list(table.columns) == ["label", *names]
    assert table["label"].tolist() == labels.tolist()
    np.testing.assert_array_equal(table[names].to_numpy(), probs)
    assert sf.probabilities(cv / "oof.probs.npz").equals(table)


def test_tune_trials(tmp_path, capsys):
    """trials.csv as train.py tune writes it: a parameter one trial did not draw is blank
    (NaN), a categorical one is text, a pruned trial has no value."""
    study = optuna.create_study(direction="maximize")
    lr = optuna.distributions.FloatDistribution(1e-4, 1e-1, log=True)
    opt = optuna.distributions.CategoricalDistribution(["adamw", "sgd"])
    best_run = tmp_path / "trials" / "trial_0"
    best_run.mkdir(parents=True)
    (best_run / "config.yaml").write_text("model:\n  lr: 0.01\n")
    for n, (params, value, state) in enumerate([
        ({"lr": 0.01, "opt": "sgd"}, 0.8, optuna.trial.TrialState.COMPLETE),
        ({"lr": 0.002}, 0.7, optuna.trial.TrialState.COMPLETE),
        ({"lr": 0.05, "opt": "adamw"}, None, optuna.trial.TrialState.PRUNED),
    ]):  # fmt: skip
        dists = {"lr": lr, "opt": opt}
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: dists[k] for k in params}, value=value,
            state=state, user_attrs={"run_dir": str(tmp_path / "trials" / f"trial_{n}")},
        ))  # fmt: skip
    tune.report(study, tmp_path)
    table = sf.trials(tmp_path)
    assert_same_as_csv(table, tmp_path / "trials.csv")
    assert table["state"].tolist() == ["COMPLETE", "COMPLETE", "PRUNED"]
    assert math.isnan(table["params_opt"][1]) and math.isnan(table["val_acc_top1"][2])


def test_a_missing_file_names_what_to_pass(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics.csv here"):
        sf.metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="oof.probs.npz or submission.probs.npz"):
        sf.probabilities(tmp_path)


def test_a_fit_result_is_its_run_directory(tmp_path):
    fit = sf.FitResult(run_dir=tmp_path, best_checkpoint=None, last_checkpoint=None,
                       best_score=None)  # fmt: skip
    write_predictions_csv(tmp_path / "val_predictions.csv", IDS[:2], np.array([0, 1]),
                          np.array([[0.9, 0.1], [0.4, 0.6]]))  # fmt: skip
    assert sf.val_predictions(fit).equals(sf.val_predictions(tmp_path))
