"""Options several commands share, added to their jsonargparse parsers the same way: the
command layer's (fusion/commands/ and fusion/cli.py both use it, so it stands below both).

$ python train.py probe --help     # --category, --kaggle, --message, --wandb.*

- :func:`add_submission_arguments`: ``--category``, ``--kaggle``, ``--message`` of every
  command that writes a submission (fusion/submission.py writes and sends it);
- :func:`add_wandb_arguments`: ``--wandb.*`` of a candidate that is not a Lightning fit
  (probe, stack, ensemble), read back by :func:`fusion.wandb_report.candidate_settings`;
- :func:`parse_own_options`: the options of a command made of fits (cv, tune) parsed by
  its own parser, every other argument passed on to ``train.py fit``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from feature_store.compat import parser_actions
from fusion.runs import new_run_dir
from fusion.submission import CATEGORIES, DEFAULT_CATEGORY


def add_submission_arguments(parser, *, kaggle: bool = True, message: bool = True) -> None:
    """``--category`` and (``kaggle``) ``--kaggle`` / (``message``) ``--message`` on a
    jsonargparse parser: the options of every command that writes a submission."""
    parser.add_argument(
        "--category",
        type=Literal[CATEGORIES],
        default=DEFAULT_CATEGORY,
        help="the submission's Category column: the class index (mva-recvis-2024's "
        "format) or the class name",
    )
    if kaggle:
        parser.add_argument(
            "--kaggle",
            type=str | None,
            default=None,
            help="COMPETITION: send the submission with `kaggle competitions submit -c "
            "COMPETITION` once written (needs the kaggle client)",
        )
    if message:
        parser.add_argument(
            "--message",
            type=str | None,
            default=None,
            help="the Kaggle submission message, kept in OUT.json (default: OUT's name)",
        )


def add_run_dir_arguments(parser, *, kind: str) -> None:
    """``--run_dir`` and ``--runs_root`` of a command that writes one run directory
    (``kind``: probe, stack), new under ``RUNS_ROOT/<kind>/`` unless given."""
    parser.add_argument("--run_dir", type=str | None, default=None,
                        help=f"run directory (default: a new one under RUNS_ROOT/{kind}/)")  # fmt: skip
    parser.add_argument("--runs_root", type=str, default="runs", help="parent of run dirs")


def run_dir_of(cfg, *, kind: str) -> Path:
    """The run directory :func:`add_run_dir_arguments` asked for: ``--run_dir``, else a
    new one under ``RUNS_ROOT/<kind>/``."""
    return Path(cfg.run_dir) if cfg.run_dir else new_run_dir(Path(cfg.runs_root) / kind)


def add_wandb_arguments(parser, *, kind: str) -> None:
    """``--wandb.project/entity/group/tags/job_type`` (and the old ``--wandb_project``) on
    the parser of a candidate command that is not a fit (``kind``: probe, stack, ensemble);
    read back by :func:`candidate_settings`."""
    parser.add_argument("--wandb_project", type=str | None, default=None, help="= --wandb.project")
    parser.add_argument(
        "--wandb.project", type=str | None, default=None, help="else $WANDB_PROJECT"
    )
    parser.add_argument("--wandb.entity", type=str | None, default=None, help="else $WANDB_ENTITY")
    parser.add_argument("--wandb.group", type=str | None, default=None, help=f"default: {kind}")
    parser.add_argument(
        "--wandb.tags", type=list[str] | None, default=None, help="else $WANDB_TAGS"
    )
    parser.add_argument("--wandb.job_type", type=str | None, default=None, help=f"default: {kind}")


def parse_own_options(parser, argv: Sequence[str]):
    """``(cfg, rest, given)``: ``parser``'s own options in ``argv`` parsed (typed, checked,
    defaulted and ``--help`` printed by it), the other arguments in their order for the
    ``train.py fit`` parser, and the own options given on the command line.

    jsonargparse has no ``parse_known_args``: the cut is made by the parser's own option
    strings (``--name V``, ``--name=V``; a flag such as ``-h`` takes no value), so a new
    option of the command is cut without touching this function."""
    takes_value = {
        s: action.nargs != 0 for action in parser_actions(parser) for s in action.option_strings
    }
    own, rest, given = [], [], []
    args = list(argv)
    i = 0
    while i < len(args):
        name = args[i].partition("=")[0]
        if name not in takes_value:
            rest.append(args[i])
        elif "=" in args[i] or not takes_value[name]:
            own.append(args[i])
            given.append(name)
        else:
            own += args[i : i + 2]
            given.append(name)
            i += 1
        i += 1
    return parser.parse_args(own), rest, given
