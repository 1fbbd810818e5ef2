"""Writing an added feature set: from arrays in one call, or data_prep's extracted shards.

$ python -c "import numpy as np, feature_store as fs; fs.add_feature_set('STORE', {'name': 'dino', 'kind': 'image', 'model': 'facebook/dinov2-giant'}, {s: np.load(f'{s}.npy') for s in ('train', 'val', 'test')})"

Both ways end in :func:`register_set`: the set's split indexes, its record beside data_prep's
markers, its failures.csv rows and, last, its manifest entry (fingerprint by
:func:`feature_store.sets.entry_fingerprint`). The rows' shards and every other set's files
are never opened for writing::

    STORE/features/<name>/<split>/shard-0000k.arrow   id + <name>, one per row shard k
    STORE/_prep/features/<name>/entry.json            the entry and failures, re-listed by
                                                       data_prep when a rerun of the rows
                                                       rewrites the manifest
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.layout import (
    COLUMNS,
    FORMAT_VERSION,
    StoreError,
    StoreInfo,
    open_store,
    read_failures,
    write_failures,
    write_manifest,
)
from feature_store.sets import FEATURES_DIR, SET_KINDS, entry_fingerprint, set_features, set_root
from feature_store.writer import content_fingerprint, index_split, write_json, write_shard_file

SET_DTYPES = ("float16", "float32")  # what a set's column is stored as (data_prep's emb_dtype)
# data_prep's folder of progress files; a finished set's record lives there too.
RECORDS_DIR = Path("_prep") / FEATURES_DIR
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # a directory name, as data_prep requires


class FeatureSetError(StoreError):
    """A feature set cannot be added to a store as given (nothing was written)."""


class SetNameError(FeatureSetError):
    """The set's name is taken (or not a usable name)."""


class SetShapeError(FeatureSetError):
    """The arrays do not fit the store: a split missing, a row count or a dim wrong."""


class SetValuesError(FeatureSetError):
    """The arrays hold NaN or infinity (or values the set's dtype cannot hold)."""


def set_record_path(root: str | os.PathLike, name: str) -> Path:
    """``STORE/_prep/features/<name>/entry.json``: where a finished set's entry is kept."""
    return Path(root) / RECORDS_DIR / name / "entry.json"


def recorded_sets(root: str | os.PathLike) -> tuple[list[dict], list[dict]]:
    """The finished added sets of the store at ``root`` (entries, failure rows), from
    ``STORE/_prep/features/*/entry.json`` (:func:`set_record_path`): what data_prep's rerun
    of the rows must list again."""
    entries, failures = [], []
    paths = (Path(root) / RECORDS_DIR).glob("*/entry.json")
    # In the order they were finished, as the manifest lists them.
    for path in sorted(paths, key=lambda p: (p.stat().st_mtime_ns, p.parent.name)):
        record = json.loads(path.read_text())
        if set_root(root, record["entry"]["name"]).is_dir():
            entries.append(record["entry"])
            failures += record["failures"]
    return entries, failures


