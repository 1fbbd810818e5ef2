"""Read the feature-store layout: splits as verified datasets and arrays; failures.csv.

$ python -c "from feature_store import open_store; print(open_store('stores/demo').splits)"

The manifest (open_store, StoreInfo, StoreError, make_manifest, write_manifest) is
feature_store/manifest.py's, re-exported here for the readers that import it from this
module. The other files (shards, split indexes, dataset_dict.json) are written by
feature_store/writer.py; docs/architecture.md describes the whole contract.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.atomic import write_csv
from feature_store.cache import cached, files_of
from feature_store.compat import dataset_files
from feature_store.integrity import verify_split

# Re-exported: readers import the manifest's names from this module too.
from feature_store.manifest import (  # noqa: F401
    FORMAT_VERSION,
    MANIFEST_NAME,
    REBUILD_HINT,
    StoreError,
    StoreInfo,
    make_manifest,
    open_store,
    write_manifest,
)

FAILURES_NAME = "failures.csv"
DATASET_DICT_NAME = "dataset_dict.json"  # makes the root a `datasets.DatasetDict` directory
COLUMNS = ("id", "label", "path", "caption", "image_emb", "text_emb")
# One row per input that has no row in the store: the file, why, its split and id; and
# one per row an added feature set could not compute (``feature`` = the set's name: the
# row stays, that set holds NaN there). ``feature`` is empty for rows that are absent.
FAILURES_COLUMNS = ("file", "reason", "split", "id", "feature")


@dataclass(frozen=True)
class SplitArrays:
    """One split as contiguous arrays: what training, prediction and analysis consume."""

    ids: list[str]
    labels: np.ndarray  # int64 [N], -1 where unknown
    image_emb: np.ndarray  # float32 [N, image_dim]
    text_emb: np.ndarray  # float32 [N, text_dim]
    captions: list[str]
    paths: list[str]

    def __len__(self) -> int:
        return len(self.ids)


def store_features(
    image_dim: int, text_dim: int, emb_dtype: str, class_names: list[str] | None = None
):
    """The store's `datasets.Features`: the column contract every writer uses.

    ``label`` is a ``ClassLabel`` of ``class_names`` (stored as int64; -1 = unknown, which
    ClassLabel accepts); without class names a plain int64 (format 1 stores).
    """
    import datasets

    label = (
        datasets.ClassLabel(names=list(class_names))
        if class_names is not None
        else datasets.Value("int64")
    )
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "label": label,
            "path": datasets.Value("string"),
            "caption": datasets.Value("string"),
            "image_emb": datasets.List(datasets.Value(emb_dtype), length=image_dim),
            "text_emb": datasets.List(datasets.Value(emb_dtype), length=text_dim),
        }
    )


def write_failures(root: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """``root/failures.csv`` (:data:`FAILURES_COLUMNS`), written to a temp name, renamed."""
    path = Path(root) / FAILURES_NAME
    write_csv(path, FAILURES_COLUMNS, ([row.get(k, "") for k in FAILURES_COLUMNS] for row in rows))
    return path


def read_failures(root: str | os.PathLike, split: str | None = None) -> list[dict[str, str]]:
    """The rows of ``root/failures.csv`` (of one split when given); [] when absent."""
    path = Path(root) / FAILURES_NAME
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if split is None or r.get("split") == split]


def load_split(root: str | os.PathLike, split: str):
    """The split as a `datasets.Dataset` (memory-mapped Arrow, nothing copied).

    Each shard's size and checksum are checked against the manifest first; a damaged,
    missing or unreadable shard raises :class:`StoreError` naming it and the fix. Read once
    per process while its files are unchanged (:mod:`feature_store.cache`); each call gets
    its own `Dataset` object over the shared memory map (``set_format`` on one changes no
    other).
    """
    return split_rows(open_store(root), split).dataset.with_format(None)


class SplitRows:
    """One split as this process read it: the verified, memory-mapped dataset, and its
    ids, labels, captions and paths decoded once (the accessors hand out copies).

    The embedding matrices are converted from :attr:`table` at every call (:func:`_matrix`:
    a fresh writable float32 array, no file read): keeping decoded matrices and copying them out cost a
    fit+test+predict more than converting again (a fit reads its train split once; the
    copy of it outweighed what val and test saved, bench/README.md).
    """

    def __init__(self, dataset) -> None:
        self.dataset = dataset
        self.table = dataset.data.table if hasattr(dataset.data, "table") else dataset.data
        self._decoded: dict[str, Any] = {}

    def _once(self, column: str, decode):
        if column not in self._decoded:
            self._decoded[column] = decode()
        return self._decoded[column]

    def ids(self) -> list[str]:
        return self.strings("id")

    def strings(self, column: str) -> list[str]:
        return list(self._once(column, lambda: self.table.column(column).to_pylist()))

    def labels(self) -> np.ndarray:
        """int64 [N], -1 where unknown."""
        return self._once(
            "label", lambda: self.table.column("label").to_numpy().astype(np.int64)
        ).copy()


def split_rows(info: StoreInfo, split: str) -> SplitRows:
    """``split`` of the store ``info`` opened, read and verified once per process while the
    manifest and the split's files are unchanged (:func:`feature_store.cache.cached`)."""
    where = info.root.resolve()
    return cached(
        (where, "rows", split),
        [where / MANIFEST_NAME, *files_of(where / split)],
        lambda: SplitRows(_read_split(info, split)),
    )


