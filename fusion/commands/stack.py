"""``train.py stack``: late fusion of trained heads, fitted on held-out rows, cross-fitted.

$ python train.py stack --checkpoint A.ckpt --checkpoint B.ckpt --data.store stores/kaggle
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5

The command layer: options (described in :mod:`fusion.stacking`, whose functions do the
work), the run directory (fusion/runs.py) and exit codes (fusion/exit.py).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from feature_store.atomic import atomic_write_text
from feature_store.cli import CliParser
from feature_store.console import show_path
from fusion import stacking
from fusion.command_options import add_submission_arguments, add_wandb_arguments
from fusion.errors import UsageError
from fusion.exit import exit_codes
from fusion.predict import write_predictions_csv
from fusion.runs import (
    UNFINISHED,
    RunDirError,
    claim_command_run,
    finish_command_run,
    is_existing_run,
    new_run_dir,
)
from fusion.stacking import (
    METHODS,
    Stacker,
    cross_fit,
    from_checkpoints,
    from_cv,
    member_sets,
)
from fusion.stopping import stop_exits
from fusion.submission import finish, write_submission
from fusion.wandb_report import candidate_settings, log_candidate


def parser() -> CliParser:
    """``train.py stack``'s options."""
    p = CliParser(prog="train.py stack", description=stacking.__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", action="config", help="a YAML of these options")
    p.add_argument(
        "--checkpoint",
        action="append",
        default=[],
        help="a member checkpoint; repeat it. The stacker is fitted on --data.val_split",
    )
    p.add_argument(
        "--cv",
        action="append",
        default=[],
        help="instead of --checkpoint: a member's `train.py cv` directory; repeat it. The "
        "stacker is fitted on every train+val row's out-of-fold probabilities",
    )
    p.add_argument("--data.store", type=str | None, default=None, help="with --checkpoint")
    p.add_argument("--data.val_split", type=str, default="val")
    p.add_argument("--data.predict_split", type=str, default="test", help="'' to skip")
    p.add_argument("--stack.method", type=str, default="logistic", help=f"one of {METHODS}")
    p.add_argument("--stack.folds", type=int, default=5, help="cross-fitting folds")
    p.add_argument("--run_dir", type=str | None, default=None)
    p.add_argument("--runs_root", type=str, default="runs")
    add_wandb_arguments(p, kind="stack")
    add_submission_arguments(p)
    return p


def run_stack(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python train.py stack``; returns the run directory."""
    p = parser()
    cfg = p.parse_args(list(argv) if argv is not None else None)
    with exit_codes("train.py stack"):
        return _checked(p, cfg)


def _checked(p: CliParser, cfg) -> Path:
    members = cfg.checkpoint or cfg.cv
    if cfg.checkpoint and cfg.cv:
        raise UsageError("give --checkpoint members or --cv directories, not both")
    if len(members) < 2:
        raise UsageError("give at least two --checkpoint (or --cv) members")
    if cfg.checkpoint and not cfg.data.store:
        raise UsageError("--checkpoint members need --data.store STORE")
    if cfg.stack.method not in METHODS:
        raise UsageError(f"--stack.method must be one of {METHODS}")
    exists = Path.is_file if cfg.checkpoint else Path.is_dir
    missing = [m for m in members if not exists(Path(m))]
    if missing:
        raise UsageError(f"not found: {', '.join(missing)}")
    run = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(Path(cfg.runs_root) / "stack")
    if is_existing_run(run) and not (run / UNFINISHED).is_file():
        raise RunDirError(f"{run} already holds a run; pass a new --run_dir")
    with stop_exits("train.py stack", run):
        return _stack(p, cfg, members, run)


def _stack(p, cfg, members: Sequence[str], run: Path) -> Path:
    method, predict = cfg.stack.method, bool(cfg.data.predict_split)
    # Every member is loaded and checked, and the stack fitted, before the run exists.
    rows = from_cv(cfg.cv, predict) if cfg.cv else from_checkpoints(cfg, predict)
    ids, fit_lp, labels = rows.ids, rows.log_probs, rows.labels
    crossed = cross_fit(fit_lp, labels, method=method, folds=cfg.stack.folds)
    stacker = Stacker(len(fit_lp), method).fit(fit_lp, labels)
    try:  # an unfinished stack run there (killed before its end) is replaced
        if claim_command_run(run, "train.py stack"):
            print(f"replacing the unfinished stack run in {show_path(run)}")
    except OSError as err:
        raise RunDirError(
            f"cannot create the run directory {run} "
            f"({err.strerror or err}); pass a writable --run_dir or --runs_root"
        ) from err
    p.save(cfg, run / "config.yaml", overwrite=True)
    summary = {
        "members": list(members),
        "member_sets": [member_sets(m) for m in members],
        "method": method,
        "fitted_on": rows.fitted_on,
        "rows_fitted": len(labels),
        "mean_weights": stacker.mean_weights(fit_lp),
        "acc_top1_cross_fitted": float((crossed.argmax(1) == labels).mean()),
        "member_acc_top1": [float((lp.argmax(1) == labels).mean()) for lp in fit_lp],
    }
    write_predictions_csv(run / rows.predictions_file, ids, labels, crossed)
    # Cross-fitted on val (--checkpoint) or on every train+val row out of fold (--cv).
    held_out = "oof" if rows.fitted_on == "out-of-fold" else "val"
    score = {f"best/{held_out}/acc_top1": summary["acc_top1_cross_fitted"]}
    submission = None
    if predict:
        submission, _ = write_submission(
            run / "submission.csv",
            rows.test_ids,
            stacker.predict_proba(rows.test_log_probs),
            class_names=rows.class_names,
            checkpoints=rows.checkpoints,
            category=cfg.category,
            candidate="stack",
            message=cfg.message,
            meta={**score, **summary},
        )
    atomic_write_text(run / "stack.json", json.dumps(summary, indent=2))
    log_candidate(
        run,
        candidate="stack",
        settings=candidate_settings(run, cfg, kind="stack"),
        config=cfg.as_dict(),
        summary={
            **score,
            "stack/member_acc_top1": summary["member_acc_top1"],
            "stack/mean_weights": summary["mean_weights"],
            "stack/rows_fitted": summary["rows_fitted"],
        },  # fmt: skip
        submission=submission,
    )
    finish_command_run(run)
    print(
        f"stack ({method}, fitted on {len(labels)} {rows.fitted_on} rows): cross-fitted acc_top1 "
        f"{summary['acc_top1_cross_fitted']:.4f} vs members "
        f"{[round(a, 4) for a in summary['member_acc_top1']]}; wrote {show_path(run)}"
    )
    if submission is not None:
        finish(submission, competition=cfg.kaggle, message=cfg.message)
    return run
