"""The whole stage: inputs -> models -> Trainer.predict -> finished store.

$ python -m data_prep --config configs/prep/demo.yaml

Order matters and is the point of this module: the input layout is checked first (errors
in seconds), then the store's config fingerprint (refusing to mix in seconds), then every
model is loaded once (a missing model fails before any image is decoded), then the shards
still missing are extracted, and only when all are on disk are the split indexes,
failures.csv and, last, manifest.json written.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from data_prep.add_sets import add_sets, sync
from data_prep.config import PrepConfig
from data_prep.import_embeddings import import_store
from data_prep.loading import hf_progress_bars_off
from data_prep.report import finalize, summary
from data_prep.sources import build_listing
from data_prep.store import PREP_DIR, StoreWriter, features, plan_shards, recheck_shards
from feature_store.console import quiet_lightning
from feature_store.writer import upgrade_store


def prepare_demo(cfg: PrepConfig, plain: dict[str, Any] | None = None) -> None:
    """Generate the demo images and tiny models where missing; point the config at them.

    A model the user set (``--caption.model X``: any value other than the built-in default)
    wins over the demo's tiny one; the others become the tiny models, and ``plain`` (the
    config recorded in the manifest) is updated to say what actually ran. ``input.root``
    cannot be combined with the demo (it draws its own images) and is refused.
    """
    from data_prep.config import CaptionConfig, ImageConfig, TextConfig
    from data_prep.demo_images import make_demo_images
    from data_prep.tiny_models import ensure_tiny_models

    if cfg.input.root:
        raise ValueError(
            f"--input.root {cfg.input.root} is not used with demo.enabled: true (the demo "
            f"draws its own images into demo.images, {cfg.demo.images}). Fix: drop "
            "--input.root, or pass --demo.enabled false to use your images."
        )
    # Every directory the demo writes is checked before it draws or builds anything.
    check_dir_option(cfg.demo.images, "--demo.images", "the demo's images")
    check_dir_option(cfg.demo.models, "--demo.models", "the demo's tiny models")
    check_dir_option(cfg.run.out, "--run.out", "the store")
    images = Path(cfg.demo.images)
    complete = (images / "test_labels.csv").is_file()
    if not complete and images.is_dir() and any(images.iterdir()):
        # Only a demo folder from before the drawing was atomic can be in this state.
        raise ValueError(
            f"--demo.images {images} holds files but no test_labels.csv (the demo writes it "
            "last), so it is not a finished demo drawing: choose an empty or new --demo.images "
            "directory (delete this one only if it is a demo drawing that was cut short)"
        )
    option = "--demo.images"
    try:
        if not complete:
            make_demo_images(
                images,
                num_classes=cfg.demo.num_classes,
                per_class=cfg.demo.per_class,
                size=cfg.demo.size,
                seed=cfg.demo.seed,
            )
        option = "--demo.models"
        models = ensure_tiny_models(cfg.demo.models)
    except OSError as err:  # not the store's fault: name the demo's own option
        where = cfg.demo.images if option == "--demo.images" else cfg.demo.models
        raise ValueError(
            f"{option} {where} cannot be written ({err.strerror or err}); choose a writable "
            f"directory ({option} DIR), then rerun"
        ) from err
    cfg.input.kind, cfg.input.root = "kaggle", str(images)
    changed: dict[str, dict[str, str]] = {"input": {"kind": "kaggle", "root": str(images)}}
    if (cfg.image.model, cfg.image.library) == (ImageConfig.model, ImageConfig.library):
        cfg.image.model = str(models["dinov2"])
        changed["image"] = {"model": cfg.image.model}
    if cfg.caption.model == CaptionConfig.model:
        cfg.caption.model = str(models["blip2"])
        changed["caption"] = {"model": cfg.caption.model}
    if cfg.text.model == TextConfig.model:
        cfg.text.model = str(models["bert"])
        changed["text"] = {"model": cfg.text.model}
    kept = [f"{k}.model" for k in ("image", "caption", "text") if k not in changed]
    if kept and cfg.run.progress:
        print(f"demo: using your {', '.join(kept)} instead of the demo's tiny model")
    for section, values in changed.items():
        if plain is not None:
            plain.setdefault(section, {}).update(values)


def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _inputs_digest(listing) -> dict[str, Any]:
    """Per split: the count and a hash of (id, label, path), so new inputs are noticed."""
    out = {}
    for split, items in listing.splits.items():
        h = hashlib.sha256()
        for it in items:
            h.update(f"{it.id}\0{it.label}\0{it.path}\n".encode())
        out[split] = {"count": len(items), "sha256": h.hexdigest()[:16]}
    return out


# Options added after stores were first built: left out of the fingerprint while unset, so
# a store begun before they existed still resumes.
_LATER_OPTIONS = {
    "image": ("squash", "squash_resample", "processor_kwargs"),
    "caption": ("dtype",),
}


def _options(section: str, values: dict[str, Any]) -> dict[str, Any]:
    out = dict(values)
    for key in _LATER_OPTIONS.get(section, ()):
        if out.get(key) is None:
            out.pop(key, None)
    if section == "image" and "squash" not in out:
        out.pop("squash_resample", None)  # moot without a squash
    return out


def config_fingerprint(cfg: PrepConfig, listing) -> dict[str, Any]:
    """What decides the rows: inputs, models and their options. Not batch size or devices."""
    caption = (
        {"captions_csv_sha256": _file_sha256(cfg.input.captions_csv)}
        if cfg.input.captions_csv
        else _options("caption", vars(cfg.caption))
    )
    return {
        "inputs": _inputs_digest(listing),
        "class_names": listing.class_names,
        "image": _options("image", vars(cfg.image)),
        "caption": caption,
        "text": vars(cfg.text),
        "dtype": cfg.run.dtype,
        "emb_dtype": cfg.run.emb_dtype,
        "shard_size": cfg.run.shard_size,
    }


class Models:
    """Every model and preprocessor, loaded once, in the same dtype."""

    def __init__(self, cfg: PrepConfig):
        from data_prep.encoders import ImageEncoder, ImagePreprocessor
        from data_prep.loading import resolve_dtype
        from data_prep.text_encoder import TextEncoder

        self.dtype = resolve_dtype(cfg.run.dtype, cfg.run.accelerator)
        self.caption_dtype = (
            resolve_dtype(cfg.caption.dtype, cfg.run.accelerator)
            if cfg.caption.dtype
            else self.dtype
        )
        self.seconds: dict[str, float] = {}
        self.captioner = self.caption_pre = None
        if not cfg.input.captions_csv:
            from data_prep.captioner import CaptionPreprocessor

            # First, and without weights: a processor that would hide the image from the
            # language model is refused (or repaired) before any model is loaded.
            start = time.perf_counter()
            self.caption_pre = CaptionPreprocessor(cfg.caption)
            self.seconds["caption"] = time.perf_counter() - start
        start = time.perf_counter()
        self.image = ImageEncoder(cfg.image, dtype=self.dtype)
        self.image_pre = ImagePreprocessor(cfg.image, self.image.model)
        self.seconds["image"] = time.perf_counter() - start
        if self.caption_pre is not None:
            from data_prep.captioner import Captioner

            start = time.perf_counter()
            self.captioner = Captioner(cfg.caption, dtype=self.caption_dtype)
            # One blank image through generate: a model/prompt combination that cannot
            # caption fails here, not after every model has loaded and the first batch ran.
            self.captioner.check(self.caption_pre)
            self.seconds["caption"] += time.perf_counter() - start
        start = time.perf_counter()
        self.text = TextEncoder(cfg.text, dtype=self.dtype)
        self.seconds["text"] = time.perf_counter() - start

    def describe(self, cfg: PrepConfig) -> dict[str, Any]:
        """The manifest's ``models`` entry (also the resolved half of the fingerprint)."""
        dtype = str(self.dtype).replace("torch.", "")
        out = {
            "image": {
                **self.image.source,
                "library": cfg.image.library,
                "pooling": cfg.image.pooling,
                "dim": self.image.dim,
                "dtype": dtype,
                "preprocessing": self.image_pre.description,
            },
            "text": {
                **self.text.source,
                "pooling": cfg.text.pooling,
                "max_length": cfg.text.max_length,
                "dim": self.text.dim,
                "dtype": dtype,
            },
        }
        if self.captioner is not None:
            out["caption"] = {
                **self.captioner.source,
                "prompt": cfg.caption.prompt,
                "keep_prompt": cfg.caption.keep_prompt,
                "max_new_tokens": cfg.caption.max_new_tokens,
                "num_beams": cfg.caption.num_beams,
                "load_in_8bit": cfg.caption.load_in_8bit,
                "dtype": str(self.caption_dtype).replace("torch.", ""),
                "preprocessing": self.caption_pre.description,
            }
        else:
            path = cfg.input.captions_csv
            out["caption"] = {
                "captions_csv": str(Path(path).resolve()),
                "sha256": _file_sha256(path),
            }
        return out


