import numpy as np
import pytest

from feature_store import StoreError, load_arrays, open_store
from feature_store.synthetic import make_synthetic_store


def test_synthetic_store_roundtrip(tmp_path):
    info = make_synthetic_store(
        tmp_path, num_classes=3, image_dim=7, text_dim=5, emb_dtype="float16"
    )
    assert info.class_names == ["class_000", "class_001", "class_002"]
    reread = open_store(tmp_path)
    assert (reread.image_dim, reread.text_dim) == (7, 5)
    train = load_arrays(tmp_path, "train")
    assert train.image_emb.shape == (3 * 40, 7) and train.image_emb.dtype == np.float32
    assert train.text_emb.shape == (3 * 40, 5)
    assert sorted(set(train.labels.tolist())) == [0, 1, 2]
    assert len(set(train.ids)) == len(train.ids)
    test = load_arrays(tmp_path, "test")
    assert (test.labels == -1).all()


def test_arrays_match_rows(tmp_path):
    make_synthetic_store(tmp_path, num_classes=2, image_dim=4, text_dim=3)
    from feature_store import load_split

    ds = load_split(tmp_path, "val")
    arrays = load_arrays(tmp_path, "val")
    row = ds[7]
    np.testing.assert_allclose(arrays.image_emb[7], np.asarray(row["image_emb"], dtype=np.float32))
    np.testing.assert_allclose(arrays.text_emb[7], np.asarray(row["text_emb"], dtype=np.float32))
    assert arrays.ids[7] == row["id"] and arrays.labels[7] == row["label"]


def test_missing_store_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match="python -m data_prep"):
        open_store(tmp_path / "nope")


def test_missing_split_is_named(tmp_path):
    make_synthetic_store(tmp_path, per_class={"train": 3})
    with pytest.raises(StoreError, match="no split 'val'"):
        load_arrays(tmp_path, "val")


def test_arrays_are_writable_float32(tmp_path):
    # float32 columns would otherwise be read-only views of Arrow memory, which torch
    # refuses to share safely (torch.from_numpy warns and in-place ops are undefined).
    for dtype in ("float32", "float16"):
        make_synthetic_store(tmp_path / dtype, num_classes=2, emb_dtype=dtype)
        arrays = load_arrays(tmp_path / dtype, "train")
        for a in (arrays.image_emb, arrays.text_emb, arrays.labels):
            assert a.flags.writeable and a.flags.c_contiguous
        assert arrays.image_emb.dtype == np.float32
