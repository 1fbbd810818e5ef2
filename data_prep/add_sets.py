"""Add feature sets to a finished store, without touching its rows or its other sets.

$ python -m data_prep -c configs/prep/add_siglip.yaml --run.out stores/kaggle
$ python -m data_prep -c configs/prep/add_siglip.yaml --run.out stores/kaggle --run.replace_feature siglip

For each set under ``features:`` that the store lacks: the store's rows are read (ids,
labels, captions; for image kinds the images are found again through the input section,
by default the one recorded in the store's manifest, and must be exactly the store's),
the extractor is loaded (data_prep/set_kinds.py), and Trainer.predict writes one shard of
the set per shard of the rows, into ``STORE/features/<name>/<split>/``, each with a done
marker in ``STORE/_prep/features/<name>/``: a killed run resumes where it stopped, exactly
like the rows' extraction (data_prep/store.py). When every shard is on disk the set's
split indexes, its failures.csv rows (with the set's name in ``feature``) and, last, its
manifest entry are written. A set already in the store with the same config is skipped;
with another config it is refused unless ``--run.replace_feature NAME``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

from data_prep.config import InputConfig, PrepConfig
from data_prep.set_kinds import KINDS
from data_prep.sources import build_listing
from data_prep.store import (
    PREP_DIR,
    Shard,
    StoreMixError,
    StoreWriter,
    _diff,
    plan_shards,
    recheck_shards,
)
from feature_store.layout import StoreError, open_store, read_failures
from feature_store.set_writer import register_set, set_record_path, write_set_metadata
from feature_store.sets import FEATURES_DIR, set_features, set_root
from feature_store.writer import write_json

NAME_KINDS = ("zero_shot", "caption_scores")  # kinds whose prompts need readable class names


class SetWriter(StoreWriter):
    """The rows' shard writer (temp file, rename, done marker), pointed at one set's files."""

    def __init__(self, root: str | os.PathLike, name: str):
        super().__init__(root)
        self.name = name

    def arrow_path(self, shard: Shard) -> Path:
        return set_root(self.root, self.name) / shard.split / f"{shard.name}.arrow"

    def marker_path(self, shard: Shard) -> Path:
        return self.root / PREP_DIR / FEATURES_DIR / self.name / shard.split / f"{shard.name}.json"

    def progress_path(self) -> Path:
        return self.root / PREP_DIR / FEATURES_DIR / self.name / "fingerprint.json"

    def remove_partial_files(self) -> int:
        """Delete temporary files a killed run of this set left (its own folders only)."""
        stale = [p for d in (set_root(self.root, self.name), self.progress_path().parent)
                 if d.is_dir() for p in d.rglob("*.tmp*") if p.is_file()]  # fmt: skip
        for p in stale:
            p.unlink()
        return len(stale)

    def entry_path(self) -> Path:
        """The finished set's entry and failure rows, kept beside its markers so that a
        rerun of the rows' extraction (which rewrites the manifest) lists it again."""
        return set_record_path(self.root, self.name)

    def remove(self) -> None:
        """Forget the set: its record, then its manifest entry and failures, then files."""
        self.entry_path().unlink(missing_ok=True)
        write_set_metadata(self.root, self.name, entry=None, failures=[])
        shutil.rmtree(set_root(self.root, self.name), ignore_errors=True)
        shutil.rmtree(self.progress_path().parent, ignore_errors=True)


@dataclasses.dataclass
class Rows:
    """The store's rows, flat over its splits in store order, with what extractors read."""

    items: list  # data_prep.sources.Item per row (path = where the image is now)
    captions: list[str]
    offsets: dict[str, int]
    counts: dict[str, int]
    listing: Any = None  # opens the images (None when no set reads images)


def add_sets(cfg: PrepConfig, plain: dict[str, Any]) -> Path:
    """Extract every set of ``cfg.features`` missing from the store at ``cfg.run.out``."""
    root = Path(cfg.run.out)
    try:
        info = open_store(root)
    except StoreError as err:
        raise ValueError(f"--run.out {root} is not a finished feature store ({err}); build the "
                         "store first, then add feature sets to it") from None  # fmt: skip
    replace = cfg.run.replace_feature
    if replace and replace not in [fs.name for fs in cfg.features]:
        raise ValueError(f"--run.replace_feature {replace}: no feature set of that name in the "
                         f"config ({[fs.name for fs in cfg.features]})")  # fmt: skip
    classes = _classes(cfg, info) if any(fs.kind in NAME_KINDS for fs in cfg.features) else None
    if any(fs.kind == "imagenet_logits" for fs in cfg.features):
        from data_prep.class_names import is_synset_list, synset_indices

        if not is_synset_list(info.class_names):
            raise ValueError(f"imagenet_logits needs class folders that are ImageNet synsets "
                             f"(n01440764...); the store's are {info.class_names[:3]}...")  # fmt: skip
        synset_indices(info.class_names)  # the competition's classes are ImageNet-1k synsets
    existing = {e["name"]: e for e in info.features}
    todo = []
    for fs in cfg.features:
        spec = set_spec(fs, cfg, classes)
        writer = SetWriter(root, fs.name)
        if fs.name != replace:
            done = existing.get(fs.name)
            if done is not None and done.get("config") == spec:
                _say(cfg, f"feature set {fs.name}: already in {root} with this config")
                continue
            progress = writer.progress_path()
            before = (done or {}).get("config") or (
                json.loads(progress.read_text()).get("config") if progress.is_file() else None
            )
            if before is not None and before != spec:
                shown = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in _diff(before, spec)[:5])
                raise StoreMixError(
                    f"feature set {fs.name!r} already exists in {root} with another config "
                    f"({shown}); to extract it again pass --run.replace_feature {fs.name}, or "
                    "give this one another name")  # fmt: skip
        todo.append((fs, spec, writer))
    if not todo:
        return root
    rows = store_rows(cfg, info, images=any(KINDS[fs.kind].reads == "image" for fs, _, _ in todo))
    for fs, spec, writer in todo:
        _add_one(cfg, fs, spec, writer, rows, classes, replace=fs.name == replace)
    return root


