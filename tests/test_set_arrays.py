"""Feature sets added from arrays (feature_store.add_feature_set) and the synthetic stores of
named sets with known information (feature_store.synthetic.make_feature_sets_store)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from feature_store import (
    SetNameError,
    SetShapeError,
    SetValuesError,
    add_feature_set,
    load_arrays,
    load_dataset_dict,
    load_features,
    open_store,
)
from feature_store.set_writer import FeatureSetError, recorded_sets, set_record_path
from feature_store.sets import entry_fingerprint
from feature_store.synthetic import make_synthetic_store
from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store, set_bayes_accuracy
from tests.fixtures_sets import tree_digest

CLASSES = 20
HALVES = [
    SyntheticSet("backbone_a", dim=32, classes=(0.0, 0.5), separation=4.0),
    SyntheticSet("backbone_b", dim=24, classes=(0.5, 1.0), separation=4.0),
    SyntheticSet("caption_text", kind="text", dim=16, rows=0.5, separation=4.0),
    SyntheticSet("zeroshot", kind="scores", dim=None, rows=0.6, separation=4.0, dtype="float16"),
]


@pytest.fixture(scope="module")
def halves(tmp_path_factory):
    """20 classes x 30 train rows; backbone_a knows classes 0-9, backbone_b 10-19."""
    root = tmp_path_factory.mktemp("halves") / "store"
    make_feature_sets_store(root, sets=HALVES, num_classes=CLASSES,
                            per_class={"train": 30, "val": 10, "test": 20}, seed=3)  # fmt: skip
    return root


def _rows(root, split: str, dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((open_store(root).rows(split), dim))


def _arrays(root, dim: int) -> dict[str, np.ndarray]:
    return {s: _rows(root, s, dim, seed=i) for i, s in enumerate(open_store(root).splits)}


def test_load_features_returns_every_set_with_its_dim_and_the_ids_in_order(halves):
    info = open_store(halves)
    dims = {e["name"]: e["dim"] for e in info.features}
    assert dims == {"image": 32, "text": 16, "backbone_a": 32, "backbone_b": 24,
                    "caption_text": 16, "zeroshot": CLASSES}  # fmt: skip
    kinds = {e["name"]: e["kind"] for e in info.features}
    assert kinds["zeroshot"] == "scores" and kinds["caption_text"] == "text"
    dd = load_dataset_dict(halves)
    for split in ("train", "val", "test"):
        arrays, rows = load_features(halves, split), load_arrays(halves, split)
        assert arrays.ids == rows.ids == [f"{split}_{i:05d}" for i in range(len(rows))]
        assert {n: a.shape for n, a in arrays.features.items()} == {
            n: (info.rows(split), d) for n, d in dims.items()
        }
        # The rows' own sets are the named sets today's training reads as image and text.
        np.testing.assert_array_equal(arrays["image"], arrays["backbone_a"])
        np.testing.assert_array_equal(arrays["text"], arrays["caption_text"])
        assert dd[split]["id"] == rows.ids
        np.testing.assert_array_equal(np.asarray(dd[split]["zeroshot"], np.float32),
                                      arrays["zeroshot"])  # fmt: skip
    assert (load_features(halves, "test").labels >= 0).all()  # benchmarks score the test split


def test_the_halves_store_is_complementary(halves):
    """A logistic regression on backbone_a alone knows the first half of the classes and is
    near chance on the second, backbone_b the reverse; together they beat both."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    train, test = load_features(halves, "train"), load_features(halves, "test")
    first = test.labels < CLASSES // 2

    def accuracy(names):
        x, xt = (np.hstack([a[n] for n in names]) for a in (train, test))
        scaler = StandardScaler().fit(x)
        model = LogisticRegression(max_iter=3000).fit(scaler.transform(x), train.labels)
        right = model.predict(scaler.transform(xt)) == test.labels
        return right.mean(), right[first].mean(), right[~first].mean()

    chance = 1 / (CLASSES // 2)  # of the half a set does not know, its rows look alike
    a, b = accuracy(["backbone_a"]), accuracy(["backbone_b"])
    assert a[1] > 0.7 and a[2] < 2 * chance
    assert b[2] > 0.7 and b[1] < 2 * chance
    both = accuracy(["backbone_a", "backbone_b"])
    assert both[0] > max(a[0], b[0]) + 0.3
    everything = accuracy(["backbone_a", "backbone_b", "caption_text", "zeroshot"])
    assert everything[0] >= both[0]
    # The zero-shot prior alone: argmax right on about 60% of rows plus chance on the rest.
    zs = test["zeroshot"].argmax(axis=1) == test.labels
    assert 0.45 < zs.mean() < 0.8
    # The Bayes-optimal rule over a set is the ceiling the logistic regression stays under.
    ceiling = {tuple(n): set_bayes_accuracy(halves, "test", n)
               for n in (["backbone_a"], ["backbone_a", "backbone_b"],
                         ["backbone_a", "backbone_b", "caption_text", "zeroshot"])}  # fmt: skip
    assert (
        ceiling[("backbone_a",)] >= a[0] - 0.05
        and ceiling[("backbone_a", "backbone_b")] >= both[0] - 0.05
    )
    assert (
        max(ceiling.values()) == ceiling[("backbone_a", "backbone_b", "caption_text", "zeroshot")]
    )


def test_bayes_accuracy_of_one_set_is_its_nearest_class_mean(halves):
    """backbone_a carries every row of its classes: the Bayes rule is the nearest of its
    class means, the others' shared neutral (zero) vector included."""
    means = np.load(halves / "set_means.npz")["backbone_a"]
    test = load_features(halves, "test", ["backbone_a"])
    dist = ((test["backbone_a"][:, None, :] - means[None]) ** 2).sum(-1)
    expected = (dist.argmin(1) == test.labels).mean()
    assert set_bayes_accuracy(halves, "test", ["backbone_a"]) == pytest.approx(expected)
    assert (means[CLASSES // 2 :] == 0).all()


def test_adding_a_set_leaves_every_existing_file_byte_identical(halves, tmp_path):
    store = shutil.copytree(halves, tmp_path / "store")
    before = tree_digest(store)
    old = json.loads((store / "manifest.json").read_text())
    arrays = _arrays(store, 7)
    entry = add_feature_set(store, {"name": "extra", "kind": "image", "model": "m/x",
                                    "pooling": "cls"}, arrays)  # fmt: skip
    after = tree_digest(store)
    assert {k for k in before if before[k] != after.get(k)} == {"manifest.json"}
    assert all(f.startswith(("features/extra/", "_prep/features/extra/"))
               for f in set(after) - set(before))  # fmt: skip
    new = json.loads((store / "manifest.json").read_text())
    assert new["features"][:-1] == old["features"] and new["features"][-1] == entry
    drop = lambda m: {k: v for k, v in m.items() if k != "features"}  # noqa: E731
    assert drop(new) == drop(old)
    # The same entry rules as data_prep's add: fingerprint of the meaning, record kept.
    assert entry["fingerprint"] == entry_fingerprint(entry)
    assert (entry["column"], entry["path"], entry["dim"], entry["dtype"]) == (
        "extra", "features/extra", 7, "float32")  # fmt: skip
    assert entry["rows"] == {s: open_store(store).rows(s) for s in arrays}
    assert json.loads(set_record_path(store, "extra").read_text())["entry"] == entry
    # data_prep's rerun of the rows lists it again
    assert "extra" in [e["name"] for e in recorded_sets(store)[0]]
    for split, a in arrays.items():
        np.testing.assert_allclose(load_features(store, split, ["extra"])["extra"], a, rtol=1e-6)


def test_the_fingerprint_is_the_sets_meaning(tmp_path):
    """Same arrays and fields: same fingerprint; another model: another one."""
    prints = []
    for k, model in enumerate(("m/x", "m/x", "m/y")):
        root = tmp_path / str(k)
        make_synthetic_store(root)
        arrays = _arrays(root, 5)
        prints.append(add_feature_set(root, {"name": "s", "kind": "text", "model": model},
                                      arrays)["fingerprint"])  # fmt: skip
    assert prints[0] == prints[1] != prints[2]


def _split_in_two(root, split: str, first: int) -> None:
    """Rewrite ``split``'s rows as two shards (first rows, the rest), as data_prep writes."""
    from feature_store import load_split, store_features, write_manifest
    from feature_store.writer import index_split, write_shard_file

    info = open_store(root)
    table = load_split(root, split).with_format("arrow")[:]
    columns = {c: table.column(c).to_pylist() for c in ("id", "label", "path", "caption")}
    rows = load_arrays(root, split)
    columns |= {"image_emb": rows.image_emb, "text_emb": rows.text_emb}
    feats = store_features(info.image_dim, info.text_dim, "float32", info.class_names)
    n = len(rows)
    records = [
        write_shard_file(root / split / f"shard-{k:05d}.arrow",
                         {c: v[lo:hi] for c, v in columns.items()}, feats)
        for k, (lo, hi) in enumerate([(0, first), (first, n)])
    ]  # fmt: skip
    index_split(root, split, [r["file"] for r in records], feats, "two-shards")
    write_manifest(root, {**info.manifest, "shards": {**info.manifest["shards"], split: records}})


def test_a_multi_shard_store_gets_one_set_shard_per_row_shard(tmp_path):
    """A data_prep store has several shards per split; the set's follow them row for row."""
    import datasets

    root = tmp_path / "store"
    make_synthetic_store(root, per_class={"train": 4, "val": 2, "test": 1})
    _split_in_two(root, "train", 8)
    arrays = _arrays(root, 3)
    entry = add_feature_set(root, {"name": "s", "kind": "image", "model": "m"}, arrays)
    assert [(r["file"], r["rows"]) for r in entry["shards"]["train"]] == [
        ("shard-00000.arrow", 8), ("shard-00001.arrow", 12)]  # fmt: skip
    ids = load_arrays(root, "train").ids
    for k, (lo, hi) in enumerate([(0, 8), (8, 20)]):
        own = datasets.Dataset.from_file(str(root / "features/s/train" / f"shard-{k:05d}.arrow"))
        assert own["id"] == ids[lo:hi]
        np.testing.assert_allclose(np.asarray(own["s"]), arrays["train"][lo:hi], rtol=1e-6)
    np.testing.assert_allclose(load_features(root, "train", ["s"])["s"], arrays["train"],
                               rtol=1e-6)  # fmt: skip


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda e, a: {**e, "name": "backbone_a"}, SetNameError, "already has a set"),
        (lambda e, a: {**e, "name": "image"}, SetNameError, "already has a set"),
        (lambda e, a: {**e, "name": "caption"}, SetNameError, "rows' columns"),
        (lambda e, a: {**e, "name": "a/b"}, SetNameError, "letters, digits"),
        (lambda e, a: {k: v for k, v in e.items() if k != "model"}, FeatureSetError, "model"),
        (lambda e, a: {**e, "kind": "logits"}, FeatureSetError, "kind 'logits'"),
        (lambda e, a: {**e, "dtype": "int8"}, FeatureSetError, "dtype 'int8'"),
        (lambda e, a: {**e, "dim": 9}, SetShapeError, "has dim 7, expected 9"),
        (lambda e, a: {**e, "kind": "scores"}, SetShapeError, "dim must be 20"),
    ],
)
def test_a_bad_entry_is_refused_before_anything_is_written(halves, tmp_path, change, error,
                                                             message):  # fmt: skip
    store = shutil.copytree(halves, tmp_path / "store")
    before = tree_digest(store)
    entry = {"name": "extra", "kind": "image", "model": "m/x"}
    arrays = _arrays(store, 7)
    with pytest.raises(error, match=message):
        add_feature_set(store, change(entry, arrays), arrays)
    assert tree_digest(store) == before


