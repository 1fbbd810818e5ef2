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
from fusion.errors import FusionError
from fusion.predict import CheckpointError, predict_probs
from fusion.stacker import Stacker, cross_fit

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def members(tmp_path_factory):
    """On one store: a 2-fold ``train.py cv`` directory, a fit's checkpoint and another
    fit's ``submission.probs.npz`` with its ``val.probs.npz``."""
    from fusion.commands.cv import run_cv

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
    with pytest.raises(FusionError, match="ids differ|lacks|labels differ"):
        combine([cv, Source(other_ckpt / "submission.probs.npz", other_ckpt / "val.probs.npz")])
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        combine([cv, tmp_path / "missing.ckpt"], store=store)
    with pytest.raises(CombineError, match="method 'vote'"):
        combine([cv, cv], "vote")


def test_without_a_predict_split_only_the_fitted_rows(members):
    got = combine([members["ckpt"], members["cv"]], store=members["store"], predict_split=None)
    assert got.probs is None and got.ids == [] and len(got.fit_ids) == 40
    assert isinstance(got.probs, type(None)) and Path(got.members[1]) == members["cv"]


# --- the one command and its aliases ----------------------------------------------------


def _same_submission(a: Path, b: Path) -> None:
    """Two submissions with the same CSV bytes and the same probabilities."""
    assert a.read_bytes() == b.read_bytes()
    pa, pb = (load_probs(x.with_name(x.stem + ".probs.npz")) for x in (a, b))
    assert pa.ids == pb.ids and pa.class_names == pb.class_names
    np.testing.assert_array_equal(pa.probs, pb.probs)


def test_train_stack_takes_the_mixed_members(members, tmp_path):
    import json

    import train

    m, run = members, tmp_path / "stack"
    train.main(["stack", "--checkpoint", str(m["ckpt"]), "--cv", str(m["cv"]), "--probs",
                str(m["probs"]), "--fit_on", str(m["fit_on"]), "--data.store", str(m["store"]),
                "--run_dir", str(run)])  # fmt: skip
    got = combine(_mixed(m), store=m["store"])
    sub = load_probs(run / "submission.probs.npz")
    assert sub.ids == got.ids
    np.testing.assert_array_equal(sub.probs, got.probs)
    summary = json.loads((run / "stack.json").read_text())
    assert summary["method"] == DEFAULT_METHOD  # train.py stack's default is the function's
    assert summary["fitted_on"] == "val" and summary["rows_fitted"] == len(got.fit_ids)
    assert summary["acc_top1_cross_fitted"] == pytest.approx(got.acc)
    assert len((run / "val_predictions.csv").read_text().splitlines()) == len(got.fit_ids) + 1


def test_predict_ensemble_is_an_alias_of_train_stack(members, tmp_path, capsys):
    import predict
    import train

    m, root = members, members["ckpt"].parents[1]
    pairs = [(m["probs"], m["fit_on"]), (root / "submission.probs.npz", root / "val.probs.npz")]
    for method in ("weights", "mean"):
        ens, run = tmp_path / f"ens_{method}.csv", tmp_path / f"stack_{method}"
        fit_on = [a for _, f in pairs for a in ("--fit_on", str(f))] if method != "mean" else []
        capsys.readouterr()
        predict.main(["ensemble", *[a for p, _ in pairs for a in ("--probs", str(p))], *fit_on,
                      "--out", str(ens)])  # fmt: skip
        # Its old defaults (weights with --fit_on, mean without) stay, named on stderr.
        assert f"--method {method} (this command's default" in capsys.readouterr().err
        stack_members = [a for p, f in pairs for a in ("--probs", str(p), "--fit_on", str(f))]
        if method == "mean":
            stack_members = [a for p, _ in pairs for a in ("--probs", str(p))]
        train.main(["stack", *stack_members, "--stack.method", method, "--run_dir", str(run)])
        _same_submission(ens, run / "submission.csv")


def test_several_checkpoints_in_predict_are_an_alias_of_a_mean_stack(members, tmp_path, capsys):
    import predict
    import train

    m = members
    ckpts = [str(m["ckpt"]), str(m["probs"].parent / "checkpoints" / "best.ckpt")]
    out, run = tmp_path / "avg.csv", tmp_path / "stack"
    capsys.readouterr()
    predict.main(["--checkpoint", ckpts[0], "--checkpoint", ckpts[1], "--store", str(m["store"]),
                  "--out", str(out)])  # fmt: skip
    assert "2 checkpoints averaged (method mean" in capsys.readouterr().err
    train.main(["stack", "--checkpoint", ckpts[0], "--checkpoint", ckpts[1], "--data.store",
                str(m["store"]), "--stack.method", "mean", "--run_dir", str(run)])  # fmt: skip
    _same_submission(out, run / "submission.csv")
    by_hand = np.mean([predict_probs([c], m["store"], "test")[1] for c in ckpts], axis=0)
    np.testing.assert_allclose(load_probs(out.with_name("avg.probs.npz")).probs, by_hand,
                               atol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--cv", "{ckpt}", "--cv", "{cv}"], "--cv {ckpt} is not a `train.py cv` directory"),
        (["--probs", "{probs}", "--probs", "{probs}", "--fit_on", "{fit_on}"],
         "1 --fit_on files for 2 --probs"),
        (["--cv", "{cv}", "--probs", "{probs}"], "no labelled rows"),
        (["--cv", "{cv}"], "at least two members"),
        (["--cv", "{cv}", "--cv", "{cv}_missing"], "--cv {cv}_missing: CV directory not found"),
        (["--cv", "{cv}", "--probs", "{probs}.gone"], "--probs {probs}.gone: probabilities file not found"),
    ],
)  # fmt: skip
def test_train_stack_refuses_bad_members_in_one_line(members, tmp_path, capsys, argv, words):
    import train

    runs = tmp_path / "runs"
    fill = {k: str(v) for k, v in members.items()}
    argv = [a.format(**fill) for a in argv]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        train.main(["stack", *argv, "--runs_root", str(runs)])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and words.format(**fill) in err[0], err
    assert not runs.exists()
