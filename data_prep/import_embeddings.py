"""Import precomputed embeddings with the reference report's schema as a feature store.

$ python -m data_prep --config configs/prep/import_report_embeddings.yaml       # the hub copy
$ python -m data_prep --config configs/prep/import_report_embeddings.yaml \\
      --input.dataset /data/ImageNet-Sketch-Embed                                # a local copy

The report's code (cuevascarlos/recvis24_a3, ``dataset_generation.py``) published its rows
as the Hugging Face dataset ``cuevascarlos/ImageNet-Sketch-Embed``, splits train /
validation / test, one row per image:

    label               the class folder name (the test split's is "mistery_category")
    visual_embedding    DINOv2-base, mean of all output tokens, image squashed to 224x224
    caption             BLIP-2 Flan-T5-XL, no prompt, greedy
    textual_embedding   BERT-base-uncased, mean over every position, padding included
    path                the image path (the reference's script calls it image_path)

``input.dataset`` is a hub id or a local folder of parquet files (``load_dataset`` reads
both); ``input.splits`` maps our split names to the source's. The store gets ids from the
file stems of the paths, labels from the sorted class names of the train split (or
``input.class_map``, e.g. the reference's ``class2category.csv``), -1 for test rows whose
label is no class, and its dims from the data. No model runs: the manifest's ``models`` are
what the config's image/caption/text sections declare the source was built with, marked as
declared, and ``imported`` records where the rows came from. Written to a temporary folder
and renamed, so an interrupted import leaves no half store.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from data_prep.config import PrepConfig
from data_prep.report import package_versions
from data_prep.sources import UNLABELLED_SPLIT, InputLayoutError, _few, read_class_map
from data_prep.store import StoreMixError
from feature_store.compat import dataset_fingerprint
from feature_store.console import show_path

DEFAULT_SPLITS = {"train": "train", "val": "validation", "test": "test"}
COLUMNS = {"label": "label", "image_emb": "visual_embedding", "text_emb": "textual_embedding"}
CAPTION_COLUMN = "caption"
PATH_COLUMNS = ("path", "image_path")  # the name, and the reference script's


def load_source(
    dataset: str,
    splits: dict[str, str],
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
) -> dict[str, Any]:
    """Our split name -> the source's split as a `datasets.Dataset` (hub id or local folder)."""
    import datasets

    try:
        loaded = datasets.load_dataset(dataset, revision=revision, cache_dir=cache_dir)
    except Exception as err:  # offline, no such dataset or folder, unreadable parquet...
        raise InputLayoutError(
            f"cannot load the embeddings dataset {dataset!r}: {type(err).__name__}: "
            f"{str(err)[:300]}. Fix: with network, pass the hub id (or run `hf download "
            f"--repo-type dataset {dataset} --local-dir DIR` and pass --input.dataset DIR); "
            "offline, pass a local folder of parquet files named after their splits."
        ) from err
    missing = {ours: theirs for ours, theirs in splits.items() if theirs not in loaded}
    if missing:
        raise InputLayoutError(
            f"embeddings dataset {dataset} has splits {sorted(loaded)}, not "
            f"{sorted(missing.values())} (asked for as {sorted(missing)}); set input.splits "
            "to map our split names (train/val/test) to existing ones."
        )
    return {ours: loaded[theirs] for ours, theirs in splits.items()}


def _table(ds):
    """The pyarrow table of a freshly loaded `datasets.Dataset` (no row formatting)."""
    ds = ds.flatten_indices() if getattr(ds, "_indices", None) is not None else ds
    return ds.data.table


