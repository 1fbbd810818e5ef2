"""Draw a small, deterministic set of black-on-white "sketches" in the Kaggle folder layout.

    >>> from data_prep.demo_images import make_demo_images
    >>> root = make_demo_images("demo/images", num_classes=10, seed=0)
    >>> sorted(p.name for p in root.iterdir())
    ['test_images', 'test_labels.csv', 'train_images', 'val_images']

One shape family per class (circle, square, house, spiral, ...), each image with its own
position, scale, rotation, aspect, stroke width and hand-drawn wobble, so a classifier has
something to learn but not a lookup table. Files are JPEGs named by a random hex id (as in
the competition), so test file names do not give the class away; ``test_labels.csv``
(``Id,Category``, outside the scanned folders) holds the answers for checking a submission.
Each image has its own seeded generator, so changing one split's count leaves the others'
files unchanged.
"""

from __future__ import annotations

import csv
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

DEFAULT_PER_CLASS = {"train": 12, "val": 4, "test": 4}
SPLIT_DIRS = {"train": "train_images", "val": "val_images", "test": "test_images"}
TEST_FOLDER = "mistery_category"  # the competition's spelling
SUPERSAMPLE = 3  # draw large, then downsample: smooth strokes without per-pixel work

Stroke = np.ndarray  # [N, 2] points in unit coordinates, shape centred on 0, within [-1, 1]


def _arc(start: float, stop: float, n: int = 48, radius: float = 1.0) -> Stroke:
    t = np.linspace(start, stop, n)
    return radius * np.stack([np.cos(t), np.sin(t)], axis=1)


def _closed(points) -> Stroke:
    points = np.asarray(points, float)
    return np.vstack([points, points[:1]])


def _circle(rng) -> list[Stroke]:
    start = rng.uniform(0, 2 * np.pi)  # where the pen starts, with a small overshoot
    return [_arc(start, start + 2 * np.pi * rng.uniform(1.0, 1.08))]


def _square(rng) -> list[Stroke]:
    return [_closed([(-1, -1), (1, -1), (1, 1), (-1, 1)])]


def _triangle(rng) -> list[Stroke]:
    return [_closed([(0, -1), (1, 0.8), (-1, 0.8)])]


def _star(rng) -> list[Stroke]:
    angles = -np.pi / 2 + np.arange(10) * np.pi / 5
    radius = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.35, 0.5))
    return [_closed(np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1))]


def _house(rng) -> list[Stroke]:
    body = _closed([(-0.8, -0.1), (0.8, -0.1), (0.8, 1), (-0.8, 1)])
    roof = np.array([(-0.95, -0.05), (0, -1), (0.95, -0.05)])
    door = np.array([(-0.2, 1), (-0.2, 0.45), (0.2, 0.45), (0.2, 1)])
    return [body, roof, door]


def _cross(rng) -> list[Stroke]:
    return [np.array([(0, -1), (0, 1)]), np.array([(-1, 0), (1, 0)])]


def _spiral(rng) -> list[Stroke]:
    turns = rng.uniform(2.0, 3.0)
    t = np.linspace(0, 2 * np.pi * turns, 120)
    r = t / t[-1]
    return [np.stack([r * np.cos(t), r * np.sin(t)], axis=1)]


def _zigzag(rng) -> list[Stroke]:
    peaks = int(rng.integers(4, 7))
    x = np.linspace(-1, 1, 2 * peaks + 1)
    return [np.stack([x, np.where(np.arange(x.size) % 2 == 0, 0.5, -0.5)], axis=1)]


def _heart(rng) -> list[Stroke]:
    t = np.linspace(0, 2 * np.pi, 80)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [np.stack([x, y + 2.5], axis=1) / 17]


def _arrow(rng) -> list[Stroke]:
    head = rng.uniform(0.3, 0.5)
    return [np.array([(-1, 0), (1, 0)]), np.array([(1 - head, -head), (1, 0), (1 - head, head)])]


def _moon(rng) -> list[Stroke]:
    outer = _arc(np.pi / 3, 5 * np.pi / 3)
    inner = _arc(5 * np.pi / 3, np.pi / 3, radius=0.85) * [0.6, 1.0] + [0.15, 0]
    return [np.vstack([outer, inner, outer[:1]])]


def _wave(rng) -> list[Stroke]:
    x = np.linspace(-1, 1, 80)
    return [np.stack([x, 0.45 * np.sin(np.pi * rng.uniform(1.5, 2.5) * x)], axis=1)]


SHAPES: dict[str, Callable[[np.random.Generator], list[Stroke]]] = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "house": _house,
    "cross": _cross,
    "spiral": _spiral,
    "zigzag": _zigzag,
    "heart": _heart,
    "arrow": _arrow,
    "moon": _moon,
    "wave": _wave,
}