def _nan(a):
    a["val"][3, 2] = np.nan
    return a


def _overflow(a):
    a["test"][0, 0] = 1e6  # past float16's range: infinity once stored
    return a


@pytest.mark.parametrize(
    "change, dtype, error, message",
    [
        (lambda a: {**a, "val": a["val"][:-1]}, "float32", SetShapeError, r"needs an array of \[200"),
        (lambda a: {k: v for k, v in a.items() if k != "test"}, "float32", SetShapeError,
         "one array per split"),
        (lambda a: {**a, "extra": a["val"]}, "float32", SetShapeError, "one array per split"),
        (lambda a: {**a, "val": a["val"][:, :5]}, "float32", SetShapeError, "has dim 5"),
        (lambda a: {**a, "val": a["val"][:, 0]}, "float32", SetShapeError, "needs an array"),
        (_nan, "float32", SetValuesError, "1 rows with NaN or infinity .row 3 first"),
        (_overflow, "float16", SetValuesError, "past float16's range"),
    ],
)  # fmt: skip
def test_bad_arrays_are_refused_before_anything_is_written(halves, tmp_path, change, dtype,
                                                             error, message):  # fmt: skip
    store = shutil.copytree(halves, tmp_path / "store")
    before = tree_digest(store)
    with pytest.raises(error, match=message):
        add_feature_set(store, {"name": "extra", "kind": "image", "model": "m", "dtype": dtype},
                        change(_arrays(store, 7)))  # fmt: skip
    assert tree_digest(store) == before