def add_feature_set(
    root: str | os.PathLike,
    entry: dict[str, Any],
    arrays: dict[str, np.ndarray],
    *,
    replace: bool = False,
) -> dict[str, Any]:
    """Add the feature set ``entry["name"]`` to the store at ``root`` from ``arrays``.

    ``entry``: the manifest entry's meaning fields: ``name``, ``kind`` (image, text or
    scores), ``model`` (an id, a path or any string that says where the vectors came from),
    optionally ``dim`` (checked against the arrays), ``dtype`` (float32, or float16 to halve
    the disk) and anything else that decides the vectors (revision, pooling, tta, ...; all
    of them enter the fingerprint). ``arrays``: per split of the store, a [rows, dim] array
    in the store's row order (``load_features(root, split, []).ids``).

    Everything is checked before a file is written: a name the store already has
    (:class:`SetNameError`; ``replace=True`` removes the old set first, ``image`` and
    ``text`` are never replaced), a split missing or extra, a row count or dim that differs,
    a ``scores`` set whose dim is not the number of classes (:class:`SetShapeError`), a NaN
    or infinity (:class:`SetValuesError`). Returns the entry as written to the manifest.
    """
    from feature_store.writer import upgrade_store

    info = open_store(root)
    fields, matrices = _checked(info, entry, arrays, replace=replace)
    name = fields["name"]
    info = upgrade_store(info.root)  # an older store gets its features entry (metadata only)
    if name in info.feature_names:  # replace=True (checked): forget the old set first
        write_set_metadata(info.root, name, entry=None, failures=[])
    # Leftovers of a replaced set or of an add that was killed part-way (data_prep's markers
    # and progress included): not in the manifest, and not these vectors.
    shutil.rmtree(set_root(info.root, name), ignore_errors=True)
    shutil.rmtree(set_record_path(info.root, name).parent, ignore_errors=True)
    feats = set_features(name, fields["dim"], fields["dtype"])
    records = {}
    for split, matrix in matrices.items():
        ids = _ids(info, split)
        records[split], start = [], 0
        for k, r in enumerate(_row_shards(info, split)):
            stop = start + int(r["rows"])
            if stop > start:  # one set shard per non-empty row shard, as data_prep writes
                path = set_root(info.root, name) / split / f"shard-{k:05d}.arrow"
                columns = {"id": ids[start:stop], name: matrix[start:stop]}
                records[split].append(write_shard_file(path, columns, feats))
            start = stop
    meaning = {k: v for k, v in fields.items() if k not in ("name", "dtype")}
    return register_set(info.root, name=name, fields=meaning, records=records, feats=feats,
                        dtype=fields["dtype"], failures=[])  # fmt: skip


def register_set(
    root: str | os.PathLike,
    *,
    name: str,
    fields: dict[str, Any],
    records: dict[str, list[dict[str, Any]]],
    feats,
    dtype: str,
    failures: list[dict[str, Any]],
) -> dict[str, Any]:
    """Make a set whose shards are on disk part of the store; returns its manifest entry.

    ``fields``: what describes the vectors (kind, model, dim, ...); ``records``: per split
    the shard records (file, rows, bytes, sha256) in row order; ``failures``: failures.csv
    rows of the rows it could not compute (``feature`` = the set's name). Writes each split
    index, the record (:func:`set_record_path`), failures.csv, then the manifest (last).
    """
    root = Path(root)
    for split, recs in records.items():
        index_split(set_root(root, name), split, [r["file"] for r in recs], feats,
                    content_fingerprint(recs, salt=name))  # fmt: skip
    entry = {
        "name": name,
        **fields,
        "column": name,
        "path": f"{FEATURES_DIR}/{name}",
        "dtype": dtype,
        "shards": records,
        "rows": {split: sum(int(r["rows"]) for r in recs) for split, recs in records.items()},
        "failed": {split: sum(1 for f in failures if f["split"] == split) for split in records},
    }
    entry["fingerprint"] = entry_fingerprint(entry)
    record = set_record_path(root, name)
    record.parent.mkdir(parents=True, exist_ok=True)
    write_json(record, {"entry": entry, "failures": failures})
    write_set_metadata(root, name, entry=entry, failures=failures)
    return entry


def write_set_metadata(root: str | os.PathLike, name: str, *, entry, failures: list[dict]) -> None:
    """failures.csv with the set's rows replaced, then the manifest with its entry replaced
    (removed when ``entry`` is None): the manifest last, as everywhere."""
    info = open_store(root)
    kept = [r for r in read_failures(root) if r.get("feature") != name]
    write_failures(root, kept + failures)
    entries = [e for e in info.features if e["name"] != name] + ([entry] if entry else [])
    write_manifest(root, {**info.manifest, "format_version": FORMAT_VERSION, "features": entries})


