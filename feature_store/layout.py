"""Read the feature-store layout; the manifest and failures.csv writers.

$ python -c "from feature_store import open_store; print(open_store('stores/demo').splits)"

The other files (shards, split indexes, dataset_dict.json) are written by
feature_store/writer.py; docs/architecture.md describes the whole contract.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MANIFEST_NAME = "manifest.json"
FAILURES_NAME = "failures.csv"
DATASET_DICT_NAME = "dataset_dict.json"  # makes the root a `datasets.DatasetDict` directory
# 1: per-split `datasets` directories, label an int64 column.
# 2: the root is a DatasetDict directory too, and the label is a ClassLabel of the class
#    names (upgrade_store turns a 1 into a 2 by rewriting metadata only).
# 3: the manifest lists the feature sets under "features" (image and text, and any set added
#    later in STORE/features/<name>/, see feature_store/sets.py); a 2 reads as the sets image
#    and text, and upgrade_store writes the entry (metadata only).
FORMAT_VERSION = 3
COLUMNS = ("id", "label", "path", "caption", "image_emb", "text_emb")
# One row per input that has no row in the store: the file, why, its split and id; and
# one per row an added feature set could not compute (``feature`` = the set's name: the
# row stays, that set holds NaN there). ``feature`` is empty for rows that are absent.
FAILURES_COLUMNS = ("file", "reason", "split", "id", "feature")


class StoreError(ValueError):
    """A feature store is missing, incomplete or does not match what a stage expects."""


@dataclass(frozen=True)
class StoreInfo:
    """The manifest of a store, with the fields later stages rely on made explicit."""

    root: Path
    manifest: dict[str, Any]

    def __fspath__(self) -> str:
        # A StoreInfo stands for its directory wherever a store path is taken.
        return str(self.root)

    @property
    def class_names(self) -> list[str]:
        return list(self.manifest["class_names"])

    @property
    def num_classes(self) -> int:
        return len(self.manifest["class_names"])

    @property
    def image_dim(self) -> int:
        return int(self.manifest["dims"]["image_emb"])

    @property
    def text_dim(self) -> int:
        return int(self.manifest["dims"]["text_emb"])

    @property
    def splits(self) -> list[str]:
        return [s for s in self.manifest["splits"] if (self.root / s).is_dir()]

    def rows(self, split: str) -> int:
        return int(self.manifest["splits"][split]["rows"])

    @property
    def features(self) -> list[dict[str, Any]]:
        """The feature sets' manifest entries (a format-2 store: image and text)."""
        from feature_store.sets import feature_entries

        return feature_entries(self.manifest)

    @property
    def feature_names(self) -> list[str]:
        return [e["name"] for e in self.features]


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


def open_store(root: str | os.PathLike) -> StoreInfo:
    """Read and check ``root/manifest.json``; raise :class:`StoreError` naming the fix.

    Parsed once per process while the file is unchanged (:func:`unchanged_key`); every
    caller gets its own copy, so one that edits the dict cannot change another's.
    """
    root = Path(root)
    manifest_path = root / MANIFEST_NAME
    key = unchanged_key([manifest_path])
    if key is not None and key in _MANIFESTS:
        return StoreInfo(root=root, manifest=copy.deepcopy(_MANIFESTS[key]))
    info = _read_store(root, manifest_path)
    if key is not None:
        _MANIFESTS.clear()  # one store at a time is the common case; keep memory flat
        _MANIFESTS[key] = copy.deepcopy(info.manifest)
    return info


# Files modified this recently are re-read even when their size and mtime look unchanged:
# a rewrite within the filesystem's timestamp granularity would not show (git's "racy" rule).
RACY_SECONDS = 2.0
_MANIFESTS: dict[tuple, dict[str, Any]] = {}


