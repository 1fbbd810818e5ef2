"""Extraction throughput, the share of wall time spent in the models, and write linearity.

$ HF_HUB_OFFLINE=1 python bench/bench_extract.py                  # N=2000, both model sets
$ HF_HUB_OFFLINE=1 python bench/bench_extract.py --n 500 --only base --rows 20000

For each model set it builds a store from N generated sketches with the default run
settings (batch 32, 2 DataLoader workers, shards of 512) and prints images/s and the
share of Trainer.predict wall time spent inside model forward/generate, as the store's
manifest records it (per-call timers around each model). Everything else is decoding,
preprocessing, tokenising, moving tensors and writing shards; the goal is < 10%.

- ``tiny``: the demo's tiny DINOv2 / BLIP-2 / BERT (models so small that the overhead
  is all there is: the worst case for the goal);
- ``base``: a DINOv2-base-sized image encoder (768 wide, 12 layers, 224 crop, random
  weights) with the tiny captioner and text encoder.

Then the write path alone: 20,000 rows of 768+768 float16 written as 1,000-row shards,
time per 1,000 rows at the start and at the end (linear means the two are equal).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def build_base_dinov2(out: Path) -> Path:
    """facebook/dinov2-base's config and processor, random weights (no download)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    if not (out / "config.json").is_file():
        Dinov2Model(Dinov2Config(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 image_size=518, patch_size=14)).save_pretrained(out)  # fmt: skip
        BitImageProcessor(
            size={"shortest_edge": 256},
            crop_size={"height": 224, "width": 224},
            resample=3,
            image_mean=[0.485, 0.456, 0.406],
            image_std=[0.229, 0.224, 0.225],
        ).save_pretrained(out)
    return out


def bench_models(name: str, *, images: Path, models: dict[str, Path], out: Path,
                 extra: list[str]) -> dict:  # fmt: skip
    import shutil

    import data_prep

    shutil.rmtree(out, ignore_errors=True)  # measure a full build, never a no-op rerun
    argv = [
        "--input.root", str(images),
        "--image.model", str(models["dinov2"]),
        "--caption.model", str(models["blip2"]),
        "--text.model", str(models["bert"]),
        "--run.out", str(out),
        "--input.split_dirs", "{train: train_images}",
        "--run.progress", "false",
        *extra,
    ]  # fmt: skip
    data_prep.main(argv)
    m = json.loads((out / "manifest.json").read_text())
    t = m["timing"]
    wall = t["extract_seconds_last_run"]
    model = sum(t["model_seconds_all_shards"].values())
    rows = sum(c["inputs"] for c in m["splits"].values())
    res = {
        "set": name,
        "images": rows,
        "images_per_s": rows / wall,
        "predict_wall_s": wall,
        "model_s": {k: round(v, 2) for k, v in t["model_seconds_all_shards"].items()},
        "model_share": model / wall,
        "non_model_share": 1 - model / wall,
    }
    print(
        f"{name:>5}: {rows} images in {wall:.1f}s = {res['images_per_s']:.1f} img/s; "
        f"in models {100 * res['model_share']:.1f}% {res['model_s']}, "
        f"everything else {100 * res['non_model_share']:.1f}%"
    )
    return res


def bench_writes(root: Path, *, rows: int, dim: int = 768, per: int = 1000) -> dict:
    """Write ``rows`` rows as ``per``-row shards through StoreWriter; time every shard."""
    from data_prep.store import StoreWriter, plan_shards
    from feature_store import store_features as features

    feats = features(dim, dim, "float16")
    writer = StoreWriter(root)
    rng = np.random.default_rng(0)
    times = []
    shards = plan_shards({"train": rows}, per)
    for s in shards:
        n = len(s)
        cols = {
            "id": [f"img{i:07d}" for i in range(s.start, s.stop)],
            "label": list(rng.integers(0, 500, n)),
            "path": [f"/data/train_images/c/img{i:07d}.jpg" for i in range(s.start, s.stop)],
            "caption": ["a sketch of a dog sitting on a chair"] * n,
            "image_emb": rng.standard_normal((n, dim), dtype=np.float32),
            "text_emb": rng.standard_normal((n, dim), dtype=np.float32),
        }
        start = time.perf_counter()
        writer.write_shard(s, cols, feats=feats, info={"failed": []})
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    writer.finalize_split("train", shards, feats)
    index_s = time.perf_counter() - start
    first, last = np.mean(times[1:4]), np.mean(times[-3:])  # shard 0 pays the imports
    print(
        f"write: {rows} rows in {sum(times):.2f}s; per 1,000 rows: shards 2-4 "
        f"{1000 * first:.1f} ms, last 3 shards {1000 * last:.1f} ms (ratio {last / first:.2f}); "
        f"split index {1000 * index_s:.1f} ms"
    )
    return {
        "rows": rows,
        "first_ms": 1000 * first,
        "last_ms": 1000 * last,
        "index_ms": 1000 * index_s,
    }


def bench_rewrite_baseline(root: Path, *, rows: int, dim: int = 768, per: int = 1000) -> dict:
    """The original code's write path, for contrast: the whole parquet rewritten per batch."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts, times = [], []
    for start in range(0, rows, per):
        emb = rng.standard_normal((per, 2 * dim)).astype(np.float16)
        parts.append(pa.table({"id": [f"img{i:07d}" for i in range(start, start + per)],
                               "emb": pa.FixedSizeListArray.from_arrays(
                                   pa.array(emb.reshape(-1)), 2 * dim)}))  # fmt: skip
        t0 = time.perf_counter()
        pq.write_table(pa.concat_tables(parts), root / "features.parquet")
        times.append(time.perf_counter() - t0)
    first, last = np.mean(times[1:4]), np.mean(times[-3:])
    print(
        f"rewrite-all baseline: {rows} rows in {sum(times):.2f}s; per 1,000 rows: batches 2-4 "
        f"{1000 * first:.1f} ms, last 3 {1000 * last:.1f} ms (ratio {last / first:.2f})"
    )
    return {"baseline_first_ms": 1000 * first, "baseline_last_ms": 1000 * last}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=2000, help="generated images per model set")
    p.add_argument("--n-base", type=int, default=None, help="images for the base set (default n)")
    p.add_argument("--only", choices=["tiny", "base", "write"], default=None)
    p.add_argument("--rows", type=int, default=20000, help="rows for the write benchmark")
    p.add_argument("--workdir", default=None, help="keep images/models here (default: a tmp dir)")
    args = p.parse_args()

    from data_prep.demo_images import make_demo_images
    from data_prep.tiny_models import ensure_tiny_models

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_extract_"))
    models = ensure_tiny_models(work / "models")
    results = []
    for name, n in (("tiny", args.n), ("base", args.n_base or args.n)):
        if args.only not in (None, name):
            continue
        images = work / f"images{n}"
        if not images.is_dir():
            make_demo_images(images, num_classes=10, per_class={"train": n // 10, "val": 0,
                                                                "test": 0})  # fmt: skip
        ms = dict(models)
        if name == "base":
            ms["dinov2"] = build_base_dinov2(work / "models" / "dinov2-base-random")
        results.append(bench_models(name, images=images, models=ms, out=work / f"store-{name}-{n}",
                                    extra=[]))  # fmt: skip
    if args.only in (None, "write"):
        results.append(bench_writes(work / "write", rows=args.rows))
        results.append(bench_rewrite_baseline(work / "rewrite", rows=args.rows))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
