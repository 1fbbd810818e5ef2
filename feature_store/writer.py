"""Writing the store's files: shards, split indexes, the DatasetDict index, whole stores.

$ python -c "import feature_store; feature_store.upgrade_store('stores/old')"   # format 1 -> 2

Every store is written through these functions, whoever writes it: data_prep shard by
shard with resume (data_prep/store.py), the embeddings import, synthetic stores and
:func:`from_dataset_dict` in one go (:func:`write_store`). So every store has the same
files::

    STORE/<split>/shard-00000.arrow   rows, Arrow IPC as `datasets` writes it (ArrowWriter)
    STORE/<split>/state.json          the shard files in order  } what datasets.load_from_disk
    STORE/<split>/dataset_info.json   the columns (Features)    } reads for one split
    STORE/dataset_dict.json           {"splits": [...]}: load_from_disk(STORE) is a DatasetDict
    STORE/failures.csv, STORE/manifest.json (last: its presence marks the store complete)

Each shard's rows, bytes and SHA-256 are recorded when it is written and checked by every
reader (feature_store.integrity); metadata files are rewritten whole (temporary name, then
rename), never appended to.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.atomic import atomic_write_text
from feature_store.compat import STATE_FILE, dataset_files, dataset_state
from feature_store.integrity import shard_record, verify_split
from feature_store.layout import COLUMNS, DATASET_DICT_NAME, _matrix, store_features, write_failures
from feature_store.manifest import (
    FORMAT_VERSION,
    StoreError,
    StoreInfo,
    base_entries,
    make_manifest,
    open_store,
    write_manifest,
)
from feature_store.sets import read_set

EMPTY_SHARD = "empty.arrow"  # the one file of a split without rows: load_from_disk needs one
# Manifest fields the writer derives from the rows themselves: never copied from elsewhere.
# (A rebuilt store holds the rows' own sets, image and text: "features" is derived too.)
DERIVED_FIELDS = ("format_version", "class_names", "dims", "emb_dtype", "splits", "shards",
                  "features")  # fmt: skip


def write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary name and rename: readers see the old or the whole new file.

    On any error (a full disk) the temporary file is removed, never left at 0 bytes.
    """
    atomic_write_text(path, json.dumps(data, indent=2))


def check_labels(labels: np.ndarray, feats, where: str) -> None:
    """Refuse labels outside ``[-1, num_classes)`` (-1: unknown, e.g. a test split)."""
    num = getattr(feats["label"], "num_classes", None)
    if num is None or not len(labels):
        return
    bad = np.flatnonzero((labels < -1) | (labels >= num))
    if len(bad):
        raise ValueError(
            f"{where}: label {int(labels[bad[0]])} is not a class index (0..{num - 1}) or -1 "
            f"(unknown); {len(bad)} such rows. Fix the class list or the labels."
        )


def write_shard_file(path: str | os.PathLike, columns: dict[str, Any], feats) -> dict[str, Any]:
    """Write ``columns`` as one Arrow shard at ``path`` (temp name, then rename).

    Returns its :func:`feature_store.integrity.shard_record` (rows, bytes, sha256), taken
    before the rename so what readers later check is what was written.
    """
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(columns["id"])
    if "label" in feats:  # a feature set's own shards hold only id and the set's column
        check_labels(np.asarray(columns["label"], dtype=np.int64), feats, str(path))
    arrays = {}
    for name, feat in feats.items():
        if getattr(feat, "length", -1) > 0:  # image_emb, text_emb, any feature set
            # A fixed-size list built from one flat buffer: no per-row Python objects.
            flat = np.asarray(columns[name], dtype=feat.feature.dtype).reshape(-1)
            arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), feat.length)
        else:
            arrays[name] = pa.array(columns[name], type=feat.pa_type)
    table = pa.table(arrays, schema=feats.arrow_schema) if n else feats.arrow_schema.empty_table()
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with ArrowWriter(features=feats, path=str(tmp)) as writer:
            writer.write_table(table)
            writer.finalize()
        record = shard_record(tmp, n)
        record["file"] = path.name
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
    return record


