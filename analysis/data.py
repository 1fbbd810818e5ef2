"""Load the store's labelled splits once and draw capped, class-balanced samples from them.

$ python -c "from analysis.data import load_views; print(load_views('STORE').notes)"

Everything is read through ``feature_store`` (open_store / load_arrays): the class list and
dims come from the manifest, never from constants.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feature_store.layout import SplitArrays, StoreInfo, load_arrays, open_store

TRAIN_NAMES = ("train",)
VAL_NAMES = ("val", "validation", "valid")


@dataclass
class StoreViews:
    """The store's manifest plus its train split and (when present) val split."""

    info: StoreInfo
    train: SplitArrays | None
    val: SplitArrays | None
    notes: list[str] = field(default_factory=list)
    train_name: str | None = None  # the store's split names behind ``train`` and ``val``
    val_name: str | None = None

    @property
    def class_names(self) -> list[str]:
        return self.info.class_names

    def modalities(self, split: SplitArrays) -> dict[str, np.ndarray]:
        """Image, text and their concatenation, as the probes and clusterings see them."""
        return {
            "image": split.image_emb,
            "text": split.text_emb,
            "concat": np.concatenate([split.image_emb, split.text_emb], axis=1),
        }


def _first(info: StoreInfo, names: tuple[str, ...]) -> str | None:
    return next((s for s in names if s in info.splits), None)


def _labelled(arrays: SplitArrays) -> SplitArrays:
    """Drop rows whose label is unknown (-1), e.g. a Kaggle test split saved as train."""
    keep = np.flatnonzero(arrays.labels >= 0)
    if len(keep) == len(arrays):
        return arrays
    return take(arrays, keep)


def take(arrays: SplitArrays, idx: np.ndarray) -> SplitArrays:
    """The rows ``idx`` of a split, in that order."""
    idx = np.asarray(idx, dtype=np.int64)
    return SplitArrays(
        ids=[arrays.ids[i] for i in idx],
        labels=arrays.labels[idx],
        image_emb=arrays.image_emb[idx],
        text_emb=arrays.text_emb[idx],
        captions=[arrays.captions[i] for i in idx],
        paths=[arrays.paths[i] for i in idx],
    )


def load_views(store: str | Path) -> StoreViews:
    """Open the store; missing splits become notes, not errors (the report shows the rest)."""
    info = open_store(store)
    notes = []
    train_name, val_name = _first(info, TRAIN_NAMES), _first(info, VAL_NAMES)
    train = _labelled(load_arrays(store, train_name)) if train_name else None
    val = _labelled(load_arrays(store, val_name)) if val_name else None
    if train is None:
        notes.append(f"The store has no train split (splits: {info.splits}).")
    if val is None:
        notes.append(
            f"The store has no val split (splits: {info.splits}): probes and k-NN, which "
            "choose and score on val, are skipped."
        )
    if train is not None and len(train) == 0:
        notes.append("The train split has no labelled rows.")
        train = None
    return StoreViews(info, train, val, notes, train_name if train is not None else None, val_name)


def balanced_sample(labels: np.ndarray, cap: int | None, *, seed: int = 0) -> np.ndarray:
    """Sorted indices of ``min(cap, n)`` rows, spread as evenly as possible over classes.

    Each class keeps its ``q`` first rows of a random order, ``q`` the largest quota whose
    total fits ``cap`` (a class with fewer rows keeps them all, so rare classes are not
    crowded out); the rows left to reach ``cap`` are taken at random from the next rank.
    ``cap=None`` keeps everything.
    """
    n = len(labels)
    if cap is None or n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    order = perm[np.argsort(labels[perm], kind="stable")]
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.arange(n) - starts  # position of each row within its class, random order
    counts = np.unique(labels, return_counts=True)[1]
    lo, hi = 0, int(counts.max())  # largest q with sum(min(counts, q)) <= cap
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if np.minimum(counts, mid).sum() <= cap else (lo, mid - 1)
    keep = order[rank < lo]
    extra = order[rank == lo]
    keep = np.concatenate([keep, rng.choice(extra, size=cap - len(keep), replace=False)])
    return np.sort(keep)


def class_subset(labels: np.ndarray, class_names: list[str], spec: str | None) -> np.ndarray:
    """Label ids to draw on 2-D maps: ``spec`` is a count ("12") or comma-separated names.

    A count takes the most frequent classes (ties by label order) so the map is populated.
    """
    if spec is None:
        spec = "10"
    if spec.strip().isdigit():
        counts = np.bincount(labels, minlength=len(class_names))
        order = np.argsort(-counts, kind="stable")
        return np.sort(order[: int(spec)][counts[order[: int(spec)]] > 0])
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [w for w in wanted if w not in class_names]
    if unknown:
        raise ValueError(
            f"--classes names {unknown} are not in the store's class list "
            f"(first few: {class_names[:5]}); pass a count or names from the manifest."
        )
    return np.array(sorted(class_names.index(w) for w in wanted), dtype=np.int64)
