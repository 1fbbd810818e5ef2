"""End to end through data_prep.main (in-process): the store, failures, refusals, captions."""

from __future__ import annotations

import csv
import json
import time

import datasets
import numpy as np
import pytest

import data_prep
from data_prep.images import BadImageError, load_image
from data_prep.loading import ModelLoadError
from data_prep.sources import InputLayoutError
from data_prep.store import StoreMixError, StoreWriter, plan_shards
from feature_store import FORMAT_VERSION, load_arrays, open_store
from tests.fixtures_extraction import (  # noqa: F401 - fixtures
    BAD_IMAGES,
    assert_same_store,
    draw_kaggle_tree,
    kaggle_root,
    prep_argv,
    tiny_models,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models):  # noqa: F811
    """One store over a tree holding every bad-image fixture, shared by several tests."""
    tmp = tmp_path_factory.mktemp("built")
    root = draw_kaggle_tree(tmp / "data")
    out = data_prep.main(prep_argv(root, tiny_models, tmp / "store"))
    return root, out


def _expected_bad() -> dict[str, str]:
    """Which fixtures the loader rejects, asked of the loader directly."""
    bad = {}
    for f in sorted(BAD_IMAGES.iterdir()):
        try:
            load_image(f)
        except BadImageError as err:
            bad[f.name] = err.reason
    return bad


def test_store_layout_shapes_and_counts(built, tiny_models):  # noqa: F811
    root, out = built
    info = open_store(out)
    m = info.manifest
    assert info.class_names == ["cat", "dog", "fish"]
    assert m["format_version"] == FORMAT_VERSION and m["emb_dtype"] == "float16"
    # cls pooling: one hidden state per model, widths read from the saved model configs.
    width = {k: json.loads((tiny_models[k] / "config.json").read_text())["hidden_size"]
             for k in ("dinov2", "bert")}  # fmt: skip
    assert m["dims"] == {"image_emb": width["dinov2"], "text_emb": width["bert"]}
    assert set(m["models"]) == {"image", "caption", "text"}
    assert m["models"]["image"]["pooling"] == "cls"
    assert m["models"]["image"]["local_path"] == str(tiny_models["dinov2"].resolve())
    saved = json.loads((tiny_models["dinov2"] / "preprocessor_config.json").read_text())
    assert m["models"]["image"]["preprocessing"]["crop_size"] == saved["crop_size"]
    assert m["package_versions"]["torch"] and m["config"]["run"]["shard_size"] == 4
    ds = datasets.load_from_disk(str(out / "train"))
    assert ds.features["image_emb"] == datasets.List(
        datasets.Value("float16"), length=width["dinov2"]
    )
    n_test = 4 + sum(1 for f in BAD_IMAGES.iterdir() if f.is_file())
    expected_inputs = {"train": 15, "val": 6, "test": n_test}
    for split, inputs in expected_inputs.items():
        c = m["splits"][split]
        assert c["inputs"] == inputs == c["rows"] + c["failed"]
        arr = load_arrays(out, split)
        assert len(arr) == c["rows"] and arr.ids == sorted(arr.ids)
        assert arr.image_emb.shape == (c["rows"], width["dinov2"])
        assert arr.text_emb.shape == (c["rows"], width["bert"])
        assert np.isfinite(arr.image_emb).all() and np.isfinite(arr.text_emb).all()
        assert all(cap.startswith("a sketch of") for cap in arr.captions)
    train = load_arrays(out, "train")
    assert train.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    assert set(load_arrays(out, "test").labels.tolist()) == {-1}
    # Nothing is left of the work in progress but the markers.
    assert not list(out.rglob("*.tmp*"))


