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
reads (listing the shard files as they are, no rows rewritten) and the root its
``dataset_dict.json``, then ``failures.csv``, then ``manifest.json`` last: its presence
marks the store complete. Every file is written by feature_store/writer.py.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.integrity import shard_problem
from feature_store.layout import store_features, write_failures, write_manifest
from feature_store.writer import index_split, write_json, write_shard_file

log = logging.getLogger("data_prep")

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
            write_json(path, stored)

    # -- shards ------------------------------------------------------------------------
    def write_shard(
        self, shard: Shard, columns: dict[str, Any], *, feats, info: dict[str, Any]
    ) -> None:
        """Write one whole shard (feature_store's shard writer), then its done marker."""
        self.marker_path(shard).parent.mkdir(parents=True, exist_ok=True)
        # The record (rows, bytes, sha256) is checked by every later reader: a shard
        # truncated or swapped after this point is caught by its size and checksum.
        record = write_shard_file(self.arrow_path(shard), columns, feats)
        write_json(self.marker_path(shard), {**record, **info})

    # -- the end -----------------------------------------------------------------------
    def finalize_split(self, split: str, shards: list[Shard], feats) -> None:
        """Make ``STORE/<split>`` a `datasets` dataset over the shard files, in shard order,
        and list it in the store's ``dataset_dict.json``."""
        files = [f"{s.name}.arrow" for s in shards]
        index_split(
            self.root, split, files, feats, _hash(self.root / PREP_DIR / FINGERPRINT, split)
        )

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


def recheck_shards(store: StoreWriter, shards) -> list[str]:
    """Verify every done shard against its marker; damaged ones are removed to be redone."""
    damaged = []
    for shard in shards:
        marked, present = store.marker_path(shard).is_file(), store.arrow_path(shard).is_file()
        why = (
            f"{store.arrow_path(shard)} is missing"
            if marked and not present
            else store.damaged(shard)
            if marked
            else None
        )
        if why:
            log.warning("redoing %s/%s: %s", shard.split, shard.name, why)
            print(f"data_prep: redoing {shard.split}/{shard.name}: {why}")
            store.redo(shard)
            damaged.append(f"{shard.split}/{shard.name}")
    return damaged
