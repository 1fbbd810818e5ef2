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
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feature_store import open_store

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