def _path_column(table, where: str) -> str:
    """Check the schema; return the name of the path column.

    A column counts as missing when it is absent or null in every row: ``load_dataset``
    gives every split the union of the files' columns, filling the absent ones with nulls.
    """
    columns = [
        c
        for c in table.column_names
        if table.num_rows == 0 or table.column(c).null_count < table.num_rows
    ]
    missing = [c for c in (*COLUMNS.values(), CAPTION_COLUMN) if c not in columns]
    path = next((c for c in PATH_COLUMNS if c in columns), None)
    if path is None:
        missing.append(" or ".join(PATH_COLUMNS))
    if missing:
        raise InputLayoutError(
            f"{where} has columns {columns}, no {missing}. The reference's schema is label, "
            "visual_embedding, caption, textual_embedding, path (or image_path); point "
            "--input.dataset at a dataset written by its dataset_generation.py."
        )
    return path


def vectors(table, column: str, where: str, paths: list[str]) -> np.ndarray:
    """A list-of-numbers column as float32 [N, dim], dim the length most rows have.

    Rows of another length, nulls and non-finite values are errors naming the first row.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    col = table.column(column).combine_chunks()
    kind = col.type
    listy = pa.types.is_list(kind) or pa.types.is_large_list(kind)
    if not (listy or pa.types.is_fixed_size_list(kind)) or not (
        pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
    ):
        raise InputLayoutError(
            f"{where}: column {column!r} holds {kind}, not a list of numbers per row."
        )

    def row(i: int) -> str:
        return f"row {i} ({paths[i]})"

    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise InputLayoutError(f"{where} {row(first)}: {column} is missing (null).")
    lengths = pc.list_value_length(col).to_numpy(zero_copy_only=False)
    if len(lengths) == 0:
        return np.zeros((0, 0), dtype=np.float32)
    values, counts = np.unique(lengths, return_counts=True)
    dim = int(values[counts.argmax()])
    bad = np.flatnonzero(lengths != dim)
    if len(bad):
        raise InputLayoutError(
            f"{where} {row(int(bad[0]))}: {column} has {int(lengths[bad[0]])} values where "
            f"{int(counts.max())} rows have {dim}; {len(bad)} row(s) differ. Every vector of "
            "a column must have the same length: re-export those rows or drop them."
        )
    flat = col.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    matrix = flat.reshape(len(col), dim)
    finite = np.isfinite(matrix).all(axis=1)
    if not finite.all():
        first = int(np.flatnonzero(~finite)[0])
        raise InputLayoutError(f"{where} {row(first)}: {column} holds NaN or infinity.")
    return matrix


def _label_names(table, ds) -> list[Any]:
    """The label column as class names (a ClassLabel's ints are turned into its names)."""
    values = table.column(COLUMNS["label"]).to_pylist()
    names = getattr(ds.features[COLUMNS["label"]], "names", None)
    if names is None:
        return values
    return [None if v is None or v < 0 else names[v] for v in values]


def class_names_of(
    labels: dict[str, list[Any]], class_map: str | None, dataset: str
) -> tuple[list[str], str]:
    """Class names in label order, and what they came from (for the manifest)."""
    if class_map:
        return read_class_map(class_map), f"class map {Path(class_map).resolve()}"
    reference = "train" if "train" in labels else next(iter(labels))
    names = sorted({str(v) for v in labels[reference] if v is not None})
    if not names:
        raise InputLayoutError(
            f"embeddings dataset {dataset} split {reference!r} has no labels to take the "
            "classes from; pass --input.class_map class2category.csv."
        )
    return names, f"the sorted label names of split {reference!r}"


def split_columns(ds, *, split: str, where: str, index: dict[str, int]) -> dict[str, Any]:
    """One split in the store's column form, sorted by id."""
    table = _table(ds)
    path_col = _path_column(table, where)
    paths = [str(p) if p is not None else "" for p in table.column(path_col).to_pylist()]
    ids = [PurePosixPath(p.replace("\\", "/")).stem for p in paths]
    empty = [i for i, name in enumerate(ids) if not name]
    if empty:
        raise InputLayoutError(f"{where} row {empty[0]}: {path_col} is empty; ids come from it.")
    seen: dict[str, int] = {}
    dupes = [
        f"{i!r} (rows {seen[i]} and {r})" for r, i in enumerate(ids) if seen.setdefault(i, r) != r
    ]
    if dupes:
        raise InputLayoutError(
            f"{where}: {len(dupes)} duplicate id(s) (file stems of {path_col}): {_few(dupes)}."
        )
    labels = []
    for r, name in enumerate(_label_names(table, ds)):
        if name is not None and str(name) in index:
            labels.append(index[str(name)])
        elif split == UNLABELLED_SPLIT:  # the test folder's "mistery_category"
            labels.append(-1)
        else:
            raise InputLayoutError(
                f"{where} row {r} ({paths[r]}): label {name!r} is not one of the "
                f"{len(index)} classes ({_few(sorted(index))}); fix the row or pass "
                "--input.class_map with every class."
            )
    captions = [c or "" for c in table.column(CAPTION_COLUMN).to_pylist()]
    image = vectors(table, COLUMNS["image_emb"], where, paths)
    text = vectors(table, COLUMNS["text_emb"], where, paths)
    order = sorted(range(len(ids)), key=ids.__getitem__)
    return {
        "id": [ids[i] for i in order],
        "label": np.asarray(labels, dtype=np.int64)[order],
        "path": [paths[i] for i in order],
        "caption": [captions[i] for i in order],
        "image_emb": image[order],
        "text_emb": text[order],
    }


def declared_models(cfg: PrepConfig, dims: dict[str, int]) -> dict[str, Any]:
    """The manifest's ``models``: what the config says built the source, not run here."""
    note = "declared by the import config (input.kind report_embeddings); not run here"
    image = {
        "name": cfg.image.model,
        "revision": cfg.image.revision,
        "library": cfg.image.library,
        "pooling": cfg.image.pooling,
        "dim": dims["image_emb"],
        "declared": note,
    }
    if cfg.image.squash is not None:
        image["preprocessing"] = {
            "squash": {"size": cfg.image.squash, "resample": cfg.image.squash_resample},
            **(cfg.image.processor_kwargs or {}),
        }
    c = cfg.caption
    caption = {
        "name": c.model,
        "revision": c.revision,
        "prompt": c.prompt,
        "keep_prompt": c.keep_prompt,
        "max_new_tokens": c.max_new_tokens,
        "num_beams": c.num_beams,
        "load_in_8bit": c.load_in_8bit,
        "dtype": c.dtype,
        "declared": note,
    }
    text = {
        "name": cfg.text.model,
        "revision": cfg.text.revision,
        "pooling": cfg.text.pooling,
        "max_length": cfg.text.max_length,
        "dim": dims["text_emb"],
        "declared": note,
    }
    return {"image": image, "caption": caption, "text": text}


def import_fingerprint(cfg: PrepConfig, splits: dict[str, str], sources: dict[str, Any]) -> str:
    value = {
        "dataset": cfg.input.dataset,
        "revision": cfg.input.revision,
        "splits": splits,
        "source_fingerprints": {s: dataset_fingerprint(ds) for s, ds in sources.items()},
        "class_map": cfg.input.class_map
        and hashlib.sha256(Path(cfg.input.class_map).read_bytes()).hexdigest(),
        "image": vars(cfg.image),
        "caption": vars(cfg.caption),
        "text": vars(cfg.text),
        "emb_dtype": cfg.run.emb_dtype,
    }
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


def import_store(cfg: PrepConfig, plain: dict[str, Any], *, cache_dir: str | None = None) -> Path:
    """Write ``cfg.run.out`` from the embeddings dataset ``cfg.input.dataset``; return it."""
    from feature_store import upgrade_store, write_store

    if not cfg.input.dataset:
        raise ValueError(
            "input.kind report_embeddings needs input.dataset: a hub id "
            "(cuevascarlos/ImageNet-Sketch-Embed) or a local folder of parquet files"
        )
    start = time.perf_counter()
    splits = dict(cfg.input.splits or DEFAULT_SPLITS)
    sources = load_source(
        cfg.input.dataset, splits, revision=cfg.input.revision, cache_dir=cache_dir
    )
    out = Path(cfg.run.out)
    fingerprint = import_fingerprint(cfg, splits, sources)
    manifest_path = out / "manifest.json"
    if out.exists() and any(out.iterdir()):
        old = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
        if old.get("imported", {}).get("fingerprint") == fingerprint:
            upgrade_store(out)  # a format-1 store gets its DatasetDict metadata, rows kept
            print(f"feature store: {show_path(out)} (already imported from {cfg.input.dataset})")
            return out
        raise StoreMixError(
            f"{out} is not empty and does not hold this import of {cfg.input.dataset}; "
            "choose a new or empty --run.out, or delete it to import again."
        )
    where = {ours: f"{cfg.input.dataset} split {splits[ours]!r}" for ours in sources}
    for ours, ds in sources.items():  # every column present before any row is read
        _path_column(_table(ds), where[ours])
    labels = {s: _label_names(_table(ds), ds) for s, ds in sources.items()}
    class_names, classes_from = class_names_of(labels, cfg.input.class_map, cfg.input.dataset)
    index = {name: i for i, name in enumerate(class_names)}
    columns = {
        ours: split_columns(ds, split=ours, where=where[ours], index=index)
        for ours, ds in sources.items()
    }
    dims = _common_dims(columns, cfg.input.dataset)
    unlabelled = {s: int((c["label"] < 0).sum()) for s, c in columns.items()}
    extra = {
        "source": f"imported:{cfg.input.dataset}",
        "imported": {
            "note": "rows imported from precomputed embeddings; no model ran here",
            "dataset": cfg.input.dataset,
            "revision": cfg.input.revision,
            "splits": splits,
            "fingerprint": fingerprint,
            "ids": "file stem of the path column",
            "labels": classes_from,
            "unlabelled_rows": unlabelled,
        },
        "models": declared_models(cfg, dims),
        "failures": 0,
        "unused_files": [],
        "package_versions": package_versions(),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": plain,
    }
    tmp = out.with_name(f".{out.name}.importing")
    shutil.rmtree(tmp, ignore_errors=True)  # what an interrupted import left
    write_store(
        tmp,
        splits=columns,
        class_names=class_names,
        emb_dtype=cfg.run.emb_dtype,
        extra_manifest=extra,
    )
    if out.exists():
        out.rmdir()  # empty (checked above); rename needs it gone
    os.replace(tmp, out)
    if cfg.run.progress:
        print(_summary(out, columns, dims, class_names, time.perf_counter() - start))
    return out


def _common_dims(columns: dict[str, dict[str, Any]], dataset: str) -> dict[str, int]:
    dims: dict[str, int] = {}
    for split, cols in columns.items():
        for key in ("image_emb", "text_emb"):
            if len(cols[key]) == 0:
                continue
            d = cols[key].shape[1]
            if dims.setdefault(key, d) != d:
                raise InputLayoutError(
                    f"embeddings dataset {dataset}: split {split!r} has {key} of {d} values, "
                    f"another split {dims[key]}; all splits must come from the same models."
                )
    if len(dims) < 2:
        raise InputLayoutError(f"embeddings dataset {dataset} has no rows to import.")
    return dims


def _summary(out: Path, columns, dims, class_names, seconds: float) -> str:
    lines = [f"feature store: {show_path(out)} (imported)"]
    lines.append(f"  {'split':<8}{'rows':>8}{'unlabelled':>12}")
    for split, cols in columns.items():
        lines.append(f"  {split:<8}{len(cols['id']):>8}{int((cols['label'] < 0).sum()):>12}")
    lines.append(
        f"  dims: image {dims['image_emb']}, text {dims['text_emb']}; "
        f"{len(class_names)} classes; {seconds:.1f}s"
    )
    return "\n".join(lines)