def _checked(info: StoreInfo, entry: dict[str, Any], arrays: dict[str, np.ndarray], *,
             replace: bool) -> tuple[dict[str, Any], dict[str, np.ndarray]]:  # fmt: skip
    """The entry's fields completed (dim, dtype) and each split's array in the set's dtype;
    every refusal raised here, before anything is written."""
    name = entry.get("name")
    where = f"feature set {name!r} for {info.root}"
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in COLUMNS:
        raise SetNameError(f"{where}: the name must be letters, digits, _ . - and not one of "
                           f"the rows' columns {list(COLUMNS)}")  # fmt: skip
    if name in info.feature_names and (not replace or name in ("image", "text")):
        raise SetNameError(
            f"{where}: the store already has a set of that name; choose another name"
            + ("" if name in ("image", "text") else ", or pass replace=True to write it again")
        )
    missing = [k for k in ("kind", "model") if not entry.get(k)]
    if missing:
        raise FeatureSetError(f"{where}: the entry needs {missing} (kind: one of {SET_KINDS})")
    if entry["kind"] not in SET_KINDS:
        raise FeatureSetError(f"{where}: kind {entry['kind']!r} is not one of {SET_KINDS}")
    dtype = entry.get("dtype", "float32")
    if dtype not in SET_DTYPES:
        raise FeatureSetError(f"{where}: dtype {dtype!r} is not one of {SET_DTYPES}")
    if sorted(arrays) != sorted(info.splits):
        raise SetShapeError(f"{where}: give one array per split of the store {info.splits}, "
                            f"got {sorted(arrays)}")  # fmt: skip
    dim = entry.get("dim")
    matrices = {}
    for split in info.splits:
        a = np.asarray(arrays[split])
        if a.ndim != 2 or a.shape[0] != info.rows(split):
            raise SetShapeError(f"{where}: split {split!r} needs an array of [{info.rows(split)}"
                                f" rows, dim] in the store's row order, got {a.shape}")  # fmt: skip
        dim = a.shape[1] if dim is None else dim
        if a.shape[1] != dim or dim < 1:
            raise SetShapeError(f"{where}: split {split!r} has dim {a.shape[1]}, expected "
                                f"{dim} (the entry's dim, or the first split's)")  # fmt: skip
        with np.errstate(over="ignore"):  # past float16's range: inf, refused just below
            m = a.astype(dtype)
        bad = ~np.isfinite(m).all(axis=1)
        if bad.any():
            raise SetValuesError(
                f"{where}: split {split!r} has {int(bad.sum())} rows with NaN or infinity "
                f"(row {int(np.flatnonzero(bad)[0])} first"
                + (", or values past float16's range" if dtype == "float16" else "")
                + "); every row needs finite values"
            )
        matrices[split] = m
    if entry["kind"] == "scores" and dim != info.num_classes:
        raise SetShapeError(f"{where}: a scores set holds one score per class, so its dim must "
                            f"be {info.num_classes} (the store's classes), got {dim}")  # fmt: skip
    fields = {**_STANDARD, **{k: v for k, v in entry.items() if k not in _DERIVED}}
    return {**fields, "dim": int(dim), "dtype": dtype}, matrices


# The fields every set's entry has (data_prep's extractors describe each): None when not given.
_STANDARD = {"name": None, "kind": None, "model": None, "revision": None, "local_path": None,
             "library": None, "pooling": None, "preprocessing": None, "tta": []}  # fmt: skip


# Entry fields the writer derives (where the files are, what they hold): never taken as given.
_DERIVED = ("column", "path", "shards", "rows", "failed", "fingerprint", "dim", "dtype")


def _ids(info: StoreInfo, split: str) -> list[str]:
    from feature_store.sets import load_features

    return load_features(info.root, split, []).ids


def _row_shards(info: StoreInfo, split: str) -> list[dict[str, Any]]:
    """The rows' shard records of ``split`` (a store from before shard records: one)."""
    records = (info.manifest.get("shards") or {}).get(split)
    return records or [{"rows": info.rows(split)}]
