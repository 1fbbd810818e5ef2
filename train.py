"""Train a fusion head on a feature store (LightningCLI), or run the offline demo.

$ python train.py                                                   # the demo, end to end
$ python train.py --help                                            # what follows, in short
$ python train.py fit --config configs/sets_weighted.yaml --data.store stores/kaggle
$ python train.py fit --config configs/concat.yaml --model.head_options.dropout 0.5 --trainer.max_epochs 80
$ python train.py fit --config configs/concat.yaml --ckpt_path last      # resume the newest run
$ python train.py test --ckpt_path RUN/checkpoints/best.ckpt --data.test_split val
$ python train.py predict --ckpt_path RUN/checkpoints/best.ckpt --data.store stores/kaggle
$ python train.py probe --data.store stores/kaggle        # the tuned linear-probe baseline
$ python train.py stack --checkpoint A.ckpt --checkpoint B.ckpt --data.store stores/kaggle
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5  # out of fold
$ python train.py cv --config configs/concat.yaml --data.folds 5      # K-fold CV + submission
$ python train.py tune --config configs/concat.yaml --n_trials 50     # Optuna search

With no arguments: build ``stores/demo`` if it is missing (``python -m data_prep --config
configs/prep/demo.yaml``), fit ``configs/demo.yaml`` (the dual-logit head), write the
submission for the demo test split into the run directory and print where everything went.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEMO_STORE = Path("stores/demo")
DEMO_PREP_CONFIG = "configs/prep/demo.yaml"
DEMO_TRAIN_CONFIG = "configs/demo.yaml"
SUBCOMMANDS = ("fit", "validate", "test", "predict", "probe", "stack", "cv", "tune")
# The subcommands that are not LightningCLI's: (module, entry point) of the command layer.
COMMANDS = {
    "probe": ("fusion.commands.probe", "run_probe"),
    "stack": ("fusion.commands.stack", "run_stack"),
    "cv": ("fusion.commands.cv", "run_cv"),
    "tune": ("fusion.commands.tune", "run_tune"),
}

# `python train.py --help`, printed before anything heavy is imported (Lightning and torch
# take seconds); each subcommand's own --help lists its options.
HELP = """\
usage: python train.py [SUBCOMMAND [OPTIONS]]

Train fusion heads (PyTorch Lightning, LightningCLI) on a feature store written by
`python -m data_prep`, score them, and write Kaggle submissions. No foundation model runs
here: only the store's embeddings are read.

With no arguments: the offline demo, end to end. It builds stores/demo if it is missing,
fits configs/demo.yaml (the dual-logit head) and writes the submission of the demo test
split into the run directory, printing where everything went (about 30 s on a CPU).

subcommands (python train.py SUBCOMMAND --help lists its options):
  fit       train a head into runs/<experiment>/<time>/:
              python train.py fit --config configs/concat.yaml --data.store STORE
  validate  score a checkpoint on the val split:
              python train.py validate --ckpt_path RUN/checkpoints/best.ckpt --data.store STORE
  test      score a checkpoint on a labelled split (the Kaggle test split has none):
              python train.py test --ckpt_path RUN/checkpoints/best.ckpt --data.test_split val
  predict   write a checkpoint's submission (the same files as predict.py) into RUN/predict/:
              python train.py predict --ckpt_path RUN/checkpoints/best.ckpt --data.store STORE
  probe     the tuned linear-probe baseline (standardised features, logistic regression)
  stack     late fusion of trained heads, fitted on val (--checkpoint A --checkpoint B) or,
            better on small stores, out of fold (--cv runs/A/cv5 --cv runs/B/cv5)
  cv        K-fold cross-validation of a config and its submission (--data.folds K)
  tune      Optuna search over a config's options (configs/search/<config>.yaml)

Configs: configs/<experiment>.yaml, each composed from configs/base.yaml; every value can be
overridden on the command line (--model.optimizer.lr 0.001) and `fit --print_config` shows them all.

Submissions: every fit writes RUN/submission.csv; python predict.py --checkpoint
  RUN/checkpoints/best.ckpt --store STORE --out submission.csv (repeat --checkpoint to
  average runs; predict.py ensemble averages saved .probs.npz files). Every command that
  writes one takes --category index|name and --kaggle COMPETITION --message M (fit: only
  --category), which sends it with the kaggle client.

