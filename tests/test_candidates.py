"""Every candidate a competitor chooses between is a W&B run with the same summary keys and
its submission as an artifact; predict makes no run; the submission's Category format and
the one command to Kaggle (issue 22, items 4 and 5). W&B runs offline (tests/conftest.py)
and is read back from its run files."""

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest
from fixtures_training import (
    DEMO_CONFIG,
    fit_cli,
    read_csv,
    small_store,
    wandb_artifacts,
    wandb_config,
    wandb_run_files,
    wandb_run_id,
    wandb_summary,
)

import predict
import train
from feature_store import open_store
from fusion.ensemble import load_probs

# Config keys no run may hold: Lightning's un-prefixed copies of the model's
# hyper-parameters (`lr` beside `model.optimizer.lr`) and the old aliases of `wandb.*`.
ALIASES = {"wandb_project", "wandb_group"}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("cand") / "s")


@pytest.fixture(scope="module")
def fits(store, tmp_path_factory):
    """Two one-epoch fits (the stack's members), W&B offline."""
    root = tmp_path_factory.mktemp("fits")
    runs = [root / "a", root / "b"]
    fit_cli(store, runs[0], "--wandb_project", "cands", "--wandb_group", "g", epochs=1)
    fit_cli(store, runs[1], "--model.head", "visual_only", epochs=1)
    return runs


def one_run(directory: Path) -> Path:
    (run_file,) = wandb_run_files(directory)
    return run_file


def assert_candidate(run_file: Path, kind: str, score_key: str, submission: Path) -> dict:
    """The run is a ``kind`` candidate with ``score_key`` in its summary, its submission
    (CSV, probabilities, metadata) as the ``submission-<run id>`` artifact, and each
    config key once."""
    config, summary = wandb_config(run_file), wandb_summary(run_file)
    assert config["candidate"] == kind
    assert 0.0 <= summary[score_key] <= 1.0
    (sub,) = [a for a in wandb_artifacts(run_file) if a["type"] == "submission"]
    assert sub["name"] == f"submission-{wandb_run_id(run_file)}"
    assert submission.name in sub["files"]
    assert {submission.stem + ".probs.npz", submission.stem + ".json"} <= set(sub["files"])
    keys = {k for k in config if not k.startswith("_wandb")}
    bare = {k for k in keys if "." not in k}
    # No setting twice: no bare key that is also the last part of a dotted one, no alias.
    assert not {k for k in bare if any(d.endswith("." + k) for d in keys)}, sorted(bare)
    assert not ALIASES & keys
    return summary


