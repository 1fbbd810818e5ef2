"""Synthetic stores of named feature sets whose information is known, for tests and benchmarks.

$ python -c "from feature_store.synthetic_sets import SyntheticSet as S, make_feature_sets_store as m; m('/tmp/h', sets=[S('a', classes=(0, .5)), S('b', classes=(.5, 1))])"

Each set (:class:`SyntheticSet`) knows a chosen part of the classes, on a chosen share of the
rows, at a chosen separation; pure-noise sets and class-prior score sets are special cases.
The sets are independent given the class, so :func:`set_bayes_accuracy` gives the best any
pipeline can do on any subset of them (bench/feature_sets_stores.py builds the bench's
stores from these).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np

from feature_store.layout import StoreInfo
from feature_store.writer import write_store

SET_MEANS = "set_means.npz"  # a feature-sets store's true class means, per set


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
    drawn = [_set_vectors(s, labels, num_classes, np.random.default_rng([seed, i]))
             for i, s in enumerate(sets)]  # fmt: skip
    vectors = {s.name: v for s, (v, _) in zip(sets, drawn, strict=True)}
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
    # The true class means, for set_bayes_accuracy (beside the store, as image_means.npy).
    np.savez(
        os.path.join(root, SET_MEANS), **{s.name: m for s, (_, m) in zip(sets, drawn, strict=True)}
    )
    from feature_store.layout import open_store

    return open_store(root)


def _set_vectors(s: SyntheticSet, labels: dict[str, np.ndarray], num_classes: int, rng):
    """Each split's [rows, dim] float32 vectors of set ``s`` for the rows' ``labels``, and
    the class means ([classes, dim]; zero for the classes the set does not know)."""
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
    means[~known] = 0  # the neutral vector: rows of unknown classes carry no class
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
    return out, means


def set_bayes_accuracy(root: str | os.PathLike, split: str, names: list[str]) -> float:
    """Accuracy on ``split`` of the Bayes-optimal rule over sets ``names`` of a
    :func:`make_feature_sets_store` store: each row's class by the true likelihoods (the sets
    are independent given the class, classes equally likely). The ceiling of any pipeline on
    those sets, so the margin the data allows over a single set."""
    from feature_store.layout import open_store
    from feature_store.sets import load_features

    info = open_store(root)
    specs = {d["name"]: d for d in info.manifest["synthetic"]["sets"]}
    means = np.load(os.path.join(root, SET_MEANS))
    arrays = load_features(root, split, names)
    classes = info.num_classes
    loglik = np.zeros((len(arrays), classes))
    for name in names:
        spec, x = specs[name], arrays[name].astype(np.float64)
        lo, hi = (round(f * classes) for f in spec["classes"])
        carry = np.zeros(classes)
        carry[lo:hi] = spec["rows"]  # P(a row of class c carries its class)
        with np.errstate(divide="ignore"):  # log 0 = -inf: never (or always) carried
            log_carry, log_rest = np.log(carry)[None], np.log1p(-carry)[None]
        if spec["kind"] == "scores":
            # log sum_k P(peak = k | c) N(s; sep e_k, I) / N(s; 0, I)
            e = spec["separation"] * x - spec["separation"] ** 2 / 2
            rest = log_rest - np.log(classes) + _logsumexp(e)[:, None]
            loglik += np.logaddexp(log_carry + e, rest)
        else:
            # log [carry N(x; mu_c, I) + (1 - carry) N(x; 0, I)] / N(x; 0, I)
            mu = means[name].astype(np.float64)
            e = x @ mu.T - (mu**2).sum(1)[None] / 2
            loglik += np.logaddexp(log_carry + e, log_rest)
    return float((loglik.argmax(1) == arrays.labels).mean())


def _logsumexp(a: np.ndarray) -> np.ndarray:
    top = a.max(axis=1)
    return top + np.log(np.exp(a - top[:, None]).sum(axis=1))
