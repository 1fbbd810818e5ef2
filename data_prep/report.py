"""Finishing a store: split indexes, failures.csv, manifest.json (last), one-screen summary."""

from __future__ import annotations

import importlib.metadata
import platform
import sys
import time
from pathlib import Path
from typing import Any

from feature_store.console import show_path
from feature_store.integrity import shard_record
from feature_store.layout import make_manifest
from feature_store.set_writer import recorded_sets

PACKAGES = ("torch", "transformers", "timm", "datasets", "lightning", "tokenizers", "pillow",
            "numpy", "pyarrow", "bitsandbytes")  # fmt: skip


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def finalize(*, cfg, plain, listing, shards, store, feats, models, load_seconds,
             extract_seconds, wall_seconds, resumed: int) -> Path:  # fmt: skip
    """Index every split over its shard files, write failures.csv, then the manifest."""
    missing = [f"{s.split}/{s.name}" for s in shards if not store.is_done(s)]
    if missing:
        raise RuntimeError(
            f"{len(missing)} shards are not finished ({', '.join(missing[:5])}...); "
            "rerun the same command to resume."
        )
    counts: dict[str, dict[str, int]] = {}
    records: dict[str, list[dict[str, Any]]] = {}
    failures: list[dict[str, str]] = []
    model_seconds: dict[str, float] = {}
    for split, items in listing.splits.items():
        split_shards = [s for s in shards if s.split == split]
        c = {"inputs": len(items), "rows": 0, "failed": 0}
        c.update(captions_empty=0, captions_degenerate=0)
        records[split] = []
        for s in split_shards:
            m = store.marker(s)
            if "sha256" not in m:  # a shard written before checksums were recorded
                m = {**m, **shard_record(store.arrow_path(s), m["rows"])}
            records[split].append({k: m[k] for k in ("file", "rows", "bytes", "sha256")})
            c["rows"] += m["rows"]
            c["failed"] += len(m["failed"])
            c["captions_empty"] += m["captions_empty"]
            c["captions_degenerate"] += m["captions_degenerate"]
            failures += m["failed"]
            for k, v in m["model_seconds"].items():
                model_seconds[k] = model_seconds.get(k, 0.0) + v
        if c["rows"] + c["failed"] != c["inputs"]:  # cannot happen unless files were edited
            raise RuntimeError(f"split {split}: {c} does not add up; delete {store.root}")
        counts[split] = c
        store.finalize_split(split, split_shards, feats)
    # Sets added to this store earlier (data_prep/add_sets.py) stay listed: their files are
    # untouched by a rerun of the rows, and the ids are checked against the rows on read.
    added, added_failures = recorded_sets(store.root)
    store.write_failures(failures + added_failures)
    manifest = make_manifest(
        class_names=list(listing.class_names),
        dims={"image_emb": feats["image_emb"].length, "text_emb": feats["text_emb"].length},
        emb_dtype=cfg.run.emb_dtype,
        splits=counts,
        shards=records,  # rows, bytes, sha256 per shard: checked by every reader
        models=models,
        source=getattr(listing, "source", ""),
        failures=len(failures),
        unused_files=list(listing.unused_files),
        timing={
            "wall_seconds_last_run": round(wall_seconds, 3),
            "extract_seconds_last_run": round(extract_seconds, 3),  # Trainer.predict
            "model_load_seconds_last_run": {k: round(v, 3) for k, v in load_seconds.items()},
            "model_seconds_all_shards": {k: round(v, 3) for k, v in model_seconds.items()},
            "shards": len(shards),
            "shards_reused": resumed,
        },
        package_versions=package_versions(),
        command=" ".join([Path(sys.executable).name, *sys.argv]),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        config=plain,
    )
    manifest["features"] += added
    store.write_manifest(manifest)  # last: its presence marks the store complete
    if cfg.run.progress:
        print(summary(store.root, manifest))
    return store.root


def summary(root: Path, manifest: dict[str, Any]) -> str:
    """The end-of-run screen: counts, failures, time per model, where things went."""
    t = manifest["timing"]
    lines = [f"feature store: {show_path(root)}"]
    lines.append(
        f"  {'split':<8}{'inputs':>8}{'rows':>8}{'failed':>8}{'empty cap':>11}{'degen cap':>11}"
    )
    for split, c in manifest["splits"].items():
        lines.append(
            f"  {split:<8}{c['inputs']:>8}{c['rows']:>8}{c['failed']:>8}"
            f"{c['captions_empty']:>11}{c['captions_degenerate']:>11}"
        )
    m = manifest["models"]
    lines.append(
        f"  dims: image {manifest['dims']['image_emb']} ({m['image']['pooling']}), "
        f"text {manifest['dims']['text_emb']} ({m['text']['pooling']}), "
        f"stored as {manifest['emb_dtype']}"
    )
    model_s = t["model_seconds_all_shards"]
    load_s = t["model_load_seconds_last_run"]
    parts = [
        f"{k} {model_s.get(k, 0.0):.1f}s (+{load_s.get(k, 0.0):.1f}s load)"
        for k in ("image", "caption", "text")
        if k in model_s or k in load_s
    ]
    lines.append("  model time: " + ", ".join(parts))
    lines.append(
        f"  wall time this run: {t['wall_seconds_last_run']:.1f}s; "
        f"shards {t['shards']} ({t['shards_reused']} reused from an earlier run)"
    )
    if manifest["failures"]:
        lines.append(
            f"  {manifest['failures']} images skipped: see {show_path(root / 'failures.csv')}"
        )
    if manifest["unused_files"]:
        lines.append(f"  {len(manifest['unused_files'])} files not used (listed in the manifest)")
    return "\n".join(lines)
