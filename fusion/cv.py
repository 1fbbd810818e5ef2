"""K-fold cross-validation: one fit per fold, out-of-fold probabilities, one submission.

$ python train.py cv --config configs/concat.yaml --data.folds 5 --data.store stores/kaggle
$ python train.py cv --config configs/concat.yaml --data.folds 5 --data.group_regex '^(.*)_aug'

Every other argument is a ``train.py fit`` argument; ``--message`` goes into the
submission's metadata (``CV/submission.json``). Train and val are pooled and cut
into K stratified (group-aware with ``--data.group_regex``) folds by ``fusion/folds.py``;
fold i is a normal fit (``--data.fold i``) into ``CV/fold_i/``. ``CV`` is ``--cv_dir``,
default ``runs/<experiment>/cv<K>``; rerunning the same command skips the finished folds
and redoes an unfinished one. Writes::

    CV/fold_i/              a run directory; val.probs.npz = its out-of-fold probabilities,
                            test.probs.npz = its test-split probabilities
    CV/oof.probs.npz        every train+val row's out-of-fold probabilities (with labels)
    CV/cv.json              per-fold val top-1, CV mean and std, out-of-fold top-1
    CV/submission.csv       the folds' test probabilities averaged (+ .probs.npz, .json)

The CV directories of several configs are late-fused by ``python train.py stack --cv A --cv
B``, its stacker fitted on these out-of-fold probabilities (``fusion/stacking.py``).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from feature_store.console import show_path
from fusion.exit import ExitError

DONE = "test.probs.npz"  # written last in a fold: its presence marks the fold finished


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``args`` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def without(args: Sequence[str], name: str) -> list[str]:
    """``args`` without ``--name V`` / ``--name=V``."""
    out, skip = [], False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == name and i + 1 < len(args):
            skip = True
        elif not arg.startswith(name + "="):
            out.append(args[i])
    return out


def config_value(args: Sequence[str], dotted: str):
    """``dotted`` from the command line, else from the ``--config`` YAML(s), else None."""
    value = option(args, "--" + dotted)
    if value is not None:
        return value
    for i, arg in enumerate(args):
        path = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None
        if path and Path(path).is_file():
            node = yaml.safe_load(Path(path).read_text()) or {}
            for key in dotted.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            value = node if node is not None else value
    return value


def run_cv(argv: Sequence[str]) -> Path:
    """Entry point of ``python train.py cv``; returns the CV directory."""
    from fusion.cli import main as cli_main
    from fusion.predict import complete_split, predict_probs, save_probs

    args = list(argv)
    folds = int(config_value(args, "data.folds") or 0)
    if folds < 2:
        raise ExitError("train.py cv: error: give --data.folds K (K >= 2), e.g. --data.folds 5")
    for banned in ("--data.fold", "--run_dir", "--ckpt_path"):
        if option(args, banned) is not None:
            raise ExitError(f"train.py cv: error: {banned} is set per fold by cv; drop it")
    cv_dir, message = option(args, "--cv_dir"), option(args, "--message")
    args = without(without(args, "--cv_dir"), "--message")
    if cv_dir is None:
        config = option(args, "--config") or option(args, "-c") or "cv"
        experiment = config_value(args, "experiment") or Path(config).stem
        cv_dir = Path(config_value(args, "runs_root") or "runs") / experiment / f"cv{folds}"
    cv_dir = Path(cv_dir)
    plan = {"args": args, "folds": folds}
    plan_file = cv_dir / "cv_args.json"
    if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
        raise ExitError(
            f"train.py cv: error: {cv_dir} holds folds of another command "
            f"({plan_file}); rerun that command to finish it, or pass a new --cv_dir."
        )
    cv_dir.mkdir(parents=True, exist_ok=True)
    plan_file.write_text(json.dumps(plan, indent=2))
    for fold in range(folds):
        run = cv_dir / f"fold_{fold}"
        if (run / DONE).is_file():
            print(f"cv: fold {fold} already done ({show_path(run)})")
            continue
        if run.exists():  # a fold killed part-way: ours alone, redone from scratch
            shutil.rmtree(run)
        saved, sys.argv = sys.argv, sys.argv[:1]  # LightningCLI reads args, not our argv
        try:
            group = [] if option(args, "--wandb_group") else ["--wandb_group", str(cv_dir)]
            cli = cli_main(["fit", *args, *group, "--data.fold", str(fold), "--run_dir", str(run)])
        finally:
            sys.argv = saved
        dm, ckpt = cli.datamodule, cli.trainer.checkpoint_callback
        best = ckpt.best_model_path or ckpt.last_model_path
        if dm.predict_split:
            ids, probs = predict_probs([best], dm.store, dm.predict_split)
            # Inputs that failed extraction get the train class prior (predict.py's rule).
            ids, probs, _ = complete_split(dm.store, dm.predict_split, ids, probs)
            save_probs(run / DONE, ids, probs, class_names=dm.class_names, checkpoints=[best])
    return summarise(cv_dir, folds, message=message)


def summarise(cv_dir: Path, folds: int, *, message: str | None = None) -> Path:
    """Join the folds' out-of-fold and test probabilities; print the CV score."""
    from fusion.ensemble import average, check_members, load_probs, write_ensemble
    from fusion.predict import save_probs

    oof = [load_probs(cv_dir / f"fold_{f}" / "val.probs.npz") for f in range(folds)]
    accs = [float((m.probs.argmax(1) == m.labels).mean()) for m in oof]
    ids = [i for m in oof for i in m.ids]
    order = sorted(range(len(ids)), key=ids.__getitem__)
    probs = np.concatenate([m.probs for m in oof])[order]
    labels = np.concatenate([m.labels for m in oof])[order]
    save_probs(
        cv_dir / "oof.probs.npz",
        [ids[i] for i in order],
        probs,
        class_names=oof[0].class_names,
        checkpoints=[c for m in oof for c in m.checkpoints],
        labels=labels,
    )
    summary = {
        "folds": folds,
        "fold_val_acc_top1": accs,
        "cv_acc_top1_mean": float(np.mean(accs)),
        "cv_acc_top1_std": float(np.std(accs)),
        "oof_acc_top1": float((probs.argmax(1) == labels).mean()),
    }
    tests = [cv_dir / f"fold_{f}" / DONE for f in range(folds)]
    if all(t.is_file() for t in tests):
        members = check_members([load_probs(t) for t in tests])
        write_ensemble(
            cv_dir / "submission.csv",
            members,
            average(members),
            meta={"kind": "cv", **summary},
            message=message,
        )
    (cv_dir / "cv.json").write_text(json.dumps(summary, indent=2))
    print(
        f"cv: {folds} folds, val/acc_top1 {summary['cv_acc_top1_mean']:.4f} +- "
        f"{summary['cv_acc_top1_std']:.4f} (out-of-fold {summary['oof_acc_top1']:.4f}); "
        f"wrote {show_path(cv_dir)}"
    )
    return cv_dir
