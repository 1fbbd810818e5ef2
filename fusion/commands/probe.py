"""``train.py probe``: the tuned linear probe as a run, the baseline every head must beat.

$ python train.py probe --data.store stores/kaggle

The command layer: options (described in :mod:`fusion.probe_run`, which also finds a
store's latest probe for a fit's last line), the run directory (fusion/runs.py) and exit
codes (fusion/exit.py); the probe itself is :func:`fusion.probe.fit_probe`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feature_store import load_features, open_store
from feature_store.atomic import atomic_write_text, write_csv
from feature_store.cli import CliParser
from feature_store.console import show_path
from feature_store.integrity import check_finite
from fusion import probe_run
from fusion.command_options import (
    add_run_dir_arguments,
    add_submission_arguments,
    add_wandb_arguments,
    run_dir_of,
)
from fusion.errors import UsageError
from fusion.exit import exit_codes
from fusion.loggers import wandb_settings
from fusion.predict import write_predictions_csv
from fusion.probe import DEFAULT_CS, DEFAULT_MAX_ITER, fit_probe
from fusion.probe_run import CONCAT, DEFAULT_SETS, PROBE_FILE, store_key, views
from fusion.runs import claim_command_run, finish_command_run
from fusion.stopping import stop_exits
from fusion.submission import finish, write_submission
from fusion.wandb_report import log_candidate


def parser() -> CliParser:
    p = CliParser(prog="train.py probe", description=probe_run.__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", action="config", help="a YAML of these options")
    p.add_argument("--data.store", type=str, required=True, help="feature-store directory")
    p.add_argument("--data.train_split", type=str, default="train")
    p.add_argument("--data.val_split", type=str, default="val")
    p.add_argument("--data.predict_split", type=str, default="test", help="'' to skip")
    p.add_argument("--probe.cs", type=list[float], default=list(DEFAULT_CS), help="C values")
    p.add_argument(
        "--probe.max_iter", type=int, default=DEFAULT_MAX_ITER, help="L-BFGS iterations per C"
    )
    p.add_argument("--probe.max_dim", type=int | None, default=None, help="PCA past this many dims")
    p.add_argument(
        "--data.features", type=list[str] | None, default=None,
        help="the store's feature sets to probe, alone and concatenated (default [image, text])",
    )  # fmt: skip
    p.add_argument(
        "--probe.views", type=list[str] | None, default=None,
        help="some of the sets and 'concat' (default: all of them)",
    )  # fmt: skip
    add_run_dir_arguments(p, kind="probe")
    add_wandb_arguments(p, kind="probe")
    add_submission_arguments(p)
    return p


def run_probe(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python train.py probe``; returns the run directory."""
    p = parser()
    cfg = p.parse_args(list(argv) if argv is not None else None)
    run = run_dir_of(cfg, kind="probe")
    with exit_codes("train.py probe"), stop_exits("train.py probe", run):
        return _probe(p, cfg, run)


def _probe(p: CliParser, cfg, run: Path) -> Path:
    store = Path(cfg.data.store)
    info = open_store(store)
    sets = list(cfg.data.features or DEFAULT_SETS)
    missing = [s for s in sets if s not in info.feature_names]
    if missing or len(set(sets)) != len(sets):
        raise UsageError(
            f"--data.features {sets}: {store} has the sets "
            f"{info.feature_names} (each named once)"
        )
    allowed = [*sets, CONCAT] if len(sets) > 1 else sets
    chosen = list(cfg.probe.views) if cfg.probe.views is not None else allowed
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen or min(cfg.probe.cs, default=0) <= 0:
        raise UsageError(
            f"--probe.views takes some of {allowed} (got "
            f"{cfg.probe.views}) and --probe.cs positive values (got {cfg.probe.cs})"
        )

    def settings() -> dict:  # refuses a project or tag W&B would refuse (UsageError)
        return wandb_settings(
            run,
            group="probe",
            project=cfg.wandb.project or cfg.wandb_project,
            entity=cfg.wandb.entity,
            tags=cfg.wandb.tags,
            job_type=cfg.wandb.job_type,
            default_job_type="probe",
            group_override=cfg.wandb.group,
        )

    settings()
    splits = [cfg.data.train_split, cfg.data.val_split, cfg.data.predict_split]
    train, val, test = (load_features(store, s, sets) if s else None for s in splits)
    for split, arrays in zip(splits, (train, val, test), strict=True):
        if arrays is not None:  # a NaN row would stop scikit-learn with a traceback
            check_finite(arrays, f"{store}/{split}")
    if len(np.unique(train.labels)) < 2:
        raise UsageError(f"{store}/{cfg.data.train_split} holds fewer than 2 classes")
    x_train, x_val = views(train, sets), views(val, sets)
    # Only once the inputs are known to be good; an unfinished probe run there is replaced.
    if claim_command_run(run, "train.py probe"):
        print(f"replacing the unfinished probe run in {show_path(run)}")
    print(f"run directory: {show_path(run)}")
    p.save(cfg, run / "config.yaml", overwrite=True)
    results, probes, sweep_rows = {}, {}, []
    for name in chosen:
        start = time.perf_counter()
        probe = fit_probe(
            x_train[name],
            train.labels,
            x_val[name],
            val.labels,
            cs=tuple(cfg.probe.cs),
            max_iter=cfg.probe.max_iter,
            max_dim=cfg.probe.max_dim,
            num_classes=info.num_classes,
        )
        probes[name] = probe
        results[name] = {
            "C": probe.best_c,
            "val_acc_top1": probe.val_acc,
            "sweep": {str(c): a for c, a in probe.sweep.items()},
            "unconverged_fits": probe.unconverged,
            "seconds": round(time.perf_counter() - start, 2),
        }
        sweep_rows += [(name, c, f"{a:.6f}") for c, a in probe.sweep.items()]
        print(f"probe {name:>6}: val/acc_top1 {probe.val_acc:.4f} (C={probe.best_c:g})")
    best = max(results, key=lambda v: results[v]["val_acc_top1"])
    write_csv(run / "metrics.csv", ["features", "C", "val/acc_top1"], sweep_rows)
    val_probs = probes[best].predict_proba(x_val[best])
    write_predictions_csv(run / "val_predictions.csv", val.ids, val.labels, val_probs)
    score = {"best/val/acc_top1": results[best]["val_acc_top1"]}
    submission = None
    if test is not None:
        probs = probes[best].predict_proba(views(test, sets)[best])
        submission, _ = write_submission(
            run / "submission.csv",
            test.ids,
            probs,
            class_names=info.class_names,
            category=cfg.category,
            candidate="probe",
            message=cfg.message,
            meta={**score, "features": best, "C": probes[best].best_c},
        )
    summary = {"store": store_key(store), "features": sets, "best": best, "results": results}
    atomic_write_text(run / PROBE_FILE, json.dumps(summary, indent=2))
    log_candidate(
        run,
        candidate="probe",
        settings=settings(),
        config=cfg.as_dict(),
        summary={
            **score,
            "best/features": best,
            **{f"probe/{v}/val_acc_top1": r["val_acc_top1"] for v, r in results.items()},
        },
        submission=submission,
    )
    finish_command_run(run)
    print(
        f"best: {best} (val/acc_top1 {results[best]['val_acc_top1']:.4f}); wrote {show_path(run)}"
    )
    if submission is not None:
        finish(submission, competition=cfg.kaggle, message=cfg.message)
    return run