def set_spec(fs, cfg: PrepConfig, classes) -> dict[str, Any]:
    """What decides the set's vectors, as recorded in its entry and compared on a rerun."""
    spec = {**dataclasses.asdict(fs), "dtype": cfg.run.dtype, "emb_dtype": cfg.run.emb_dtype}
    if fs.kind in NAME_KINDS:
        spec["class_names"] = classes.names
    return json.loads(json.dumps(spec))


def _classes(cfg: PrepConfig, info):
    from data_prep.class_names import readable_names
    from data_prep.class_scores import Classes

    names, source = readable_names(info.class_names, cfg.input.class_names)
    return Classes(folders=info.class_names, names=names, source=source)


def store_rows(cfg: PrepConfig, info, *, images: bool) -> Rows:
    """The store's rows in order; with ``images``, matched id for id to the input listing
    (the store's recorded input unless the config gives one). Inputs that are not the
    store's images (ids or labels differ) are refused before anything is written."""
    from data_prep.sources import Item
    from feature_store.sets import load_features

    items, captions, offsets, counts = [], [], {}, {}
    listing = _listing(cfg, info) if images else None
    for split in info.splits:
        rows = load_features(info.root, split, [])
        offsets[split], counts[split] = len(items), len(rows)
        captions += rows.captions
        if listing is None:
            items += [Item(i, int(lab), p, split)
                      for i, lab, p in zip(rows.ids, rows.labels, rows.paths, strict=True)]  # fmt: skip
            continue
        listed = {it.id: it for it in listing.splits.get(split, [])}
        failed = {r["id"] for r in read_failures(info.root, split) if not r.get("feature")}
        missing = [i for i in rows.ids if i not in listed]
        stored = set(rows.ids)
        extra = [i for i in listed if i not in stored and i not in failed]
        relabelled = [i for i, lab in zip(rows.ids, rows.labels, strict=True)
                      if i in listed and listed[i].label != lab]  # fmt: skip
        if missing or extra or relabelled:
            raise StoreMixError(
                f"the inputs ({listing.source}) are not the images the store {info.root} was "
                f"built from: split {split}: {len(missing)} of its ids are not among them (e.g. "
                f"{missing[:3]}), {len(extra)} inputs are not in it (e.g. {extra[:3]}), "
                f"{len(relabelled)} have another label. Point --input.root at the store's "
                "images, or build a new store")  # fmt: skip
        items += [listed[i] for i in rows.ids]
    return Rows(items=items, captions=captions, offsets=offsets, counts=counts, listing=listing)


def _listing(cfg: PrepConfig, info):
    """The input listing: the config's input, or the one the store was built from."""
    if not (cfg.input.root or cfg.input.dataset):
        recorded = (info.manifest.get("config") or {}).get("input") or {}
        if not (recorded.get("root") or recorded.get("dataset")):
            raise ValueError(f"{info.root} does not record where its images are; pass "
                             "--input.root (the folder it was built from)")  # fmt: skip
        fields = {f.name for f in dataclasses.fields(InputConfig)}
        kept = {"class_names": cfg.input.class_names}
        cfg = dataclasses.replace(cfg, input=InputConfig(
            **{**{k: v for k, v in recorded.items() if k in fields}, **kept}))  # fmt: skip
    return build_listing(cfg)


def set_shards(info, counts: dict[str, int], shard_size: int) -> list[Shard]:
    """One shard of the set per non-empty shard of the rows (same rows, same name)."""
    out = []
    for split, n in counts.items():
        records = (info.manifest.get("shards") or {}).get(split)
        if not records:  # a store from before shard records: fixed-size shards
            out += plan_shards({split: n}, shard_size)
            continue
        start = 0
        for k, r in enumerate(records):
            if r["rows"]:
                out.append(Shard(split, k, start, start + int(r["rows"])))
            start += int(r["rows"])
    return out


