"""Predict a store split with one or more trained heads and write a Kaggle submission.

$ python predict.py --checkpoint runs/concat/RUN/checkpoints/best.ckpt --store stores/kaggle \\
      --out submission.csv
$ python predict.py --checkpoint A.ckpt --checkpoint B.ckpt --store STORE --out ens.csv
$ python predict.py --checkpoint A.ckpt --store STORE --kaggle mva-recvis-2024 --message "A"

Writes ``OUT`` (``Id,Category``, one row per *input* of the split; ``--category
index|name``), ``OUT`` with suffix ``.probs.npz`` (``ids``, ``probs`` [N, classes],
``class_names``, ``checkpoints``) so runs can be averaged later, and ``OUT.json`` (its
metadata; fusion/submission.py). ``--kaggle COMPETITION --message M`` then sends it with the
``kaggle`` client. It starts no W&B run (the fit's run holds the fit's own submission).
Several ``--checkpoint`` average their class probabilities: an alias of ``train.py stack
--checkpoint A --checkpoint B --stack.method mean`` (fusion/combine.py; ``train.py stack``
fits the pooling on val instead, ``logistic`` by default), noted on stderr. Each
checkpoint is rebuilt from its own plain hyper-parameters (``torch.load(weights_only=True)``)
and refused if its dims, class names or store model fingerprint (models, revisions,
pooling, preprocessing) differ from the store's; ``--allow_store_mismatch`` overrides
the fingerprint check only.

Inputs that failed extraction (``failures.csv``) have no embedding; they still get a
row, predicted from the fallback: the train split's class prior (its most frequent
class), with a warning listing them. ``--strict`` fails instead. Exit code 2 with one line
for any bad input; outputs that are inputs (a checkpoint, anything in the store) are
refused.

The command layer of ``predict.py``: options and exit codes (fusion/exit.py); the work is
:func:`fusion.combine.predict_submission`'s (``combine``, then ``fusion.predict.submit``).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from fusion.command_options import add_submission_arguments
from fusion.exit import exit_codes
from fusion.submission import finish


def parser():
    """``predict.py``'s options: LightningCLI's style (``-c`` YAML, ``--print_config``)."""
    from jsonargparse.typing import PositiveInt

    from feature_store.cli import cli_parser

    p = cli_parser("predict.py", __doc__.split("\n\n")[0] + " (`predict.py ensemble --help`: "
                   "ensembles of saved .probs.npz files.)")  # fmt: skip
    p.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="a train.py checkpoint (.ckpt); repeat to average several runs' probabilities "
        "(YAML: a list)",
    )
    p.add_argument("--store", type=str, required=True, help="feature-store directory")
    p.add_argument("--out", type=str, default="submission.csv", help="submission CSV to write")
    p.add_argument("--split", type=str, default="test", help="store split to predict")
    p.add_argument("--batch_size", type=PositiveInt, default=4096, help="rows per forward pass")
    p.add_argument(
        "--strict",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="fail when an input of the split failed extraction instead of using the fallback",
    )
    p.add_argument(
        "--allow_store_mismatch",
        type=bool,
        nargs="?",
        const=True,
        default=False,
        help="predict even if the store was built with other models than the training store",
    )
    add_submission_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``predict.py``; returns the submission path.

    ``predict.py ensemble ...`` goes to :func:`fusion.commands.ensemble.main` (saved
    ``.probs.npz`` files).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["ensemble"]:  # its modules (torch, scikit-learn) load only for it
        from fusion.commands.ensemble import main as ensemble_main

        return ensemble_main(argv[1:])
    args = parser().parse_args(argv)
    with exit_codes("predict.py"):
        return _predict(args)


def _predict(args) -> Path:
    # torch and the heads load here, after --help and the parse.
    from fusion.combine import predict_submission

    out, _ = predict_submission(
        args.checkpoint,
        args.store,
        args.out,
        split=args.split,
        batch_size=args.batch_size,
        strict=args.strict,
        allow_store_mismatch=args.allow_store_mismatch,
        category=args.category,
        message=args.message,
    )
    if len(args.checkpoint) > 1:  # an alias of `train.py stack --stack.method mean`
        print(f"predict.py: {len(args.checkpoint)} checkpoints averaged (method mean; train.py "
              "stack fits their pooling on val, logistic by default)", file=sys.stderr)  # fmt: skip
    finish(out, competition=args.kaggle, message=args.message)
    return out
