"""Train a fusion head on a feature store (LightningCLI), or run the offline demo.

$ python train.py                                                   # the demo, end to end
$ python train.py fit --config configs/dual_logit_l0.1.yaml --data.store stores/kaggle
$ python train.py fit --config configs/concat.yaml --model.dropout 0.5 --trainer.max_epochs 80
$ python train.py fit --config configs/concat.yaml --ckpt_path last      # resume the newest run
$ python train.py probe --data.store stores/kaggle        # the tuned linear-probe baseline
$ python train.py stack --checkpoint A.ckpt --checkpoint B.ckpt --data.store stores/kaggle
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
    from fusion.wandb_report import finish_runs, log_submission, wandb_runs

    store = build_demo_store(store)
    args = ["fit", "--config", _repo_file(DEMO_TRAIN_CONFIG), "--data.store", str(store)]
    # The W&B run stays open until the submission is logged to it.
    cli = cli_main([*args, *overrides], finish_wandb=False)
    try:
        paths = _predict_demo(cli, store)
        for wandb_run in wandb_runs(cli.trainer):
            log_submission(wandb_run, paths["submission"], paths["test probabilities"])
    except BaseException:
        finish_runs(cli.trainer, exit_code=1)
        raise
    finish_runs(cli.trainer)
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


def _predict_demo(cli, store: Path) -> dict[str, Path]:
    """Write the demo's submission from the best checkpoint; return the paths of the run."""
    from feature_store.console import show_path
    from fusion.predict import complete_split, predict_probs, write_submission

    run = Path(cli.trainer.default_root_dir)
    ckpt_cb = cli.trainer.checkpoint_callback
    best = Path(ckpt_cb.best_model_path or ckpt_cb.last_model_path)
    split = cli.datamodule.predict_split
    ids, probs = predict_probs([best], store, split)
    # One row per test input: images that failed extraction get the train class prior.
    ids, probs, failed = complete_split(store, split, ids, probs)
    if failed:
        print(f"WARNING: {len(failed)} {split} images failed extraction; their rows use the "
              f"train class prior (see {show_path(store / 'failures.csv')})")  # fmt: skip
    submission, probs_file = write_submission(
        run / "submission.csv",
        ids,
        probs,
        class_names=cli.datamodule.class_names,
        checkpoints=[best],
    )
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
        "test probabilities": probs_file,
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Exit codes: 0 done; 2 bad input (one line naming it and the fix); 1 a non-finite
    loss; 143 stopped by SIGTERM after saving ``last.ckpt`` (resume: --ckpt_path last)."""
    if not (sys.argv[1:] if argv is None else argv):
        run_demo()
        return
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from feature_store import StoreError
    from fusion.callbacks import NonFiniteLossError
    from fusion.cli import ResumeError, RunDirError
    from fusion.cli import main as cli_main
    from fusion.exit import EXIT_SIGTERM, ExitError
    from fusion.predict import CheckpointError

    args = list(sys.argv[1:] if argv is None else argv)
    try:
        if args[0] == "probe":
            from fusion.probe_run import run_probe

            run_probe(args[1:])
            return
        if args[0] == "cv":
            from fusion.cv import run_cv

            run_cv(args[1:])
            return
        if args[0] == "tune":
            from fusion.tune import run_tune

            run_tune(args[1:])
            return
        if args[0] == "stack":
            from fusion.stacking import run_stack

            run_stack(args[1:])
            return
        cli_main(None if argv is None else list(argv))  # None: LightningCLI reads sys.argv
    except (StoreError, ResumeError, RunDirError, CheckpointError) as err:
        # Bad input the user can fix: the message says how, a traceback would bury it.
        raise ExitError(f"train.py: error: {err}") from err
    except NonFiniteLossError as err:
        raise ExitError(f"train.py: error: {err}", code=1) from err
    except SIGTERMException as err:
        # Lightning raises this (a SystemExit with code 0) at the next batch after SIGTERM;
        # RunCheckpoint has saved the current state as last.ckpt by now.
        run = os.environ.get("SKETCHFUSION_RUN_DIR", "RUN")
        raise ExitError(
            f"train.py: stopped by SIGTERM; the current state is in {run}/checkpoints/"
            f"last.ckpt. Continue with the same command plus --ckpt_path last --run_dir {run}",
            code=EXIT_SIGTERM,
        ) from err


if __name__ == "__main__":
    main()