def _add_one(cfg, fs, spec, writer: SetWriter, rows: Rows, classes, *, replace: bool) -> None:
    from data_prep.loading import hf_progress_bars_off, resolve_dtype
    from feature_store.writer import upgrade_store

    start = time.perf_counter()
    dtype = resolve_dtype(cfg.run.dtype, cfg.run.accelerator)
    with hf_progress_bars_off():
        extractor = KINDS[fs.kind].load()(fs, dtype=dtype, classes=classes)
    load_seconds = time.perf_counter() - start
    # Everything is checked and loaded: from here on the store is written to.
    if is_rank_zero():
        upgrade_store(writer.root)  # an older store gets its features entry (metadata only)
        if replace:
            writer.remove()
        writer.remove_partial_files()
    sync()
    described = extractor.describe()
    progress = {
        "config": spec,
        "resolved": {
            k: v for k, v in described.items() if k not in ("local_path", "compute_dtype")
        },
    }
    path = writer.progress_path()
    if path.is_file() and json.loads(path.read_text()) != json.loads(json.dumps(progress)):
        diffs = _diff(json.loads(path.read_text()), json.loads(json.dumps(progress)))
        raise StoreMixError(f"feature set {fs.name!r} was begun with another model ("
                            f"{'; '.join(f'{k}: {a!r} -> {b!r}' for k, a, b in diffs[:5])}); "
                            f"pass --run.replace_feature {fs.name} to start it again")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, progress)
    info = open_store(writer.root)
    shards = set_shards(info, rows.counts, cfg.run.shard_size)
    recheck_shards(writer, shards)
    pending = [s for s in shards if not writer.is_done(s)]
    feats = set_features(fs.name, extractor.dim, cfg.run.emb_dtype)
    if pending:
        _predict(cfg, fs, extractor, rows, shards, pending, writer, feats)
    if is_rank_zero():
        entry = finalize_set(writer, fs, spec, described, shards, feats, cfg.run.emb_dtype,
                             seconds={"load": load_seconds,
                                      "wall_last_run": time.perf_counter() - start})  # fmt: skip
        t = entry["timing"]
        _say(cfg, f"feature set {fs.name} ({entry['kind']}, dim {entry['dim']}): "
                  f"{sum(entry['rows'].values())} rows, {sum(entry['failed'].values())} failed; "
                  f"model {t['model_seconds']:.1f}s of {t['wall_seconds_last_run']:.1f}s wall "
                  f"({len(shards) - len(pending)} of {len(shards)} shards reused)")  # fmt: skip
    sync()


def _predict(cfg, fs, extractor, rows: Rows, shards, pending, writer, feats) -> None:
    import lightning as L

    from data_prep.set_predict import SetData, SetModule, SetShardWriter
    from feature_store.console import quiet_lightning

    data = SetData(rows=rows, pending=pending, batch_size=cfg.run.batch_size,
                   num_workers=cfg.run.num_workers, extractor=extractor)  # fmt: skip
    callback = SetShardWriter(store=writer, feats=feats, items=rows.items, offsets=rows.offsets,
                              shards=shards, name=fs.name, progress=cfg.run.progress)  # fmt: skip
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with quiet_lightning(banners=False):
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        trainer = L.Trainer(
            accelerator=cfg.run.accelerator, devices=cfg.run.devices, num_nodes=cfg.run.num_nodes,
            strategy=cfg.run.strategy, callbacks=[callback], logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            use_distributed_sampler=False, inference_mode=True,
        )  # fmt: skip
        trainer.predict(SetModule(extractor, tta=fs.tta), datamodule=data, return_predictions=False)
        trainer.strategy.barrier("data_prep_set_shards_written")


def finalize_set(writer: SetWriter, fs, spec, described, shards, feats, emb_dtype: str, *,
                 seconds: dict[str, float]) -> dict[str, Any]:  # fmt: skip
    """Index the set's splits, then its failures and manifest entry (last)."""
    missing = [f"{s.split}/{s.name}" for s in shards if not writer.is_done(s)]
    if missing:
        raise RuntimeError(f"{len(missing)} shards of feature set {fs.name} are not finished "
                           f"({', '.join(missing[:5])}); rerun the same command to resume")  # fmt: skip
    info = open_store(writer.root)
    records: dict[str, list] = {}
    failures: list[dict[str, str]] = []
    model_seconds = 0.0
    for split in info.splits:
        records[split] = []
        for s in [s for s in shards if s.split == split]:
            m = writer.marker(s)
            records[split].append({k: m[k] for k in ("file", "rows", "bytes", "sha256")})
            failures += m["failed"]
            model_seconds += sum(m["model_seconds"].values())
    timing = {
        "model_seconds": round(model_seconds, 3),
        "load_seconds": round(seconds["load"], 3),
        "wall_seconds_last_run": round(seconds["wall_last_run"], 3),
    }
    return register_set(writer.root, name=fs.name, fields={**described, "config": spec,
                        "timing": timing}, records=records, feats=feats, dtype=emb_dtype,
                        failures=failures)  # fmt: skip


def is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def sync() -> None:
    """Wait for every rank (a no-op in one process): rank 0's metadata is then on disk."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _say(cfg: PrepConfig, line: str) -> None:
    if cfg.run.progress:
        print(line)
