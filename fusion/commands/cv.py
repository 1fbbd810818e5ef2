"""K-fold cross-validation: one fit per fold, out-of-fold probabilities, one submission.

$ python train.py cv --config configs/concat.yaml --data.folds 5 --data.store stores/kaggle
$ python train.py cv --config configs/concat.yaml --data.folds 5 --data.group_regex '^(.*)_aug'

Every other argument is a ``train.py fit`` argument. The CV's own: ``--cv_dir``,
``--message`` (into the submission's metadata, ``CV/submission.json``), ``--category
index|name`` (its Category column) and ``--kaggle COMPETITION`` (send it with the kaggle
client, fusion/submission.py). Train and val are pooled and cut
into K stratified (group-aware with ``--data.group_regex``) folds by ``fusion/folds.py``;
fold i is a normal fit (``--data.fold i``) into ``CV/fold_i/``. ``CV`` is ``--cv_dir``,
default ``runs/<experiment>/cv<K>``; rerunning the same command skips the finished folds
and redoes an unfinished one (after SIGTERM or Ctrl-C too). One ``cv`` process at a time
works in ``CV`` (``CV/cv.lock`` holds its pid and host; a second is refused, a lock whose
process is gone is taken over). ``--data.predict_split ''`` skips the test split and the
submission. Writes::

    CV/fold_i/              a run directory; val.probs.npz = its out-of-fold probabilities,
                            test.probs.npz = its test-split probabilities, fold.done last
    CV/oof.probs.npz        every train+val row's out-of-fold probabilities (with labels)
    CV/cv.json              per-fold val top-1, CV mean and std, out-of-fold top-1
    CV/submission.csv       the folds' test probabilities averaged (+ .probs.npz, .json)
    CV/wandb/               the CV's W&B run (candidate "cv", in the folds' group):
                            best/oof/acc_top1, cv/*, the submission artifact

The CV directories of several configs are late-fused by ``python train.py stack --cv A --cv
B``, its stacker fitted on these out-of-fold probabilities (``fusion/stacking.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import yaml

from feature_store import StoreError, open_store
from feature_store.atomic import atomic_write_text
from feature_store.console import show_path
from fusion.command_options import add_submission_arguments, parse_own_options
from fusion.ensemble import average, check_members, load_probs, write_ensemble
from fusion.errors import FusionError, Stopped, UsageError
from fusion.exit import exit_codes
from fusion.submission import CATEGORIES, DEFAULT_CATEGORY, finish, save_probs


class CvError(FusionError):
    """A CV directory this command cannot work in: another process's, another command's,
    or not writable."""


TEST = "test.probs.npz"  # a fold's test-split probabilities (none with predict_split '')
DONE = "fold.done"  # written last in a fold: its presence marks the fold finished


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name V`` or ``--name=V`` in ``args`` (the last one wins)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def _flat(node, prefix: str = "") -> dict:
    """``{"data": {"folds": 5}}`` -> ``{"data.folds": 5}``; dotted keys stay as they are."""
    out = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(_flat(value, name + "."))
        else:
            out[name] = value
    return out


def _config_file_values(path: Path, seen: frozenset = frozenset()) -> dict:
    """The values a ``--config`` YAML sets, its own ``config:`` includes first (relative to
    it, as jsonargparse reads them), in the order it sets them: later wins."""
    if path.resolve() in seen or not path.is_file():
        return {}
    try:
        node = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}  # the fit's own parser reports it with its line
    values: dict = {}
    for key, value in node.items() if isinstance(node, dict) else ():
        if key == "config":
            for inc in [value] if isinstance(value, str) else value or []:
                values.update(_config_file_values(path.parent / str(inc), seen | {path.resolve()}))
        else:
            values.update(_flat({key: value}))
    return values


def config_value(args: Sequence[str], dotted: str):
    """``dotted`` from the command line, else from the ``--config`` YAML(s) (nested, dotted
    or included with ``config:``), else None."""
    value = option(args, "--" + dotted)
    if value is not None:
        return value
    for i, arg in enumerate(args):
        path = args[i + 1] if arg in ("--config", "-c") and i + 1 < len(args) else None
        if path:
            value = _config_file_values(Path(path)).get(dotted, value)
    return value


def int_option(args: Sequence[str], dotted: str, *, default: int = 0) -> int:
    """``dotted`` as an int (command line or config), or one line naming it."""
    value = config_value(args, dotted)
    try:
        return default if value is None else int(value)
    except (TypeError, ValueError):
        raise UsageError(f"--{dotted} {value!r} is not an integer") from None


def check_predict_split(args: Sequence[str]) -> None:
    """Refuse, before fold 0 trains, a ``--data.predict_split`` the store lacks."""
    split = config_value(args, "data.predict_split")
    split = "test" if split is None else str(split)
    store = config_value(args, "data.store")
    if not split or store is None:
        return  # '' skips the test probabilities; no store: the fit's parser says so
    try:
        splits = open_store(store).manifest["splits"]
    except StoreError:
        return  # the fit reports a store it cannot open, with its fix
    if split not in splits:
        raise UsageError(
            f"the store {store} has no {split!r} split to predict "
            f"(it has {', '.join(sorted(splits))}); pass --data.predict_split SPLIT, or "
            "--data.predict_split '' to cross-validate without a submission"
        )


def check_weights_not_fitted_on_folds(args: Sequence[str]) -> None:
    """Refuse, before fold 0 trains, a head whose weights are fitted on val
    (``mix_on: val``): each fold would fit them on its held-out rows, so the out-of-fold
    probabilities that ``train.py stack --cv`` fits on would not be out of fold."""
    if str(config_value(args, "model.head_options.mix_on")) == "val":
        raise UsageError(
            "--model.head_options.mix_on val fits the head's weights on each fold's held-out "
            "rows, so its out-of-fold probabilities would not be out of fold; cross-validate "
            "one config per set (--data.features [SET]) and stack them with train.py stack "
            "--cv, or configs/concat.yaml (docs/submit.md)"
        )


def parser():
    """``train.py cv``'s own options; every other argument is a ``train.py fit`` one."""
    from feature_store.cli import CliParser

    p = CliParser(
        prog="train.py cv",
        description=__doc__.split("\n\n")[0] + " Every option not listed here is a "
        "`train.py fit` option (python train.py fit --help), given to each fold's fit; "
        "--data.folds K (K >= 2, from the command line or a --config) is required.",
    )
    p.add_argument(
        "--cv_dir",
        type=str | None,
        default=None,
        help="the CV directory (default: RUNS_ROOT/<experiment>/cv<K>); rerunning the same "
        "command in it skips the finished folds",
    )
    add_submission_arguments(p)
    return p


