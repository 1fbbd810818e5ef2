"""The store as a Hugging Face DatasetDict: load_from_disk, ClassLabel, round trips, upgrade."""

from __future__ import annotations

import json
import shutil

import datasets
import numpy as np
import pytest

import data_prep
from feature_store import (
    FORMAT_VERSION,
    StoreError,
    from_dataset_dict,
    load_arrays,
    load_dataset_dict,
    make_manifest,
    open_store,
    read_failures,
    store_features,
    upgrade_store,
    write_manifest,
    write_store,
)
from feature_store.compat import dataset_files
from feature_store.integrity import model_fingerprint
from feature_store.synthetic import make_synthetic_store
from feature_store.writer import index_split, write_shard_file
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv, tiny_models  # noqa: F401


def assert_rows_equal(dd, store) -> None:
    """Every split of ``dd`` holds exactly the rows load_arrays reads from ``store``."""
    info = open_store(store)
    assert list(dd) == info.splits
    for split in info.splits:
        a, ds = load_arrays(store, split), dd[split]
        assert ds["id"] == a.ids and ds["caption"] == a.captions and ds["path"] == a.paths
        np.testing.assert_array_equal(np.asarray(ds["label"]), a.labels)
        for col, arr in (("image_emb", a.image_emb), ("text_emb", a.text_emb)):
            np.testing.assert_array_equal(np.asarray(ds[col], dtype=np.float32), arr)


def test_a_synthetic_store_is_a_datasetdict_with_classlabel(tmp_path):
    make_synthetic_store(tmp_path, num_classes=3, emb_dtype="float16")
    dd = datasets.load_from_disk(str(tmp_path))
    assert isinstance(dd, datasets.DatasetDict)
    info = open_store(tmp_path)
    for split in info.splits:
        label = dd[split].features["label"]
        assert isinstance(label, datasets.ClassLabel) and label.names == info.class_names
        assert dd[split].features["image_emb"].length == info.image_dim
    assert set(dd["test"]["label"]) == {-1}  # unknown labels stay -1 under ClassLabel
    assert dd["train"].features["label"].int2str(int(dd["train"][0]["label"])) in info.class_names
    assert_rows_equal(dd, tmp_path)
    assert_rows_equal(load_dataset_dict(tmp_path), tmp_path)


@pytest.fixture(scope="module")
def prep_store(tmp_path_factory, tiny_models):  # noqa: F811
    """A data_prep store with several shards per split and a failed test image."""
    tmp = tmp_path_factory.mktemp("prep")
    root = draw_kaggle_tree(tmp / "data", bad_images=False)
    (root / "test_images" / "mistery_category" / "broken.png").write_bytes(b"not an image")
    return data_prep.main(prep_argv(root, tiny_models, tmp / "store"))


def test_a_data_prep_store_is_a_datasetdict_whose_checksums_verify(prep_store):
    info = open_store(prep_store)
    assert info.manifest["format_version"] == FORMAT_VERSION
    assert len(info.manifest["shards"]["train"]) > 1  # several shards, concatenated in order
    dd = load_dataset_dict(prep_store)  # verifies every shard's size and sha256 first
    assert dd["train"].features["label"].names == ["cat", "dog", "fish"]
    assert_rows_equal(datasets.load_from_disk(str(prep_store)), prep_store)
    assert read_failures(prep_store, "test")  # the broken image has no row, only its failure


def test_save_to_disk_copy_rebuilds_as_a_store(prep_store, tmp_path):
    """DatasetDict saved elsewhere -> from_dataset_dict with the manifest -> the same store."""
    info = open_store(prep_store)
    datasets.load_from_disk(str(prep_store)).save_to_disk(str(tmp_path / "copy"))
    with pytest.raises(StoreError, match="manifest.json not found"):
        open_store(tmp_path / "copy")  # a bare DatasetDict lacks what only the manifest holds
    copy = datasets.load_from_disk(str(tmp_path / "copy"))
    rebuilt = from_dataset_dict(
        copy, tmp_path / "rebuilt", manifest=info.manifest, failures=read_failures(prep_store)
    )
    assert rebuilt.class_names == info.class_names
    assert rebuilt.manifest["emb_dtype"] == info.manifest["emb_dtype"] == "float16"
    # Checkpoints trained on the original accept the rebuilt store: same model fingerprint.
    assert model_fingerprint(open_store(rebuilt.root)) == model_fingerprint(info)
    for split in info.splits:
        counts = rebuilt.manifest["splits"][split]
        original = info.manifest["splits"][split]
        assert (counts["inputs"], counts["rows"], counts["failed"]) == (
            original["inputs"], original["rows"], original["failed"]
        )  # fmt: skip
    assert read_failures(rebuilt.root) == read_failures(prep_store)
    assert_rows_equal(datasets.load_from_disk(str(prep_store)), rebuilt.root)