def _read_split(info: StoreInfo, split: str):
    import datasets

    path = info.root / split
    if not path.is_dir():
        raise StoreError(
            f"{info.root} has no split {split!r} (it has {info.splits}); "
            "check the split names in the prep config."
        )
    verify_split(info.root, split, info)
    try:
        if not dataset_files(path)[0]:  # format 1: a split without any shard file
            feats = store_features(info.image_dim, info.text_dim, info.manifest["emb_dtype"])
            return datasets.Dataset.from_dict({k: [] for k in feats}, features=feats)
        return datasets.load_from_disk(str(path))
    except Exception as err:  # noqa: BLE001 - pyarrow/datasets/OS errors all mean "damaged"
        raise StoreError(f"{path} cannot be read ({_short(err)}); {REBUILD_HINT}.") from err


def _short(err: BaseException) -> str:
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text[:200]


def _matrix(table, column: str, dim: int) -> np.ndarray:
    """A fixed-size-list Arrow column as a float32 [N, dim] array, without a row loop.

    The array is writable and owns its memory (float32 columns come out of Arrow as
    read-only views; torch.from_numpy and in-place numpy code assume writable memory).
    """
    col = table.column(column).combine_chunks()
    flat = col.flatten().to_numpy(zero_copy_only=False)
    matrix = np.ascontiguousarray(flat.reshape(len(col), dim), dtype=np.float32)
    return matrix if matrix.flags.writeable else matrix.copy()


def load_arrays(root: str | os.PathLike, split: str) -> SplitArrays:
    """One split's columns as numpy arrays, dims checked against the manifest.

    Read and decoded once per process while the store is unchanged; every call returns
    its own (writable) arrays.
    """
    info = open_store(root)
    rows = split_rows(info, split)
    missing = [c for c in COLUMNS if c not in rows.table.column_names]
    if missing:
        raise StoreError(f"{info.root / split} lacks columns {missing}; rebuild the store.")
    try:
        return SplitArrays(
            ids=rows.ids(),
            labels=rows.labels(),
            image_emb=_matrix(rows.table, "image_emb", info.image_dim),
            text_emb=_matrix(rows.table, "text_emb", info.text_dim),
            captions=rows.strings("caption"),
            paths=rows.strings("path"),
        )
    except Exception as err:  # noqa: BLE001 - a shard whose contents do not fit the schema
        raise StoreError(
            f"{info.root / split} cannot be read ({_short(err)}); {REBUILD_HINT}."
        ) from err