def index_split(root: str | os.PathLike, split: str, files: list[str], feats, fingerprint: str):
    """Make ``root/<split>`` a `datasets` dataset over ``files`` (in order) and list it in
    ``root/dataset_dict.json``; no row is rewritten.

    ``fingerprint`` is the dataset's cache key for `datasets` (any string that changes when
    the rows do). A split without files gets an empty shard so it still loads.
    """
    from datasets import DatasetInfo

    split_dir = Path(root) / split
    split_dir.mkdir(parents=True, exist_ok=True)
    if not files:
        write_shard_file(split_dir / EMPTY_SHARD, {k: [] for k in feats}, feats)
        files = [EMPTY_SHARD]
    write_json(split_dir / STATE_FILE, dataset_state(files, fingerprint, split))
    with tempfile.TemporaryDirectory() as tmp:  # datasets' own file, then written whole here
        DatasetInfo(features=feats).write_to_directory(tmp)
        info = json.loads((Path(tmp) / "dataset_info.json").read_text())
    write_json(split_dir / "dataset_info.json", {k: info[k] for k in sorted(info)})
    add_to_dataset_dict(root, split)


def add_to_dataset_dict(root: str | os.PathLike, split: str) -> None:
    """List ``split`` in ``root/dataset_dict.json`` (created when missing)."""
    path = Path(root) / DATASET_DICT_NAME
    splits = json.loads(path.read_text())["splits"] if path.is_file() else []
    if split not in splits:
        write_json(path, {"splits": [*splits, split]})


def content_fingerprint(records: list[dict[str, Any]], salt: str = "") -> str:
    """A cache key from the shards' checksums: equal rows, equal key."""
    digest = hashlib.sha256(salt.encode())
    for r in records:
        digest.update(r["sha256"].encode())
    return digest.hexdigest()[:16]


