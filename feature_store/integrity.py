"""Store integrity: per-shard row counts and checksums, non-finite rows, model fingerprints.

$ python -c "from feature_store.integrity import verify_split; verify_split('STORE', 'train')"

Every shard file's rows and SHA-256 are recorded when it is written (data_prep's done
markers, then ``manifest.json["shards"]``) and checked again by every stage that opens
the split, so a truncated, deleted or swapped shard is one line naming the file and the
fix instead of a pyarrow traceback later. The model fingerprint is the part of the
manifest that decides what an embedding means (models, revisions, pooling, preprocessing,
text settings); checkpoints carry it so predict.py can refuse a store built differently.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.cache import cached
from feature_store.manifest import (
    BASE_SETS,
    REBUILD_HINT,
    StoreError,
    StoreInfo,
    entry,
    open_store,
)

# Machine-specific or cosmetic entries that do not change what an embedding means.
FINGERPRINT_SKIP = {"local_path", "seconds"}


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def shard_record(path: str | os.PathLike, rows: int) -> dict[str, Any]:
    """What the manifest records of one shard file: name, rows, bytes, sha256."""
    path = Path(path)
    return {
        "file": path.name,
        "rows": int(rows),
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def shard_problem(split_dir: Path, record: dict[str, Any]) -> str | None:
    """Why the shard ``record`` describes is not intact, or None when it is."""
    path = split_dir / record["file"]
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"{path} has {size} bytes, {record['bytes']} were written (truncated or replaced)"
    if file_sha256(path) != record["sha256"]:
        return f"{path} does not match the checksum written with it (replaced or corrupted)"
    return None


def verify_split(root: str | os.PathLike, split: str, info: StoreInfo | None = None) -> None:
    """Raise :class:`StoreError` naming the first damaged shard of ``split`` and the fix.

    Stores written before checksums were recorded (no ``shards`` in the manifest) are
    not checked here; reading them still turns Arrow errors into a StoreError.
    """
    info = info or open_store(root)
    records = (info.manifest.get("shards") or {}).get(split)
    if not records:
        return
    verify_files(info, info.root / split, records,
                 info.manifest["splits"].get(split, {}).get("rows"))  # fmt: skip


def verify_files(
    info: StoreInfo, split_dir: Path, records: list[dict[str, Any]], rows: int | None
) -> None:
    """Check the shard files ``records`` describe (size, SHA-256) and that they hold ``rows``
    rows; raise :class:`StoreError` naming the first bad one and the fix.

    Once per process: a shard list that passed is not hashed again while none of its files
    changed (:func:`feature_store.cache.cached`; files written in the last seconds are
    always hashed again).
    """
    split_dir = Path(split_dir)

    def check() -> bool:
        for record in records:
            problem = shard_problem(split_dir, record)
            if problem:
                raise StoreError(f"{problem}; {REBUILD_HINT}.")
        total = sum(int(r["rows"]) for r in records)
        if rows is not None and total != rows:
            raise StoreError(
                f"{split_dir}: shards hold {total} rows, the manifest says {rows}; {REBUILD_HINT}."
            )
        return True

    where = split_dir.resolve()
    cached((info.root.resolve(), "verified", where),
           [where / r["file"] for r in records], check, token=(repr(records), rows))  # fmt: skip


def non_finite_rows(arrays) -> np.ndarray:
    """Row indices whose image or text embedding (of a :class:`FeatureArrays`: any set read)
    holds a NaN or an infinity."""
    matrices = (
        list(arrays.features.values())
        if hasattr(arrays, "features")
        else [arrays.image_emb, arrays.text_emb]
    )
    bad = np.zeros(len(arrays.ids), dtype=bool)
    for m in matrices:
        bad |= ~np.isfinite(m).all(axis=1)
    return np.flatnonzero(bad)


def check_finite(arrays, where: str) -> None:
    """Raise :class:`StoreError` if any embedding of ``arrays`` is NaN or infinite."""
    bad = non_finite_rows(arrays)
    if len(bad):
        ids = [arrays.ids[i] for i in bad[:5]]
        raise StoreError(
            f"{where}: {len(bad)} rows have NaN or infinite embeddings (ids {ids}); rebuild "
            "the store with data_prep, which lists such rows in failures.csv instead of "
            "storing them."
        )


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for k in sorted(value):
            if k not in FINGERPRINT_SKIP:
                _flatten(value[k], f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(value, list | tuple):
        out[prefix] = repr(list(value))
    else:
        out[prefix] = value if isinstance(value, str | int | float | bool | None) else repr(value)


def model_fingerprint(info: StoreInfo, sets: Sequence[str] | None = None) -> dict[str, Any]:
    """What decides the meaning of the store's feature sets ``sets`` (default image and
    text), as flat ``{dotted key: value}``.

    For ``image`` the image model, for ``text`` the caption and text models (names,
    revisions, pooling, preprocessing, prompt, max length...) from the manifest's
    ``models``, with their dims; for an added set its manifest entry's fingerprint. Exactly
    the sets read: adding another set to a store changes no checkpoint's fingerprint. Plain
    values only, so it can sit in a checkpoint loaded with ``weights_only=True``.
    """
    sets = list(BASE_SETS) if sets is None else list(sets)
    out: dict[str, Any] = {}
    models = info.manifest.get("models") or {}
    dims = info.manifest.get("dims") or {}
    if "image" in sets:
        _flatten({k: v for k, v in models.items() if k == "image"}, "models", out)
        _flatten({k: v for k, v in dims.items() if k == BASE_SETS["image"]}, "dims", out)
    if "text" in sets:  # a caption embedding means what its captioner and encoder did
        _flatten({k: v for k, v in models.items() if k != "image"}, "models", out)
        _flatten({k: v for k, v in dims.items() if k != BASE_SETS["image"]}, "dims", out)
    for name in sets:
        if name not in BASE_SETS:
            e = entry(info, name)
            out[f"features.{name}"] = e.get("fingerprint")
            out[f"features.{name}.dim"] = int(e["dim"])
    return out


def fingerprint_diff(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: saved -> current`` for every entry that differs."""
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: {saved.get(k, '(absent)')!r} -> {current.get(k, '(absent)')!r}"
        for k in keys
        if saved.get(k, "(absent)") != current.get(k, "(absent)")
    ]
