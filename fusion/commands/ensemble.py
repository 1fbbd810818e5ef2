"""``predict.py ensemble``: saved ``.probs.npz`` files pooled into one submission.

$ python predict.py ensemble --probs A.probs.npz --probs B.probs.npz --out ens.csv

The command layer: options (described in :mod:`fusion.ensemble`, whose functions do the
work) and exit codes (fusion/exit.py). With ``--fit_on`` the pooling weights are fitted by
:func:`fusion.stacking.fit_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from feature_store.console import show_path
from fusion import ensemble
from fusion.command_options import add_submission_arguments, add_wandb_arguments
from fusion.ensemble import (
    EnsembleError,
    average,
    check_fit_on_order,
    check_members,
    check_out,
    held_out_score,
    load_probs,
    log_probs,
    log_run,
    write_ensemble,
)
from fusion.exit import exit_codes
from fusion.stacking import METHODS, fit_weights
from fusion.submission import finish


def parser():
    """``predict.py ensemble``'s options: LightningCLI's style (``-c`` YAML, dotted names)."""
    from typing import Literal

    from jsonargparse.typing import restricted_number_type

    from feature_store.cli import cli_parser

    p = cli_parser("predict.py ensemble", ensemble.__doc__.split("\n")[0])
    p.add_argument(
        "--probs",
        action="append",
        required=True,
        help="a member's .probs.npz; repeat for each member (YAML: a list)",
    )
    p.add_argument(
        "--fit_on",
        action="append",
        default=[],
        help="a member's labelled OOF/val .probs.npz, in --probs order, to fit the "
        "pooling on; without it the members are averaged",
    )
    p.add_argument(
        "--method", type=Literal[METHODS], default="weights", help="pooling fitted with --fit_on"
    )
    p.add_argument(
        "--folds",
        type=restricted_number_type("AtLeast2", int, (">=", 2)),
        default=5,
        help="cross-fitting folds for the printed score",
    )
    p.add_argument("--out", type=str, default="ensemble.csv", help="submission CSV to write")
    add_submission_arguments(p)
    add_wandb_arguments(p, kind="ensemble")
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python predict.py ensemble``."""
    args = parser().parse_args(argv)
    with exit_codes("predict.py ensemble"):
        return _ensemble(args)


def _ensemble(args) -> Path:
    try:
        check_out(Path(args.out), [*args.probs, *args.fit_on])
        members = check_members([load_probs(f) for f in args.probs])
        meta: dict = {"method": "mean"}
        score: dict = {}
        if args.fit_on:
            if len(args.fit_on) != len(args.probs):
                raise EnsembleError(
                    f"{len(args.fit_on)} --fit_on files for {len(args.probs)} --probs; give "
                    "one labelled file per member, in the same order"
                )
            fit = [load_probs(f) for f in args.fit_on]
            check_fit_on_order(fit, members)
            stacker, score, member_acc = fit_weights(fit, members, method=args.method,
                                                     folds=args.folds)  # fmt: skip
            probs = stacker.predict_proba(log_probs(members))
            kind = "oof" if all(f.held_out == "oof" for f in fit) else "val"
            score = {f"best/{kind}/acc_top1": score}
            meta = {
                "method": args.method,
                "fit_on": args.fit_on,
                "mean_weights": stacker.mean_weights(log_probs(members)),
                "fit_acc_top1_cross_fitted": next(iter(score.values())),
                "member_fit_acc_top1": member_acc,
            }
            print(f"ensemble ({args.method}): cross-fitted top-1 "
                  f"{meta['fit_acc_top1_cross_fitted']:.4f} on the fit rows "
                  f"vs members {[round(a, 4) for a in member_acc]}")  # fmt: skip
        else:
            probs = average(members)
            score = held_out_score(members, probs)
        out = write_ensemble(args.out, members, probs, meta={**score, **meta},
                             message=args.message, category=args.category)  # fmt: skip
    except OSError as err:
        raise EnsembleError(
            f"cannot write --out {args.out} ({err.strerror or err}); choose a writable path"
        ) from err
    print(f"wrote {show_path(out)} ({len(members[0].ids)} rows, {len(members)} members) and "
          f"{show_path(out.with_suffix('.json'))}")  # fmt: skip
    log_run(out, args, score, meta)
    finish(out, competition=args.kaggle, message=args.message)
    return out

