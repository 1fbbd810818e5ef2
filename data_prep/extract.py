"""Extraction as Lightning ``Trainer.predict`` with a prediction writer.

$ python -m data_prep --config configs/prep/demo.yaml --run.devices 2 --run.strategy ddp

The work is cut into fixed shards (store.plan_shards). Each rank takes every
``world_size``-th unfinished shard, its DataLoader yields batches that never cross a shard
boundary, and :class:`ShardWriter` writes a shard the moment its last batch is predicted.
So 1 or N processes, a first run or a resumed one, all produce the same shard files.
A SIGTERM (Lightning's signal connector sets ``trainer.received_sigterm``) stops the run
after the shard being written, with :class:`Interrupted`; rerunning continues from there.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset, Sampler

from data_prep.images import BadImageError
from data_prep.store import Shard, StoreWriter
from feature_store.console import usable_workers


class Interrupted(RuntimeError):
    """A SIGTERM arrived; the shards written so far are kept and a rerun continues."""


class ItemDataset(Dataset):
    """Decodes one item; a bad image becomes a failure record, never an exception."""

    def __init__(self, listing, items: list):
        self.listing = listing
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            return {"index": index, "image": self.listing.open_image(item), "error": None}
        except BadImageError as err:
            return {"index": index, "image": None, "error": err.reason}


class Collate:
    """In the worker: run both models' preprocessing on the batch's good images."""

    def __init__(self, image_pre, caption_pre=None):
        self.image_pre = image_pre
        self.caption_pre = caption_pre

    def _preprocess(self, images: list) -> dict[str, Any]:
        out = {"pixel_values": self.image_pre(images)}
        if self.caption_pre is not None:
            out["caption_inputs"] = self.caption_pre(images)
        return out

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, Any]:
        good = [s for s in samples if s["error"] is None]
        failed = [(s["index"], s["error"]) for s in samples if s["error"] is not None]
        tensors: dict[str, Any] = {}
        if good:
            try:
                tensors = self._preprocess([s["image"] for s in good])
            except Exception:  # noqa: BLE001 - find the image the processor rejects
                keep = []
                for s in good:
                    try:
                        self._preprocess([s["image"]])
                        keep.append(s)
                    except Exception as err:  # noqa: BLE001
                        failed.append((s["index"], f"preprocessing failed: {err}"[:160]))
                good = keep
                tensors = self._preprocess([s["image"] for s in good]) if good else {}
        return {"good": [s["index"] for s in good], "failed": failed, **tensors}


class ShardBatchSampler(Sampler):
    """Global item indices, ``batch_size`` at a time, never crossing a shard boundary."""

    def __init__(self, shards: list[Shard], offsets: dict[str, int], batch_size: int):
        self.batches = []
        for s in shards:
            base = offsets[s.split]
            for b in range(s.start, s.stop, batch_size):
                self.batches.append(list(range(base + b, base + min(b + batch_size, s.stop))))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class PrepData(L.LightningDataModule):
    """The items of all splits in one flat list; each rank gets every world-th shard."""

    def __init__(
        self,
        *,
        listing,
        pending: list[Shard],
        batch_size: int,
        num_workers: int,
        image_pre,
        caption_pre=None,
    ):
        super().__init__()
        self.listing = listing
        self.pending = pending
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.items: list = []
        self.offsets: dict[str, int] = {}
        for split, items in listing.splits.items():
            self.offsets[split] = len(self.items)
            self.items += items
        self.collate = Collate(image_pre, caption_pre)
        self.rank_shards: list[Shard] = []

    def shards_of_rank(self, rank: int, world: int) -> list[Shard]:
        return self.pending[rank::world]

    def predict_dataloader(self):
        self.rank_shards = self.shards_of_rank(self.trainer.global_rank, self.trainer.world_size)
        return DataLoader(
            ItemDataset(self.listing, self.items),
            batch_sampler=ShardBatchSampler(self.rank_shards, self.offsets, self.batch_size),
            collate_fn=self.collate,
            num_workers=usable_workers(self.num_workers, option="--run.num_workers"),
            pin_memory=torch.cuda.is_available(),
        )


def _timed(seconds: dict[str, float], key: str, fn, *args, **kwargs):
    """Run ``fn(*args, **kwargs)``, adding its wall time to ``seconds[key]`` (GPU included)."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start
    return out


