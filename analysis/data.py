"""Load the store's labelled splits once and draw capped, class-balanced samples from them.

$ python -c "from analysis.data import load_views; print(load_views('STORE').notes)"

Everything is read through ``feature_store`` (open_store / load_arrays): the class list and
dims come from the manifest, never from constants.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feature_store.cli import read_option_file
from feature_store.integrity import non_finite_rows
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
    display_names: list[str] | None = None  # --display_names: shown instead of the store's
    non_finite: dict[str, int] = field(default_factory=dict)  # rows left out, per split

    @property
    def class_names(self) -> list[str]:
        """The names the report shows (and matches captions against)."""
        return self.display_names or self.info.class_names

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


def _finite(arrays: SplitArrays, where: str, notes: list[str]) -> tuple[SplitArrays, int]:
    """Drop rows whose embeddings hold NaN or infinity (sklearn refuses them), with a note."""
    bad = non_finite_rows(arrays)
    if len(bad) == 0:
        return arrays, 0
    ids = [arrays.ids[i] for i in bad[:5]]
    notes.append(
        f"{where}: {len(bad)} of {len(arrays)} rows have NaN or infinite embeddings (ids "
        f"{ids}) and are left out of every section. data_prep lists such rows in "
        "failures.csv instead of storing them: rebuild the store with it."
    )
    return take(arrays, np.setdiff1d(np.arange(len(arrays)), bad)), len(bad)


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


def read_display_names(path: str | Path, class_names: list[str]) -> list[str]:
    """Names to show per class from a ``class,name`` CSV (store class name, name to show,
    e.g. ``n01440764,tench``); classes it does not list keep their store name."""
    text = read_option_file(path, "--display_names", "a class,name CSV file")  # ValueError
    try:
        rows = list(csv.DictReader(io.StringIO(text, newline="")))
    except csv.Error as err:
        raise ValueError(f"--display_names {path} is not a CSV file ({err})") from None
    if not rows or not {"class", "name"} <= set(rows[0]):
        raise ValueError(
            f"--display_names {path} needs a header line class,name and one row per class "
            "(the store's class name, the name to show)"
        )
    given = {r["class"].strip(): (r["name"] or "").strip() for r in rows if r["class"]}
    if not given.keys() & set(class_names):
        raise ValueError(
            f"--display_names {path}: none of its classes is in the store (store classes "
            f"start {class_names[:3]}, the file's {list(given)[:3]}); use the store's names"
        )
    return [given.get(n) or n for n in class_names]


def load_views(store: str | Path, display_names: str | Path | None = None) -> StoreViews:
    """Open the store; missing splits become notes, not errors (the report shows the rest).

    ``display_names``: a ``class,name`` CSV whose names the report shows instead of the
    store's (readable names for WordNet ids, say); bad files raise ValueError."""
    info = open_store(store)
    shown = read_display_names(display_names, info.class_names) if display_names else None
    notes = []
    train_name, val_name = _first(info, TRAIN_NAMES), _first(info, VAL_NAMES)
    train = _labelled(load_arrays(store, train_name)) if train_name else None
    val = _labelled(load_arrays(store, val_name)) if val_name else None
    non_finite = {}
    if train is not None:
        train, non_finite[train_name] = _finite(train, train_name, notes)
    if val is not None:
        val, non_finite[val_name] = _finite(val, val_name, notes)
        if len(val) == 0:
            notes.append(f"The {val_name} split has no labelled rows with finite embeddings.")
            val = None
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
    train_name = train_name if train is not None else None
    val_name = val_name if val is not None else None
    return StoreViews(info, train, val, notes, train_name, val_name, shown, non_finite)


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


def class_subset(
    labels: np.ndarray,
    class_names: list[str],
    spec: int | str | Sequence[str] | None,
    also: list[str] | None = None,
) -> np.ndarray:
    """Label ids to draw on 2-D maps. ``spec``: a count (``10``, ``"10"``: the most frequent
    classes, ties by label order, so the map is populated), a list of names taken as they
    are (``["a,b", "001"]``: names with commas or digits only), or a string of comma-
    separated names (a string that is itself a class name is that class). Each name is one
    of ``class_names`` or of ``also`` (the store's names when others are shown).

    ValueError for a count below 1, an empty list or names the store does not have.
    """
    if spec is None:
        spec = 10
    if isinstance(spec, str) and re.fullmatch(r"\s*[-+]?\d+\s*", spec):
        spec = int(spec)
    if isinstance(spec, int):
        if spec < 1:
            raise ValueError(
                f"--classes {spec} selects no class; give a count of at least 1 (the most "
                "frequent classes) or class names, e.g. --classes cat,dog"
            )
        counts = np.bincount(labels, minlength=len(class_names))
        order = np.argsort(-counts, kind="stable")
        return np.sort(order[:spec][counts[order[:spec]] > 0])
    index = {n: i for names in (also or [], class_names) for i, n in enumerate(names)}
    if isinstance(spec, str) and spec not in index and spec.strip().startswith("["):
        raise ValueError(  # a list jsonargparse could not read as strings: [001, 10]
            f"--classes {spec} is not a list of names; quote each name, e.g. --classes "
            """'["001", "a,b"]'"""
        )
    if isinstance(spec, str):
        wanted = [spec] if spec in index else [w.strip() for w in spec.split(",") if w.strip()]
    else:
        wanted = [str(w) for w in spec]
    if not wanted:
        shown = spec if isinstance(spec, str) else json.dumps(list(spec))
        raise ValueError(f"--classes {shown!r} names no class; give a count or class names")
    unknown = [w for w in wanted if w not in index]
    if unknown:
        raise ValueError(
            f"--classes names {unknown} are not in the store's class list "
            f"(first few: {class_names[:5]}); pass a count or names from the manifest (a "
            'name with a comma or of digits only as a list: --classes \'["a,b", "001"]\').'
        )
    return np.array(sorted({index[w] for w in wanted}), dtype=np.int64)
