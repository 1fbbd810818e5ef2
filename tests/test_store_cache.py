"""The store read once per process (feature_store/cache.py): a fit, its test and predict.py
parse the manifest once, hash each shard once and read each split and each added set
once; readers still get arrays of their own; a store changed on disk between two reads is
read and verified again."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

import feature_store.integrity as integrity
import feature_store.manifest as manifest
import predict
from feature_store import (
    StoreError,
    add_feature_set,
    cache,
    load_arrays,
    load_features,
    load_split,
    open_store,
)
from feature_store.synthetic import make_synthetic_store
from fusion.cli import FusionCLI
from tests.fixtures_sets import age_files
from tests.fixtures_training import DEMO_CONFIG, fit_cli, small_store

SETS = "[image, text, extra]"


def _with_extra(root: Path, name: str = "extra", seed: int = 0) -> Path:
    """A small store with the added set ``name`` (6 random dims): a new store aged past the
    racy window; in an existing one only what adding the set wrote is aged (the rows' files
    keep their stamps, as on a real disk)."""
    new = not (root / "manifest.json").is_file()
    if new:
        small_store(root)
    info = open_store(root)
    rng = np.random.default_rng(seed)
    arrays = {s: rng.normal(size=(info.rows(s), 6)).astype(np.float32) for s in info.splits}
    add_feature_set(root, {"name": name, "kind": "image", "model": f"random {seed}"}, arrays,
                    replace=name in info.feature_names)  # fmt: skip
    for path in [root] if new else [root / "manifest.json", root / "failures.csv",
                                    root / "features" / name]:  # fmt: skip
        age_files(path)
    return root


class Reads:
    """Counts, per file or split, what the cache exists to do once: manifest parses, shard
    hashes and split reads (load_from_disk)."""

    def __init__(self, monkeypatch) -> None:
        self.parsed, self.hashed, self.read = Counter(), Counter(), Counter()
        spies = [(manifest, "_read_store", lambda root, *a: self.parsed.update([Path(root)])),
                 (integrity, "file_sha256", lambda path, *a: self.hashed.update([Path(path)])),
                 (datasets, "load_from_disk", lambda path, *a, **k: self.read.update([Path(path)]))]  # fmt: skip
        for module, name, count in spies:
            real = getattr(module, name)
            monkeypatch.setattr(
                module, name, lambda *a, _r=real, _c=count, **k: _c(*a, **k) or _r(*a, **k)
            )


def _everything(store: Path) -> dict:
    """Every split's every set and column, as the cache serves them now."""
    return {s: load_features(store, s) for s in open_store(store).splits}


def _same(a, b) -> None:
    assert a.keys() == b.keys()
    for split in a:
        x, y = a[split], b[split]
        assert (x.ids, x.captions, x.paths) == (y.ids, y.captions, y.paths)
        np.testing.assert_array_equal(x.labels, y.labels)
        assert x.features.keys() == y.features.keys()
        for name in x.features:
            np.testing.assert_array_equal(x[name], y[name])


def test_fit_test_and_predict_read_each_split_once(tmp_path, monkeypatch):
    store = _with_extra(tmp_path / "store")
    cache.clear()
    reads = Reads(monkeypatch)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = tmp_path / "run"
    fit_cli(store, run, "--model.head", "concat", "--data.features", SETS)  # + its submission
    ckpt = str(run / "checkpoints" / "best.ckpt")
    FusionCLI(args=["test", "--config", DEMO_CONFIG, "--model.head", "concat", "--ckpt_path", ckpt,
                    "--data.store", str(store), "--data.features", SETS, "--data.test_split",
                    "val", "--trainer.enable_progress_bar", "false"])  # fmt: skip
    predict.main(["--checkpoint", ckpt, "--store", str(store), "--out", str(tmp_path / "s.csv")])
    root = store.resolve()
    split_dirs = [root / s for s in ("train", "val", "test")]
    split_dirs += [root / "features" / "extra" / s for s in ("train", "val", "test")]
    shards = sorted(p for d in split_dirs for p in d.glob("*.arrow"))
    assert sum(reads.parsed.values()) == 1
    assert sorted(reads.hashed) == shards and set(reads.hashed.values()) == {1}
    assert sorted(reads.read) == sorted(split_dirs) and set(reads.read.values()) == {1}
    # Nothing the fit, the test or the prediction did changed what the cache holds.
    warm = _everything(store)
    cache.clear()
    _same(warm, _everything(store))


def test_readers_get_arrays_of_their_own(tmp_path):
    store = _with_extra(tmp_path / "store")
    cache.clear()
    before = _everything(store)
    a = load_arrays(store, "val")
    f = load_features(store, "val", ["image", "extra"])
    for m in (a.image_emb, a.text_emb, a.labels, f["image"], f["extra"], f.labels):
        assert m.flags.writeable and m.flags.c_contiguous
        m[...] = -7
    a.ids.append("ghost")
    f.captions.clear()
    _same(before, _everything(store))
    load_split(store, "val").set_format("numpy")  # the Dataset object is the caller's too
    assert load_split(store, "val").format["type"] is None
    # Reading another store drops the first one's entries: one store's arrays in memory.
    other = make_synthetic_store(tmp_path / "other")
    age_files(other.root)
    load_arrays(other.root, "train")
    assert {slot[0] for slot in cache.held()} == {other.root.resolve()}


def test_a_store_changed_on_disk_is_read_and_verified_again(tmp_path, monkeypatch):
    store = _with_extra(tmp_path / "store")
    cache.clear()
    first = load_features(store, "val")
    reads = Reads(monkeypatch)
    # A set added in the same process: the manifest is read again, the rows' shards are
    # not hashed again (unchanged), the new set is read.
    _with_extra(store, "more", seed=1)
    more = load_features(store, "val", ["image", "more"])
    np.testing.assert_array_equal(more["image"], first["image"])
    assert sum(reads.parsed.values()) >= 1
    assert not [p for p in reads.hashed if p.parent.name == "val" and "features" not in p.parts]
    # A set replaced by other values (same name, same size): the new values, not the cached.
    cached_extra = load_features(store, "val", ["extra"])["extra"]
    _with_extra(store, "extra", seed=2)
    replaced = load_features(store, "val", ["extra"])["extra"]
    assert not np.array_equal(replaced, cached_extra)
    rng = np.random.default_rng(2)
    info = open_store(store)
    expected = {s: rng.normal(size=(info.rows(s), 6)).astype(np.float32) for s in info.splits}
    np.testing.assert_array_equal(replaced, expected["val"])
    # A shard damaged after it was read and cached: the existing clear error, for the
    # rows' shards and for an added set's.
    for shard, names in [(store / "val" / "shard-00000.arrow", ["image"]),
                         (store / "features" / "more" / "val" / "shard-00000.arrow", ["more"])]:  # fmt: skip
        load_features(store, "val", names)
        data = bytearray(shard.read_bytes())
        data[-100] ^= 0xFF
        shard.write_bytes(bytes(data))
        age_files(store, 30)  # an old-looking timestamp: the stamp still differs (ctime)
        with pytest.raises(StoreError, match=f"{shard.name} does not match the checksum"):
            load_features(store, "val", names)
        data[-100] ^= 0xFF
        shard.write_bytes(bytes(data))
        age_files(store)