@pytest.mark.slow
def test_fit_probe_stack_and_ensemble_are_candidates(store, fits, tmp_path):
    run = fits[0]
    summary = assert_candidate(one_run(run), "fit", "best/val/acc_top1", run / "submission.csv")
    config = wandb_config(one_run(run))
    assert config["wandb.project"] == "cands" and config["wandb.group"] == "g"  # aliases folded
    assert config["model.optimizer.lr"] > 0 and "lr" not in config
    meta = json.loads((run / "submission.json").read_text())
    assert meta["candidate"] == "fit"
    assert meta["best/val/acc_top1"] == pytest.approx(summary["best/val/acc_top1"])

    probe = tmp_path / "probe"
    train.main(["probe", "--data.store", str(store), "--run_dir", str(probe),
                "--probe.cs", "[0.1, 1]"])  # fmt: skip
    summary = assert_candidate(
        one_run(probe), "probe", "best/val/acc_top1", probe / "submission.csv"
    )
    results = json.loads((probe / "probe.json").read_text())["results"]
    assert summary["best/val/acc_top1"] == pytest.approx(
        max(r["val_acc_top1"] for r in results.values())
    )

    stack = tmp_path / "stack"
    members = [str(r / "checkpoints" / "best.ckpt") for r in fits]
    train.main(["stack", "--checkpoint", members[0], "--checkpoint", members[1],
                "--data.store", str(store), "--run_dir", str(stack)])  # fmt: skip
    summary = assert_candidate(
        one_run(stack), "stack", "best/val/acc_top1", stack / "submission.csv"
    )
    crossed = json.loads((stack / "stack.json").read_text())["acc_top1_cross_fitted"]
    assert summary["best/val/acc_top1"] == pytest.approx(crossed)

    # An ensemble of the fits' saved probabilities, its pooling fitted on their val rows.
    out = tmp_path / "ens" / "ens.csv"
    sub = [str(r / "submission.probs.npz") for r in fits]
    val = [str(r / "val.probs.npz") for r in fits]
    predict.main(["ensemble", "--probs", sub[0], "--probs", sub[1], "--fit_on", val[0],
                  "--fit_on", val[1], "--out", str(out)])  # fmt: skip
    runs = sorted((out.parent / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and not (out.parent / "wandb_run_id").exists()
    summary = assert_candidate(one_run(out.parent), "ensemble", "best/val/acc_top1", out)
    meta = json.loads(out.with_suffix(".json").read_text())
    assert summary["best/val/acc_top1"] == pytest.approx(meta["fit_acc_top1_cross_fitted"])
    assert meta["wandb_run_id"] == wandb_run_id(one_run(out.parent))


@pytest.mark.slow
def test_cv_is_one_candidate_scored_out_of_fold(store, tmp_path):
    cv_dir = tmp_path / "cv"
    args = ["--config", DEMO_CONFIG, "--data.store", str(store), "--data.folds", "2",
            "--trainer.max_epochs", "1", "--trainer.enable_progress_bar", "false",
            "--cv_dir", str(cv_dir), "--category", "name"]  # fmt: skip
    train.main(["cv", *args])
    summary = assert_candidate(
        one_run(cv_dir), "cv", "best/oof/acc_top1", cv_dir / "submission.csv"
    )
    cv = json.loads((cv_dir / "cv.json").read_text())
    assert summary["best/oof/acc_top1"] == pytest.approx(cv["oof_acc_top1"])
    assert summary["cv/cv_acc_top1_mean"] == pytest.approx(cv["cv_acc_top1_mean"])
    config = wandb_config(one_run(cv_dir))
    assert config["cv.folds"] == 2 and "data.fold" not in config
    # The folds are parts of the CV, not candidates: no submission of their own.
    for fold in range(2):
        fold_run = one_run(cv_dir / f"fold_{fold}")
        assert wandb_config(fold_run)["candidate"] == "cv_fold"
        assert not [a for a in wandb_artifacts(fold_run) if a["type"] == "submission"]
        assert not (cv_dir / f"fold_{fold}" / "submission.csv").exists()
    # --category is the CV's own: class names in its submission.
    names = open_store(store).class_names
    sub = load_probs(cv_dir / "submission.probs.npz")
    rows = read_csv(cv_dir / "submission.csv")
    assert [r["Category"] for r in rows] == [names[i] for i in sub.probs.argmax(1)]


@pytest.mark.slow
def test_predict_makes_no_wandb_run(store, fits, tmp_path):
    run = fits[1]
    before = sorted((run / "wandb").glob("*run-*"))
    ckpt = str(run / "checkpoints" / "best.ckpt")
    out = tmp_path / "p" / "sub.csv"
    predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(out)])
    train.main(["predict", "--ckpt_path", ckpt, "--data.store", str(store),
                "--out", str(tmp_path / "t" / "sub.csv"),
                "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert sorted((run / "wandb").glob("*run-*")) == before
    for folder in (out.parent, tmp_path / "t"):
        assert sorted(p.name for p in folder.iterdir()) == ["sub.csv", "sub.json", "sub.probs.npz"]


# -- the submission: Category format, metadata, the command to Kaggle -------------------------


@pytest.fixture
def stand_in_kaggle(tmp_path, monkeypatch):
    """A ``kaggle`` executable first on PATH that records its argv (one JSON line per call)
    and exits with ``$FAKE_KAGGLE_STATUS`` (0 unless set)."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "kaggle_calls.jsonl"
    bin_dir.mkdir()
    script = bin_dir / "kaggle"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(calls)!r}, 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
        "sys.exit(int(os.environ.get('FAKE_KAGGLE_STATUS', '0')))\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return calls


def kaggle_calls(calls: Path) -> list[list[str]]:
    return [json.loads(line) for line in calls.read_text().splitlines()] if calls.exists() else []


@pytest.mark.slow
def test_category_index_or_name(store, fits, tmp_path):
    ckpt = str(fits[0] / "checkpoints" / "best.ckpt")
    names = open_store(store).class_names
    for category in ("index", "name"):
        out = tmp_path / category / "sub.csv"
        predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(out),
                      "--category", category])  # fmt: skip
        pred = np.load(out.with_name("sub.probs.npz"))["probs"].argmax(1)
        want = [str(p) if category == "index" else names[p] for p in pred]
        assert [r["Category"] for r in read_csv(out)] == want
        assert json.loads(out.with_suffix(".json").read_text())["category"] == category
    # The default is the index (mva-recvis-2024's sample submission), as the fit writes it.
    fit_rows = read_csv(fits[0] / "submission.csv")
    assert [r["Category"] for r in fit_rows] == [
        r["Category"] for r in read_csv(tmp_path / "index" / "sub.csv")
    ]
    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", ckpt, "--store", str(store), "--out",
                      str(tmp_path / "bad" / "sub.csv"), "--category", "label"])  # fmt: skip
    assert exc.value.code == 2 and not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_kaggle_runs_the_client_and_records_it(store, fits, tmp_path, stand_in_kaggle):
    ckpt = str(fits[0] / "checkpoints" / "best.ckpt")
    out = tmp_path / "sub.csv"
    predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(out),
                  "--kaggle", "mva-recvis-2024", "--message", "concat, 1 epoch"])  # fmt: skip
    command = ["competitions", "submit", "-c", "mva-recvis-2024", "-f", str(out),
               "-m", "concat, 1 epoch"]  # fmt: skip
    assert kaggle_calls(stand_in_kaggle) == [command]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["kaggle"]["command"] == ["kaggle", *command]
    assert meta["kaggle"]["exit_status"] == 0 and meta["message"] == "concat, 1 epoch"

    # train.py predict: the same option, the same record.
    out2 = tmp_path / "t" / "sub.csv"
    train.main(["predict", "--ckpt_path", ckpt, "--data.store", str(store), "--out", str(out2),
                "--kaggle", "comp", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    assert kaggle_calls(stand_in_kaggle)[-1][3:] == ["comp", "-f", str(out2), "-m", "sub"]
    assert json.loads(out2.with_suffix(".json").read_text())["kaggle"]["exit_status"] == 0


@pytest.mark.slow
def test_kaggle_failures_keep_the_submission(store, fits, tmp_path, stand_in_kaggle, monkeypatch,
                                              capsys):  # fmt: skip
    ckpt = str(fits[0] / "checkpoints" / "best.ckpt")
    out = tmp_path / "fail" / "sub.csv"
    monkeypatch.setenv("FAKE_KAGGLE_STATUS", "3")
    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(out),
                      "--kaggle", "comp"])  # fmt: skip
    assert exc.value.code == 1 and out.is_file()
    assert json.loads(out.with_suffix(".json").read_text())["kaggle"]["exit_status"] == 3

    # No client on PATH: one line with the install command, exit 2, the CSV written.
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    out = tmp_path / "missing" / "sub.csv"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(out),
                      "--kaggle", "comp", "--message", "m"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and out.is_file() and len(err) == 1
    assert "pip install" in err[0] and "kaggle competitions submit -c comp" in err[0]
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["kaggle"]["exit_status"] is None


def test_ensemble_sends_with_kaggle(tmp_path, stand_in_kaggle):
    from fusion.submission import save_probs

    rng = np.random.default_rng(0)
    ids = [f"t{i}" for i in range(6)]
    members = []
    for k in range(2):
        path = tmp_path / f"m{k}.probs.npz"
        save_probs(path, ids, rng.dirichlet(np.ones(3), size=6).astype(np.float32),
                   class_names=["a", "b", "c"])  # fmt: skip
        members.append(str(path))
    out = tmp_path / "ens.csv"
    predict.main(["ensemble", "--probs", members[0], "--probs", members[1], "--out", str(out),
                  "--category", "name", "--kaggle", "comp", "--message", "mean of 2"])  # fmt: skip
    assert kaggle_calls(stand_in_kaggle) == [
        ["competitions", "submit", "-c", "comp", "-f", str(out), "-m", "mean of 2"]
    ]
    assert {r["Category"] for r in read_csv(out)} <= {"a", "b", "c"}
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["candidate"] == "ensemble" and meta["kaggle"]["exit_status"] == 0


def test_averaged_oof_members_are_scored_out_of_fold(tmp_path):
    """A plain average of labelled out-of-fold files: its run's score is the average's
    top-1 on those rows, named oof."""
    from fusion.submission import save_probs

    rng = np.random.default_rng(2)
    ids, labels = [f"r{i}" for i in range(30)], rng.integers(0, 3, 30)
    members, probs = [], []
    for k in range(2):
        p = rng.dirichlet(np.ones(3), size=30).astype(np.float32)
        path = tmp_path / f"m{k}" / "oof.probs.npz"
        path.parent.mkdir()
        save_probs(path, ids, p, class_names=["a", "b", "c"], labels=labels, held_out="oof")
        members.append(str(path))
        probs.append(p)
    out = tmp_path / "avg" / "avg.csv"
    predict.main(["ensemble", "--probs", members[0], "--probs", members[1], "--out", str(out)])
    summary = assert_candidate(one_run(out.parent), "ensemble", "best/oof/acc_top1", out)
    want = float(((probs[0] + probs[1]).argmax(1) == labels).mean())
    assert summary["best/oof/acc_top1"] == pytest.approx(want)
    assert "best/val/acc_top1" not in summary