Exit codes: 0 done; 2 bad input or usage (one line naming it and the fix); 1 internal error,
a diverged run (non-finite loss) or a full disk (one line: the disk and how to continue);
143 stopped by SIGTERM, 130 by Ctrl-C, after saving last.ckpt (resume with --ckpt_path
last; probe and stack keep nothing and start again). More: docs/train.md (training) and
docs/kaggle.md (submissions).
"""


def _repo_file(relative: str) -> str:
    # Relative to the working directory when it has the file (the usual case: the repo
    # root), else beside this script, so the demo runs from anywhere.
    return relative if Path(relative).is_file() else str(HERE / relative)


def build_demo_store(store: Path = DEMO_STORE) -> Path:
    """``stores/demo`` from data_prep's demo config, unless it is already complete."""
    if (store / "manifest.json").is_file():
        return store
    try:
        import data_prep
    except ImportError as err:
        raise SystemExit(
            f"{store}/manifest.json is missing and the data_prep package cannot be imported "
            f"({err}); install the project (`pip install -e .`) or build a store and run "
            "`python train.py fit --config configs/demo.yaml --data.store STORE`."
        ) from err
    if not hasattr(data_prep, "main"):
        raise SystemExit(
            "data_prep has no main(argv); this checkout's extraction stage is incomplete, so "
            f"the demo store {store} cannot be built."
        )
    print(f"building the demo feature store: python -m data_prep --config {DEMO_PREP_CONFIG}")
    built = Path(data_prep.main(["--config", _repo_file(DEMO_PREP_CONFIG)]))
    if not (built / "manifest.json").is_file():
        raise SystemExit(f"data_prep finished but {built}/manifest.json is missing")
    return built


def run_demo(store: Path = DEMO_STORE, overrides: Sequence[str] = ()) -> dict[str, Path]:
    """Build the demo store if needed, fit the dual-logit head, predict the test split.

    ``overrides`` are extra CLI arguments for the fit (tests shorten it with them).
    """
    from feature_store.console import show_path
    from fusion.cli import main as cli_main

    store = build_demo_store(store)
    args = ["fit", "--config", _repo_file(DEMO_TRAIN_CONFIG), "--data.store", str(store)]
    # The fit writes RUN/submission.csv itself and logs it to its W&B run.
    cli = cli_main([*args, *overrides])
    paths = _demo_paths(cli, store)
    run = paths["run directory"]
    wandb_dirs = sorted((run / "wandb").glob("*run-*")) if (run / "wandb").is_dir() else []
    if wandb_dirs:
        paths["W&B run"] = wandb_dirs[-1]
    score = cli.trainer.checkpoint_callback.best_model_score
    print(
        "\nDemo done" + (f": best val/acc_top1 = {float(score):.3f}" if score is not None else "")
    )
    width = max(map(len, paths))
    for what, path in paths.items():
        print(f"  {what:<{width}}  {show_path(path)}")
    if wandb_dirs and "offline" in wandb_dirs[-1].name:
        print(f"  upload the W&B run later with: wandb sync {show_path(wandb_dirs[-1])}")
    return paths


def _demo_paths(cli, store: Path) -> dict[str, Path]:
    """What the demo's fit wrote, by name, for the closing listing."""
    run = Path(cli.trainer.default_root_dir)
    ckpt_cb = cli.trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path or ckpt_cb.last_model_path)
    submission = run / "submission.csv"
    return {
        "feature store": store,
        "run directory": run,
        "resolved config": run / "config.yaml",
        "metrics": run / "metrics.csv",
        "best checkpoint": best,
        "last checkpoint": run / "checkpoints" / "last.ckpt",
        "alpha/beta plot": run / "alpha_beta.png",
        "val predictions": run / "val_predictions.csv",
        "submission": submission,
        "test probabilities": run / "submission.probs.npz",
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Exit codes (fusion/exit.py): 0 done; 2 bad input or usage (one line naming it and
    the fix); 1 an internal error, a non-finite loss or a full disk; 143 stopped by SIGTERM
    (130: by Ctrl-C) after saving ``last.ckpt`` (resume: --ckpt_path last)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        run_demo()
        return
    first = args[0]
    if first in ("-h", "--help"):
        print(HELP, end="")
        return
    from fusion.exit import ExitError, exit_codes

    if not first.startswith("-") and first not in SUBCOMMANDS:
        # Before Lightning loads: LightningCLI would list only its own four subcommands.
        raise ExitError(
            f"train.py: error: unknown subcommand {first!r}; choose one of "
            f"{', '.join(SUBCOMMANDS)} (python train.py --help)"
        )
    import importlib

    if args[0] in COMMANDS:  # each maps its own errors to exit codes (fusion/exit.py)
        module, name = COMMANDS[args[0]]
        getattr(importlib.import_module(module), name)(args[1:])
        return
    from fusion.cli import main as cli_main

    def fit_run() -> Path | None:  # named in the lines for a full disk and a stop
        run = os.environ.get("SKETCHFUSION_RUN_DIR")
        return Path(run) if run and args[0] == "fit" else None

    with exit_codes("train.py", run=fit_run):
        cli_main(None if argv is None else list(argv))  # None: LightningCLI reads sys.argv


if __name__ == "__main__":
    main()
