"""Named feature sets: several frozen backbones, caption embeddings and class-name scores.

$ python -c "from feature_store import load_features; print(load_features('STORE', 'val', ['image', 'siglip']))"

A store holds any number of feature sets, each a fixed-length float vector per row with
its own entry in ``manifest.json["features"]`` (name, kind, model and revision, library,
pooling, preprocessing, tta, dim, dtype, fingerprint). Two live in the rows' own shards,
as they always have: ``image`` is the ``image_emb`` column and ``text`` the ``text_emb``
column (so every reader written for those columns keeps working). Every other set lives
in its own files, written when the set was added, never touching the rows' shards::

    STORE/features/<name>/<split>/shard-00000.arrow   id + one column <name>, the rows'
                                                       own order, one shard per row shard
    STORE/features/<name>/<split>/state.json ...      a `datasets` dataset per split
    STORE/features/<name>/dataset_dict.json           load_from_disk(STORE/features/<name>)

:func:`load_features` returns any subset as float32 arrays (ids checked row for row),
:func:`feature_store.load_dataset_dict` the DatasetDict with one column per set. Stores
of format 2 have no ``features`` entry: they read as the sets ``image`` and ``text``, and
:func:`feature_store.upgrade_store` writes the entry (metadata only).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.cache import cached, files_of
from feature_store.integrity import verify_files
from feature_store.layout import _matrix, _short, split_rows

# The set entries are the manifest's; re-exported for the readers that import them from here.
from feature_store.manifest import (  # noqa: F401
    BASE_SETS,
    MANIFEST_NAME,
    REBUILD_HINT,
    StoreError,
    StoreInfo,
    base_entries,
    entry,
    entry_fingerprint,
    feature_entries,
    open_store,
)

FEATURES_DIR = "features"
SET_KINDS = ("image", "text", "scores")


def set_features(name: str, dim: int, dtype: str):
    """`datasets.Features` of an added set's shards: the row id and the set's column."""
    import datasets

    return datasets.Features(
        {"id": datasets.Value("string"), name: datasets.List(datasets.Value(dtype), length=dim)}
    )


def set_root(root: str | os.PathLike, name: str) -> Path:
    """Where an added set's files live: ``STORE/features/<name>``."""
    return Path(root) / FEATURES_DIR / name


@dataclass(frozen=True)
class FeatureArrays:
    """Some feature sets of one split as float32 [N, dim] arrays, with the rows' ids,
    labels, captions and paths. Rows an added set failed on hold NaN (see :meth:`missing`;
    failures.csv names them and the set)."""

    ids: list[str]
    labels: np.ndarray
    captions: list[str]
    paths: list[str]
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.features[name]

    def __len__(self) -> int:
        return len(self.ids)

    def missing(self, name: str) -> np.ndarray:
        """True on the rows where set ``name`` has no value (NaN)."""
        return ~np.isfinite(self.features[name]).all(axis=1)


def read_set(info: StoreInfo, e: dict[str, Any], split: str, ids: list[str]):
    """An added set's `datasets.Dataset` for ``split``: shards verified, ids equal to the
    rows' (in order)."""
    import datasets

    split_dir = info.root / e["path"] / split
    records = (e.get("shards") or {}).get(split)
    if records is None or not split_dir.is_dir():
        raise StoreError(
            f"feature set {e['name']!r} has no files for split {split!r} ({split_dir}); rerun "
            f"the data_prep command that added it (--run.out {info.root})."
        )
    verify_files(info, split_dir, records, len(ids))
    try:
        ds = datasets.load_from_disk(str(split_dir))
    except Exception as err:  # noqa: BLE001 - pyarrow/datasets/OS errors all mean "damaged"
        raise StoreError(f"{split_dir} cannot be read ({_short(err)}); {REBUILD_HINT}.") from err
    if _table(ds).column("id").to_pylist() != ids:
        raise StoreError(
            f"{split_dir}: its ids are not the store's rows in order (the set was built for "
            f"another store); redo it with --run.replace_feature {e['name']}."
        )
    return ds


def load_features(
    root: str | os.PathLike, split: str, names: list[str] | tuple[str, ...] | None = None
) -> FeatureArrays:
    """Feature sets ``names`` (all when None) of ``split`` as float32 arrays, dims checked.

    Every shard read is verified against its recorded checksum. The split and each set are
    read and verified once per process while their files are unchanged
    (:mod:`feature_store.cache`); every call returns its own (writable) arrays.
    """
    info = open_store(root)
    wanted = [e["name"] for e in info.features] if names is None else list(names)
    entries = [entry(info, n) for n in wanted]
    rows = split_rows(info, split)
    features = {}
    for e in entries:
        # image/text sit in the rows' own shards; an added set in its own files.
        table = set_table(info, e, split, rows) if e.get("path") else rows.table
        features[e["name"]] = _decoded(
            info, e, split, lambda e=e, t=table: _matrix(t, e["column"], int(e["dim"]))
        )
    return FeatureArrays(
        ids=rows.ids(),
        labels=rows.labels(),
        captions=rows.strings("caption"),
        paths=rows.strings("path"),
        features=features,
    )


def set_table(info: StoreInfo, e: dict[str, Any], split: str, rows):
    """The added set ``e`` of ``split`` as a pyarrow table (memory-mapped), its shards
    verified and its ids checked against the rows' once per process while its files, the
    rows' and the manifest are unchanged."""
    where = info.root.resolve()
    paths = [where / MANIFEST_NAME, *files_of(where / split), *files_of(where / e["path"] / split)]
    return cached(
        (where, "set", e["name"], split),
        paths,
        lambda: _table(read_set(info, e, split, rows.ids())),
    )


def _decoded(info: StoreInfo, e: dict[str, Any], split: str, decode) -> np.ndarray:
    try:
        return decode()
    except Exception as err:  # noqa: BLE001 - a shard whose contents do not fit the entry
        raise StoreError(
            f"feature set {e['name']!r} of {info.root / split} does not match its manifest "
            f"entry ({_short(err)}); rerun the data_prep command that wrote it."
        ) from err


def _table(ds):
    """The pyarrow table under a `datasets.Dataset` (memory-mapped, not copied)."""
    return ds.data.table if hasattr(ds.data, "table") else ds.data
