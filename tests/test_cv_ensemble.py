"""train.py cv (folds, out-of-fold probabilities, averaged submission) and predict.py ensemble."""

import json

import numpy as np
import pytest
from fixtures_training import DEMO_CONFIG, read_csv

from feature_store import load_arrays
from feature_store.synthetic import make_caption_mix_store
from fusion.combine import CombineError, Source, combine
from fusion.commands.cv import run_cv
from fusion.commands.ensemble import main as ensemble_main
from fusion.ensemble import EnsembleError, check_members, load_probs
from fusion.folds import assign_folds
from fusion.submission import save_probs

K = 3


@pytest.fixture(scope="module")
def cv_run(tmp_path_factory):
    """A 3-fold CV of the demo config on a noisy store whose test split keeps its labels."""
    root = tmp_path_factory.mktemp("cv")
    store = root / "store"
    make_caption_mix_store(
        store,
        num_classes=6,
        per_class={"train": 30, "val": 10, "test": 40},
        image_dim=16,
        text_dim=8,
        image_noise=1.6,
        caption_mix={"informative": 0.3, "noise": 0.7},
        seed=0,
    )
    args = ["--config", DEMO_CONFIG, "--data.store", str(store), "--data.folds", str(K),
            "--trainer.max_epochs", "15", "--trainer.enable_progress_bar", "false",
            "--cv_dir", str(root / "cv")]  # fmt: skip
    cv_dir = run_cv(args)
    return store, cv_dir, args


def test_cv_writes_out_of_fold_probabilities_of_every_row(cv_run):
    store, cv_dir, _ = cv_run
    pooled = [load_arrays(store, s) for s in ("train", "val")]
    ids = pooled[0].ids + pooled[1].ids
    labels = np.concatenate([p.labels for p in pooled])
    folds = assign_folds(ids, labels, k=K, seed=0)
    accs = []
    for f in range(K):
        oof = load_probs(cv_dir / f"fold_{f}" / "val.probs.npz")
        # Each fold's val rows are exactly its held-out fold, scored by a model not fitted on them.
        assert sorted(oof.ids) == sorted(i for i, g in zip(ids, folds, strict=True) if g == f)
        train_ids = set(read_csv(cv_dir / f"fold_{f}" / "val_predictions.csv")[0].keys())
        assert train_ids == {"id", "label", "pred", "confidence"}
        accs.append(float((oof.probs.argmax(1) == oof.labels).mean()))
    summary = json.loads((cv_dir / "cv.json").read_text())
    assert summary["fold_val_acc_top1"] == pytest.approx(accs)
    assert summary["cv_acc_top1_mean"] == pytest.approx(np.mean(accs))
    assert summary["cv_acc_top1_std"] == pytest.approx(np.std(accs))
    every = load_probs(cv_dir / "oof.probs.npz")
    assert every.ids == sorted(ids)
    assert (every.labels == labels[np.argsort(ids)]).all()


def test_cv_submission_is_the_fold_average_and_beats_the_mean_fold(cv_run):
    store, cv_dir, _ = cv_run
    tests = [load_probs(cv_dir / f"fold_{f}" / "test.probs.npz") for f in range(K)]
    sub = load_probs(cv_dir / "submission.probs.npz")
    np.testing.assert_allclose(sub.probs, np.mean([t.probs for t in tests], axis=0), atol=1e-6)
    rows = read_csv(cv_dir / "submission.csv")
    assert [r["Id"] for r in rows] == sub.ids
    truth = load_arrays(store, "test")
    y = np.array([truth.labels[truth.ids.index(i)] for i in sub.ids])
    fold_accs = [float((t.probs.argmax(1) == y).mean()) for t in tests]
    ensemble_acc = float((sub.probs.argmax(1) == y).mean())
    assert ensemble_acc >= np.mean(fold_accs), (ensemble_acc, fold_accs)
    meta = json.loads((cv_dir / "submission.json").read_text())
    assert meta["members"] == [str(cv_dir / f"fold_{f}" / "test.probs.npz") for f in range(K)]
    assert (
        meta["cv_acc_top1_mean"] == json.loads((cv_dir / "cv.json").read_text())["cv_acc_top1_mean"]
    )


