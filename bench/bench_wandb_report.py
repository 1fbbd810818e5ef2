"""Cost of the end-of-fit W&B extras on a competition-sized val split (issue 12).

$ python bench/bench_wandb_report.py                     # 500 classes, 5,000 val rows
$ python bench/bench_wandb_report.py --classes 50 --rows 2000

What train.py adds to a fit's W&B run at its end, timed on its own in an offline run:
the confusion report (above 50 classes: the heatmap PNG of the 30 most confused classes
and a table of the 50 most confused pairs), the predictions table (200 rows, misclassified
first, 64 px thumbnails read from real PNG files), the best-checkpoint artifact (a concat
head of 768+768 -> 500 at the repo's default widths) and the store-manifest artifact, then
``run.finish()``. The val predictions themselves (``RUN/val_predictions.csv``) were written
before this work and are not counted. Size: the W&B run directory after the run, minus an
empty run's (W&B's own metadata and logs). Goals: under 10 s and under 5 MB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def settled(run_dir: Path, timeout: float = 60.0) -> int:
    """Bytes of ``run_dir`` once W&B's service stops writing it (size stable for 1 s)."""
    last, since, deadline = -1, time.monotonic(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        size = dir_bytes(run_dir)
        if size != last:
            last, since = size, time.monotonic()
        elif time.monotonic() - since > 1.0:
            break
        time.sleep(0.1)
    return last


def make_inputs(root: Path, classes: int, rows: int, seed: int = 0):
    """Val arrays shaped like the competition's, sketch PNGs on disk, a store manifest,
    and a checkpoint-sized file."""
    import torch
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    labels = np.arange(rows) % classes
    logits = rng.normal(size=(rows, classes)).astype(np.float32)
    logits[np.arange(rows), labels] += 3.0  # about 75% top-1, as a real head
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    images = root / "images"
    images.mkdir(parents=True)
    paths = []
    for i in range(rows):
        img = Image.new("L", (256, 256), 255)
        draw = ImageDraw.Draw(img)
        pts = [tuple(int(v) for v in rng.integers(0, 256, 2)) for _ in range(6)]
        draw.line(pts, fill=0, width=3)
        path = images / f"val_{i:05d}.png"
        img.save(path)
        paths.append(str(path))
    store = root / "store"
    store.mkdir()
    manifest = {
        "format_version": 1,
        "class_names": [f"class_{c:03d}" for c in range(classes)],
        "dims": {"image_emb": 768, "text_emb": 768},
        "emb_dtype": "float16",
        "splits": {"val": {"inputs": rows, "rows": rows, "failed": 0}},
        "shards": {"val": []},
        "models": {"image": {"name": "facebook/dinov2-base", "revision": "x", "pooling": "cls"}},
    }
    (store / "manifest.json").write_text(json.dumps(manifest))
    (store / "val").mkdir()
    ckpt = root / "best.ckpt"
    # The default concat head's size: 1536 -> 512 -> 500 in float32 plus AdamW state.
    torch.save({"w": torch.zeros(1536 * 512 + 512 * classes)}, ckpt)
    return labels, probs, paths, store, ckpt


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--rows", type=int, default=5000)
    args = p.parse_args(argv)

    import os

    os.environ.setdefault("WANDB_SILENT", "true")
    import wandb

    from fusion.wandb_report import log_checkpoint, log_store_manifest, log_val_report

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        labels, probs, paths, store, ckpt = make_inputs(root, args.classes, args.rows)
        names = [f"class_{c:03d}" for c in range(args.classes)]

        empty = wandb.init(mode="offline", dir=str(root / "empty"), project="bench")
        empty.finish()
        base = settled(root / "empty")

        from feature_store.compat import wandb_staging_dir

        staging = wandb_staging_dir()
        staged_before = dir_bytes(staging) if staging.is_dir() else 0
        (root / "run").mkdir()
        run = wandb.init(mode="offline", dir=str(root / "run"), project="bench")
        start = time.perf_counter()
        log_val_report(
            run,
            ids=[f"val_{i:05d}" for i in range(args.rows)],
            labels=labels,
            probs=probs,
            class_names=names,
            captions=["a black and white sketch"] * args.rows,
            paths=paths,
            out_dir=root / "run",
        )
        report_s = time.perf_counter() - start
        log_checkpoint(run, ckpt, score=0.75, monitor="val/acc_top1")
        log_store_manifest(run, store)
        run.finish()
        total_s = time.perf_counter() - start
        size = settled(root / "run") - base
        # Logged tables and artifacts wait in W&B's staging directory (outside the run)
        # until `wandb sync` uploads them: count them too, the checkpoint apart.
        staged = dir_bytes(staging) - staged_before - ckpt.stat().st_size
        print(
            f"{args.classes} classes, {args.rows} val rows: report {report_s:.2f} s, "
            f"with artifacts and finish {total_s:.2f} s; run directory +{size / 1e6:.2f} MB, "
            f"W&B staging +{staged / 1e6:.2f} MB besides the "
            f"{ckpt.stat().st_size / 1e6:.1f} MB checkpoint"
        )


if __name__ == "__main__":
    main()