def test_replace_writes_the_set_again(halves, tmp_path):
    store = shutil.copytree(halves, tmp_path / "store")
    arrays = _arrays(store, 4)
    add_feature_set(store, {"name": "x", "kind": "image", "model": "m1"}, _arrays(store, 6))
    entry = add_feature_set(store, {"name": "x", "kind": "image", "model": "m2"}, arrays,
                            replace=True)  # fmt: skip
    assert sorted(p.name for p in (store / "features" / "x" / "val").iterdir()) == [
        "dataset_info.json", "shard-00000.arrow", "state.json"]  # fmt: skip
    info = open_store(store)
    assert info.feature_names == ["image", "text", *[s.name for s in HALVES], "x"]
    assert info.features[-1] == entry and entry["model"] == "m2" and entry["dim"] == 4
    np.testing.assert_allclose(load_features(store, "val", ["x"])["x"], arrays["val"], rtol=1e-6)
    with pytest.raises(SetNameError, match="never|choose another name$"):
        add_feature_set(store, {"name": "image", "kind": "image", "model": "m"}, arrays,
                        replace=True)  # fmt: skip


def test_synthetic_set_options_are_checked(tmp_path):
    with pytest.raises(ValueError, match="each name once"):
        make_feature_sets_store(tmp_path / "a", sets=[SyntheticSet("a"), SyntheticSet("a")])
    with pytest.raises(ValueError, match="image_from/text_from name no set"):
        make_feature_sets_store(tmp_path / "b", sets=[SyntheticSet("a")], image_from="zz")
    with pytest.raises(ValueError, match="kind must be"):
        make_feature_sets_store(tmp_path / "c", sets=[SyntheticSet("a", kind="logits")])


