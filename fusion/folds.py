"""Cross-validation folds over a store's train+val rows: a pure function of the data.

$ python train.py fit --config configs/concat.yaml --data.folds 5 --data.fold 0
$ python train.py fit --config configs/concat.yaml --data.folds 5 --data.fold 0 \\
      --data.group_regex '^(.*)_aug\\d+$'      # augmented copies of one image share a fold

The fold of each row depends only on (ids, labels, groups, K, seed): rows are sorted by
id before scikit-learn's ``StratifiedKFold`` (or ``StratifiedGroupKFold`` when a grouping
rule is given) splits them with a fixed ``random_state``, so the folds are the same on
every machine, in every process and on every rerun, whatever order the store holds rows in.

A grouping rule is a regular expression searched in each row's id (or path, with
``group_on='path'``); the group is its first capture group (the whole match when it has
none). Rows it does not match are their own group.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold


def group_keys(keys: Sequence[str], regex: str) -> list[str]:
    """The group of each key under ``regex`` (first capture group, else the whole match)."""
    try:
        pattern = re.compile(regex)
    except re.error as err:
        raise ValueError(f"--data.group_regex {regex!r} is not a valid regex ({err})") from err
    groups = []
    for key in keys:
        m = pattern.search(key)
        groups.append(key if m is None else (m.group(1) if pattern.groups else m.group(0)))
    return groups


def assign_folds(
    ids: Sequence[str],
    labels: np.ndarray,
    *,
    k: int,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> np.ndarray:
    """The fold (0..k-1) of every row, aligned with ``ids`` as given.

    Stratified on ``labels``; with ``groups``, rows of one group always share a fold
    (``StratifiedGroupKFold``). Raises ValueError for a K the data cannot support.
    """
    ids, labels = list(ids), np.asarray(labels)
    if k < 2:
        raise ValueError(f"--data.folds must be >= 2, got {k}")
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate ids among train+val rows; folds need unique ids")
    n_groups = len(set(groups)) if groups is not None else len(ids)
    if k > n_groups:
        raise ValueError(f"--data.folds {k} is more than the {n_groups} rows/groups to split")
    order = sorted(range(len(ids)), key=ids.__getitem__)  # the store's row order is irrelevant
    y = labels[order]
    if groups is None:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y)
    else:
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        splits = splitter.split(np.zeros(len(y)), y, [groups[i] for i in order])
    folds = np.full(len(ids), -1, dtype=np.int64)
    for fold, (_, held_out) in enumerate(splits):
        folds[np.asarray(order)[held_out]] = fold
    return folds
