"""The one-table summary at the top of the run section: head, lambda, best epoch, best val.

$ python -c "from analysis.run_summary import run_summary; print(run_summary('RUN', 'STORE'))"

Read from the run directory alone: ``config.yaml`` (or Lightning's ``hparams.yaml``) for the
head and lambda and the checkpoint's monitor, ``metrics.csv`` for the epoch the best
checkpoint was taken at (the first epoch with the best monitored value, as ModelCheckpoint
keeps only strict improvements), and the newest ``train.py probe`` run on the same store
(:func:`fusion.probe_run.latest_probe`) for the baseline the head has to beat.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from analysis.html import fmt_number


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _float(text: str | None) -> float | None:
    try:
        return float(text) if text not in (None, "") else None
    except ValueError:
        return None


def best_epoch(rows: list[dict[str, str]], monitor: str, mode: str = "max") -> dict | None:
    """{"epoch", "monitor", "value", "val_acc", "epochs"} of the first row with the best
    ``monitor`` value in metrics.csv rows; None when the column was never logged."""
    logged = [(r, _float(r.get(monitor))) for r in rows]
    logged = [(r, v) for r, v in logged if v is not None]
    if not logged:
        return None
    values = np.array([v for _, v in logged])
    row, value = logged[int(np.argmin(values) if mode == "min" else np.argmax(values))]
    epochs = {r.get("epoch") for r, _ in logged}
    return {
        "epoch": int(float(row["epoch"])) if _float(row.get("epoch")) is not None else None,
        "monitor": monitor,
        "value": value,
        "val_acc": _float(row.get("val/acc_top1")),
        "epochs": len(epochs),
    }


def probe_baseline(run_dir: Path, store: Path, config: dict) -> dict | None:
    """The newest probe run on ``store``, looked for beside the run (runs/<exp>/<time> ->
    runs/probe) and under the fit's ``runs_root``."""
    from fusion.probe_run import latest_probe  # imports Lightning: only when a run is shown

    roots = [run_dir.resolve().parent.parent]
    if config.get("runs_root"):
        roots.append(Path(config["runs_root"]))
    for root in dict.fromkeys(roots):
        found = latest_probe(store, root)
        if found:
            return found
    return None


def run_summary(run_dir: str | Path, store: str | Path, rows: list[dict[str, str]]) -> dict:
    """What the summary table shows, as values: head, lambda, weighting, best epoch, ..."""
    run_dir = Path(run_dir)
    config = _yaml(run_dir / "config.yaml")
    model = config.get("model") or _yaml(run_dir / "hparams.yaml")
    ckpt = config.get("checkpoint") or {}
    monitor = ckpt.get("monitor") or "val/acc_top1"
    probe = probe_baseline(run_dir, Path(store), config)
    out = {
        "head": model.get("head"),
        "weighting": model.get("weighting"),
        "lambda": model.get("penalty_lambda"),
        "best": best_epoch(rows, monitor, ckpt.get("mode") or "max"),
        "probe": None,
    }
    if probe:
        view = probe.get("best") or max(
            probe["results"], key=lambda v: probe["results"][v]["val_acc_top1"]
        )
        out["probe"] = {"view": view, "val_acc": probe["results"][view]["val_acc_top1"]}
    return out


def summary_table(summary: dict, store: str | Path) -> tuple[list[str], list[object]]:
    """(header, row) of the run section's first table."""
    header, row = ["head"], [summary["head"] or "? (no config.yaml or hparams.yaml)"]
    if summary["head"] == "dual_logit":
        header.append("lambda")
        softmax = summary["weighting"] == "softmax"
        row.append("n/a (softmax weighting)" if softmax else summary["lambda"])
    best = summary["best"]
    header += ["best epoch (from 0)", "best val top-1"]
    if best is None:
        row += ["? (no val metric in metrics.csv)", ""]
    else:
        row.append(f"{best['epoch']} of {best['epochs']}" if best["epoch"] is not None else "?")
        if best["val_acc"] is not None:
            row.append(best["val_acc"])
        else:  # a checkpoint on another metric: show that one
            row.append(f"{best['monitor']} {fmt_number(best['value'])}")
    header.append("linear probe val top-1")
    probe = summary["probe"]
    if probe:
        row.append(f"{fmt_number(probe['val_acc'])} ({probe['view']})")
    else:
        row.append(f"none on this store (python train.py probe --data.store {store})")
    return header, row
