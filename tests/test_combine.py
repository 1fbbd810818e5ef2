"""One way to combine models (issue 21): :func:`fusion.combine.combine` and ``train.py stack``
over checkpoints, CV directories and ``.probs.npz`` files mixed, and its aliases
``predict.py ensemble`` and ``predict.py --checkpoint A --checkpoint B``.

$ python -m pytest -q tests/test_combine.py
"""

from __future__ import annotations

import inspect
from pathlib import Path

import numpy as np
import pytest
from fixtures_training import DEMO_CONFIG, fit_cli, small_store

from feature_store import load_arrays
from fusion.combine import DEFAULT_METHOD, CombineError, Source, combine
from fusion.ensemble import load_probs
from fusion.predict import predict_probs
from fusion.stacking import Stacker, cross_fit

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """On one store: a 2-fold ``train.py cv`` directory, a fit's checkpoint and another
    fit's ``submission.probs.npz`` with its ``val.probs.npz``."""
    from fusion.cv import run_cv

    root = tmp_path_factory.mktemp("combine")
    store = small_store(root / "store")
    cv = run_cv(["--config", DEMO_CONFIG, "--data.store", str(store), "--data.folds", "2",
                 "--model.head", "visual_only", "--trainer.max_epochs", "2",
                 "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                 "--cv_dir", str(root / "cv")])  # fmt: skip
    for name, head in (("ckpt", "text_only"), ("probs", "dual_logit")):
        fit_cli(store, root / name, "--model.head", head, "--trainer.logger", "false", epochs=2)
    return {
        "store": store,
        "cv": cv,
        "ckpt": root / "ckpt" / "checkpoints" / "best.ckpt",
        "probs": root / "probs" / "submission.probs.npz",
        "fit_on": root / "probs" / "val.probs.npz",
    }


def _on(ids, member):
    """``member``'s probabilities on ``ids``, in that order."""
    row = {i: n for n, i in enumerate(member.ids)}
    return member.probs[[row[i] for i in ids]]


def _by_hand(m):
    """The three members' val and test probabilities, each read by its own reader."""
    store = m["store"]
    val = load_arrays(store, "val")
    _, ckpt_val = predict_probs([m["ckpt"]], store, "val")
    test_ids, ckpt_test = predict_probs([m["ckpt"]], store, "test")
    oof, cv_test = load_probs(m["cv"] / "oof.probs.npz"), load_probs(m["cv"] / "submission.probs.npz")
    fit_on, probs = load_probs(m["fit_on"]), load_probs(m["probs"])
    fit = np.stack([ckpt_val, _on(val.ids, oof), _on(val.ids, fit_on)])
    test = np.stack([ckpt_test, _on(test_ids, cv_test), _on(test_ids, probs)])
    return val.ids, val.labels, test_ids, fit, test


def _mixed(m):
    return [m["ckpt"], m["cv"], Source(m["probs"], fit_on=m["fit_on"])]


def test_mixed_members_give_the_stack_fitted_by_hand(members):
    """A checkpoint, a CV directory and a .probs.npz file: fitted on the val rows (the CV's
    out-of-fold rows hold them), with the default method, logistic."""
    assert inspect.signature(combine).parameters["method"].default == DEFAULT_METHOD == "logistic"
    got = combine(_mixed(members), store=members["store"])
    val_ids, labels, test_ids, fit, test = _by_hand(members)
    lp_fit, lp_test = np.log(np.clip(fit, 1e-12, None)), np.log(np.clip(test, 1e-12, None))
    stacker = Stacker(3, "logistic").fit(lp_fit, labels)
    assert got.method == "logistic" and got.kinds == ["checkpoint", "cv", "probs"]
    assert got.fit_ids == val_ids and got.fitted_on == "val" and got.held_out == "val"
    assert (got.fit_labels == labels).all()
    assert got.ids == test_ids
    np.testing.assert_allclose(got.probs, stacker.predict_proba(lp_test), atol=1e-5)
    np.testing.assert_allclose(got.fit_probs, cross_fit(lp_fit, labels, method="logistic"),
                               atol=1e-5)  # fmt: skip
    assert got.member_acc == pytest.approx([(p.argmax(1) == labels).mean() for p in fit])
    assert got.score() == {"best/val/acc_top1": pytest.approx(
        (got.fit_probs.argmax(1) == labels).mean())}  # fmt: skip
    assert str(members["ckpt"]) in got.checkpoints


def test_mean_averages_the_mixed_members(members):
    got = combine(_mixed(members), "mean", store=members["store"])
    _, labels, test_ids, fit, test = _by_hand(members)
    assert got.ids == test_ids and got.mean_weights is None
    np.testing.assert_allclose(got.probs, test.mean(0), atol=1e-6)
    np.testing.assert_allclose(got.fit_probs, fit.mean(0), atol=1e-6)
    # Without labelled rows (a file without --fit_on) nothing can be fitted, only averaged.
    plain = [members["cv"], members["probs"]]
    with pytest.raises(CombineError, match="no labelled rows .*--fit_on.*'mean'"):
        combine(plain, "weights")
    assert combine(plain, "mean").fitted_on is None


def test_cv_directories_alone_are_fitted_out_of_fold(members):
    cv = members["cv"]
    got = combine([cv, Source(members["probs"], members["fit_on"])], "weights")
    # The .probs.npz member's val rows are the fewest: the fit is on them.
    assert got.fitted_on == "val" and len(got.fit_ids) == len(load_probs(members["fit_on"]).ids)
    oof = load_probs(cv / "oof.probs.npz")
    twice = combine([cv, cv], "weights")
    assert twice.fitted_on == "out-of-fold" and twice.fit_ids == oof.ids
    assert twice.score().keys() == {"best/oof/acc_top1"}


def test_what_would_leak_or_mismatch_is_refused(members, tmp_path):
    store, cv = members["store"], members["cv"]
    fold = next(cv.glob("fold_0/checkpoints/best.ckpt"))
    with pytest.raises(CombineError, match=f"fold of the 2-fold CV .*--cv {cv}"):
        combine([fold, members["ckpt"]], store=store)
    with pytest.raises(CombineError, match="needs a store"):
        combine([members["ckpt"], cv])
    # Rows both fitted and predicted: a member's val file as its own predictions.
    same = Source(members["fit_on"], fit_on=members["fit_on"])
    with pytest.raises(CombineError, match="both fitted .* and predicted"):
        combine([same, same], "weights")
    # A member of another store (other rows, same class names).
    other = small_store(tmp_path / "other", seed=3, per_class={"train": 12, "val": 6, "test": 4})
    other_ckpt = tmp_path / "o"
    fit_cli(other, other_ckpt, "--model.head", "text_only", "--trainer.logger", "false", epochs=1)
    with pytest.raises(CombineError):
        combine([cv, Source(other_ckpt / "submission.probs.npz", other_ckpt / "val.probs.npz")])
    with pytest.raises(CombineError, match="not found"):
        combine([cv, tmp_path / "missing.ckpt"], store=store)
    with pytest.raises(CombineError, match="method 'vote'"):
        combine([cv, cv], "vote")


def test_without_a_predict_split_only_the_fitted_rows(members):
    got = combine([members["ckpt"], members["cv"]], store=members["store"], predict_split=None)
    assert got.probs is None and got.ids == [] and len(got.fit_ids) == 40
    assert isinstance(got.probs, type(None)) and Path(got.members[1]) == members["cv"]
