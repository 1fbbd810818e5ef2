"""Synthetic feature stores with a known structure, for tests, benchmarks and examples.

$ python -c "from feature_store.synthetic import make_synthetic_store; make_synthetic_store('/tmp/s')"

Two stores of image and text only (:func:`make_synthetic_store`, :func:`make_caption_mix_store`)
and one of any number of named feature sets, each knowing a chosen part of the classes
(:func:`make_feature_sets_store`, :class:`SyntheticSet`).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

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


@dataclass(frozen=True)
class SyntheticSet:
    """One feature set of :func:`make_feature_sets_store` and the information it carries.

    - ``kind``: image, text or scores (a scores set's dim is the number of classes);
    - ``classes``: the part of the class list the set knows, as (start, stop) fractions:
      ``(0, 0.5)`` the first half. Rows of the other classes all get the set's neutral
      vector plus noise, so the set tells "not one of mine" but not which;
    - ``rows``: the share of its classes' rows that carry their class (a caption that names
      it); the other rows are neutral too;
    - ``separation``: image/text: every class mean is a random unit direction times this, in
      units of the noise's std per dim (two classes' means lie ``separation * sqrt(2)``
      apart whatever the dim); scores: the height of the peak over unit noise. 0: pure noise.

    A scores set is a noisy class prior: each row's peak sits at its true class on the rows
    that carry their class, at a random class on the others (so argmax accuracy is about
    ``rows`` times the known share, when the peak clears the noise).
    """

    name: str
    kind: str = "image"
    dim: int | None = 32
    classes: tuple[float, float] = (0.0, 1.0)
    rows: float = 1.0
    separation: float = 3.0
    dtype: str = "float32"


def make_feature_sets_store(
    root: str | os.PathLike,
    *,
    sets: list[SyntheticSet],
    num_classes: int = 20,
    per_class: dict[str, int] | None = None,
    image_from: str | None = None,
    text_from: str | None = None,
    test_labels: bool = True,
    seed: int = 0,
) -> StoreInfo:
    """A store of named feature sets whose information is known (:class:`SyntheticSet`).

    Every set is added with :func:`feature_store.add_feature_set`, as a user's arrays would
    be. The rows' own ``image`` and ``text`` sets (what today's training reads) are copies of
    the sets named ``image_from`` (default: the first image set) and ``text_from`` (default:
    the first text set, else the first set after ``image_from``). ``test_labels``: keep the
    test split's true labels (benchmarks score it) or write -1 as a Kaggle test folder has.
    """
    from feature_store.set_writer import add_feature_set

    per_class = per_class or {"train": 30, "val": 10, "test": 10}
    names = [s.name for s in sets]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"sets: give at least one set, each name once (got {names})")
    image_from = image_from or next((s.name for s in sets if s.kind == "image"), names[0])
    after = names[(names.index(image_from) + 1) % len(names)] if image_from in names else None
    text_from = text_from or next((s.name for s in sets if s.kind == "text"), after)
    unknown = sorted({image_from, text_from} - set(names), key=str)
    if unknown:
        raise ValueError(f"image_from/text_from name no set: {unknown} (sets: {names})")
    rng = np.random.default_rng(seed)
    class_names = [f"class_{i:03d}" for i in range(num_classes)]
    labels = {}
    for split, n in per_class.items():
        labels[split] = np.repeat(np.arange(num_classes), n)
        rng.shuffle(labels[split])
    vectors = {
        s.name: _set_vectors(s, labels, num_classes, np.random.default_rng([seed, i]))
        for i, s in enumerate(sets)
    }
    by_name = {s.name: s for s in sets}
    half = {by_name[image_from].dtype, by_name[text_from].dtype} == {"float16"}
    splits = {}
    for split, lab in labels.items():
        ids = [f"{split}_{i:05d}" for i in range(len(lab))]
        splits[split] = {
            "id": ids,
            "label": lab if (test_labels or split != "test") else np.full(len(lab), -1),
            "path": [f"{split}/{class_names[c]}/{i}.png" for i, c in zip(ids, lab, strict=True)],
            "caption": ["a sketch"] * len(lab),
            "image_emb": vectors[image_from][split],
            "text_emb": vectors[text_from][split],
        }
    models = {k: {"name": f"synthetic:{v}", "library": "synthetic"}
              for k, v in (("image", image_from), ("text", text_from))}  # fmt: skip
    described = {"kind": "feature_sets", "image_from": image_from, "text_from": text_from,
                 "seed": seed, "sets": [dataclasses.asdict(s) for s in sets]}  # fmt: skip
    write_store(root, splits=splits, class_names=class_names,
                emb_dtype="float16" if half else "float32",
                extra_manifest={"models": models, "synthetic": described})  # fmt: skip
    for s in sets:
        spec = {k: v for k, v in dataclasses.asdict(s).items() if k not in ("name", "kind", "dim")}
        entry = {"name": s.name, "kind": s.kind, "model": "synthetic", "library": "synthetic",
                 "synthetic": {**spec, "seed": seed}, "dtype": s.dtype}  # fmt: skip
        add_feature_set(root, entry, vectors.pop(s.name))
    from feature_store.layout import open_store

    return open_store(root)


def _set_vectors(s: SyntheticSet, labels: dict[str, np.ndarray], num_classes: int, rng):
    """Each split's [rows, dim] float32 vectors of set ``s`` for the rows' ``labels``."""
    if s.kind not in ("image", "text", "scores"):
        raise ValueError(f"set {s.name!r}: kind must be image, text or scores, got {s.kind!r}")
    dim = num_classes if s.kind == "scores" else s.dim
    if not dim or dim < 1:
        raise ValueError(f"set {s.name!r}: dim must be >= 1 for an image or text set")
    lo, hi = (round(f * num_classes) for f in s.classes)
    known = np.zeros(num_classes, dtype=bool)
    known[lo:hi] = True
    means = rng.standard_normal((num_classes, dim)).astype(np.float32)
    means *= s.separation / np.linalg.norm(means, axis=1, keepdims=True)
    out = {}
    for split, lab in labels.items():
        carried = known[lab] & (rng.random(len(lab)) < s.rows)
        noise = rng.standard_normal((len(lab), dim), dtype=np.float32)
        if s.kind == "scores":  # the peak: the true class where carried, a random one elsewhere
            peak = np.where(carried, lab, rng.integers(0, num_classes, size=len(lab)))
            noise[np.arange(len(lab)), peak] += s.separation
        else:
            noise[carried] += means[lab[carried]]
        out[split] = noise
    return out