@pytest.mark.slow
def test_todays_probe_and_fit_run_on_a_multi_set_store(halves, tmp_path, monkeypatch):
    """The rows' image and text (copies of backbone_a and caption_text) are what today's
    `train.py probe` and `train.py fit` read."""
    from fusion.commands.probe import run_probe
    from tests.fixtures_training import fit_cli

    monkeypatch.setenv("WANDB_MODE", "disabled")
    run_probe(["--data.store", str(halves), "--runs_root", str(tmp_path / "probe")])
    fit_cli(halves, tmp_path / "run", epochs=1)
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()


def test_the_bench_command_builds_the_stores_its_docs_describe(tmp_path, capsys):
    """bench/feature_sets_stores.py: halves' sets each know half the classes (all of them
    together nearly everything), one-signal's noise sets know nothing."""
    import sys

    from tests.fixtures_training import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from feature_sets_stores import main

    main(["--out", str(tmp_path), "--stores", "halves,one-signal"])
    halves = json.loads((tmp_path / "halves" / "bayes.json").read_text())
    assert all(0.4 < v < 0.6 for k, v in halves["sets"].items() if k.startswith("backbone"))
    assert halves["all"] > max(halves["sets"].values()) + 0.3
    one = json.loads((tmp_path / "one-signal" / "bayes.json").read_text())
    assert one["all"] == one["sets"]["backbone"] > 0.8
    assert all(one["sets"][n] < 0.05 for n in ("noise_image", "noise_text", "noise_scores"))
    info = open_store(tmp_path / "halves")
    assert info.feature_names == ["image", "text", "backbone_a", "backbone_b", "caption_text",
                                  "zeroshot"]  # fmt: skip
    assert info.rows("train") == 100 * 40
    with pytest.raises(SystemExit):  # an unknown store name: argparse's one line, exit 2
        main(["--out", str(tmp_path), "--stores", "halves,nope"])
    assert "not among" in capsys.readouterr().err