def config_paths(args: Sequence[str]) -> list[str]:
    """Every ``--config``/``-c`` file of ``args``, in their order (later wins)."""
    paths = []
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in ("--config", "-c"):
            value = value if eq else (args[i + 1] if i + 1 < len(args) else "")
            if value:
                paths.append(value)
    return paths


def fit_experiment(args: Sequence[str]) -> str:
    """The experiment the fits of ``args`` run in: the fit's own rule
    (:func:`fusion.runs.experiment_name`) on their ``--experiment`` and ``--config`` files."""
    from fusion.runs import experiment_name  # Lightning loads with the fits, not for --help

    return experiment_name(
        {"experiment": config_value(args, "experiment"), "config": config_paths(args)}
    )


def run_cv(argv: Sequence[str]) -> Path:
    """Entry point of ``python train.py cv``; returns the CV directory."""
    own, args, given = parse_own_options(parser(), argv)
    with exit_codes("train.py cv"):
        return _run_cv(own, args, given)


def _run_cv(own, args: list[str], given: Sequence[str]) -> Path:
    folds = int_option(args, "data.folds")
    if folds < 2:
        raise UsageError("give --data.folds K (K >= 2), e.g. --data.folds 5")
    for banned in ("--data.fold", "--run_dir", "--ckpt_path"):
        if option(args, banned) is not None:
            raise UsageError(f"{banned} is set per fold by cv; drop it")
    message = own.message
    # --category on the command line is the CV's; else a config's (the fit's option).
    category = own.category if "--category" in given else config_value(args, "category")
    category = str(category or DEFAULT_CATEGORY)
    if category not in CATEGORIES:
        raise UsageError(f"--category {category!r}: choose one of {', '.join(CATEGORIES)}")
    root = Path(config_value(args, "runs_root") or "runs")
    cv_dir = Path(own.cv_dir or root / fit_experiment(args) / f"cv{folds}")
    check_predict_split(args)
    check_weights_not_fitted_on_folds(args)
    plan = {"args": args, "folds": folds}
    plan_file = cv_dir / "cv_args.json"
    try:
        cv_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CvError(
            f"cannot create --cv_dir {cv_dir} ({err.strerror or err}); "
            "pass a writable --cv_dir"
        ) from err
    with CvLock(cv_dir):
        if plan_file.is_file() and json.loads(plan_file.read_text()) != plan:
            raise CvError(
                f"{cv_dir} holds folds of another command "
                f"({plan_file}); rerun that command to finish it, or pass a new --cv_dir."
            )
        atomic_write_text(plan_file, json.dumps(plan, indent=2))
        for fold in range(folds):
            run_fold(args, cv_dir, fold)
        summarise(cv_dir, folds, message=message, category=category, fit_args=args)
    submission = cv_dir / "submission.csv"
    if submission.is_file():
        finish(submission, competition=own.kaggle, message=message)
    return cv_dir