def _wobble(rng: np.random.Generator, n: int, knots: int = 6) -> np.ndarray:
    """Smooth random offsets [n, 2]: a hand is not a ruler, but it does not shake either."""
    knots = min(n, knots)
    offsets = rng.normal(0, 0.04, (knots, 2))
    where = np.linspace(0, knots - 1, n)
    return np.stack([np.interp(where, np.arange(knots), offsets[:, d]) for d in (0, 1)], axis=1)


def draw_sketch(shape: str, rng: np.random.Generator, size: int = 96) -> Image.Image:
    """One ``size`` x ``size`` greyscale sketch of ``shape`` with random pose and stroke."""
    big = size * SUPERSAMPLE
    strokes = SHAPES[shape](rng)
    angle = np.deg2rad(rng.uniform(-25, 25))
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    scale = rng.uniform(0.5, 0.8) * big / 2 * np.array([rng.uniform(0.85, 1.15), 1.0])
    room = big / 2 - scale.max()  # keep the shape on the canvas
    centre = big / 2 + rng.uniform(-0.8, 0.8, size=2) * max(room, 0)
    width = int(rng.integers(1, 4)) * SUPERSAMPLE
    ink = int(rng.integers(0, 60))
    canvas = Image.new("L", (big, big), 255)
    pen = ImageDraw.Draw(canvas)
    for stroke in strokes:
        wobbly = stroke + _wobble(rng, len(stroke))
        points = (wobbly * scale) @ rotation.T + centre
        pen.line([tuple(p) for p in points], fill=ink, width=width, joint="curve")
    return canvas.resize((size, size), Image.Resampling.LANCZOS)


def make_demo_images(
    root: str | os.PathLike,
    *,
    num_classes: int = 10,
    per_class: dict[str, int] | None = None,
    size: int = 96,
    seed: int = 0,
) -> Path:
    """Write ``num_classes`` x ``per_class[split]`` sketches under ``root``; return ``root``.

    ``per_class`` overrides the counts of :data:`DEFAULT_PER_CLASS` (train 12, val 4,
    test 4 images per class). Refuses to write into an existing split folder, so two seeds
    never mix. The images are drawn into ``ROOT.partial`` beside ``root`` and renamed into
    place when all are written, so a killed run never leaves a half-drawn demo behind
    (the next run starts the ``.partial`` folder afresh).
    """
    if not 1 <= num_classes <= len(SHAPES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPES)} (one shape per class)")
    counts = {**DEFAULT_PER_CLASS, **(per_class or {})}
    unknown = sorted(set(counts) - set(SPLIT_DIRS))
    if unknown or counts["train"] < 1 or min(counts.values()) < 0:
        raise ValueError(f"per_class needs train >= 1 and val, test >= 0; got {per_class}")
    final = Path(root)
    for folder in SPLIT_DIRS.values():
        if (final / folder).exists():
            raise FileExistsError(f"{final / folder} exists: remove it or choose another root")
    if final.exists() and any(final.iterdir()):
        raise FileExistsError(f"{final} is not empty: remove it or choose another root")
    root = final.with_name(final.name + ".partial")
    if root.exists():
        shutil.rmtree(root)  # ours by name: what a killed run left
    root.mkdir(parents=True)
    classes = list(SHAPES)[:num_classes]
    label = {name: i for i, name in enumerate(sorted(classes))}  # ImageFolder order
    answers = []
    for split_index, (split, folder) in enumerate(SPLIT_DIRS.items()):
        (root / folder).mkdir(parents=True)
        ids: set[str] = set()
        for class_index, shape in enumerate(classes):
            out = root / folder / (TEST_FOLDER if split == "test" else shape)
            if counts[split]:
                out.mkdir(exist_ok=True)
            for i in range(counts[split]):
                rng = np.random.default_rng([seed, split_index, class_index, i])
                image_id = rng.bytes(8).hex()
                while image_id in ids:  # 64-bit ids: a clash is (nearly) impossible
                    image_id = rng.bytes(8).hex()
                ids.add(image_id)
                sketch = draw_sketch(shape, rng, size)
                sketch.convert("RGB").save(out / f"{image_id}.jpg", quality=90)
                if split == "test":
                    answers.append((image_id, label[shape]))
    with open(root / "test_labels.csv", "w", newline="") as f:
        csv.writer(f).writerows([("Id", "Category"), *sorted(answers)])
    if final.exists():
        final.rmdir()  # empty (checked above); os.replace needs it gone or empty
    os.replace(root, final)
    return final
