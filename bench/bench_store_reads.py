"""What reading the store costs a fit, its test and its prediction, with the per-process
store cache (feature_store/cache.py) and without it, side by side in one process.

$ python bench/bench_store_reads.py                                # Kaggle-sized, ~5 min on 2 cores
$ python bench/bench_store_reads.py --classes 20 --rounds 1        # a quick look

The store: ``--classes`` x (36 train + 9 val + 11 test) rows (500 classes: the
competition's 22,500 train+val and 5,500 test rows), ``image_emb`` and ``text_emb`` of
768 float16, plus one added set of 1,152 float16 (SigLIP so400m's width), its files aged
past the cache's racy-timestamp window as a store in use is. Each round runs, alternating:

- ``cached``: the readers as they are: the manifest parsed, each shard hashed, each split
  and each added set read and decoded once per process;
- ``checks only``: the readers before: manifest and shard checks cached, every split and
  set read and decoded again at every call;
- ``nothing``: no cache at all (every call parses, hashes, reads and decodes).

In each: ``train.py fit`` (the concat head over image, text and the added set, one epoch
of ``--trainer.limit_train_batches 2``, the fit's own val predictions and submission), then
``train.py test --data.test_split val`` and ``predict.py`` on its checkpoint. The figure is
the time spent inside the store readers (``open_store``, ``load_split``, ``load_arrays``,
``load_features`` as called from outside them, i.e. what the stages wait for), the median
over ``--rounds``, with the count of split reads (``datasets.load_from_disk``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(HERE))

MODES = {"cached": (), "checks only": ("rows", "set"), "nothing": ("manifest", "verified",
                                                                  "rows", "set")}  # fmt: skip


def build(root: Path, classes: int) -> None:
    from feature_store import add_feature_set, open_store
    from feature_store.synthetic import make_synthetic_store

    make_synthetic_store(root, num_classes=classes, per_class={"train": 36, "val": 9, "test": 11},
                         image_dim=768, text_dim=768, emb_dtype="float16")  # fmt: skip
    info = open_store(root)
    rng = np.random.default_rng(0)
    arrays = {s: rng.normal(size=(info.rows(s), 1152)).astype(np.float16) for s in info.splits}
    add_feature_set(root, {"name": "wide", "kind": "image", "model": "random", "dtype": "float16"},
                    arrays)  # fmt: skip
    past = time.time() - 60
    for p in root.rglob("*"):
        os.utime(p, (past, past))


class ReaderClock:
    """Seconds inside the store readers (outermost calls only) and split reads, patched
    into every module that holds them."""

    def __init__(self, stack: ExitStack) -> None:
        import datasets

        import feature_store.layout as layout
        import feature_store.sets as sets

        self.seconds, self.reads, self._depth = 0.0, 0, 0
        originals = [layout.open_store, layout.load_split, layout.load_arrays, sets.load_features]
        for real in originals:
            timed = self._timed(real)
            for module in list(sys.modules.values()):
                for name, value in list(getattr(module, "__dict__", {}).items()):
                    if value is real:
                        stack.enter_context(mock.patch.object(module, name, timed))
        real_read = datasets.load_from_disk

        def counted(*args, **kwargs):
            self.reads += 1
            return real_read(*args, **kwargs)

        stack.enter_context(mock.patch.object(datasets, "load_from_disk", counted))

    def _timed(self, real):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter()
            try:
                return real(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.seconds += time.perf_counter() - start

        return timed


def bypassing(stack: ExitStack, kinds: tuple[str, ...]) -> None:
    """Serve the slot kinds ``kinds`` never from the cache (read at every call)."""
    import feature_store.cache as cache

    real = cache.cached

    def cached(slot, paths, read, **kwargs):
        return read() if slot[1] in kinds else real(slot, paths, read, **kwargs)

    for name in ("feature_store.layout", "feature_store.sets", "feature_store.integrity"):
        stack.enter_context(mock.patch.object(sys.modules[name], "cached", cached))


def run_once(store: Path, work: Path, kinds: tuple[str, ...]) -> tuple[float, int, float]:
    """(seconds in readers, split reads, wall seconds) of fit + test + predict."""
    import predict
    from feature_store import cache
    from fusion.cli import FusionCLI

    cache.clear()
    common = ["--config", str(HERE / "configs" / "demo.yaml"), "--model.head", "concat",
              "--data.store", str(store), "--data.features", "[image, text, wide]",
              "--data.batch_size", "256", "--trainer.enable_progress_bar", "false"]  # fmt: skip
    with ExitStack() as stack:
        clock = ReaderClock(stack)
        bypassing(stack, kinds)
        start = time.perf_counter()
        FusionCLI(args=["fit", *common, "--run_dir", str(work / "run"), "--trainer.max_epochs",
                        "1", "--trainer.limit_train_batches", "2"])  # fmt: skip
        ckpt = str(work / "run" / "checkpoints" / "best.ckpt")
        FusionCLI(args=["test", *common, "--ckpt_path", ckpt, "--data.test_split", "val"])
        predict.main(["--checkpoint", ckpt, "--store", str(store), "--out",
                      str(work / "submission.csv")])  # fmt: skip
        return clock.seconds, clock.reads, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    import train  # noqa: F401 - every reader module loaded before the clock patches them

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        build(store, a.classes)
        from feature_store import load_features, open_store

        info = open_store(store)
        rows = {s: info.rows(s) for s in info.splits}
        for s in info.splits:
            load_features(store, s)  # warm the page cache for every mode
        results: dict[str, list[tuple[float, int, float]]] = {m: [] for m in MODES}
        for r in range(a.rounds):
            for mode, kinds in MODES.items():
                results[mode].append(run_once(store, Path(tmp) / f"{r}-{mode}", kinds))
    cached = statistics.median(t[0] for t in results["cached"])
    print(f"\nstore: {rows} rows, image 768 + text 768 + wide 1,152 float16; "
          f"median of {a.rounds} round(s)")  # fmt: skip
    print(
        "\n| readers cache | time in store readers | vs cached | split reads | fit+test+predict |"
    )
    print("|---|---:|---:|---:|---:|")
    for mode, runs in results.items():
        sec = statistics.median(t[0] for t in runs)
        wall = statistics.median(t[2] for t in runs)
        print(f"| {mode} | {sec:.2f} s | x{sec / cached:.1f} | {runs[0][1]} | {wall:.1f} s |")


if __name__ == "__main__":
    main()
