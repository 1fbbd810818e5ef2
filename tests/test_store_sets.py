"""The store side of feature sets: format-2 stores, the manifest entries, the per-process
cache of manifest and shard checks, readers of today's columns on new stores."""

from __future__ import annotations

import json

import numpy as np
import pytest

import feature_store.integrity as integrity
from feature_store import (
    FORMAT_VERSION,
    StoreError,
    load_arrays,
    load_dataset_dict,
    load_features,
    open_store,
    upgrade_store,
    write_manifest,
)
from feature_store.integrity import model_fingerprint
from feature_store.sets import base_entries
from feature_store.synthetic import make_synthetic_store
from tests.fixtures_sets import age_files


def _as_format2(root) -> dict:
    manifest = json.loads((root / "manifest.json").read_text())
    old = {k: v for k, v in manifest.items() if k != "features"} | {"format_version": 2}
    write_manifest(root, old)
    return old


def test_a_new_store_lists_image_and_text_sets(tmp_path):
    info = make_synthetic_store(tmp_path, image_dim=7, text_dim=5)
    assert info.manifest["format_version"] == FORMAT_VERSION == 3
    entries = {e["name"]: e for e in info.features}
    assert list(entries) == ["image", "text"]
    assert (entries["image"]["column"], entries["image"]["dim"]) == ("image_emb", 7)
    assert (entries["text"]["kind"], entries["text"]["dim"]) == ("text", 5)
    arrays, base = load_features(tmp_path, "val"), load_arrays(tmp_path, "val")
    np.testing.assert_array_equal(arrays["image"], base.image_emb)
    np.testing.assert_array_equal(arrays["text"], base.text_emb)
    assert arrays.ids == base.ids and arrays.captions == base.captions
    np.testing.assert_array_equal(arrays.labels, base.labels)
    with pytest.raises(StoreError, match=r"no feature set 'dino' \(it has \['image', 'text'\]\)"):
        load_features(tmp_path, "val", ["dino"])


def test_a_format2_store_reads_as_image_and_text_and_upgrades_metadata_only(tmp_path):
    make_synthetic_store(tmp_path)
    new_entries = open_store(tmp_path).features
    fingerprint = model_fingerprint(open_store(tmp_path))
    old = _as_format2(tmp_path)
    shards = {p: p.read_bytes() for p in tmp_path.glob("*/*.arrow")}
    info = open_store(tmp_path)
    assert "features" not in info.manifest and info.features == base_entries(old)
    assert info.features == new_entries  # the same entries a new store writes
    np.testing.assert_array_equal(load_features(tmp_path, "train", ["image"])["image"],
                                  load_arrays(tmp_path, "train").image_emb)  # fmt: skip
    upgraded = upgrade_store(tmp_path)
    assert upgraded.manifest["format_version"] == 3 and upgraded.manifest["features"] == new_entries
    assert {p: p.read_bytes() for p in tmp_path.glob("*/*.arrow")} == shards
    # Checkpoints trained on the format-2 store still match it.
    assert model_fingerprint(open_store(tmp_path)) == fingerprint
    assert list(load_dataset_dict(tmp_path)["train"].features) == [
        "id", "label", "path", "caption", "image_emb", "text_emb"]  # fmt: skip


def test_a_store_is_hashed_once_per_process_and_again_when_changed(tmp_path, monkeypatch):
    make_synthetic_store(tmp_path)
    age_files(tmp_path)
    calls = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    first = load_arrays(tmp_path, "train")
    assert len(calls) == 1  # one shard, hashed once
    for _ in range(5):  # what a fit does: datamodule, callbacks, predict, probe...
        load_arrays(tmp_path, "train")
        load_features(tmp_path, "train")
        open_store(tmp_path)
    assert len(calls) == 1
    # A changed shard (same size, new bytes) is hashed again and refused.
    shard = tmp_path / "train" / "shard-00000.arrow"
    data = bytearray(shard.read_bytes())
    data[-100] ^= 0xFF
    shard.write_bytes(bytes(data))
    age_files(tmp_path, 30)  # even with an old-looking timestamp: it is not the one checked
    with pytest.raises(StoreError, match="does not match the checksum"):
        load_arrays(tmp_path, "train")
    # A rewritten manifest is read again, not served from the cache.
    info = open_store(tmp_path)
    write_manifest(tmp_path, {**info.manifest, "note": "edited"})
    assert open_store(tmp_path).manifest["note"] == "edited"
    # Callers get their own copy: editing one does not change what the next one reads.
    open_store(tmp_path).manifest["class_names"].append("ghost")
    assert "ghost" not in open_store(tmp_path).class_names
    assert first.image_emb.flags.writeable


def test_a_recent_file_is_always_checked(tmp_path, monkeypatch):
    make_synthetic_store(tmp_path)  # files written just now: within the racy window
    calls = []
    real = integrity.file_sha256
    monkeypatch.setattr(integrity, "file_sha256", lambda p, *a: calls.append(p) or real(p, *a))
    load_arrays(tmp_path, "val")
    load_arrays(tmp_path, "val")
    assert len(calls) == 2


def test_the_python_api_reads_sets(tmp_path):
    import sketchfusion as sf

    info = make_synthetic_store(tmp_path)
    sets = sf.load_features(info, "val", ["text"])
    np.testing.assert_array_equal(sets["text"], sf.load_arrays(info, "val").text_emb)