def test_bad_images_are_counted_and_listed(built):
    root, out = built
    bad = _expected_bad()
    assert {"zero_byte.jpg", "truncated.jpg", "text_file.png", "bomb.png"} <= set(bad)
    with (out / "failures.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["file"].rsplit("/", 1)[1]: r["reason"] for r in rows} == bad
    assert all(r["split"] == "test" for r in rows)
    m = open_store(out).manifest
    assert m["splits"]["test"]["failed"] == len(bad) == m["failures"]
    # Every other odd file (CMYK, 16-bit, 1 pixel, 1x400, animated...) became a row.
    test_ids = set(load_arrays(out, "test").ids)
    good = {f.stem for f in BAD_IMAGES.iterdir() if f.is_file() and f.name not in bad}
    assert good <= test_ids


def test_two_runs_are_identical(built, tiny_models, tmp_path):  # noqa: F811
    root, out = built
    again = data_prep.main(prep_argv(root, tiny_models, tmp_path / "again"))
    assert_same_store(out, again)
    for split in ("train", "test"):
        a, b = load_arrays(out, split), load_arrays(again, split)
        np.testing.assert_array_equal(a.image_emb, b.image_emb)  # bit for bit
        np.testing.assert_array_equal(a.text_emb, b.text_emb)


def test_complete_store_rerun_is_a_no_op(built, tiny_models):  # noqa: F811
    root, out = built
    before = (out / "manifest.json").read_text()
    data_prep.main(prep_argv(root, tiny_models, out))
    assert (out / "manifest.json").read_text() == before


@pytest.mark.parametrize(
    ("override", "key"),
    [
        (["--image.pooling", "mean"], "image.pooling"),
        (["--caption.prompt", "a drawing of"], "caption.prompt"),
        (["--text.pooling", "cls"], "text.pooling"),
    ],
)
def test_refuses_to_mix_configs(built, tiny_models, override, key):  # noqa: F811
    root, out = built
    markers = sorted(p.stat().st_mtime_ns for p in (out / "_prep").rglob("shard-*.json"))
    with pytest.raises(StoreMixError, match=key.replace(".", r"\.")) as err:
        data_prep.main(prep_argv(root, tiny_models, out, *override))
    assert "--run.out" in str(err.value)
    assert sorted(p.stat().st_mtime_ns for p in (out / "_prep").rglob("shard-*.json")) == markers


def test_refuses_changed_inputs(tiny_models, tmp_path):  # noqa: F811
    root = draw_kaggle_tree(tmp_path / "data", bad_images=False, train=2, val=1, test=1)
    out = tmp_path / "store"
    data_prep.main(prep_argv(root, tiny_models, out))
    (root / "train_images" / "cat" / "cat_t00.png").rename(root / "train_images/cat/zz.png")
    with pytest.raises(StoreMixError, match="inputs.train"):
        data_prep.main(prep_argv(root, tiny_models, out))


def test_captions_csv_replaces_blip2(tiny_models, tmp_path):  # noqa: F811
    root = draw_kaggle_tree(tmp_path / "data", bad_images=False, train=2, val=1, test=2)
    from data_prep.sources import scan_kaggle

    listing = scan_kaggle(root)
    captions = {it.id: f"a drawing number {k}" for k, it in
                enumerate(it for items in listing.splits.values() for it in items)}  # fmt: skip
    first = next(iter(captions))
    captions[first] = ""  # an empty caption is embedded and counted, not an error
    path = tmp_path / "captions.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "caption"])
        w.writerows(captions.items())
    # A caption model that does not exist proves BLIP-2 is never loaded.
    argv = prep_argv(root, tiny_models, tmp_path / "store", "--input.captions_csv", str(path),
                     "--caption.model", str(tmp_path / "no-such-blip2"))  # fmt: skip
    out = data_prep.main(argv)
    m = open_store(out).manifest
    assert m["models"]["caption"]["captions_csv"] == str(path.resolve())
    assert sum(c["captions_empty"] for c in m["splits"].values()) == 1
    import torch

    from data_prep.config import TextConfig
    from data_prep.text_encoder import TextEncoder

    enc = TextEncoder(TextConfig(model=str(tiny_models["bert"])), dtype=torch.float32)
    for split in ("train", "test"):
        arr = load_arrays(out, split)
        assert arr.captions == [captions[i] for i in arr.ids]
        with torch.inference_mode():
            ref = enc.encode(arr.captions).numpy()
        np.testing.assert_allclose(arr.text_emb, ref, atol=2e-3)  # stored as float16


def test_missing_model_fails_fast_with_the_fix(kaggle_root, tiny_models, tmp_path):  # noqa: F811
    out = tmp_path / "store"
    start = time.perf_counter()
    with pytest.raises(ModelLoadError) as err:
        data_prep.main(prep_argv(kaggle_root, tiny_models, out, "--image.model", "nobody/dinov9"))
    assert time.perf_counter() - start < 60  # not a hang on the network
    msg = str(err.value)
    assert "nobody/dinov9" in msg and "--image.model" in msg and "HF_HUB_OFFLINE" in msg
    assert not list(out.rglob("*.arrow"))  # failed before any image was processed


def test_bad_layout_fails_before_models(tmp_path, tiny_models):  # noqa: F811
    root = draw_kaggle_tree(tmp_path / "data", bad_images=False, train=1, val=1, test=1)
    (root / "val_images" / "zebra").mkdir()
    (root / "val_images" / "zebra" / "z.png").write_bytes(b"")
    argv = prep_argv(root, tiny_models, tmp_path / "store", "--image.model", "nobody/x")
    with pytest.raises(InputLayoutError, match="zebra"):
        data_prep.main(argv)


def test_shard_plan_covers_every_row_once():
    shards = plan_shards({"train": 10, "val": 0, "test": 3}, 4)
    assert [(s.split, s.start, s.stop) for s in shards] == [
        ("train", 0, 4), ("train", 4, 8), ("train", 8, 10), ("test", 0, 3)
    ]  # fmt: skip


def test_fingerprint_file_is_json(built):
    _, out = built
    fp = json.loads((out / "_prep" / "fingerprint.json").read_text())
    assert set(fp) == {"config", "resolved"}
    assert StoreWriter(out).is_done(plan_shards({"train": 15}, 4)[0])


def test_refuses_a_directory_it_did_not_make(kaggle_root, tiny_models, tmp_path):  # noqa: F811
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.tmp1").write_text("precious")
    with pytest.raises(StoreMixError, match="not made by data_prep"):
        data_prep.main(prep_argv(kaggle_root, tiny_models, out))
    assert (out / "notes.tmp1").read_text() == "precious"
