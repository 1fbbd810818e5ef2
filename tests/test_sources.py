"""Listing Kaggle folders and HF datasets: ids, labels, layout errors, captions.csv.

$ python -m pytest -q tests/test_sources.py
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from torchvision.datasets import ImageFolder

from data_prep.images import BadImageError
from data_prep.sources import (
    InputLayoutError,
    Item,
    hf_listing,
    read_captions_csv,
    scan_kaggle,
)


def png_bytes(colour=(200, 30, 40), size=(4, 3), fmt="PNG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def write(path: Path, data: bytes = b"") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_tree(root: Path, layout: dict[str, dict[str, list[str]]]) -> Path:
    """layout: split folder -> class folder -> file names (images get real PNG bytes)."""
    for split, classes in layout.items():
        for cls, names in classes.items():
            for i, name in enumerate(names):
                data = (
                    png_bytes((i * 20, 10, 10)) if name.lower().endswith((".png", ".jpg")) else b"x"
                )
                write(root / split / cls / name, data)
    return root


GOOD = {
    "train_images": {
        "zebra": ["z1.png", "z2.JPG"],
        "Apple": ["a1.png"],
        "apple": ["a2.png", "a3.png"],
        "banana_split": ["b1.png"],
    },
    "val_images": {"apple": ["v1.png"], "zebra": ["v2.png", "v3.PNG"]},
    "test_images": {"mistery_category": ["t2.png", "t1.png", "t3.jpg"]},
}


def test_ids_and_labels_follow_imagefolder(tmp_path):
    root = make_tree(tmp_path, GOOD)
    listing = scan_kaggle(root)
    reference = ImageFolder(str(root / "train_images"))
    assert {c: i for i, c in enumerate(listing.class_names)} == reference.class_to_idx
    expected_train = sorted((Path(p).stem, label, p) for p, label in reference.samples)
    assert [(i.id, i.label, i.path) for i in listing.splits["train"]] == expected_train
    val_reference = {
        Path(p).stem: Path(p).parent.name for p, _ in ImageFolder(str(root / "val_images")).samples
    }
    val = listing.splits["val"]
    assert [i.id for i in val] == ["v1", "v2", "v3"]
    assert [i.label for i in val] == [reference.class_to_idx[val_reference[i.id]] for i in val]
    test = listing.splits["test"]
    assert [(i.id, i.label, i.split) for i in test] == [
        ("t1", -1, "test"),
        ("t2", -1, "test"),
        ("t3", -1, "test"),
    ]
    assert list(listing.splits) == ["train", "val", "test"]
    assert listing.unused_files == []


def test_hidden_entries_ignored_and_other_files_listed(tmp_path):
    root = make_tree(tmp_path, GOOD)
    write(root / "train_images" / ".ipynb_checkpoints" / "z1-checkpoint.png", png_bytes())
    write(root / "train_images" / "zebra" / ".DS_Store", b"x")
    write(root / "train_images" / "zebra" / ".hidden" / "z9.png", png_bytes())
    notes = write(root / "train_images" / "zebra" / "notes.txt", b"x")
    readme = write(root / "train_images" / "README.md", b"x")
    csv_file = write(root / "test_images" / "mistery_category" / "ids.csv", b"x")
    listing = scan_kaggle(root)
    assert ".ipynb_checkpoints" not in listing.class_names and len(listing.class_names) == 4
    assert {i.id for i in listing.splits["train"]} == {"z1", "z2", "a1", "a2", "a3", "b1"}
    assert listing.unused_files == sorted(str(p) for p in (notes, readme, csv_file))


def test_nested_files_are_included_like_imagefolder(tmp_path):
    root = make_tree(tmp_path, GOOD)
    write(root / "train_images" / "zebra" / "more" / "z3.png", png_bytes())
    listing = scan_kaggle(root)
    reference = ImageFolder(str(root / "train_images"))
    assert sorted(i.path for i in listing.splits["train"]) == sorted(
        p for p, _ in reference.samples
    )


def test_open_image_and_pickle(tmp_path):
    root = make_tree(tmp_path, GOOD)
    listing = scan_kaggle(root)
    back = pickle.loads(pickle.dumps(listing))
    assert back == listing
    item = next(i for i in back.splits["val"] if i.id == "v3")
    image = back.open_image(item)
    assert image.mode == "RGB" and image.size == (4, 3)
    assert image.getpixel((0, 0)) == (20, 10, 10)  # second file of its folder: i = 1


def test_class_map_sets_labels(tmp_path):
    root = make_tree(tmp_path, GOOD)
    write(root / "val_images" / "kiwi" / "v9.png", png_bytes())
    class_map = tmp_path / "classes.csv"
    class_map.write_text("label,class_name\n3,zebra\n0,banana_split\n1,kiwi\n2,apple\n4,Apple\n")
    listing = scan_kaggle(root, class_map=class_map)
    assert listing.class_names == ["banana_split", "kiwi", "apple", "zebra", "Apple"]
    labels = {i.id: i.label for split in ("train", "val") for i in listing.splits[split]}
    assert labels["z1"] == 3 and labels["b1"] == 0 and labels["a1"] == 4 and labels["v9"] == 1


def test_custom_split_dirs(tmp_path):
    root = make_tree(tmp_path, {"tr": GOOD["train_images"], "te": GOOD["test_images"]})
    listing = scan_kaggle(root, split_dirs={"train": "tr", "test": "te"})
    assert list(listing.splits) == ["train", "test"] and len(listing.splits["test"]) == 3


def _error(root, **kwargs) -> str:
    with pytest.raises(InputLayoutError) as info:
        scan_kaggle(root, **kwargs)
    return str(info.value)


def test_layout_errors_name_the_problem(tmp_path):
    assert re.search(r"input folder .*nowhere does not exist", _error(tmp_path / "nowhere"))

    root = make_tree(tmp_path / "a", {k: v for k, v in GOOD.items() if k != "val_images"})
    message = _error(root)
    assert "val_images" in message and "split_dirs" in message and "train_images" in message

    root = make_tree(tmp_path / "b", GOOD)
    write(root / "train_images" / "empty_class" / "notes.txt", b"x")
    message = _error(root)
    assert "class folder" in message and "empty_class" in message and "no image files" in message

    root = make_tree(tmp_path / "c", GOOD)
    first = write(root / "train_images" / "apple" / "z1.png", png_bytes())
    message = _error(root)
    assert "duplicate id" in message and "'z1'" in message
    assert str(first) in message and str(root / "train_images" / "zebra" / "z1.png") in message

    root = make_tree(tmp_path / "d", GOOD)
    write(root / "val_images" / "kiwi" / "v9.png", png_bytes())
    message = _error(root)
    assert "not in train_images/" in message and "kiwi" in message

    root = make_tree(tmp_path / "e", GOOD)
    class_map = write(tmp_path / "map.csv", b"class_name,label\napple,0\nzebra,1\n")
    message = _error(root, class_map=class_map)
    assert (
        "map.csv lacks 2 class folder(s)" in message
        and "Apple" in message
        and "banana_split" in message
    )

    root = make_tree(tmp_path / "f", GOOD)
    write(root / "test_images" / "other" / "t9.png", png_bytes())
    message = _error(root)
    assert "test_images has 2 folders" in message and "mistery_category" in message

    root = tmp_path / "g"
    for split in ("train_images", "val_images", "test_images"):
        (root / split).mkdir(parents=True)
    assert "has no class folders" in _error(root)


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("name_of_class,label\napple,0\n", "expected columns class_name,label"),
        ("class_name,label\napple,zero\n", "line 2: label 'zero' is not an int"),
        ("class_name,label\napple,0\nzebra,0\n", "label 0 appears twice"),
        ("class_name,label\napple,0\nzebra,2\n", r"labels must be 0\.\.1"),
        ("class_name,label\napple,0\napple,1\n", "listed twice: apple"),
    ],
)
def test_bad_class_map(tmp_path, text, pattern):
    root = make_tree(tmp_path, GOOD)
    class_map = write(tmp_path / "map.csv", text.encode())
    assert re.search(pattern, _error(root, class_map=class_map))


# ---------------------------------------------------------------------------------------
# Hugging Face datasets
# ---------------------------------------------------------------------------------------


def test_hf_imagefolder(tmp_path):
    colours = {"cat": (250, 0, 0), "dog": (0, 0, 250)}
    for split, count in (("train", 3), ("test", 2)):
        for cls, colour in colours.items():
            for i in range(count):
                write(tmp_path / "data" / split / cls / f"{split}_{cls}{i}.png", png_bytes(colour))
    listing = hf_listing(
        dataset="imagefolder",
        data_dir=str(tmp_path / "data"),
        splits={"train": "train", "val": "test"},
        cache_dir=str(tmp_path / "cache"),
    )
    assert listing.class_names == ["cat", "dog"]
    train = listing.splits["train"]
    assert [i.id for i in train] == [f"train-{r:08d}" for r in range(6)]
    assert [i.path for i in train] == [f"hf://{tmp_path / 'data'}/train/{r}" for r in range(6)]
    assert len(listing.splits["val"]) == 4 and {i.split for i in listing.splits["val"]} == {"val"}
    back = pickle.loads(pickle.dumps(listing))
    for item in train + listing.splits["val"]:
        image = back.open_image(item)
        assert image.mode == "RGB" and image.size == (4, 3)
        cls = listing.class_names[item.label]
        assert image.getpixel((1, 1)) == colours[cls]  # the label matches the pixels' folder

    with pytest.raises(
        InputLayoutError, match=r"has splits \['test', 'train'\], not \['validation'\]"
    ):
        hf_listing(
            dataset="imagefolder",
            data_dir=str(tmp_path / "data"),
            splits={"val": "validation"},
            cache_dir=str(tmp_path / "cache"),
        )
    with pytest.raises(InputLayoutError, match=r"columns \['image', 'label'\], no \['img'\]"):
        hf_listing(
            dataset="imagefolder",
            data_dir=str(tmp_path / "data"),
            splits={"train": "train"},
            image_column="img",
            cache_dir=str(tmp_path / "cache"),
        )


def test_hf_parquet_with_ids_string_labels_and_unlabelled_test(tmp_path):
    import datasets

    features = {
        "image": datasets.Image(),
        "label": datasets.Value("string"),
        "key": datasets.Value("string"),
    }
    train = {
        "image": [{"bytes": png_bytes((i, 0, 0)), "path": None} for i in range(4)],
        "label": ["pear", "fig", "pear", "apple"],
        "key": ["k3", "k1", "k0", "k2"],
    }
    datasets.Dataset.from_dict(train, features=datasets.Features(features)).to_parquet(
        str(tmp_path / "data" / "train-00000-of-00001.parquet")
    )
    test = {
        "image": [
            {"bytes": png_bytes((9, 9, 9)), "path": None},
            {"bytes": b"garbage", "path": None},
        ],
        "key": ["t0", "t1"],
    }
    del features["label"]
    datasets.Dataset.from_dict(test, features=datasets.Features(features)).to_parquet(
        str(tmp_path / "data" / "test-00000-of-00001.parquet")
    )
    listing = hf_listing(
        dataset=str(tmp_path / "data"),
        splits={"train": "train", "test": "test"},
        id_column="key",
        cache_dir=str(tmp_path / "cache"),
    )
    assert listing.class_names == ["apple", "fig", "pear"]
    train_items = listing.splits["train"]
    assert [(i.id, i.label) for i in train_items] == [("k0", 2), ("k1", 1), ("k2", 0), ("k3", 2)]
    # k0 is row 2 of the parquet file: its red value is 2.
    assert listing.open_image(train_items[0]).getpixel((0, 0)) == (2, 0, 0)
    assert [(i.id, i.label) for i in listing.splits["test"]] == [("t0", -1), ("t1", -1)]
    with pytest.raises(BadImageError) as info:
        listing.open_image(listing.splits["test"][1])
    assert info.value.reason == "not an image: cannot identify image file"
    assert info.value.source == f"hf://{tmp_path / 'data'}/test/1"


def _parquet(path: Path, columns: dict, features: dict) -> None:
    import datasets

    table = datasets.Dataset.from_dict(columns, features=datasets.Features(features))
    table.to_parquet(str(path))


def test_hf_errors_name_the_fix(tmp_path):
    import datasets

    with pytest.raises(InputLayoutError, match=r"cannot load dataset .*nope.*imagefolder"):
        hf_listing(
            dataset=str(tmp_path / "nope"), splits={"train": "train"}, cache_dir=str(tmp_path)
        )

    image = {"bytes": png_bytes(), "path": None}
    string_features = {"image": datasets.Image(), "label": datasets.Value("string")}
    _parquet(
        tmp_path / "s" / "train-0.parquet", {"image": [image], "label": ["fig"]}, string_features
    )
    _parquet(
        tmp_path / "s" / "validation-0.parquet",
        {"image": [image], "label": ["kiwi"]},
        string_features,
    )
    with pytest.raises(
        InputLayoutError, match=r"split 'val' has label 'kiwi', absent from split 'train'"
    ):
        hf_listing(
            dataset=str(tmp_path / "s"),
            splits={"train": "train", "val": "validation"},
            cache_dir=str(tmp_path / "cache"),
        )

    features = {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])}
    _parquet(tmp_path / "c" / "train-0.parquet", {"image": [image], "label": [0]}, features)
    with pytest.raises(InputLayoutError, match="column 'label' .* is not an image column"):
        hf_listing(
            dataset=str(tmp_path / "c"),
            splits={"train": "train"},
            image_column="label",
            cache_dir=str(tmp_path / "cache"),
        )


# ---------------------------------------------------------------------------------------
# captions.csv
# ---------------------------------------------------------------------------------------


def test_read_captions_csv(tmp_path):
    path = write(
        tmp_path / "captions.csv",
        b'id,caption\na,a sketch of a cat\nb,"a dog, running"\nc,\n',
    )
    expected = {"train": ["a", "b"], "test": ["c"]}
    captions = read_captions_csv(path, expected_ids=expected)
    assert captions == {"a": "a sketch of a cat", "b": "a dog, running", "c": ""}


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("image,text\na,x\n", r"header \['image', 'text'\]; expected exactly: id,caption"),
        ("id,caption,score\na,x,1\n", "expected exactly: id,caption"),
        ("id,caption\na,x\nb,y\na,z\n", r"1 duplicate id\(s\): 'a' \(lines 2 and 4\)"),
        ("id,caption\na,x,y\n", "line 2: 3 fields"),
    ],
)
def test_bad_captions_csv(tmp_path, text, pattern):
    path = write(tmp_path / "captions.csv", text.encode())
    with pytest.raises(InputLayoutError, match=pattern) as info:
        read_captions_csv(path)
    assert "captions.csv" in str(info.value)


def test_captions_csv_missing_ids(tmp_path):
    ids = [f"img{i:03d}" for i in range(20)]
    rows = "".join(f"{i},caption\n" for i in ids[:12])
    path = write(tmp_path / "captions.csv", f"id,caption\n{rows}".encode())
    with pytest.raises(InputLayoutError) as info:
        read_captions_csv(path, expected_ids={"train": ids})
    message = str(info.value)
    assert "lacks 8 of the 20 ids of split 'train'" in message
    assert "img012, img013, img014, img015, img016 ... (8 in all)" in message
    with pytest.raises(InputLayoutError, match="more than one split"):
        read_captions_csv(path, expected_ids={"train": ids[:2], "test": ids[1:3]})
    with pytest.raises(InputLayoutError, match="does not exist"):
        read_captions_csv(tmp_path / "nope.csv")


def test_item_is_frozen():
    item = Item("a", 0, "p", "train")
    with pytest.raises(AttributeError):
        item.label = 1  # type: ignore[misc]
    assert np.int64(0) == item.label
