"""The manifest: the store's format constants, its typed error, and its feature-set entries.

$ python -c "from feature_store import open_store; print(open_store('stores/demo').manifest['features'])"

The bottom of feature_store: every other module (integrity, layout, sets, the writers)
builds on what is here, and this module imports none of them. ``manifest.json`` is read
and checked by :func:`open_store`, produced by :func:`make_manifest` and written by
:func:`write_manifest`; its ``features`` list is made of the entries below (the two base
sets derived by :func:`base_entries`, any added set's written by feature_store/set_writer.py).
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store.atomic import atomic_write_text
from feature_store.cache import cached

MANIFEST_NAME = "manifest.json"
# 1: per-split `datasets` directories, label an int64 column.
# 2: the root is a DatasetDict directory too, and the label is a ClassLabel of the class
#    names (upgrade_store turns a 1 into a 2 by rewriting metadata only).
# 3: the manifest lists the feature sets under "features" (image and text, and any set added
#    later in STORE/features/<name>/, see feature_store/sets.py); a 2 reads as the sets image
#    and text, and upgrade_store writes the entry (metadata only).
FORMAT_VERSION = 3
# The fix named by every error about a damaged shard.
REBUILD_HINT = (
    "rerun the data_prep command that built the store (it redoes damaged shards), "
    "or rebuild it into a new --run.out"
)
# The two sets every store has, and the row columns that hold them.
BASE_SETS = {"image": "image_emb", "text": "text_emb"}
# Entry fields that do not change what the vectors mean (where they are, how long it took).
_NOT_FINGERPRINTED = {"fingerprint", "shards", "failed", "rows", "local_path", "timing",
                      "path", "column"}  # fmt: skip


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
        return feature_entries(self.manifest)

    @property
    def feature_names(self) -> list[str]:
        return [e["name"] for e in self.features]


def open_store(root: str | os.PathLike) -> StoreInfo:
    """Read and check ``root/manifest.json``; raise :class:`StoreError` naming the fix.

    Parsed once per process while the file is unchanged (:mod:`feature_store.cache`); every
    caller gets its own copy, so one that edits the dict cannot change another's.
    """
    root = Path(root)
    where = root.resolve()
    manifest = cached(
        (where, "manifest"),
        [where / MANIFEST_NAME],
        lambda: _read_store(root, root / MANIFEST_NAME).manifest,
    )
    return StoreInfo(root=root, manifest=copy.deepcopy(manifest))


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
    from ``models`` and ``dims`` (:func:`base_entries`).
    """
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
    atomic_write_text(path, json.dumps(manifest, indent=2))
    return path


def entry_fingerprint(entry: dict[str, Any]) -> str:
    """A short hash of what decides a set's vectors (model, revision, pooling, tta...)."""
    meaning = {k: v for k, v in entry.items() if k not in _NOT_FINGERPRINTED}
    return hashlib.sha256(json.dumps(meaning, sort_keys=True, default=str).encode()).hexdigest()[
        :16
    ]


def base_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``image`` and ``text`` entries, derived from a manifest's ``models`` and ``dims``.

    What format 2 recorded, rearranged: nothing is invented (a synthetic store's models are
    unknown, so its entries say None).
    """
    models = manifest.get("models") or {}
    out = []
    for name, column in BASE_SETS.items():
        m = models.get(name) or {}
        if isinstance(m, str):  # older manifests (and hand-written ones) name the model only
            m = {"name": m}
        preprocessing: Any = m.get("preprocessing")
        if name == "text":  # a caption embedding means what its captioner and tokeniser did
            preprocessing = {"max_length": m.get("max_length"), "captions": models.get("caption")}
        entry = {
            "name": name,
            "kind": name,
            "column": column,
            "model": m.get("name"),
            "revision": m.get("revision"),
            "local_path": m.get("local_path"),
            "library": m.get("library", "transformers" if m else None),
            "pooling": m.get("pooling"),
            "preprocessing": preprocessing,
            "tta": [],
            "dim": int(manifest["dims"][column]),
            "dtype": manifest.get("emb_dtype", "float32"),
        }
        entry["fingerprint"] = entry_fingerprint(entry)
        out.append(entry)
    return out


def feature_entries(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's feature sets (format 2: the derived ``image`` and ``text``)."""
    return list(manifest.get("features") or base_entries(manifest))


def entry(info: StoreInfo, name: str) -> dict[str, Any]:
    """The manifest entry of set ``name``; StoreError listing the sets when absent."""
    for e in info.features:
        if e["name"] == name:
            return e
    raise StoreError(
        f"{info.root} has no feature set {name!r} (it has {[e['name'] for e in info.features]}); "
        f"add it with `python -m data_prep -c configs/prep/add_<name>.yaml --run.out {info.root}`."
    )