def unchanged_key(paths: list[Path]) -> tuple | None:
    """A key that changes whenever one of ``paths`` is rewritten (path, inode, size, mtime),
    or None when one is missing or too recently modified to trust its timestamp."""
    key = []
    now = time.time()
    for path in paths:
        try:
            st = path.stat()
        except OSError:
            return None
        if now - st.st_mtime < RACY_SECONDS:
            return None
        key.append((str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(key)


def _read_store(root: Path, manifest_path: Path) -> StoreInfo:
    if not manifest_path.is_file():
        raise StoreError(
            f"{manifest_path} not found: {root} is not a finished feature store. "
            "Build one with `python -m data_prep --config configs/prep/<name>.yaml` "
            "(a run that stopped part-way resumes when rerun with the same command)."
        )
    try:
        manifest = json.loads(manifest_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise StoreError(
            f"{manifest_path} is not valid JSON ({err}); rerun the data_prep command that "
            "built the store: it rewrites the manifest."
        ) from err
    problem = _manifest_problem(manifest)
    if problem:
        raise StoreError(
            f"{manifest_path}: {problem}; rerun the data_prep command that built the store "
            "(it rewrites the manifest)."
        )
    if manifest.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise StoreError(
            f"{manifest_path} has format_version {manifest['format_version']}, newer than this "
            f"code reads ({FORMAT_VERSION}); update the package."
        )
    return StoreInfo(root=root, manifest=manifest)


def _manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` unusable (wrong types, missing keys), or None."""
    if not isinstance(manifest, dict):
        return f"holds a {type(manifest).__name__}, not an object"
    missing = [k for k in ("class_names", "dims", "splits") if k not in manifest]
    if missing:
        return f"lacks {missing}"
    names, dims, splits = manifest["class_names"], manifest["dims"], manifest["splits"]
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        return "class_names is not a list of strings"
    if not isinstance(dims, dict) or not all(
        isinstance(dims.get(k), int) and dims[k] > 0 for k in ("image_emb", "text_emb")
    ):
        return "dims needs positive integers image_emb and text_emb"
    if not isinstance(splits, dict) or not all(
        isinstance(v, dict) and isinstance(v.get("rows"), int) for v in splits.values()
    ):
        return "splits needs {split: {rows: int, ...}}"
    if not isinstance(manifest.get("format_version", FORMAT_VERSION), int):
        return "format_version is not an integer"
    sets = manifest.get("features")
    if sets is not None:
        if not isinstance(sets, list) or not all(
            isinstance(e, dict) and isinstance(e.get("name"), str)
            and isinstance(e.get("dim"), int) and e["dim"] > 0 for e in sets
        ):  # fmt: skip
            return "features needs a list of {name: str, dim: int > 0, ...}"
        names = [e["name"] for e in sets]
        if len(set(names)) != len(names):
            return f"features names a set twice ({names})"
    return None


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


def make_manifest(
    *,
    class_names: list[str],
    dims: dict[str, int],
    emb_dtype: str,
    splits: dict[str, dict[str, int]],
    shards: dict[str, list[dict[str, Any]]],
    models: dict[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """The manifest every writer produces: the fields readers rely on, then ``extra``.

    ``splits``: per split ``inputs``, ``rows``, ``failed`` (inputs = rows + failed);
    ``shards``: per split the records of :func:`feature_store.integrity.shard_record`;
    ``models``: what data_prep's models resolved to (the source of the model fingerprint);
    ``features`` (in ``extra``): the feature sets, by default ``image`` and ``text`` derived
    from ``models`` and ``dims`` (feature_store/sets.py).
    """
    from feature_store.sets import base_entries

    manifest = {
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "dims": {"image_emb": int(dims["image_emb"]), "text_emb": int(dims["text_emb"])},
        "emb_dtype": emb_dtype,
        "splits": splits,
        "shards": shards,
        "models": models,
        **extra,
    }
    if "features" not in extra:  # a new store holds the two sets its rows carry
        manifest["features"] = base_entries(manifest)
    problem = _manifest_problem(manifest)
    if problem:
        raise ValueError(f"refusing to write a manifest that {problem}")
    return manifest


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> Path:
    """``root/manifest.json`` via a temporary name: readers see no half-written manifest."""
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_failures(root: str | os.PathLike, rows: list[dict[str, Any]]) -> Path:
    """``root/failures.csv`` (:data:`FAILURES_COLUMNS`), written to a temp name, renamed."""
    path = Path(root) / FAILURES_NAME
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(FAILURES_COLUMNS))
            writer.writeheader()
            writer.writerows({k: row.get(k, "") for k in FAILURES_COLUMNS} for row in rows)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
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
    missing or unreadable shard raises :class:`StoreError` naming it and the fix.
    """
    import datasets

    from feature_store.compat import dataset_files
    from feature_store.integrity import REBUILD_HINT, verify_split

    info = open_store(root)
    path = info.root / split
    if not path.is_dir():
        raise StoreError(
            f"{info.root} has no split {split!r} (it has {info.splits}); "
            "check the split names in the prep config."
        )
    verify_split(root, split, info)
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
    """One split's columns as numpy arrays, dims checked against the manifest."""
    from feature_store.integrity import REBUILD_HINT

    info = open_store(root)
    ds = load_split(root, split)
    table = ds.data.table if hasattr(ds.data, "table") else ds.data
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise StoreError(f"{info.root / split} lacks columns {missing}; rebuild the store.")
    try:
        return SplitArrays(
            ids=table.column("id").to_pylist(),
            labels=table.column("label").to_numpy().astype(np.int64),  # astype copies
            image_emb=_matrix(table, "image_emb", info.image_dim),
            text_emb=_matrix(table, "text_emb", info.text_dim),
            captions=table.column("caption").to_pylist(),
            paths=table.column("path").to_pylist(),
        )
    except Exception as err:  # noqa: BLE001 - a shard whose contents do not fit the schema
        raise StoreError(
            f"{info.root / split} cannot be read ({_short(err)}); {REBUILD_HINT}."
        ) from err


# The in-memory writer lives with the other writers; imported here so older imports work.
from feature_store.writer import write_store  # noqa: E402, F401
