"""The tuned linear probe as a run: the baseline every head is measured against.

$ python train.py probe --data.store stores/kaggle
$ python train.py probe --data.store stores/kaggle --probe.cs [0.01,0.1,1] --probe.max_dim 256
$ python train.py probe --data.store stores/kaggle --data.features [dinov2_giant,siglip,siglip_zero_shot]

Fits :func:`fusion.probe.fit_probe` (standardise, logistic regression, C swept on val) on
every feature set of ``--data.features`` alone (default ``[image, text]``) and on their
concatenation, and writes a run directory like a fit's
(``runs/probe/<time>/`` or ``--run_dir``)::

    config.yaml             the resolved options
    probe.json              per feature set and the concatenation ("concat"): best C, val
                            top-1, the whole sweep; the sets and the store
    metrics.csv             features,C,val/acc_top1 for every fit of the sweep
    val_predictions.csv     id,label,pred,confidence of the best feature set on val
    submission.csv          Id,Category of the best feature set on the test split
                            (--category index|name; --kaggle COMPETITION sends it)
    submission.probs.npz    its probabilities (ensemble them like a head's)
    submission.json         its metadata (fusion/submission.py)
    wandb/                  the W&B run, candidate "probe": best/val/acc_top1 and the
                            submission artifact (offline unless logged in)

Every later ``train.py fit`` on the same store prints its best val accuracy next to these.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feature_store import load_features, open_store
from feature_store.cli import CliParser
from feature_store.console import show_path
from feature_store.integrity import check_finite
from fusion.exit import ExitError
from fusion.predict import write_csv, write_predictions_csv
from fusion.probe import DEFAULT_CS, DEFAULT_MAX_ITER, fit_probe
from fusion.submission import add_submission_arguments, write_submission
from fusion.wandb_report import add_wandb_arguments

CONCAT = "concat"  # the view of every chosen set side by side
DEFAULT_SETS = ["image", "text"]
PROBE_FILE = "probe.json"


def views(arrays, sets: Sequence[str]) -> dict[str, np.ndarray]:
    """Each set of ``sets`` alone and (several sets) their concatenation ``concat``."""
    out = {name: arrays[name] for name in sets}
    if len(sets) > 1:
        out[CONCAT] = np.concatenate([arrays[name] for name in sets], axis=1)
    return out


def store_key(store: str | Path) -> dict:
    """What identifies a store for matching probe results to later fits."""
    info = open_store(store)
    return {
        "path": str(Path(store).resolve()),
        "splits": {s: info.manifest["splits"][s].get("rows") for s in info.manifest["splits"]},
        "class_names_head": info.class_names[:5],
        "dims": info.manifest["dims"],
    }


def parser() -> CliParser:
    p = CliParser(prog="train.py probe", description=__doc__.split("\n\n")[0])
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
    p.add_argument("--run_dir", type=str | None, default=None, help="run directory")
    p.add_argument("--runs_root", type=str, default="runs", help="parent of run dirs")
    add_wandb_arguments(p, kind="probe")
    add_submission_arguments(p)
    return p


def run_probe(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python train.py probe``; returns the run directory."""
    from fusion.cli import new_run_dir
    from fusion.stopping import stop_exits

    p = parser()
    cfg = p.parse_args(list(argv) if argv is not None else None)
    run = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(Path(cfg.runs_root) / "probe")
    with stop_exits("train.py probe", run):
        return _probe(p, cfg, run)


def _probe(p: CliParser, cfg, run: Path) -> Path:
    from fusion.loggers import wandb_settings
    from fusion.runs import claim_command_run, finish_command_run
    from fusion.submission import finish
    from fusion.wandb_report import log_candidate

    store = Path(cfg.data.store)
    info = open_store(store)
    sets = list(cfg.data.features or DEFAULT_SETS)
    missing = [s for s in sets if s not in info.feature_names]
    if missing or len(set(sets)) != len(sets):
        raise ExitError(
            f"train.py probe: --data.features {sets}: {store} has the sets "
            f"{info.feature_names} (each named once)"
        )
    allowed = [*sets, CONCAT] if len(sets) > 1 else sets
    chosen = list(cfg.probe.views) if cfg.probe.views is not None else allowed
    unknown = [v for v in chosen if v not in allowed]
    if unknown or not chosen or min(cfg.probe.cs, default=0) <= 0:
        raise ExitError(
            f"train.py probe: --probe.views takes some of {allowed} (got "
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
        raise ExitError(
            f"train.py probe: {store}/{cfg.data.train_split} holds fewer than 2 classes"
        )
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
    (run / PROBE_FILE).write_text(json.dumps(summary, indent=2))
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
        finish(submission, competition=cfg.kaggle, message=cfg.message, prog="train.py probe")
    return run


def latest_probe(
    store: str | Path, runs_root: str | Path = "runs", sets: Sequence[str] | None = None
) -> dict | None:
    """The newest ``probe.json`` under ``runs_root/probe`` made on this very store that
    probed every set of ``sets`` (default image and text)."""
    sets = list(sets or DEFAULT_SETS)
    try:
        key = store_key(store)
    except Exception:
        return None
    found = sorted(Path(runs_root).glob(f"probe/*/{PROBE_FILE}"), key=lambda p: p.stat().st_mtime)
    for path in reversed(found):
        try:
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if summary.get("store") == key and set(sets) <= set(summary.get("results") or {}):
            return summary
    return None


def probe_line(summary: dict, sets: Sequence[str] | None = None) -> str:
    """``linear probe on these sets (val/acc_top1): image 0.930, text 0.420, concat 0.885``
    for a fit's last line: the probe of each set the fit read, and of their concatenation
    when the probe concatenated exactly those sets."""
    sets = list(sets or DEFAULT_SETS)
    results = summary["results"]
    shown = [s for s in sets if s in results]
    if list(summary.get("features") or DEFAULT_SETS) == sets and CONCAT in results:
        shown.append(CONCAT)
    parts = [f"{v} {results[v]['val_acc_top1']:.4f}" for v in shown]
    return "linear probe on these sets (val/acc_top1): " + ", ".join(parts)