class Extractor(L.LightningModule):
    """predict_step: image features, captions (BLIP-2 or given), caption embeddings."""

    def __init__(self, *, image_encoder, text_encoder, items: list, captioner=None,
                 captions: dict[str, str] | None = None):  # fmt: skip
        super().__init__()
        if (captioner is None) == (captions is None):
            raise ValueError("give exactly one of captioner (BLIP-2) and captions (a CSV)")
        self.image_encoder = image_encoder
        self.text_encoder = text_encoder
        self.captioner = captioner
        self.captions = captions
        self.items = items
        # More ranks than unfinished shards (a resume near the end) leaves a rank idle.
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        seconds: dict[str, float] = {}
        good = batch["good"]
        out = {"good": good, "failed": batch["failed"], "seconds": seconds, "captions": []}
        if not good:
            return out
        image_emb = _timed(seconds, "image", self.image_encoder, batch["pixel_values"])
        if self.captioner is not None:
            captions = _timed(seconds, "caption", self.captioner, **batch["caption_inputs"])
        else:
            captions = [self.captions[self.items[i].id] for i in good]
        text_emb = _timed(seconds, "text", self.text_encoder.encode, captions)
        out.update(
            captions=captions,
            image_emb=image_emb.cpu().numpy(),
            text_emb=text_emb.cpu().numpy(),
        )
        return out


