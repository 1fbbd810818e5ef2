"""Synthetic feature stores with a known structure, for tests, benchmarks and examples.

$ python -c "from feature_store.synthetic import make_synthetic_store; make_synthetic_store('/tmp/s')"
"""

from __future__ import annotations

import os

import numpy as np

from feature_store.layout import StoreInfo, write_store

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
