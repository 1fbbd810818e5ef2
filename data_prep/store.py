"""Writing the feature store shard by shard: linear, resumable, refusing to mix configs.

Layout while it grows (see feature_store/layout.py for the finished contract)::

    STORE/_prep/fingerprint.json            what built this store; a rerun must match it
    STORE/<split>/shard-00012.arrow         rows of shard 12, renamed from *.tmp when whole
    STORE/_prep/<split>/shard-00012.json    the done marker, written after the rename

Each row is written once. A shard is redone unless both its Arrow file and its marker
exist, so a kill at any moment loses at most the shards in flight. The marker records the
shard's row count and checksum; a store that looks complete is verified against them and
damaged shards are redone (feature_store.integrity). At the end the split
directories get the ``state.json`` / ``dataset_info.json`` that ``datasets.load_from_disk``
reads (listing the shard files as they are, no rows rewritten), then ``failures.csv``,
then ``manifest.json`` last: its presence marks the store complete.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.integrity import shard_problem, shard_record
from feature_store.layout import store_features, write_failures, write_manifest

PREP_DIR = "_prep"
FINGERPRINT = "fingerprint.json"


class StoreMixError(RuntimeError):
    """The output directory holds a store built with a different config."""


@dataclass(frozen=True)
class Shard:
    """Rows ``start:stop`` of one split's id-sorted item list."""

    split: str
    index: int
    start: int
    stop: int

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}"

    def __len__(self) -> int:
        return self.stop - self.start


def plan_shards(split_sizes: dict[str, int], shard_size: int) -> list[Shard]:
    """Fixed shards of ``shard_size`` rows per split: the same plan on every rank and rerun."""
    return [
        Shard(split, i, start, min(start + shard_size, n))
        for split, n in split_sizes.items()
        for i, start in enumerate(range(0, n, shard_size))
    ]


features = store_features  # the column contract is feature_store's