def test_cv_rerun_skips_finished_folds(cv_run):
    _, cv_dir, args = cv_run
    ckpts = sorted(cv_dir.glob("fold_*/checkpoints/best.ckpt"))
    before = {p: p.stat().st_mtime_ns for p in ckpts}
    run_cv(args)
    assert {p: p.stat().st_mtime_ns for p in ckpts} == before
    with pytest.raises(SystemExit, match="another command"):
        run_cv([*args, "--trainer.max_epochs", "5"])


def _member(path, ids, probs, labels=None, classes=("a", "b", "c")):
    save_probs(path, ids, np.asarray(probs, dtype=np.float32), class_names=list(classes),
               labels=labels)  # fmt: skip
    return path


def test_members_are_aligned_by_id_and_checked(tmp_path):
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=4)
    a = _member(tmp_path / "a.probs.npz", ["w", "x", "y", "z"], p)
    b = _member(tmp_path / "b.probs.npz", ["z", "y", "x", "w"], p[::-1])  # same rows, reordered
    aligned = check_members([load_probs(a), load_probs(b)])
    np.testing.assert_allclose(aligned[1].probs, p)
    c = _member(tmp_path / "c.probs.npz", ["w", "x", "y", "q"], p)
    with pytest.raises(EnsembleError, match="ids differ"):
        check_members([load_probs(a), load_probs(c)])
    d = _member(tmp_path / "d.probs.npz", ["w", "x", "y", "z"], p, classes=("a", "c", "b"))
    with pytest.raises(EnsembleError, match="class order differs .* label 1"):
        check_members([load_probs(a), load_probs(d)])


def test_weights_are_never_fitted_on_scored_rows(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.1)
    good[np.arange(n), y] = 0.8
    noise = rng.dirichlet(np.ones(3), size=n)
    ids = [f"r{i}" for i in range(n)]
    fit = [_member(tmp_path / f"{k}.npz", ids, p, y) for k, p in (("g", good), ("n", noise))]
    # Scored rows that are also fitted rows: refused, whatever the call.
    with pytest.raises(CombineError, match="both fitted"):
        combine([Source(f, fit_on=f) for f in fit], "weights")
    test_ids = [f"t{i}" for i in range(10)]
    scored = [_member(tmp_path / f"{k}t.npz", test_ids, p[:10]) for k, p in
              (("g", good), ("n", noise))]  # fmt: skip
    got = combine([Source(t, fit_on=f) for t, f in zip(scored, fit, strict=True)], "weights")
    assert got.mean_weights[0] > 0.7  # the informative member dominates (0.8 here; noise: 0.2)
    assert got.member_acc[0] == 1.0 and got.acc >= 0.99


def test_ensemble_cli_from_probs_files(tmp_path, capsys):
    rng = np.random.default_rng(1)
    n, ids = 60, [f"r{i}" for i in range(60)]
    y = rng.integers(0, 3, n)
    members, oofs = [], []
    for k in range(2):
        members.append(_member(tmp_path / f"m{k}.probs.npz", [f"t{i}" for i in range(8)],
                               rng.dirichlet(np.ones(3), size=8)))  # fmt: skip
        p = 0.5 * rng.dirichlet(np.ones(3), size=n) + 0.5 * np.eye(3)[y] * (k == 0)
        oofs.append(_member(tmp_path / f"m{k}.oof.probs.npz", ids, p / p.sum(1, keepdims=True), y))
    out = tmp_path / "ens.csv"
    ensemble_main(["--probs", str(members[0]), "--probs", str(members[1]),
                   "--fit_on", str(oofs[0]), "--fit_on", str(oofs[1]),
                   "--out", str(out), "--message", "two members"])  # fmt: skip
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["message"] == "two members" and meta["method"] == "weights"
    assert meta["members"] == [str(m) for m in members]
    assert meta["mean_weights"][0] > meta["mean_weights"][1]
    assert [r["Id"] for r in read_csv(out)] == [f"t{i}" for i in range(8)]
    # A plain average needs no --fit_on; mismatched member files exit 2 with one line.
    import predict  # the script's own entry point: `python predict.py ensemble ...`

    predict.main(["ensemble", "--probs", str(members[0]), "--probs", str(members[1]),
                  "--out", str(out)])  # fmt: skip
    avg = (load_probs(members[0]).probs + load_probs(members[1]).probs) / 2
    np.testing.assert_allclose(load_probs(tmp_path / "ens.probs.npz").probs, avg, atol=1e-6)
    with pytest.raises(SystemExit) as exc:
        ensemble_main(["--probs", str(members[0]), "--probs", str(oofs[0]), "--out", str(out)])
    assert exc.value.code == 2 and "ids differ" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cv_members(tmp_path_factory):
    """3-fold CVs of an image head and a text head on a store whose captions name the class
    on 40% of the rows and say nothing on the rest."""
    root = tmp_path_factory.mktemp("cvstack")
    store = root / "store"
    make_caption_mix_store(
        store,
        num_classes=6,
        per_class={"train": 30, "val": 10, "test": 30},
        image_dim=16,
        text_dim=8,
        image_noise=1.6,
        caption_mix={"informative": 0.4, "neutral": 0.6},
        seed=1,
    )
    dirs = []
    for head in ("visual_only", "text_only"):
        dirs.append(root / head)
        run_cv(["--config", DEMO_CONFIG, "--data.store", str(store), "--data.folds", str(K),
                "--model.head", head, "--trainer.max_epochs", "15", "--trainer.logger", "false",
                "--trainer.enable_progress_bar", "false", "--cv_dir", str(dirs[-1])])  # fmt: skip
    return store, dirs


