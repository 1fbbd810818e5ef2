"""The demo sketches: deterministic, in the Kaggle layout, with the asked-for counts.

$ python -m pytest -q tests/test_demo_images.py
"""

from __future__ import annotations

import csv
import hashlib

import numpy as np
import pytest

from data_prep.demo_images import SHAPES, make_demo_images
from data_prep.sources import scan_kaggle


def digests(root) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    small = {"train": 2, "val": 1, "test": 1}
    a = make_demo_images(tmp_path / "a", num_classes=4, per_class=small, seed=3)
    b = make_demo_images(tmp_path / "b", num_classes=4, per_class=small, seed=3)
    c = make_demo_images(tmp_path / "c", num_classes=4, per_class=small, seed=4)
    assert digests(a) == digests(b)
    assert len(digests(a)) == 4 * 4 + 1  # images + test_labels.csv
    assert set(digests(a).values()).isdisjoint(set(digests(c).values()))


def test_layout_is_accepted_by_scan_kaggle_with_default_counts(tmp_path):
    root = make_demo_images(tmp_path / "demo", size=64)
    listing = scan_kaggle(root)
    names = list(SHAPES)[:10]
    assert listing.class_names == sorted(names)
    assert all(name.isalpha() for name in names)  # readable words, not class_007
    for split, per_class in {"train": 12, "val": 4}.items():
        labels = [item.label for item in listing.splits[split]]
        assert np.bincount(labels, minlength=10).tolist() == [per_class] * 10
    test = listing.splits["test"]
    assert len(test) == 40 and {item.label for item in test} == {-1}
    assert listing.unused_files == []
    image = listing.open_image(listing.splits["train"][0])
    assert image.size == (64, 64) and image.mode == "RGB"


def test_images_are_dark_strokes_on_white_and_differ_within_a_class(tmp_path):
    root = make_demo_images(tmp_path / "demo", num_classes=2, per_class={"train": 3, "test": 0})
    listing = scan_kaggle(root, split_dirs={"train": "train_images"})
    pixels = [np.asarray(listing.open_image(item)).astype(int) for item in listing.splits["train"]]
    for image in pixels:
        assert np.median(image) >= 250  # mostly white paper
        assert image.min() <= 80  # some ink
        assert 0.01 < (image.mean(axis=2) < 128).mean() < 0.3
    same_class = [
        p for p, item in zip(pixels, listing.splits["train"], strict=True) if item.label == 0
    ]
    assert len(same_class) == 3 and not np.array_equal(same_class[0], same_class[1])


def test_test_labels_csv_gives_the_answers(tmp_path):
    root = make_demo_images(
        tmp_path / "demo", num_classes=3, per_class={"train": 1, "val": 0, "test": 2}
    )
    listing = scan_kaggle(root)
    assert listing.splits["val"] == []
    with open(root / "test_labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["Id"] for r in rows] == [item.id for item in listing.splits["test"]]
    assert np.bincount([int(r["Category"]) for r in rows]).tolist() == [2, 2, 2]


def test_counts_per_split_change_only_that_split(tmp_path):
    a = make_demo_images(tmp_path / "a", num_classes=2, per_class={"train": 2, "test": 1})
    b = make_demo_images(tmp_path / "b", num_classes=2, per_class={"train": 2, "test": 3})
    train_a = {k: v for k, v in digests(a).items() if k.startswith("train_images")}
    train_b = {k: v for k, v in digests(b).items() if k.startswith("train_images")}
    assert train_a == train_b and len(train_a) == 4
    assert len(scan_kaggle(b).splits["test"]) == 6


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="num_classes must be in 1..12"):
        make_demo_images(tmp_path / "x", num_classes=len(SHAPES) + 1)
    with pytest.raises(ValueError, match="per_class"):
        make_demo_images(tmp_path / "x", per_class={"train": 0})
    with pytest.raises(ValueError, match="per_class"):
        make_demo_images(tmp_path / "x", per_class={"validation": 2})
    make_demo_images(tmp_path / "y", num_classes=1, per_class={"train": 1, "val": 0, "test": 0})
    with pytest.raises(FileExistsError, match="train_images exists"):
        make_demo_images(tmp_path / "y", num_classes=1)