def run_fold(args: Sequence[str], cv_dir: Path, fold: int) -> None:
    """Fit fold ``fold`` into ``CV/fold_<fold>`` unless it is done; mark it done last."""
    # torch and Lightning load with the first fold, not for `train.py cv --help`.
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from fusion.cli import main as cli_main
    from fusion.predict import complete_split, predict_probs
    from fusion.runs import restored_environ
    from fusion.stopping import stopped_by

    run = cv_dir / f"fold_{fold}"
    if (run / DONE).is_file() or (run / TEST).is_file():  # TEST: marked by older versions
        print(f"cv: fold {fold} already done ({show_path(run)})")
        return
    if run.exists():  # a fold killed part-way: ours alone (CvLock), redone from scratch
        shutil.rmtree(run)
    group = [] if option(args, "--wandb_group") else ["--wandb_group", str(cv_dir)]
    fit_args = ["fit", *args, *group, "--data.fold", str(fold), "--run_dir", str(run)]
    try:
        with restored_environ():  # each fold from the user's environment (WANDB_MODE)
            cli = cli_main(fit_args, candidate="cv_fold")
    except SIGTERMException as err:
        how = "Ctrl-C (SIGINT)" if stopped_by() == "SIGINT" else "SIGTERM"
        raise Stopped(
            f"stopped by {how} in fold {fold}; the finished folds are kept in "
            f"{cv_dir}. Continue with the same `train.py cv` command: it skips them and "
            f"redoes fold {fold}",
            signal="SIGINT" if stopped_by() == "SIGINT" else "SIGTERM",
        ) from err
    dm, ckpt = cli.datamodule, cli.trainer.checkpoint_callback
    best = ckpt.best_model_path or ckpt.last_model_path
    if dm.predict_split:
        ids, probs = predict_probs([best], dm.store, dm.predict_split)
        # Inputs that failed extraction get the train class prior (predict.py's rule).
        ids, probs, _ = complete_split(dm.store, dm.predict_split, ids, probs)
        save_probs(run / TEST, ids, probs, class_names=dm.class_names, checkpoints=[best])
    atomic_write_text(run / DONE, json.dumps({"fold": fold, "best": str(best)}) + "\n")


