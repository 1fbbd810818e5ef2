"""What the per-shard checksum check costs when a stage opens a store split.

$ python bench/bench_integrity.py                       # 50,000 x (768+768) float16
$ python bench/bench_integrity.py --rows 5000 --rounds 3  # quick look

``load_arrays`` (what train, predict and analysis call) with the check (every shard's
size and SHA-256 against the manifest) and without it (``verify_split`` replaced by a
no-op), alternating within each round; the figure is the median of each and their ratio.
The store is written once by ``make_synthetic_store`` into a temporary directory.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from unittest import mock

import feature_store.integrity  # noqa: F401 - patched below
from feature_store import load_arrays
from feature_store.synthetic import make_synthetic_store


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=50_000)
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        per_class = max(1, a.rows // a.classes)
        make_synthetic_store(store, num_classes=a.classes, image_dim=a.dim, text_dim=a.dim,
                             per_class={"train": per_class}, emb_dtype="float16")  # fmt: skip
        size = sum(f.stat().st_size for f in (store / "train").glob("*.arrow"))
        load_arrays(store, "train")  # warm the page cache for both paths
        checked, unchecked = [], []
        for _ in range(a.rounds):
            start = time.perf_counter()
            load_arrays(store, "train")
            checked.append(time.perf_counter() - start)
            with mock.patch("feature_store.layout.verify_split", lambda *args: None):
                start = time.perf_counter()
                load_arrays(store, "train")
                unchecked.append(time.perf_counter() - start)
        c, u = statistics.median(checked), statistics.median(unchecked)
        rows = per_class * a.classes
        print(f"{rows} rows x ({a.dim}+{a.dim}) float16, {size / 2**20:.0f} MiB of shards")
        print(f"load_arrays with checksums {c:.3f} s, without {u:.3f} s: x{c / u:.2f} "
              f"(+{c - u:.3f} s, {size / 2**20 / max(c - u, 1e-9):.0f} MiB/s hashed)")  # fmt: skip


if __name__ == "__main__":
    main()
