"""Trainer.predict for one feature set: the rows' DataLoader, the step, the shard writer.

$ python -m data_prep -c configs/prep/add_siglip.yaml --run.out STORE --run.devices 2

The same machinery as the rows' extraction (data_prep/extract.py): each rank takes every
``world_size``-th pending shard, batches never cross a shard, and a shard is written (with
its done marker) the moment its last batch is predicted. A row the extractor cannot
handle (an image that no longer decodes, a non-finite vector) keeps its place with NaN and
is listed in failures.csv with the set's name.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from data_prep.extract import Collate, ItemDataset, ShardBatchSampler, ShardWriter, _timed
from data_prep.store import Shard
from feature_store.console import usable_workers

# Test-time transforms of a pixel batch [B, 3, H, W].
TRANSFORMS = {"hflip": lambda x: x.flip(-1), "vflip": lambda x: x.flip(-2)}


class CaptionDataset(Dataset):
    def __init__(self, captions: list[str]):
        self.captions = captions

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"index": index, "caption": self.captions[index]}


def collate_captions(samples: list[dict[str, Any]]) -> dict[str, Any]:
    return {"good": [s["index"] for s in samples], "failed": [],
            "captions": [s["caption"] for s in samples]}  # fmt: skip


class SetData(L.LightningDataModule):
    """The store's rows (images through the input listing, or the stored captions)."""

    def __init__(self, *, rows, pending: list[Shard], batch_size: int, num_workers: int,
                 extractor):  # fmt: skip
        super().__init__()
        self.rows = rows
        self.pending = pending
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.reads = extractor.reads
        self.preprocess = extractor.preprocess

    def shards_of_rank(self, rank: int, world: int) -> list[Shard]:
        return self.pending[rank::world]

    def predict_dataloader(self):
        shards = self.shards_of_rank(self.trainer.global_rank, self.trainer.world_size)
        if self.reads == "image":
            dataset, collate = (
                ItemDataset(self.rows.listing, self.rows.items),
                Collate(self.preprocess),
            )
        else:
            dataset, collate = CaptionDataset(self.rows.captions), collate_captions
        return DataLoader(
            dataset,
            batch_sampler=ShardBatchSampler(shards, self.rows.offsets, self.batch_size),
            collate_fn=collate,
            num_workers=(
                usable_workers(self.num_workers, option="--run.num_workers")
                if self.reads == "image"
                else 0
            ),
            pin_memory=torch.cuda.is_available(),
        )


class SetModule(L.LightningModule):
    """predict_step: the extractor's vectors, averaged over the image and its TTA views."""

    def __init__(self, extractor, *, tta: list[str]):
        super().__init__()
        self.extractor = extractor
        self.tta = list(tta)
        self.allow_zero_length_dataloader_with_multiple_devices = True

    def forward_views(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.extractor(pixel_values)
        for name in self.tta:
            out = out + self.extractor(TRANSFORMS[name](pixel_values))
        return out / (1 + len(self.tta))

    def predict_step(self, batch: dict[str, Any], batch_idx: int = 0) -> dict[str, Any]:
        seconds: dict[str, float] = {}
        out = {"good": batch["good"], "failed": batch["failed"], "seconds": seconds}
        if not batch["good"]:
            return out
        if self.extractor.reads == "image":
            values = _timed(seconds, "model", self.forward_views, batch["pixel_values"])
        else:
            values = _timed(seconds, "model", self.extractor, batch["captions"])
        out["values"] = values.float().cpu().numpy()
        return out


class SetShardWriter(ShardWriter):
    """The rows' shard writer, for a set: shards follow the rows' shards (not a fixed size),
    and a shard holds ``id`` + the set's column, every row of the shard in order."""

    def __init__(self, *, store, feats, items, offsets, shards: list[Shard], name: str,
                 progress: bool = True):  # fmt: skip
        super().__init__(store=store, feats=feats, items=items, offsets=offsets, shards=shards,
                         shard_size=0, progress=progress)  # fmt: skip
        self.name = name
        self.find = shard_lookup(shards)

    def _shard_of(self, index: int) -> Shard:
        split = next(s for s in reversed(self.splits) if index >= self.offsets[s])
        return self.find(split, index - self.offsets[split])

    def _write(self, shard: Shard, preds: list[dict], rank: int) -> None:
        base = self.offsets[shard.split] + shard.start
        feat = self.feats[self.name]
        values = np.full((len(shard), feat.length), np.nan, dtype=np.float32)
        for p in preds:
            if p["good"]:
                values[np.asarray(p["good"]) - base] = p["values"]
        with np.errstate(over="ignore", invalid="ignore"):
            stored = values.astype(feat.feature.dtype)
        reasons = {i: r for p in preds for i, r in p["failed"]}
        good = {i for p in preds for i in p["good"]}
        for k in np.flatnonzero(~np.isfinite(stored).all(axis=1)):
            if base + k in good:  # a NaN or a value past float16's range: no silent garbage
                reasons[base + int(k)] = "non-finite feature"
                stored[k] = np.nan
        rows = self.items[base : base + len(shard)]
        failed = [{"file": self.items[i].path, "reason": r, "split": shard.split,
                   "id": self.items[i].id, "feature": self.name}
                  for i, r in sorted(reasons.items())]  # fmt: skip
        seconds: dict[str, float] = defaultdict(float)
        for p in preds:
            for k, v in p["seconds"].items():
                seconds[k] += v
        columns = {"id": [it.id for it in rows], self.name: stored}
        info = {"failed": failed, "model_seconds": dict(seconds), "rank": rank}
        self.store.write_shard(shard, columns, feats=self.feats, info=info)
        self.written += 1


def shard_lookup(shards: list[Shard]):
    """index within a split -> its Shard, by the shards' start rows (for the writer)."""
    by_split: dict[str, list[Shard]] = {}
    for s in sorted(shards, key=lambda s: (s.split, s.start)):
        by_split.setdefault(s.split, []).append(s)
    starts = {k: [s.start for s in v] for k, v in by_split.items()}

    def find(split: str, row: int) -> Shard:
        return by_split[split][bisect.bisect_right(starts[split], row) - 1]

    return find
