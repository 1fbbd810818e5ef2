"""Stores of several named feature sets with known information, for the fusion-over-sets
benchmarks (issue 20): which sets a pipeline should trust, and how much fusing them can win.

$ python bench/feature_sets_stores.py --out bench/stores                  # all three, ~1 min
$ python bench/feature_sets_stores.py --out bench/stores --stores halves

Built with ``feature_store.synthetic_sets.make_feature_sets_store``: every set is added to
the store through ``feature_store.add_feature_set`` (the arrays path), each row's sets are
independent given its class, and the test split keeps its true labels. The rows' own
``image`` and ``text`` (what today's ``train.py`` reads) are copies of the sets named below.

- ``halves``: 100 classes x 40 train / 10 val / 20 test rows. ``backbone_a`` (256-d)
  separates classes 0-49 and is noise on the rest, ``backbone_b`` (192-d) classes 50-99;
  ``caption_text`` (64-d text) names the class on half the rows; ``zeroshot`` (a scores
  set, one per class, float16) peaks at the true class on 60% of the rows and at a random
  class elsewhere. image = backbone_a, text = caption_text.
- ``one-signal``: the same shape; ``backbone`` (256-d) knows every class, ``noise_image``
  (256-d), ``noise_text`` (64-d) and ``noise_scores`` (one per class) are pure noise.
  image = backbone, text = noise_text.
- ``timing``: the competition's size: 500 classes x 40 train + 5 val (22,500 labelled rows)
  + 11 test; three 1,536-d float16 sets (``backbone_a``/``_b``/``_c``, each knowing every
  class weakly). image = backbone_a, text = backbone_b.

Each store gets ``bayes.json``: the test accuracy of the Bayes-optimal rule (the true
likelihoods, ``set_bayes_accuracy``) on each set alone and on all of them: the margin the
data allows a fusion pipeline over its best single set.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from feature_store import open_store
from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store, set_bayes_accuracy

COMPETITION = {"train": 40, "val": 5, "test": 11}  # 500 x 45 = 22,500 labelled rows
SMALL = {"train": 40, "val": 10, "test": 20}
STORES = {
    "halves": dict(
        num_classes=100,
        per_class=SMALL,
        sets=[
            SyntheticSet("backbone_a", dim=256, classes=(0.0, 0.5), separation=4.0),
            SyntheticSet("backbone_b", dim=192, classes=(0.5, 1.0), separation=4.0),
            SyntheticSet("caption_text", kind="text", dim=64, rows=0.5, separation=3.5),
            SyntheticSet(
                "zeroshot", kind="scores", dim=None, rows=0.6, separation=4.0, dtype="float16"
            ),  # fmt: skip
        ],
        image_from="backbone_a",
        text_from="caption_text",
    ),
    "one-signal": dict(
        num_classes=100,
        per_class=SMALL,
        sets=[
            SyntheticSet("backbone", dim=256, separation=4.0),
            SyntheticSet("noise_image", dim=256, separation=0.0),
            SyntheticSet("noise_text", kind="text", dim=64, separation=0.0),
            SyntheticSet("noise_scores", kind="scores", dim=None, separation=0.0),
        ],
        image_from="backbone",
        text_from="noise_text",
    ),
    "timing": dict(
        num_classes=500,
        per_class=COMPETITION,
        sets=[
            SyntheticSet(f"backbone_{c}", dim=1536, separation=3.5, dtype="float16") for c in "abc"
        ],
        image_from="backbone_a",
        text_from="backbone_b",
    ),
}


def build(name: str, out: Path, *, seed: int = 0, **size) -> dict:
    """Build store ``name`` under ``out`` (kept when already complete); its bayes.json.
    ``size`` (``num_classes``, ``per_class``) overrides the store's own, for smoke tests."""
    root = out / name
    start = time.perf_counter()
    if not (root / "bayes.json").is_file():
        if root.exists():
            raise FileExistsError(f"--out: {root} exists but is not a finished store of this "
                                  "script; remove it, or give another --out")  # fmt: skip
        make_feature_sets_store(root, seed=seed, **{**STORES[name], **size})
        names = [s.name for s in STORES[name]["sets"]]
        bayes = {"split": "test", "sets": {n: set_bayes_accuracy(root, "test", [n]) for n in names},
                 "all": set_bayes_accuracy(root, "test", names)}  # fmt: skip
        (root / "bayes.json").write_text(json.dumps(bayes, indent=2))
    info = open_store(root)
    return {
        "store": str(root),
        "rows": {s: info.rows(s) for s in info.splits},
        "sets": {e["name"]: f"{e['kind']} {e['dim']} {e['dtype']}" for e in info.features},
        "bayes": json.loads((root / "bayes.json").read_text()),
        "seconds": round(time.perf_counter() - start, 1),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="bench/stores", help="folder of the stores")
    p.add_argument("--stores", default=",".join(STORES), help=f"some of {list(STORES)}")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    names = a.stores.split(",")
    unknown = [n for n in names if n not in STORES]
    if unknown:
        p.error(f"--stores {unknown}: not among {list(STORES)}")
    for name in names:
        try:
            print(json.dumps({name: build(name, Path(a.out), seed=a.seed)}, indent=1))
        except FileExistsError as err:
            p.error(str(err))


if __name__ == "__main__":
    main()
