"""What reading the store costs a fit, its test and its prediction, with the per-process
store cache (feature_store/cache.py) and without it, side by side in one process.

$ python bench/bench_store_reads.py                                # Kaggle-sized, ~5 min on 2 cores
$ python bench/bench_store_reads.py --classes 20 --rounds 1        # a quick look

The store: ``--classes`` x (36 train + 9 val + 11 test) rows (500 classes: the
competition's 22,500 train+val and 5,500 test rows), ``image_emb`` and ``text_emb`` of
768 float16, plus one added set of 1,152 float16 (SigLIP so400m's width), its files aged
past the cache's racy-timestamp window as a store in use is. Each round runs, alternating:

- ``cached``: the readers as they are: the manifest parsed, each shard hashed, each split
  and each added set read once per process (the embedding matrices converted to float32
  from the mapped tables at each call);
- ``checks only``: the readers before: manifest and shard checks cached, every split and
  set read again at every call;
- ``nothing``: no cache at all (every call parses, hashes, reads and decodes).

In each: ``train.py fit`` (the concat head over image, text and the added set, one epoch
of ``--trainer.limit_train_batches 2``, the fit's own val predictions and submission), then
``train.py test --data.test_split val`` and ``predict.py`` on its checkpoint. The figures:
the time spent inside the store readers (``open_store``, ``load_split``, ``load_arrays``,
``load_features`` as called from outside them, i.e. what the stages wait for), wall and
CPU (the calling thread's, which other processes' load barely moves), the median over
``--rounds`` (modes in a rotating order), the ratio the median of the per-round ratios;
and the count of split reads (``datasets.load_from_disk``).
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack, redirect_stdout
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
    """Wall and CPU seconds (this thread's: other processes' load barely moves it) inside
    the store readers, outermost calls only, and split reads; patched into every module
    that holds the readers."""

    def __init__(self, stack: ExitStack) -> None:
        import datasets

        import feature_store.layout as layout
        import feature_store.sets as sets

        self.wall, self.cpu, self.reads, self._depth = 0.0, 0.0, 0, 0
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
            wall, cpu = time.perf_counter(), time.thread_time()
            try:
                return real(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    self.wall += time.perf_counter() - wall
                    self.cpu += time.thread_time() - cpu

        return timed


def bypassing(stack: ExitStack, kinds: tuple[str, ...]) -> None:
    """Serve the slot kinds ``kinds`` never from the cache (read at every call)."""
    import feature_store.cache as cache

    real = cache.cached

    def cached(slot, paths, read, **kwargs):
        return read() if slot[1] in kinds else real(slot, paths, read, **kwargs)

    for name in ("feature_store.manifest", "feature_store.layout", "feature_store.sets",
                 "feature_store.integrity"):
        stack.enter_context(mock.patch.object(sys.modules[name], "cached", cached))


def run_once(store: Path, work: Path, kinds: tuple[str, ...]) -> dict[str, float]:
    """Seconds in the readers (wall, CPU), split reads and wall seconds of fit + test +
    predict."""
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
        total = time.perf_counter() - start
    return {"wall": clock.wall, "cpu": clock.cpu, "reads": clock.reads, "total": total}


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
        results: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for r in range(a.rounds):
            order = list(MODES)[r % len(MODES) :] + list(MODES)[: r % len(MODES)]
            for mode in order:  # each mode first in some round: no order favours one
                with redirect_stdout(io.StringIO()):  # the stages' own reports
                    results[mode].append(run_once(store, Path(tmp) / f"{r}-{mode}", MODES[mode]))

    def median(mode: str, key: str) -> float:
        return statistics.median(run[key] for run in results[mode])

    def ratio(mode: str, key: str) -> float:  # the median of the per-round ratios
        return statistics.median(
            run[key] / ours[key] for run, ours in zip(results[mode], results["cached"], strict=True)
        )

    print(f"\nstore: {rows} rows, image 768 + text 768 + wide 1,152 float16; median of "
          f"{a.rounds} round(s); load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print("\n| readers' cache | split reads | in the readers: wall | CPU | CPU vs cached "
          "| fit + test + predict, wall |\n|---|---:|---:|---:|---:|---:|")  # fmt: skip
    for mode in MODES:
        print(f"| {mode} | {results[mode][0]['reads']} | {median(mode, 'wall'):.2f} s "
              f"| {median(mode, 'cpu'):.2f} s | x{ratio(mode, 'cpu'):.2f} "
              f"| {median(mode, 'total'):.1f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