def write_store(
    root: str | os.PathLike,
    *,
    splits: dict[str, dict[str, Any]],
    class_names: list[str],
    emb_dtype: str = "float32",
    extra_manifest: dict[str, Any] | None = None,
    failures: list[dict[str, Any]] | None = None,
) -> StoreInfo:
    """Write a whole store from in-memory columns in one go (one shard per split).

    ``splits``: per split ``id``, ``label`` (-1 = unknown), optional ``path`` and
    ``caption``, ``image_emb`` [N, d] and ``text_emb`` [N, d'] arrays. ``failures``: rows
    of failures.csv; each split's ``inputs`` counts its rows plus its failures.
    For synthetic stores, imports and rebuilds; data_prep writes real stores shard by
    shard with resume, through the same functions.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    first = next(iter(splits.values()))
    dims = {
        "image_emb": int(np.asarray(first["image_emb"]).shape[1]),
        "text_emb": int(np.asarray(first["text_emb"]).shape[1]),
    }
    feats = store_features(dims["image_emb"], dims["text_emb"], emb_dtype, class_names)
    failures = list(failures or [])
    counts, shards = {}, {}
    for name, cols in splits.items():
        n = len(cols["id"])
        data = {
            "id": list(cols["id"]),
            "label": np.asarray(cols["label"], dtype=np.int64),
            "path": list(cols.get("path", [""] * n)),
            "caption": list(cols.get("caption", [""] * n)),
            "image_emb": np.asarray(cols["image_emb"]),
            "text_emb": np.asarray(cols["text_emb"]),
        }
        records = [write_shard_file(root / name / "shard-00000.arrow", data, feats)]
        index_split(root, name, [r["file"] for r in records], feats, content_fingerprint(records))
        failed = sum(1 for f in failures if f.get("split") == name)
        counts[name] = {"inputs": n + failed, "rows": n, "failed": failed}
        shards[name] = records
    extra = {"models": {}, **(extra_manifest or {})}
    for key in DERIVED_FIELDS:
        extra.pop(key, None)
    manifest = make_manifest(
        class_names=class_names,
        dims=dims,
        emb_dtype=emb_dtype,
        splits=counts,
        shards=shards,
        **extra,
    )
    write_failures(root, failures)
    write_manifest(root, manifest)
    return StoreInfo(root=root, manifest=manifest)


def upgrade_store(root: str | os.PathLike) -> StoreInfo:
    """Bring an older store to the current format in place, rewriting metadata only.

    Format 1 lacked ``dataset_dict.json`` and stored ``label`` as a plain int64; this
    writes the DatasetDict index and each split's ``dataset_info.json`` with the ClassLabel
    (rows and checksums untouched, every shard verified first). Format 2 lacked the
    manifest's ``features`` list: the ``image`` and ``text`` entries are derived from its
    ``models`` and ``dims``. Then the manifest's new ``format_version``. A current store is
    returned as it is.
    """
    info = open_store(root)
    version = info.manifest.get("format_version", 1)
    if version >= FORMAT_VERSION:
        return info
    for split in info.splits:
        verify_split(root, split, info)
    if version < 2:
        feats = store_features(info.image_dim, info.text_dim, info.manifest["emb_dtype"],
                               info.class_names)  # fmt: skip
        for split in info.splits:
            files, fingerprint = dataset_files(info.root / split)
            index_split(root, split, files, feats, fingerprint)
    manifest = {**info.manifest, "format_version": FORMAT_VERSION}
    manifest.setdefault("features", base_entries(manifest))
    write_manifest(root, manifest)
    return StoreInfo(root=info.root, manifest=manifest)


def from_dataset_dict(
    dataset_dict,
    root: str | os.PathLike,
    *,
    manifest: dict[str, Any] | None = None,
    failures: list[dict[str, Any]] | None = None,
) -> StoreInfo:
    """Write a store from a `datasets.DatasetDict` with the store's columns.

    For a store that went through ``push_to_hub`` and came back with ``load_dataset``, or
    was saved elsewhere with ``save_to_disk``. Class names come from the ``label``
    ClassLabel; ``manifest`` (the original manifest.json) brings back what `datasets`
    does not hold (the models, hence the fingerprint checkpoints are checked against, the
    source, the config); ``failures`` the rows of the original failures.csv. The shards are
    new files, so their checksums are new; everything the writer derives from the rows
    (dims, counts, dtype) is recomputed.
    """
    splits, names, emb_dtype = {}, None, None
    for split, ds in dataset_dict.items():
        missing = [c for c in COLUMNS if c not in ds.column_names]
        if missing:
            raise ValueError(f"split {split!r} lacks the store columns {missing}")
        label = ds.features["label"]
        if hasattr(label, "names"):
            names = names or list(label.names)
        emb_dtype = emb_dtype or ds.features["image_emb"].feature.dtype
        table = ds.with_format("arrow")[:]
        splits[split] = {
            "id": table.column("id").to_pylist(),
            "label": table.column("label").to_numpy(),
            "path": table.column("path").to_pylist(),
            "caption": table.column("caption").to_pylist(),
            "image_emb": _matrix(table, "image_emb", ds.features["image_emb"].length),
            "text_emb": _matrix(table, "text_emb", ds.features["text_emb"].length),
        }
    if manifest is not None:
        if names is not None and names != list(manifest["class_names"]):
            raise ValueError("the label ClassLabel's names differ from the manifest's class_names")
        names = list(manifest["class_names"])
    if names is None:
        raise ValueError("label is not a ClassLabel; pass the store's manifest for class names")
    extra = {**(manifest or {}), "rebuilt_from_dataset_dict": True}
    return write_store(root, splits=splits, class_names=names, emb_dtype=emb_dtype,
                       extra_manifest=extra, failures=failures)  # fmt: skip


def load_dataset_dict(root: str | os.PathLike):
    """The store as a `datasets.DatasetDict` (every shard verified first).

    ``datasets.load_from_disk(root)`` with one column per feature set: the rows' own
    columns (``image_emb`` and ``text_emb`` hold the sets image and text), then each added
    set's column, joined side by side from ``STORE/features/<name>/<split>`` (Arrow
    memory maps, nothing copied; ids checked row for row). A format-1 store raises
    :class:`StoreError` naming :func:`upgrade_store` as the fix.
    """
    import datasets

    info = open_store(root)
    if info.manifest.get("format_version", 1) < 2:
        raise StoreError(
            f"{info.root} is a format-{info.manifest.get('format_version', 1)} store, not yet "
            "a DatasetDict directory; upgrade it in place (metadata only, seconds): python -c "
            f"\"import feature_store; feature_store.upgrade_store('{info.root}')\""
        )
    for split in info.splits:
        verify_split(root, split, info)
    dd = datasets.load_from_disk(str(info.root))
    added = [e for e in info.features if e.get("path")]
    for split in list(dd) if added else []:
        ids = dd[split]["id"]
        columns = [dd[split]]
        for e in added:
            columns.append(read_set(info, e, split, ids).select_columns([e["name"]]))
        dd[split] = datasets.concatenate_datasets(columns, axis=1)
    return dd
