"""Fixtures for the data_prep tests: tiny models, a small Kaggle tree, a prep argv."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

BAD_IMAGES = Path(__file__).parent / "fixtures" / "bad_images"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny DINOv2 / BLIP-2 / BERT directories, built once per session."""
    from data_prep.tiny_models import ensure_tiny_models

    return ensure_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_blip2s(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The two kinds of BLIP-2: ``opt`` (decoder-only, the demo's) and ``t5`` (Flan-T5's kind)."""
    from data_prep.tiny_models import build_tiny_blip2

    t5 = build_tiny_blip2(tmp_path_factory.mktemp("blip2_t5"), language_model="t5")
    return {"opt": tiny_models["blip2"], "t5": t5}


def draw_kaggle_tree(root: Path, *, classes=("cat", "dog", "fish"), train=5, val=2, test=4,
                     seed: int = 0, bad_images: bool = True) -> Path:  # fmt: skip
    """A Kaggle-layout tree of random line drawings; every committed bad-image fixture
    goes into the test split (where a real competition's odd files would be)."""
    rng = np.random.default_rng(seed)

    def sketch(path: Path) -> None:
        w, h = (int(v) for v in rng.integers(24, 72, size=2))
        im = Image.new("RGB", (w, h), "white")
        pts = [tuple(int(v) for v in rng.integers(0, min(w, h), size=2)) for _ in range(5)]
        ImageDraw.Draw(im).line(pts, fill="black", width=2)
        path.parent.mkdir(parents=True, exist_ok=True)
        im.save(path)

    for split, n in (("train_images", train), ("val_images", val)):
        for c in classes:
            for i in range(n):
                sketch(root / split / c / f"{c}_{split[0]}{i:02d}.png")
    test_dir = root / "test_images" / "mistery_category"
    for i in range(test):
        sketch(test_dir / f"t{i:03d}.jpg")
    if bad_images:
        test_dir.mkdir(parents=True, exist_ok=True)
        for f in BAD_IMAGES.iterdir():
            if f.is_file():
                shutil.copy(f, test_dir / f.name)
    return root


@pytest.fixture
def kaggle_root(tmp_path) -> Path:
    return draw_kaggle_tree(tmp_path / "data")


def prep_argv(root: Path, models: dict[str, Path], out: Path, *extra: str) -> list[str]:
    """argv for data_prep.main over ``root`` with the tiny models, small shards, no bars."""
    return [
        "--input.root", str(root),
        "--image.model", str(models["dinov2"]),
        "--caption.model", str(models["blip2"]),
        "--caption.max_new_tokens", "4",
        "--text.model", str(models["bert"]),
        "--run.out", str(out),
        "--run.shard_size", "4",
        "--run.batch_size", "3",
        "--run.num_workers", "0",
        "--run.accelerator", "cpu",
        "--run.dtype", "fp32",
        "--run.progress", "false",
        *extra,
    ]  # fmt: skip


def assert_same_store(a: Path, b: Path) -> None:
    """Same ids, labels, paths and captions; embeddings equal to float noise."""
    from feature_store import load_arrays, open_store

    ia, ib = open_store(a), open_store(b)
    assert ia.splits == ib.splits
    assert ia.manifest["splits"] == ib.manifest["splits"]
    for split in ia.splits:
        x, y = load_arrays(a, split), load_arrays(b, split)
        assert x.ids == y.ids and len(set(x.ids)) == len(x.ids)
        assert x.captions == y.captions and x.paths == y.paths
        np.testing.assert_array_equal(x.labels, y.labels)
        np.testing.assert_allclose(x.image_emb, y.image_emb, rtol=0, atol=1e-5)
        np.testing.assert_allclose(x.text_emb, y.text_emb, rtol=0, atol=1e-5)
    assert (a / "failures.csv").read_text() == (b / "failures.csv").read_text()