class ShardWriter(BasePredictionWriter):
    """Buffers a shard's predicted rows; writes the shard (and its marker) when whole."""

    def __init__(self, *, store: StoreWriter, feats, items: list, offsets: dict[str, int],
                 shards: list[Shard], shard_size: int, progress: bool = True):  # fmt: skip
        super().__init__(write_interval="batch")
        self.store = store
        self.feats = feats
        self.items = items
        self.splits = sorted(offsets, key=offsets.get)
        self.offsets = offsets
        self.shards = {(s.split, s.index): s for s in shards}
        self.shard_size = shard_size
        self.progress = progress
        self.buffers: dict[tuple[str, int], list[dict]] = defaultdict(list)
        self.written = 0
        self.bar = None
        self.bar_split = None
        self._splits: list[list] = []  # [split, images] still to show, in predict order

    def _shard_of(self, index: int) -> Shard:
        split = next(s for s in reversed(self.splits) if index >= self.offsets[s])
        return self.shards[(split, (index - self.offsets[split]) // self.shard_size)]

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch,
                           batch_idx, dataloader_idx=0):  # fmt: skip
        first = (prediction["good"] or [i for i, _ in prediction["failed"]])[0]
        shard = self._shard_of(first)
        buf = self.buffers[(shard.split, shard.index)]
        buf.append(prediction)
        n_batch = len(prediction["good"]) + len(prediction["failed"])
        self._advance(trainer, shard.split, n_batch)
        if sum(len(p["good"]) + len(p["failed"]) for p in buf) == len(shard):
            self._write(shard, self.buffers.pop((shard.split, shard.index)), trainer.global_rank)
            if trainer.received_sigterm:
                # The safe point: this shard is whole on disk, the next is not started.
                raise Interrupted(
                    f"SIGTERM: stopped after {shard.split}/{shard.name} ({self.written} shards "
                    "written by this run); rerun the same command to continue."
                )

    def _write(self, shard: Shard, preds: list[dict], rank: int) -> None:
        from data_prep.caption_quality import caption_quality

        good = [i for p in preds for i in p["good"]]
        order = np.argsort(good, kind="stable")  # id order, whatever the batch order was
        items = [self.items[good[k]] for k in order]
        captions = [c for p in preds for c in p["captions"]]
        captions = [captions[k] for k in order]

        def stack(key: str, dim: int) -> np.ndarray:
            parts = [p[key] for p in preds if p["good"]]
            return np.concatenate(parts)[order] if parts else np.zeros((0, dim), np.float32)

        image_emb = self._stored(stack("image_emb", self.feats["image_emb"].length), "image_emb")
        text_emb = self._stored(stack("text_emb", self.feats["text_emb"].length), "text_emb")
        # A NaN or an infinity (also a finite value past float16's range) would poison
        # every later stage: such rows go to failures.csv with the reason, never the store.
        bad_image = ~np.isfinite(image_emb).all(axis=1)
        bad_text = ~np.isfinite(text_emb).all(axis=1)
        keep = ~(bad_image | bad_text)
        failed_rows = [
            (good[order[k]], "non-finite embedding (" + "image" * bool(bad_image[k])
             + " and " * bool(bad_image[k] and bad_text[k]) + "text" * bool(bad_text[k]) + ")")
            for k in np.flatnonzero(~keep)
        ]  # fmt: skip
        items = [it for it, ok in zip(items, keep, strict=True) if ok]
        captions = [c for c, ok in zip(captions, keep, strict=True) if ok]
        columns = {
            "id": [it.id for it in items],
            "label": [int(it.label) for it in items],
            "path": [it.path for it in items],
            "caption": captions,
            "image_emb": image_emb[keep],
            "text_emb": text_emb[keep],
        }
        quality = [caption_quality(c) for c in captions]
        seconds: dict[str, float] = defaultdict(float)
        for p in preds:
            for k, v in p["seconds"].items():
                seconds[k] += v
        failed = [
            {"file": self.items[i].path, "reason": r, "split": shard.split, "id": self.items[i].id}
            for i, r in sorted([f for p in preds for f in p["failed"]] + failed_rows)
        ]
        info = {
            "failed": failed,
            "captions_empty": quality.count("empty"),
            "captions_degenerate": quality.count("degenerate"),
            "model_seconds": dict(seconds),
            "rank": rank,
        }
        self.store.write_shard(shard, columns, feats=self.feats, info=info)
        self.written += 1

    def _stored(self, emb: np.ndarray, column: str) -> np.ndarray:
        """``emb`` in the store's dtype (float16 overflows to inf: checked after this)."""
        with np.errstate(over="ignore", invalid="ignore"):
            return np.asarray(emb).astype(self.feats[column].feature.dtype)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # The first bar opens before the first batch is even fetched (Lightning prefetches
        # it before on_predict_start), so its clock and rate include that batch; a bar
        # opened after it once showed "test: 2/2 [00:00, 808 img/s]" for an 11 s split.
        self._splits = []
        data = trainer.datamodule
        for s in data.shards_of_rank(trainer.global_rank, trainer.world_size):
            if not self._splits or self._splits[-1][0] != s.split:
                self._splits.append([s.split, 0])
            self._splits[-1][1] += len(s)
        self._open_next_bar(trainer)

    def _open_next_bar(self, trainer) -> None:
        """Close the current bar; open the next split's (this rank's images of it)."""
        if not (self.progress and trainer.is_global_zero):
            return
        from tqdm.auto import tqdm

        if self.bar is not None:
            self.bar.close()
        self.bar = self.bar_split = None
        if self._splits:
            split, total = self._splits.pop(0)
            # smoothing=0: the rate shown is images / elapsed since the bar opened, not a
            # moving average of the last few batches.
            self.bar = tqdm(total=total, desc=f"{split:>6}", unit="img", dynamic_ncols=True,
                            smoothing=0)  # fmt: skip
            self.bar_split = split

    def _advance(self, trainer, split: str, n: int) -> None:
        if self.bar is None or split != self.bar_split:
            return
        self.bar.update(n)
        if self.bar.n >= self.bar.total:
            # Done with this split: the next one's clock starts now, before its first batch.
            self._open_next_bar(trainer)

    def on_predict_end(self, trainer, pl_module) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
