"""``train.py stack``: the one command that combines models, fitted on held-out rows.

$ python train.py stack --checkpoint A.ckpt --checkpoint B.ckpt --data.store stores/kaggle
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5
$ python train.py stack --cv CV --probs B/submission.probs.npz --fit_on B/val.probs.npz

The command layer: options (described in :mod:`fusion.stacking`; the members are loaded,
aligned and pooled by :func:`fusion.combine.combine`), the run directory (fusion/runs.py)
and exit codes (fusion/exit.py). ``predict.py ensemble`` and ``predict.py --checkpoint A
--checkpoint B`` are its aliases.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from feature_store.atomic import atomic_write_text
from feature_store.cli import CliParser
from feature_store.console import show_path
from fusion import stacking
from fusion.combine import DEFAULT_METHOD, METHODS, OOF, Source, combine
from fusion.command_options import (
    add_run_dir_arguments,
    add_submission_arguments,
    add_wandb_arguments,
    run_dir_of,
)
from fusion.errors import UsageError
from fusion.exit import exit_codes
from fusion.predict import write_predictions_csv
from fusion.runs import (
    UNFINISHED,
    RunDirError,
    claim_command_run,
    finish_command_run,
    is_existing_run,
)
from fusion.stacking import member_sets
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
        help="a member checkpoint (needs --data.store); repeat it. Fitted on --data.val_split",
    )
    p.add_argument(
        "--cv",
        action="append",
        default=[],
        help="a member's `train.py cv` directory; repeat it. Fitted on its out-of-fold rows",
    )
    p.add_argument(
        "--probs",
        action="append",
        default=[],
        help="a member's saved test probabilities (.probs.npz); repeat it",
    )
    p.add_argument(
        "--fit_on",
        action="append",
        default=[],
        help="each --probs member's own labelled val or out-of-fold .probs.npz, in --probs "
        "order (RUN/val.probs.npz, CV/oof.probs.npz); only --stack.method mean goes without",
    )
    p.add_argument("--data.store", type=str | None, default=None, help="with --checkpoint")
    p.add_argument("--data.val_split", type=str, default="val")
    p.add_argument("--data.predict_split", type=str, default="test", help="'' to skip")
    p.add_argument("--stack.method", type=str, default=DEFAULT_METHOD, help=f"one of {METHODS}")
    p.add_argument("--stack.folds", type=int, default=5, help="cross-fitting folds")
    add_run_dir_arguments(p, kind="stack")
    add_wandb_arguments(p, kind="stack")
    add_submission_arguments(p)
    return p


def run_stack(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python train.py stack``; returns the run directory."""
    p = parser()
    cfg = p.parse_args(list(argv) if argv is not None else None)
    with exit_codes("train.py stack"):
        return _checked(p, cfg)


def stack_members(checkpoints=(), cv=(), probs=(), fit_on=()) -> list[Source]:
    """``--checkpoint``, ``--cv`` and ``--probs`` (with ``--fit_on`` in ``--probs`` order) as
    :class:`fusion.combine.Source` members, in that order; at least two."""
    if fit_on and len(fit_on) != len(probs):
        raise UsageError(
            f"{len(fit_on)} --fit_on files for {len(probs)} --probs; give one labelled file "
            "per --probs member, in the same order"
        )
    fit_on = fit_on or [None] * len(probs)
    members = [Source(Path(m)) for m in [*checkpoints, *cv]]
    members += [Source(Path(p), Path(f) if f else None) for p, f in zip(probs, fit_on, strict=True)]
    given = ["checkpoint"] * len(checkpoints) + ["cv"] * len(cv) + ["probs"] * len(probs)
    for m, option in zip(members, given, strict=True):
        if not m.path.exists() and option != "checkpoint":  # its kind is the option's
            what = "CV directory" if option == "cv" else "probabilities file"
            raise UsageError(f"--{option} {m.path}: {what} not found")
        if m.path.exists() and m.kind != option:
            what = {"checkpoint": "a checkpoint file", "cv": "a `train.py cv` directory",
                    "probs": "a .probs.npz file"}  # fmt: skip
            raise UsageError(f"--{option} {m.path} is not {what[option]}; pass it as --{m.kind}")
    if len(members) < 2:
        raise UsageError("give at least two members (--checkpoint, --cv or --probs)")
    return members


def _checked(p: CliParser, cfg) -> Path:
    members = stack_members(cfg.checkpoint, cfg.cv, cfg.probs, cfg.fit_on)
    if cfg.stack.method not in METHODS:
        raise UsageError(f"--stack.method must be one of {METHODS}")
    run = run_dir_of(cfg, kind="stack")
    if is_existing_run(run) and not (run / UNFINISHED).is_file():
        raise RunDirError(f"{run} already holds a run; pass a new --run_dir")
    with stop_exits("train.py stack", run):
        return _stack(p, cfg, members, run)


def _stack(p, cfg, members: Sequence[Source], run: Path) -> Path:
    method, predict = cfg.stack.method, bool(cfg.data.predict_split)
    # Every member is loaded and checked, and the stack fitted, before the run exists.
    got = combine(members, method, store=cfg.data.store, fit_split=cfg.data.val_split,
                  predict_split=cfg.data.predict_split or None,
                  folds=cfg.stack.folds)  # fmt: skip
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
        "members": got.members,
        "member_sets": [member_sets(m) for m in got.members],
        "method": method,
        "fitted_on": got.fitted_on,
        "rows_fitted": len(got.fit_ids),
        "mean_weights": got.mean_weights,
        "acc_top1_cross_fitted": got.acc,
        "member_acc_top1": got.member_acc,
    }
    if got.fitted_on is not None:  # cross-fitted on val, or on every train+val row out of fold
        name = "oof_predictions.csv" if got.fitted_on == OOF else "val_predictions.csv"
        write_predictions_csv(run / name, got.fit_ids, got.fit_labels, got.fit_probs)
    score = got.score()
    if got.fallback:
        print(f"WARNING: {len(got.fallback)} {cfg.data.predict_split} inputs failed extraction; "
              "their rows use the train class prior (see the store's failures.csv)",
              file=sys.stderr)  # fmt: skip
    submission = None
    if predict:
        submission, _ = write_submission(
            run / "submission.csv",
            got.ids,
            got.probs,
            class_names=got.class_names,
            checkpoints=got.checkpoints,
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
    scored = (
        f"fitted on {len(got.fit_ids)} {got.fitted_on} rows): cross-fitted acc_top1 "
        f"{got.acc:.4f} vs members {[round(a, 4) for a in got.member_acc]}"
        if got.acc is not None
        else "no labelled rows to score it on)"
    )
    print(f"stack ({method}, {scored}; wrote {show_path(run)}")
    if submission is not None:
        finish(submission, competition=cfg.kaggle, message=cfg.message)
    return run