def _write_json(path: Path, data: Any) -> None:
    """Write to a temporary name and rename: readers see the old file or the whole new one.

    On any error (a full disk) the temporary file is removed, never left at 0 bytes.
    """
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class StoreWriter:
    """Writes shards of one store; safe to use from several ranks (each owns its shards)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def arrow_path(self, shard: Shard) -> Path:
        return self.root / shard.split / f"{shard.name}.arrow"

    def marker_path(self, shard: Shard) -> Path:
        return self.root / PREP_DIR / shard.split / f"{shard.name}.json"

    def is_done(self, shard: Shard) -> bool:
        return self.marker_path(shard).is_file() and self.arrow_path(shard).is_file()

    def marker(self, shard: Shard) -> dict[str, Any]:
        return json.loads(self.marker_path(shard).read_text())

    def damaged(self, shard: Shard) -> str | None:
        """Why a done shard no longer matches its marker (rows, bytes, checksum), or None.

        Markers from before checksums were recorded are trusted as they are.
        """
        try:
            marker = self.marker(shard)
        except (OSError, ValueError) as err:
            return f"{self.marker_path(shard)} unreadable ({err})"
        if "sha256" not in marker:
            return None
        return shard_problem(self.arrow_path(shard).parent, marker)

    def redo(self, shard: Shard) -> None:
        """Forget a shard (marker first, then its file) so the next extraction rewrites it."""
        self.marker_path(shard).unlink(missing_ok=True)
        self.arrow_path(shard).unlink(missing_ok=True)

    def manifest_ok(self) -> bool:
        """True when manifest.json exists and is a readable store manifest."""
        from feature_store.layout import StoreError, open_store

        try:
            open_store(self.root)
        except StoreError:
            return False
        return True

    def remove_partial_files(self) -> int:
        """Delete temporary files a killed run left behind (run before any rank writes)."""
        stale = [p for p in self.root.rglob("*.tmp*") if p.is_file()] if self.root.is_dir() else []
        for p in stale:
            p.unlink()
        return len(stale)

    # -- the config fingerprint -------------------------------------------------------
    def check_fingerprint(self, part: str, value: dict[str, Any]) -> None:
        """Record ``value`` under ``part``, or refuse if the store was built with another.

        Called with the config (before models load, to refuse in seconds) and again with
        what the models resolved to (weights revision, processor settings, dims).
        """
        path = self.root / PREP_DIR / FINGERPRINT
        foreign = [p.name for p in self.root.iterdir() if p.name != PREP_DIR] if (
            self.root.is_dir() and not path.is_file()) else []  # fmt: skip
        if foreign:
            # Never write into (or clean up temp files in) a directory we did not make.
            raise StoreMixError(
                f"{self.root} is not empty ({', '.join(sorted(foreign)[:5])}) and was not "
                "made by data_prep; choose a new or empty --run.out."
            )
        stored = json.loads(path.read_text()) if path.is_file() else {}
        value = json.loads(json.dumps(value))  # the JSON form, as it will be compared later
        if part in stored and stored[part] != value:
            diffs = _diff(stored[part], value)
            shown = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, a, b in diffs[:10])
            raise StoreMixError(
                f"{self.root} holds a store built with a different config; refusing to mix "
                f"the two. What differs (stored -> now):\n{shown}\n"
                f"  Fix: write to another directory (--run.out NEW_DIR), or delete {self.root} "
                "to rebuild it with the new config."
            )
        if stored.get(part) != value:
            stored[part] = value
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_json(path, stored)

    # -- shards ------------------------------------------------------------------------
    def write_shard(
        self, shard: Shard, columns: dict[str, Any], *, feats, info: dict[str, Any]
    ) -> None:
        """Write one whole shard: Arrow file to a temp name, rename, then the done marker."""
        import pyarrow as pa
        from datasets.arrow_writer import ArrowWriter

        path = self.arrow_path(shard)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.marker_path(shard).parent.mkdir(parents=True, exist_ok=True)
        n = len(columns["id"])
        arrays = {}
        for name, feat in feats.items():
            if name in ("image_emb", "text_emb"):
                # A fixed-size list built from one flat buffer: no per-row Python objects.
                flat = np.asarray(columns[name], dtype=feat.feature.dtype).reshape(-1)
                arrays[name] = pa.FixedSizeListArray.from_arrays(pa.array(flat), feat.length)
            else:
                arrays[name] = pa.array(columns[name], type=feat.pa_type)
        table = (
            pa.table(arrays, schema=feats.arrow_schema) if n else feats.arrow_schema.empty_table()
        )
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        try:
            with ArrowWriter(features=feats, path=str(tmp)) as writer:
                writer.write_table(table)
                writer.finalize()
            # Recorded now, checked by every later reader: a shard truncated or swapped
            # after this point is caught by its size and checksum.
            record = shard_record(tmp, n)
            record["file"] = path.name
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
        _write_json(self.marker_path(shard), {**record, **info})

    # -- the end -----------------------------------------------------------------------
    def finalize_split(self, split: str, shards: list[Shard], feats) -> None:
        """Make ``STORE/<split>`` a `datasets` dataset over the shard files, in shard order."""
        from datasets import DatasetInfo

        split_dir = self.root / split
        split_dir.mkdir(parents=True, exist_ok=True)
        state = {
            "_data_files": [{"filename": f"{s.name}.arrow"} for s in shards],
            "_fingerprint": _hash(self.root / PREP_DIR / FINGERPRINT, split),
            "_format_columns": None,
            "_format_kwargs": {},
            "_format_type": None,
            "_output_all_columns": False,
            "_split": split,
        }
        _write_json(split_dir / "state.json", state)
        info = asdict(DatasetInfo(features=feats))
        _write_json(split_dir / "dataset_info.json", {k: info[k] for k in sorted(info)})

    def write_failures(self, rows: list[dict[str, str]]) -> Path:
        return write_failures(self.root, rows)

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        return write_manifest(self.root, manifest)


def _diff(a: Any, b: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two JSON values, as (dotted key, a, b)."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if a == b else [(prefix or "(root)", a, b)]


def _hash(path: Path, salt: str) -> str:
    import hashlib

    data = path.read_bytes() if path.is_file() else b""
    return hashlib.sha256(data + salt.encode()).hexdigest()[:16]
