"""``predict.py ensemble``: saved ``.probs.npz`` files pooled into one submission.

$ python predict.py ensemble --probs A.probs.npz --probs B.probs.npz --out ens.csv

The command layer: options (described in :mod:`fusion.ensemble`) and exit codes
(fusion/exit.py). An alias of ``train.py stack --probs ... [--fit_on ...]``: the members are
pooled by :func:`fusion.combine.combine`, the function behind ``train.py stack``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from feature_store.console import show_path
from fusion import ensemble
from fusion.combine import METHODS, Source, combine
from fusion.command_options import add_submission_arguments, add_wandb_arguments
from fusion.ensemble import EnsembleError, check_out, log_run
from fusion.exit import exit_codes
from fusion.submission import finish, write_submission


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
        "--method",
        type=Literal[METHODS] | None,
        default=None,
        help="the pooling (fusion/combine.py); default: weights with --fit_on, mean without "
        "(train.py stack's default is logistic)",
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
    method = args.method or ("weights" if args.fit_on else "mean")
    try:
        check_out(Path(args.out), [*args.probs, *args.fit_on])
        if args.fit_on and len(args.fit_on) != len(args.probs):
            raise EnsembleError(
                f"{len(args.fit_on)} --fit_on files for {len(args.probs)} --probs; give "
                "one labelled file per member, in the same order"
            )
        fit_on = [Path(f) for f in args.fit_on] or [None] * len(args.probs)
        sources = [Source(Path(p), f) for p, f in zip(args.probs, fit_on, strict=True)]
        got = combine(sources, method, folds=args.folds)
        if args.method is None:  # this alias's own default, kept so its submissions reproduce
            print(f"predict.py ensemble: --method {method} (this command's default; train.py "
                  "stack, the same pooling, defaults to logistic)", file=sys.stderr)  # fmt: skip
        score = got.score()
        meta: dict = {"method": method}
        if args.fit_on:
            meta.update(
                fit_on=args.fit_on,
                mean_weights=got.mean_weights,
                fit_acc_top1_cross_fitted=got.acc,
                member_fit_acc_top1=got.member_acc,
            )
            print(f"ensemble ({method}): cross-fitted top-1 {got.acc:.4f} on the fit rows "
                  f"vs members {[round(a, 4) for a in got.member_acc]}")  # fmt: skip
        out, _ = write_submission(
            args.out, got.ids, got.probs, class_names=got.class_names,
            checkpoints=got.checkpoints, category=args.category, candidate="ensemble",
            message=args.message, meta={"members": got.members, **score, **meta},
        )  # fmt: skip
    except OSError as err:
        raise EnsembleError(
            f"cannot write --out {args.out} ({err.strerror or err}); choose a writable path"
        ) from err
    print(f"wrote {show_path(out)} ({len(got.ids)} rows, {len(got.members)} members) and "
          f"{show_path(out.with_suffix('.json'))}")  # fmt: skip
    log_run(out, args, score, meta)
    finish(out, competition=args.kaggle, message=args.message)
    return out