class CvLock:
    """``CV/cv.lock`` (pid, host) while a ``train.py cv`` process works in ``CV``.

    A second process on the same directory would delete the first's unfinished fold as
    "killed part-way": it is refused instead. A lock whose process is gone (same host, no
    such pid) is stale and taken over; one from another host is left to the user.
    """

    def __init__(self, cv_dir: Path) -> None:
        self.path = cv_dir / "cv.lock"
        self.mine = {"pid": os.getpid(), "host": socket.gethostname()}

    def __enter__(self) -> CvLock:
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_stale()
                continue
            with os.fdopen(fd, "w") as f:
                json.dump({**self.mine, "started": time.strftime("%Y-%m-%d %H:%M:%S")}, f)
            return self
        raise CvError(f"could not take the lock {self.path}; rerun")

    def _check_stale(self) -> None:
        from fusion.runs import process_alive  # Lightning loads with the fits, not for --help

        try:
            owner = json.loads(self.path.read_text())
            pid, host = int(owner["pid"]), str(owner["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return  # being written this instant, or gone: try again
        if host == self.mine["host"] and not process_alive(pid):
            print(f"cv: taking over {self.path} of a process that is gone (pid {pid})")
            self.path.unlink(missing_ok=True)
            return
        raise CvError(
            f"{self.path.parent} is in use by another `train.py cv` "
            f"(pid {pid} on {host}, since {owner.get('started', '?')}); wait for it to "
            f"finish or pass another --cv_dir (delete {self.path} only if that process "
            "is gone)"
        )

    def __exit__(self, *exc) -> None:
        self.path.unlink(missing_ok=True)


def summarise(
    cv_dir: Path,
    folds: int,
    *,
    message: str | None = None,
    category: str = "index",
    fit_args: Sequence[str] = (),
) -> Path:
    """Join the folds' out-of-fold and test probabilities; print the CV score; log the CV
    as one W&B run (candidate ``cv``: ``best/oof/acc_top1``, the submission)."""
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
        held_out="oof",
    )
    summary = {
        "folds": folds,
        "fold_val_acc_top1": accs,
        "cv_acc_top1_mean": float(np.mean(accs)),
        "cv_acc_top1_std": float(np.std(accs)),
        "oof_acc_top1": float((probs.argmax(1) == labels).mean()),
    }
    score = {"best/oof/acc_top1": summary["oof_acc_top1"]}
    tests = [cv_dir / f"fold_{f}" / TEST for f in range(folds)]
    submission = None
    if all(t.is_file() for t in tests):
        members = check_members([load_probs(t) for t in tests])
        submission = write_ensemble(
            cv_dir / "submission.csv",
            members,
            average(members),
            meta={**score, **summary},
            message=message,
            category=category,
            candidate="cv",
        )
    atomic_write_text(cv_dir / "cv.json", json.dumps(summary, indent=2))
    print(
        f"cv: {folds} folds, val/acc_top1 {summary['cv_acc_top1_mean']:.4f} +- "
        f"{summary['cv_acc_top1_std']:.4f} (out-of-fold {summary['oof_acc_top1']:.4f}); "
        f"wrote {show_path(cv_dir)}"
    )
    log_cv_run(cv_dir, fit_args, score, summary, submission)
    return cv_dir


def log_cv_run(cv_dir: Path, fit_args: Sequence[str], score: dict, summary: dict,
               submission: Path | None) -> None:  # fmt: skip
    """The CV's W&B run in ``CV/wandb/``, in the folds' group: the folds' config (without
    ``data.fold``), the CV score and the submission."""
    # W&B and Lightning load here, not for `train.py cv --help`.
    from fusion.loggers import wandb_settings
    from fusion.wandb_report import log_candidate

    try:
        config = yaml.safe_load((cv_dir / "fold_0" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        config = {}
    if isinstance(config.get("data"), dict):
        config["data"].pop("fold", None)
    settings = wandb_settings(
        cv_dir,
        group=str(cv_dir),  # the folds' group (run_fold's --wandb_group)
        project=config_value(fit_args, "wandb.project") or config_value(fit_args, "wandb_project"),
        entity=config_value(fit_args, "wandb.entity"),
        job_type=config_value(fit_args, "wandb.job_type"),
        default_job_type="cv",
        group_override=config_value(fit_args, "wandb.group")
        or config_value(fit_args, "wandb_group"),
    )
    cv_summary = {f"cv/{k}": v for k, v in summary.items() if k != "oof_acc_top1"}
    log_candidate(
        cv_dir,
        candidate="cv",
        settings=settings,
        config={**config, "cv": {"folds": summary["folds"], "dir": str(cv_dir)}},
        summary={**score, **cv_summary},
        submission=submission,
    )
