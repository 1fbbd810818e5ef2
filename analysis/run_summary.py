"""The one-table summary at the top of the run section: head, lambda, best epoch, best val.

$ python -c "from analysis.run_summary import run_summary; print(run_summary('RUN', 'STORE'))"

Read from the run directory alone: ``config.yaml`` (or Lightning's ``hparams.yaml``) for the
head and lambda and the checkpoint's monitor, ``metrics.csv`` for the epoch the best
checkpoint was taken at (the first epoch with the best monitored value, as ModelCheckpoint
keeps only strict improvements), and the newest ``train.py probe`` run on the same store
(:func:`fusion.probe_run.latest_probe`) for the baseline the head has to beat. A probe or
stack run gets its own table instead (:func:`probe_table`, :func:`stack_table`), from the
``probe.json`` or ``stack.json`` it wrote.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml

from analysis.html import fmt_number


def _yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path.is_file() else None
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _section(config: dict, key: str) -> dict:
    """``config[key]`` when it is a mapping: a hand-edited or another command's config.yaml
    (a stack's ``checkpoint:`` is a list of members) must not break the summary."""
    value = config.get(key)
    return value if isinstance(value, dict) else {}


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
    if isinstance(config.get("runs_root"), str):
        roots.append(Path(config["runs_root"]))
    for root in dict.fromkeys(roots):
        found = latest_probe(store, root)
        if found:
            return found
    return None


def _or(value, default):
    return default if value is None else value


def run_summary(run_dir: str | Path, store: str | Path, rows: list[dict[str, str]]) -> dict:
    """What the summary table shows, as values: head, lambda, weighting, best epoch, ..."""
    from fusion.heads import HEADS, head_default  # torch: only for a run's summary

    run_dir = Path(run_dir)
    config = _yaml(run_dir / "config.yaml")
    model = _section(config, "model") or _yaml(run_dir / "hparams.yaml")
    ckpt = _section(config, "checkpoint")
    monitor = ckpt.get("monitor") or "val/acc_top1"
    probe = probe_baseline(run_dir, Path(store), config)
    # The head's options: grouped (fits since issue 21) or flat (older runs); an option left
    # unset (None) is the head's own default.
    options = model.get("head_options") or model
    head = model.get("head")
    default = (lambda name: head_default(head, name)) if head in HEADS else (lambda name: None)
    out = {
        "head": head,
        "weighting": options.get("weighting") or default("weighting"),
        "lambda": _or(options.get("penalty_lambda"), default("penalty_lambda")),
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


def _member_name(member: str) -> str:
    """A stack member as ``head (run dir)``: the head from its run's config.yaml."""
    path = Path(member)
    run = path.parent.parent if path.parent.name == "checkpoints" else path
    head = _section(_yaml(run / "config.yaml"), "model").get("head")
    return f"{head} ({run})" if head else str(run)


def stack_table(run_dir: str | Path) -> tuple[list[str], list[list[object]]] | None:
    """(header, rows) of a ``train.py stack`` run from its stack.json: the stack and each
    member alone, top-1 on the rows the stacker was cross-fitted on; None if unreadable."""
    summary = _json(Path(run_dir) / "stack.json")
    members, accs = summary.get("members"), summary.get("member_acc_top1")
    if not isinstance(members, list) or not isinstance(accs, list) or len(accs) != len(members):
        return None
    weights = summary.get("mean_weights")
    if not isinstance(weights, list) or len(weights) != len(members):
        weights = [""] * len(members)
    where = f"{summary.get('rows_fitted', '?')} {summary.get('fitted_on', '?')} rows"
    header = ["model", f"top-1 on {where}", "mean weight"]
    rows: list[list[object]] = [
        [f"stack ({summary.get('method', '?')}, cross-fitted)",
         summary.get("acc_top1_cross_fitted", "?"), ""]
    ]  # fmt: skip
    rows += [[_member_name(m), a, w] for m, a, w in zip(members, accs, weights, strict=True)]
    return header, rows


def probe_table(run_dir: str | Path) -> tuple[list[str], list[list[object]]] | None:
    """(header, rows) of a ``train.py probe`` run from its probe.json: per feature set the
    C chosen on val and its val top-1, the best marked; None if unreadable."""
    summary = _json(Path(run_dir) / "probe.json")
    results = summary.get("results")
    if not isinstance(results, dict) or not results:
        return None
    best = summary.get("best")
    rows = [
        [f"{view} (best)" if view == best else view, r.get("C", "?"), r.get("val_acc_top1", "?")]
        for view, r in results.items()
        if isinstance(r, dict)
    ]
    return ["features", "C", "val top-1"], rows


def run_store(run_dir: str | Path, kind: str) -> str | None:
    """The store a run was made on, as its config.yaml (or probe.json) records it."""
    run_dir = Path(run_dir)
    if kind == "probe":
        store = _section(_json(run_dir / "probe.json"), "store").get("path")
    else:
        store = _section(_yaml(run_dir / "config.yaml"), "data").get("store")
    return store if isinstance(store, str) else None
