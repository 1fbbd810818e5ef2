"""Synthetic feature stores with a known structure, for tests, benchmarks and examples.

$ python -c "from feature_store.synthetic import make_synthetic_store; make_synthetic_store('/tmp/s')"

Two stores of image and text only (:func:`make_synthetic_store`, :func:`make_caption_mix_store`)
here; stores of any number of named feature sets, each knowing a chosen part of the classes,
in :mod:`feature_store.synthetic_sets`.
"""

from __future__ import annotations

import os

import numpy as np

from feature_store.manifest import StoreInfo
from feature_store.writer import write_store

SIGNALS = ("both", "image", "text", "joint")


def _features(rng, labels, means, noise, dim):
    return means[labels] + noise * rng.standard_normal((len(labels), dim)).astype(np.float32)


def make_synthetic_store(
    root: str | os.PathLike,
    *,
    num_classes: int = 5,
    per_class: dict[str, int] | None = None,
    image_dim: int = 16,
    text_dim: int = 12,
    signal: str = "both",
    noise: float = 0.5,
    emb_dtype: str = "float32",
    seed: int = 0,
) -> StoreInfo:
    """Write a store whose labels are carried by the modalities named in ``signal``.

    - ``both``: each modality alone separates the classes;
    - ``image`` / ``text``: only that modality does, the other is pure noise;
    - ``joint``: each modality alone is ambiguous (it knows only one bit of the label's
      two-bit code: image gives ``label // 2``, text gives ``label % 2``), together decisive.
      Needs ``num_classes == 4``.

    Test labels are written as -1 (unknown), as in a Kaggle test folder.
    """
    if signal not in SIGNALS:
        raise ValueError(f"signal must be one of {SIGNALS}, got {signal!r}")
    if signal == "joint" and num_classes != 4:
        raise ValueError("signal='joint' needs num_classes=4 (a two-bit code)")
    per_class = per_class or {"train": 40, "val": 10, "test": 6}
    rng = np.random.default_rng(seed)
    if signal == "joint":
        img_means = 2.0 * rng.standard_normal((2, image_dim)).astype(np.float32)
        txt_means = 2.0 * rng.standard_normal((2, text_dim)).astype(np.float32)
    else:
        img_means = 2.0 * rng.standard_normal((num_classes, image_dim)).astype(np.float32)
        txt_means = 2.0 * rng.standard_normal((num_classes, text_dim)).astype(np.float32)
    class_names = [f"class_{i:03d}" for i in range(num_classes)]
    splits = {}
    for split, n in per_class.items():
        labels = np.repeat(np.arange(num_classes), n)
        rng.shuffle(labels)
        if signal == "joint":
            img = _features(rng, labels // 2, img_means, noise, image_dim)
            txt = _features(rng, labels % 2, txt_means, noise, text_dim)
        else:
            img_labels = labels if signal in ("both", "image") else rng.permutation(labels)
            txt_labels = labels if signal in ("both", "text") else rng.permutation(labels)
            img = _features(rng, img_labels, img_means, noise, image_dim)
            txt = _features(rng, txt_labels, txt_means, noise, text_dim)
        if signal == "image":
            txt = noise * rng.standard_normal(txt.shape).astype(np.float32)
        if signal == "text":
            img = noise * rng.standard_normal(img.shape).astype(np.float32)
        ids = [f"{split}_{i:05d}" for i in range(len(labels))]
        splits[split] = {
            "id": ids,
            "label": labels if split != "test" else np.full(len(labels), -1),
            "path": [
                f"{split}/{class_names[lab]}/{i}.png" for i, lab in zip(ids, labels, strict=True)
            ],
            "caption": [f"a sketch of a {class_names[lab]}" for lab in labels],
            "image_emb": img,
            "text_emb": txt,
        }
    return write_store(
        root,
        splits=splits,
        class_names=class_names,
        emb_dtype=emb_dtype,
        extra_manifest={"synthetic": {"signal": signal, "noise": noise, "seed": seed}},
    )


CAPTION_KINDS = ("informative", "neutral", "misleading", "noise")


def caption_kind(caption: str, label: int, class_names: list[str]) -> str:
    """The kind of a caption written by :func:`make_caption_mix_store`, read back from its text."""
    if caption.startswith("noise"):
        return "noise"
    if label >= 0 and caption.endswith(class_names[label]):
        return "informative"
    return "misleading" if caption.startswith("a sketch of") else "neutral"


def make_caption_mix_store(
    root: str | os.PathLike,
    *,
    num_classes: int = 20,
    per_class: dict[str, int] | None = None,
    image_dim: int = 64,
    text_dim: int = 32,
    image_rank: int | None = None,
    image_noise: float = 1.0,
    text_noise: float = 0.5,
    caption_mix: dict[str, float] | None = None,
    seed: int = 0,
) -> StoreInfo:
    """A store whose captions carry class information on a chosen share of the rows.

    Image embeddings: a class mean in a random ``image_rank``-dim subspace plus isotropic
    noise of std ``image_noise`` in all ``image_dim`` dims (so the Bayes-optimal rule is the
    nearest class mean, and :func:`bayes_accuracy` gives its accuracy).
    Text embeddings, per row, by ``caption_mix`` (shares summing to 1):

    - ``informative``: the row's class text mean + noise (caption "a sketch of a <class>");
    - ``neutral``: one shared mean + noise, the same for every class (caption "a sketch");
    - ``misleading``: another class's text mean + noise (caption "a sketch of a <other>");
    - ``noise``: pure noise, no structure at all (caption "noise").

    Every split, test included, keeps its true labels, so benchmarks can score any split;
    :func:`caption_kind` reads a row's kind back from its caption.
    """
    mix = caption_mix or {"informative": 0.5, "neutral": 0.5}
    unknown = set(mix) - set(CAPTION_KINDS)
    if unknown or abs(sum(mix.values()) - 1) > 1e-6:
        raise ValueError(f"caption_mix needs shares of {CAPTION_KINDS} summing to 1, got {mix}")
    per_class = per_class or {"train": 40, "val": 10, "test": 20}
    rng = np.random.default_rng(seed)
    rank = image_rank or image_dim
    basis = np.linalg.qr(rng.standard_normal((image_dim, rank)))[0].T  # [rank, image_dim]
    img_means = (rng.standard_normal((num_classes, rank)) @ basis).astype(np.float32)
    txt_means = 2.0 * rng.standard_normal((num_classes + 1, text_dim)).astype(np.float32)
    class_names = [f"class_{i:03d}" for i in range(num_classes)]
    kinds, shares = list(mix), np.array(list(mix.values()))
    splits = {}
    for split, n in per_class.items():
        labels = np.repeat(np.arange(num_classes), n)
        rng.shuffle(labels)
        img = _features(rng, labels, img_means, image_noise, image_dim)
        row_kind = rng.choice(len(kinds), size=len(labels), p=shares)
        other = (labels + rng.integers(1, num_classes, size=len(labels))) % num_classes
        text_class = (
            np.where(row_kind == kinds.index("misleading"), other, labels)
            if ("misleading" in kinds)
            else labels
        )
        neutral = np.array([kinds[k] == "neutral" for k in row_kind])
        text_class = np.where(neutral, num_classes, text_class)  # the shared neutral mean
        txt = _features(rng, text_class, txt_means, text_noise, text_dim)
        is_noise = np.array([kinds[k] == "noise" for k in row_kind])
        txt[is_noise] = rng.standard_normal((int(is_noise.sum()), text_dim)).astype(np.float32)
        captions = [
            "noise"
            if kinds[k] == "noise"
            else "a sketch"
            if kinds[k] == "neutral"
            else f"a sketch of a {class_names[c]}"
            for k, c in zip(row_kind, text_class, strict=True)
        ]
        ids = [f"{split}_{i:05d}" for i in range(len(labels))]
        splits[split] = {
            "id": ids,
            "label": labels,
            "caption": captions,
            "image_emb": img,
            "text_emb": txt,
        }
    extra = {
        "synthetic": {
            "kind": "caption_mix",
            "caption_mix": mix,
            "image_noise": image_noise,
            "text_noise": text_noise,
            "seed": seed,
        }
    }
    info = write_store(root, splits=splits, class_names=class_names, extra_manifest=extra)
    np.save(os.path.join(root, "image_means.npy"), img_means)
    return info


def bayes_accuracy(root: str | os.PathLike, split: str = "test") -> float:
    """Accuracy of the Bayes-optimal image classifier (nearest true class mean) of a
    :func:`make_caption_mix_store` store on ``split``: the ceiling for the image modality."""
    from feature_store.layout import load_arrays

    means = np.load(os.path.join(root, "image_means.npy"))
    arrays = load_arrays(root, split)
    dist = ((arrays.image_emb[:, None, :] - means[None]) ** 2).sum(-1)
    return float((dist.argmin(1) == arrays.labels).mean())