def run(cfg: PrepConfig, plain: dict[str, Any]) -> Path:
    """Build (or finish) the store described by ``cfg``, then add its ``features`` sets
    (``run.mode: add``: only those); return its directory."""
    if cfg.run.mode == "add":
        return add_sets(cfg, plain)
    if cfg.input.kind == "report_embeddings":  # precomputed rows: no model, no image
        root = import_store(cfg, plain)
    else:
        root = build(cfg, plain)
    if cfg.features:
        sync()  # rank 0 has written the manifest: every rank may open the store
        root = add_sets(cfg, plain)
    return root


def build(cfg: PrepConfig, plain: dict[str, Any]) -> Path:
    """The rows: images, captions, image and caption embeddings."""
    start = time.perf_counter()
    if cfg.demo.enabled:
        prepare_demo(cfg, plain)
    listing = build_listing(cfg)
    captions = None
    if cfg.input.captions_csv:
        from data_prep.sources import read_captions_csv

        expected = {s: [it.id for it in items] for s, items in listing.splits.items()}
        captions = read_captions_csv(cfg.input.captions_csv, expected_ids=expected)
    if PREP_DIR in listing.splits:
        raise ValueError(f"a split may not be called {PREP_DIR!r}")
    check_writable(cfg.run.out)
    store = StoreWriter(cfg.run.out)
    store.check_fingerprint("config", config_fingerprint(cfg, listing))
    shards = plan_shards({s: len(v) for s, v in listing.splits.items()}, cfg.run.shard_size)
    damaged = recheck_shards(store, shards)
    manifest = Path(cfg.run.out) / "manifest.json"
    if not damaged and store.manifest_ok() and all(store.is_done(s) for s in shards):
        # Same inputs and config, every shard done and intact: nothing to load or run.
        upgrade_store(store.root)  # a format-1 store gets its DatasetDict metadata, rows kept
        if cfg.run.progress:
            print(summary(store.root, json.loads(manifest.read_text())))
            print("  (already complete: nothing to do)")
        return store.root
    # Not complete (or no longer): the manifest must not claim otherwise while we work.
    manifest.unlink(missing_ok=True)
    store.remove_partial_files()
    with hf_progress_bars_off():  # one "Loading weights" bar per model is noise
        models = Models(cfg)
    described = models.describe(cfg)
    store.check_fingerprint("resolved", described)
    pending = [s for s in shards if not store.is_done(s)]
    feats = features(
        models.image.dim, models.text.dim, cfg.run.emb_dtype, list(listing.class_names)
    )
    is_zero = True
    extract_start = time.perf_counter()
    if pending:
        is_zero = _predict(cfg, listing, pending, shards, models, captions, store, feats)
    extract_seconds = time.perf_counter() - extract_start
    if not is_zero:
        return Path(cfg.run.out)
    return finalize(
        cfg=cfg,
        plain=plain,
        listing=listing,
        shards=shards,
        store=store,
        feats=feats,
        models=described,
        load_seconds=models.seconds,
        extract_seconds=extract_seconds,
        wall_seconds=time.perf_counter() - start,
        resumed=len(shards) - len(pending),
    )