def test_hub_layout_round_trip(tmp_path):
    """What push_to_hub uploads (parquet per split + a README listing them), loaded back
    with load_dataset, keeps the ClassLabel, dims, dtype and split names."""
    store = tmp_path / "store"
    make_synthetic_store(store, num_classes=4, emb_dtype="float16")
    repo = tmp_path / "repo"
    configs = []
    for split, ds in datasets.load_from_disk(str(store)).items():
        path = f"data/{split}-00000-of-00001.parquet"
        (repo / "data").mkdir(parents=True, exist_ok=True)
        ds.to_parquet(str(repo / path))
        configs.append(f"  - split: {split}\n    path: {path}")
    (repo / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n" + "\n".join(configs) + "\n---\n"
    )
    back = datasets.load_dataset(str(repo))
    assert list(back) == ["train", "val", "test"]
    assert back["train"].features == datasets.load_from_disk(str(store))["train"].features
    rebuilt = from_dataset_dict(back, tmp_path / "rebuilt")  # class names from the ClassLabel
    assert rebuilt.class_names == open_store(store).class_names
    assert_rows_equal(back, tmp_path / "rebuilt")


def _format1_store(root) -> None:
    """A store exactly as format 1 wrote it: int64 labels, no dataset_dict.json."""
    rng = np.random.default_rng(0)
    feats = store_features(4, 3, "float32")  # no class names: format 1's plain int64
    shards, splits = {}, {}
    for split, labels in (("train", [0, 1, 1, 0]), ("test", [-1, -1])):
        n = len(labels)
        cols = {"id": [f"{split}{i}" for i in range(n)], "label": labels, "path": [""] * n,
                "caption": ["a"] * n, "image_emb": rng.standard_normal((n, 4)),
                "text_emb": rng.standard_normal((n, 3))}  # fmt: skip
        shards[split] = [write_shard_file(root / split / "shard-00000.arrow", cols, feats)]
        index_split(root, split, ["shard-00000.arrow"], feats, "x")
        splits[split] = {"inputs": n, "rows": n, "failed": 0}
    (root / "dataset_dict.json").unlink()
    manifest = make_manifest(class_names=["a", "b"], dims={"image_emb": 4, "text_emb": 3},
                             emb_dtype="float32", splits=splits, shards=shards, models={})  # fmt: skip
    write_manifest(root, {**manifest, "format_version": 1})


def test_a_format1_store_reads_and_upgrades_in_place(tmp_path):
    _format1_store(tmp_path)
    before = load_arrays(tmp_path, "train")  # older stores still read
    shards = json.loads((tmp_path / "manifest.json").read_text())["shards"]
    with pytest.raises(StoreError, match="upgrade_store"):
        load_dataset_dict(tmp_path)
    assert upgrade_store(tmp_path).manifest["format_version"] == FORMAT_VERSION
    after = json.loads((tmp_path / "manifest.json").read_text())
    assert after["shards"] == shards  # rows untouched: the recorded checksums still hold
    dd = datasets.load_from_disk(str(tmp_path))
    assert dd["train"].features["label"].names == ["a", "b"]
    np.testing.assert_array_equal(load_arrays(tmp_path, "train").image_emb, before.image_emb)
    assert_rows_equal(load_dataset_dict(tmp_path), tmp_path)


def test_a_damaged_format1_store_is_not_upgraded(tmp_path):
    _format1_store(tmp_path)
    shard = tmp_path / "train" / "shard-00000.arrow"
    shard.write_bytes(shard.read_bytes()[:-8])
    with pytest.raises(StoreError, match="shard-00000.arrow has .* bytes"):
        upgrade_store(tmp_path)
    assert json.loads((tmp_path / "manifest.json").read_text())["format_version"] == 1


def test_labels_outside_the_classes_are_refused(tmp_path):
    cols = {"id": ["a", "b"], "label": [0, 2], "image_emb": np.zeros((2, 3)),
            "text_emb": np.zeros((2, 2))}  # fmt: skip
    with pytest.raises(ValueError, match="label 2 is not a class index"):
        write_store(tmp_path, splits={"train": cols}, class_names=["x", "y"])


def test_an_empty_split_still_loads(tmp_path):
    full = {"id": ["a"], "label": [0], "image_emb": np.ones((1, 3)), "text_emb": np.ones((1, 2))}
    empty = {"id": [], "label": [], "image_emb": np.zeros((0, 3)), "text_emb": np.zeros((0, 2))}
    write_store(tmp_path, splits={"train": full, "test": empty}, class_names=["x"])
    dd = datasets.load_from_disk(str(tmp_path))
    assert len(dd["test"]) == 0 and len(load_arrays(tmp_path, "test")) == 0
    shutil.rmtree(tmp_path / "test")
    assert open_store(tmp_path).splits == ["train"]


def test_rerunning_data_prep_upgrades_a_format1_store(tmp_path, tiny_models):  # noqa: F811
    root = draw_kaggle_tree(tmp_path / "data", bad_images=False, train=2, val=1, test=2)
    argv = prep_argv(root, tiny_models, tmp_path / "store")
    store = data_prep.main(argv)
    info = open_store(store)
    # Turn it into what format 1 left: no DatasetDict index, int64 labels, version 1.
    (store / "dataset_dict.json").unlink()
    old = store_features(info.image_dim, info.text_dim, info.manifest["emb_dtype"])
    for split in info.splits:
        files, fingerprint = dataset_files(store / split)
        index_split(store, split, files, old, fingerprint)
    (store / "dataset_dict.json").unlink()
    write_manifest(store, {**info.manifest, "format_version": 1})
    assert datasets.load_from_disk(str(store / "train")).features["label"].dtype == "int64"
    data_prep.main(argv)  # complete and intact: only the metadata is rewritten
    assert open_store(store).manifest == info.manifest
    assert datasets.load_from_disk(str(store))["val"].features["label"].names == info.class_names
