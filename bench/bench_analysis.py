"""Time the full analysis report on a competition-sized synthetic store.

$ python bench/bench_analysis.py --rows 50000 --classes 500 --image-dim 1536 --text-dim 768

Writes a synthetic store (train 90% / val 10% of ``--rows``, class-balanced), a fake run
directory (metrics.csv with alpha/beta, val_predictions.csv), then runs
``python -m analysis``'s ``build_report`` with its default caps and prints the time of
each section, the total, and the total as a share of the 5-minute budget. Store writing
is timed apart: it is data_prep's cost, not the report's.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from analysis.report import ReportOptions, build_report
from feature_store.layout import load_arrays
from feature_store.synthetic import make_synthetic_store

BUDGET_S = 300.0


def fake_run(run: Path, store: Path, *, steps: int = 200, seed: int = 0) -> None:
    """A run directory shaped like CSVLogger's output, and val predictions at ~80% top-1."""
    rng = np.random.default_rng(seed)
    run.mkdir(parents=True, exist_ok=True)
    cols = ["epoch", "fusion/alpha", "fusion/beta", "step", "train/acc_top1", "train/loss"]
    cols += ["val/acc_top1", "val/loss"]
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in range(steps):
            a = 0.5 + 0.5 * (1 - np.exp(-s / 50))
            w.writerow([s // 20, a, 1 - a, s, min(1, s / steps + 0.2), 3 / (1 + s), "", ""])
            if s % 20 == 19:
                w.writerow([s // 20, "", "", s, "", "", 0.8 * s / steps, 2 / (1 + s)])
    val = load_arrays(store, "val")
    k = int(val.labels.max()) + 1
    wrong = rng.random(len(val)) < 0.2
    preds = np.where(wrong, rng.integers(0, k, len(val)), val.labels)
    with (run / "val_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "pred", "confidence"])
        for row in zip(val.ids, val.labels, preds, rng.random(len(val)), strict=True):
            w.writerow(row)


def _cpu_seconds() -> float:
    """User + system CPU time of this process and all its threads."""
    import resource

    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50000)
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--image-dim", type=int, default=1536)
    p.add_argument("--text-dim", type=int, default=768)
    p.add_argument("--noise", type=float, default=8.0, help="per-dim noise vs. class-mean scale 2")
    p.add_argument("--workdir", type=Path, default=None, help="keep the store/report here")
    a = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = a.workdir or Path(tempfile.mkdtemp(prefix="bench_analysis_"))
    store, run, out = work / "store", work / "run", work / "report"
    n_train = int(0.9 * a.rows) // a.classes
    n_val = a.rows // a.classes - n_train
    t0 = time.perf_counter()
    if not (store / "manifest.json").is_file():
        make_synthetic_store(
            store,
            num_classes=a.classes,
            per_class={"train": n_train, "val": n_val},
            image_dim=a.image_dim,
            text_dim=a.text_dim,
            noise=a.noise,
        )
    fake_run(run, store)
    t_store = time.perf_counter() - t0
    cpu0, load0 = _cpu_seconds(), os.getloadavg()[0]
    t1 = time.perf_counter()
    result = build_report(ReportOptions(store=store, run=run, out=out))
    total = time.perf_counter() - t1
    cpu, load1 = _cpu_seconds() - cpu0, os.getloadavg()[0]
    print(f"store: {a.classes * (n_train + n_val)} rows, {a.classes} classes, "
          f"image {a.image_dim}-d, text {a.text_dim}-d (written in {t_store:.1f}s, not counted)")  # fmt: skip
    for name, sec in result.timings.items():
        print(f"  {name:12s} {sec:7.1f}s")
    for name, r in result.numbers.get("probes", {}).items():
        print(f"  probe {name:7s} " + " ".join(f"{k}={v:.3g}" for k, v in r.items()))
    # CPU seconds bound the wall time on 2 idle cores from above whenever at least one core
    # is busy throughout; on a shared machine the wall time alone mostly measures the others.
    print(f"report CPU time {cpu:.1f}s (all threads); load average {load0:.1f} -> {load1:.1f}")
    print(f"report total {total:.1f}s = {total / BUDGET_S:.2f} x the {BUDGET_S:.0f}s budget; "
          f"{len(result.report.figures)} figures; cpus {os.cpu_count()}; page {result.page}")  # fmt: skip


if __name__ == "__main__":
    main()
