"""The report's recipe (configs/report/*) beside our default recipe (configs/*), one store.

$ python bench/bench_report.py                        # synthetic, 500 classes x 20 train rows
$ python bench/bench_report.py --store stores/report_published [--dinov2-store stores/report_dinov2]

Each config is fitted through the real entry point (``python train.py fit --config ...``)
on the same store, W&B and the CSV log off. Per config: the val top-1 accuracy of the
checkpoint that config keeps (``best.ckpt``: lowest val loss for the report's recipe,
highest val accuracy for ours, read back from ``RUN/val_predictions.csv``), the epochs run
and the wall time of the fit.

With the report's published embeddings imported (``python -m data_prep --config
configs/prep/import_report_embeddings.yaml``, needs network once), ``--store
stores/report_published`` also prints the report's Table 1 beside the four rows. The
published visual features are the mean of all DINOv2 tokens, not the [CLS; mean of
patches] that the report's DINOv2 row read, so that row is an approximation unless
``--dinov2-store`` points at a store from configs/prep/report_dinov2.yaml.

The synthetic store is shaped like the competition (500 classes, 768-d image and text
embeddings of unit scale, 20 train and 4 val rows per class), its image features the more
informative (nearest-class-mean val accuracy about 85% on image, 25% on text); its
accuracies compare the two recipes with each other, not with the report's figures.
"""

from __future__ import annotations

import argparse
import csv
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Table 1 of the report: (train, val, test) accuracy in %, DINOv2-base for the first row.
REPORT_TABLE_1 = {
    "dinov2": ("DINOv2-base", 98.19, 89.44, 89.78),
    "concat": ("Concat.", 95.98, 86.48, 86.72),
    "dual_logit_l0.1": ("Proposal-v1 (lambda 0.1)", 96.59, 87.72, 87.95),
    "dual_logit_l0.3": ("Proposal-v2 (lambda 0.3)", 96.13, 86.84, 87.34),
}
# Our recipe's config for each row of the report's.
OURS = {
    "dinov2": "visual_only",
    "concat": "concat",
    "dual_logit_l0.1": "dual_logit_l0.1",
    "dual_logit_l0.3": "dual_logit_l0.3",
}


def fit(config: Path, store: Path, runs: Path, *extra: str) -> dict[str, float]:
    """Fit one config; return val accuracy of its kept checkpoint, epochs and seconds."""
    from fusion.cli import FusionCLI

    args = ["fit", "--config", str(config), "--data.store", str(store)]
    args += ["--runs_root", str(runs), "--trainer.logger", "false"]
    args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    start = time.perf_counter()
    cli = FusionCLI(args=[*args, *extra])
    seconds = time.perf_counter() - start
    run = Path(cli.trainer.default_root_dir)
    with open(run / "val_predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    accuracy = sum(r["label"] == r["pred"] for r in rows) / len(rows)
    return {"val_acc": 100 * accuracy, "epochs": cli.trainer.current_epoch, "seconds": seconds}


def synthetic_store(
    root: Path, *, classes: int, train: int, val: int, dim: int, signal: tuple[float, float]
) -> Path:
    """Class mean times ``signal`` plus unit noise, per modality: unit-scale features like
    DINOv2's and BERT's (SGD at lr 0.1 diverges on features tens of units large), the
    image modality the stronger of the two, as in the competition."""
    import numpy as np

    from feature_store import write_store

    rng = np.random.default_rng(0)
    means = [rng.standard_normal((classes, dim)).astype(np.float32) for _ in signal]
    splits = {}
    for split, n in (("train", train), ("val", val), ("test", 1)):
        labels = rng.permutation(np.repeat(np.arange(classes), n))
        image, text = (
            s * m[labels] + rng.standard_normal((len(labels), dim)).astype(np.float32)
            for s, m in zip(signal, means, strict=True)
        )
        ids = [f"{split}_{i:06d}" for i in range(len(labels))]
        splits[split] = {
            "id": ids,
            "label": labels if split != "test" else np.full(len(labels), -1),
            "image_emb": image,
            "text_emb": text,
        }
    names = [f"class_{i:03d}" for i in range(classes)]
    write_store(root, splits=splits, class_names=names, extra_manifest={"synthetic": signal})
    return root


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--store", type=Path, help="an existing store (default: synthetic)")
    parser.add_argument("--dinov2-store", type=Path, help="store for the DINOv2 row")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--train-per-class", type=int, default=20)
    parser.add_argument("--val-per-class", type=int, default=4)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument(
        "--signal", type=float, nargs=2, default=(0.22, 0.15), help="synthetic: image, text"
    )
    parser.add_argument("--rows", nargs="*", default=list(REPORT_TABLE_1), help="rows to run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = args.store or synthetic_store(
            tmp / "store",
            classes=args.classes,
            train=args.train_per_class,
            val=args.val_per_class,
            dim=args.dim,
            signal=tuple(args.signal),
        )
        results = {}
        for row in args.rows:
            row_store = args.dinov2_store if row == "dinov2" and args.dinov2_store else store
            report_cfg = REPO / "configs" / "report" / f"{row}.yaml"
            ours_cfg = REPO / "configs" / f"{OURS[row]}.yaml"
            results[row] = {
                "report": fit(report_cfg, row_store, tmp / "runs_report"),
                "ours": fit(ours_cfg, row_store, tmp / "runs_ours"),
            }
            print(row, results[row], flush=True)
    print_tables(results, published=args.store is not None, dinov2_exact=bool(args.dinov2_store))


def print_tables(results: dict, *, published: bool, dinov2_exact: bool) -> None:
    print("\n| row | recipe | val top-1 % | epochs | wall s |")
    print("|---|---|---:|---:|---:|")
    for row, by_recipe in results.items():
        for recipe, config in (("report", f"report/{row}"), ("ours", OURS[row])):
            r = by_recipe[recipe]
            print(
                f"| {row} | {recipe} (`configs/{config}.yaml`) | {r['val_acc']:.2f} | "
                f"{r['epochs']} | {r['seconds']:.1f} |"
            )
    if not published:
        return
    print("\n| Table 1 row | report val % | report test % (Kaggle) | here, report recipe, val % |")
    print("|---|---:|---:|---:|")
    for row, by_recipe in results.items():
        name, _train, val, test = REPORT_TABLE_1[row]
        note = (
            " (approx.: mean-of-all-tokens features)"
            if row == "dinov2" and not dinov2_exact
            else ""
        )
        print(f"| {name}{note} | {val:.2f} | {test:.2f} | {by_recipe['report']['val_acc']:.2f} |")


if __name__ == "__main__":
    main()