def test_stack_of_cv_runs_is_fitted_on_every_out_of_fold_row(cv_members, tmp_path):
    import train
    from fusion.ensemble import log_probs
    from fusion.stacker import Stacker

    store, dirs = cv_members
    run = tmp_path / "stack"
    train.main(["stack", "--cv", str(dirs[0]), "--cv", str(dirs[1]), "--run_dir", str(run)])
    summary = json.loads((run / "stack.json").read_text())
    fitted = len(load_arrays(store, "train")) + len(load_arrays(store, "val"))
    assert summary["fitted_on"] == "out-of-fold" and summary["rows_fitted"] == fitted
    assert len(read_csv(run / "oof_predictions.csv")) == fitted
    # The same pooling fitted by hand on the out-of-fold files, applied to the averaged test
    # probabilities of the folds.
    oof = check_members([load_probs(d / "oof.probs.npz") for d in dirs])
    test = check_members([load_probs(d / "submission.probs.npz") for d in dirs])
    stacker = Stacker(2, "logistic").fit(log_probs(oof), oof[0].labels)
    sub = load_probs(run / "submission.probs.npz")
    assert sub.ids == test[0].ids
    np.testing.assert_allclose(sub.probs, stacker.predict_proba(log_probs(test)), atol=1e-5)
    assert [r["Id"] for r in read_csv(run / "submission.csv")] == sub.ids
    # Captions name the class on some rows only: the stack beats either member on those rows.
    assert summary["acc_top1_cross_fitted"] > max(summary["member_acc_top1"]), summary


def test_stack_refuses_unfinished_or_mixed_members_before_writing(
    cv_members, cv_run, tmp_path, capsys
):
    import train

    store, dirs = cv_members
    runs = tmp_path / "runs"
    ckpt = next(dirs[0].glob("fold_0/checkpoints/*.ckpt"))
    for bad in (
        ["--cv", str(dirs[0])],  # one member
        ["--cv", str(dirs[0]), "--cv", str(dirs[0] / "fold_0")],  # a fold, not a CV directory
        ["--cv", str(dirs[0]), "--cv", str(cv_run[1])],  # another store's rows
        ["--cv", str(dirs[0]), "--checkpoint", str(ckpt), "--data.store", str(store)],
        ["--cv", str(dirs[0]), "--cv", str(tmp_path / "missing")],
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["stack", "--runs_root", str(runs), *bad])
        assert exit_info.value.code == 2, bad
    assert not runs.exists()
    # The directory above the CV directories: the error names them.
    with pytest.raises(SystemExit):
        train.main(
            ["stack", "--runs_root", str(runs), "--cv", str(dirs[0].parent), "--cv", str(dirs[1])]
        )
    assert f"did you mean {dirs[1]} or {dirs[0]}?" in capsys.readouterr().err  # sorted