def check_dir_option(path: str | os.PathLike, option: str, what: str) -> None:
    """Refuse an option's directory that is a file, lies inside a file, or whose nearest
    existing folder cannot be written; creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(
            f"{option} {path} is a file, not a directory; choose a directory path for {what}"
        )
    existing = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(
            f"{option} {path} lies inside the file {existing}; choose a directory path for {what}"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(
            f"{option} {path} cannot be written ({existing} is not writable); choose a writable "
            f"directory for {what} ({option} DIR)"
        )


def check_writable(out: str) -> None:
    """Refuse a ``--run.out`` that is a file or cannot be written, before any model loads."""
    path = Path(out)
    check_dir_option(path, "--run.out", "the store")
    try:
        path.mkdir(parents=True, exist_ok=True)
        # access(2), not a probe file: nothing is written into a directory not yet known
        # to be ours, and it reports a read-only filesystem even to root.
        if not os.access(path, os.W_OK | os.X_OK):
            raise PermissionError(f"not writable: {path}")
    except OSError as err:
        raise ValueError(
            f"--run.out {path} cannot be written ({err.strerror or err}); choose a writable "
            "directory (--run.out DIR)"
        ) from err


def _predict(cfg, listing, pending, shards, models, captions, store, feats) -> bool:
    """Run Trainer.predict over the pending shards; True on the process that finalises."""
    import lightning as L

    from data_prep.extract import Extractor, PrepData, ShardWriter

    data = PrepData(
        listing=listing,
        pending=pending,
        batch_size=cfg.run.batch_size,
        num_workers=cfg.run.num_workers,
        image_pre=models.image_pre,
        caption_pre=models.caption_pre,
    )
    module = Extractor(
        image_encoder=models.image,
        text_encoder=models.text,
        items=data.items,
        captioner=models.captioner,
        captions=captions,
    )
    writer = ShardWriter(
        store=store,
        feats=feats,
        items=data.items,
        offsets=data.offsets,
        shards=shards,
        shard_size=cfg.run.shard_size,
        progress=cfg.run.progress,
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Lightning's own banners ("GPU available: ...") would bury the progress bars; only
    # inside this block, so a caller's logging (train.py's demo) is left as it was.
    with quiet_lightning(banners=False):
        # Lightning cannot know that ShardBatchSampler returns every index (it does, see
        # its test); quiet_lightning restores the filters on exit.
        warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
        trainer = L.Trainer(
            accelerator=cfg.run.accelerator,
            devices=cfg.run.devices,
            num_nodes=cfg.run.num_nodes,
            strategy=cfg.run.strategy,
            callbacks=[writer],
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            use_distributed_sampler=False,  # ShardBatchSampler gives each rank its shards
            inference_mode=True,
        )
        trainer.predict(module, datamodule=data, return_predictions=False)
        # Every rank's shards are on disk before rank 0 finalises the store. Here, not in a
        # predict hook: a rank left with no shard skips the predict loop and all its hooks.
        trainer.strategy.barrier("data_prep_shards_written")
    return trainer.is_global_zero
