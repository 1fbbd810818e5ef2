"""The pieces of extract.py on their own: batching by shard, failures in preprocessing,
progress bars."""

from __future__ import annotations

import time

import torch
from PIL import Image

from data_prep.extract import Collate, ShardBatchSampler, ShardWriter
from data_prep.store import plan_shards


def test_batches_cover_each_rank_share_once_and_never_cross_shards():
    sizes = {"train": 11, "val": 0, "test": 5}
    offsets = {"train": 0, "val": 11, "test": 11}
    shards = plan_shards(sizes, 4)
    world = 3
    seen = []
    for rank in range(world):
        mine = shards[rank::world]
        for batch in ShardBatchSampler(mine, offsets, batch_size=3):
            # a batch lies inside one shard of one split
            owners = {
                next(s for s in mine if offsets[s.split] + s.start <= i < offsets[s.split] + s.stop)
                for i in batch
            }
            assert len(owners) == 1
            seen += batch
    assert sorted(seen) == list(range(16))  # every item of every split, exactly once


def test_collate_turns_a_preprocessing_failure_into_a_counted_skip():
    def image_pre(images):
        if any(im.size == (1, 7) for im in images):
            raise ValueError("cannot crop 1x7")
        return torch.stack([torch.full((3, 2, 2), float(im.size[0])) for im in images])

    samples = [
        {"index": 10, "image": Image.new("RGB", (5, 5)), "error": None},
        {"index": 11, "image": Image.new("RGB", (1, 7)), "error": None},
        {"index": 12, "image": None, "error": "truncated image"},
        {"index": 13, "image": Image.new("RGB", (9, 9)), "error": None},
    ]
    batch = Collate(image_pre)(samples)
    assert batch["good"] == [10, 13]
    assert batch["pixel_values"][:, 0, 0, 0].tolist() == [5.0, 9.0]
    reasons = dict(batch["failed"])
    assert reasons[12] == "truncated image" and "cannot crop 1x7" in reasons[11]


def test_progress_bar_opens_before_the_first_batch_and_follows_the_splits():
    from types import SimpleNamespace

    sizes = {"train": 6, "val": 0, "test": 3}
    shards = plan_shards(sizes, 4)
    data = SimpleNamespace(shards_of_rank=lambda rank, world: shards[rank::world])
    trainer = SimpleNamespace(datamodule=data, global_rank=0, world_size=1, is_global_zero=True)
    writer = ShardWriter(store=None, feats=None, items=[], offsets={"train": 0, "val": 6,
                         "test": 6}, shards=shards, shard_size=4)  # fmt: skip
    opened = time.time()
    writer.setup(trainer, None, "predict")
    # Open, empty, counting from now: the first batch's time will be in the elapsed time.
    assert writer.bar_split == "train" and (writer.bar.n, writer.bar.total) == (0, 6)
    assert opened <= writer.bar.start_t <= time.time()
    first = writer.bar
    writer._advance(trainer, "train", 4)
    assert writer.bar is first and first.n == 4
    writer._advance(trainer, "train", 2)
    # train finished: the test bar is open at once (val has nothing to do on this rank).
    assert writer.bar_split == "test" and (writer.bar.n, writer.bar.total) == (0, 3)
    assert first.disable or first.n == 6
    writer._advance(trainer, "test", 3)
    assert writer.bar is None  # nothing left to show
    writer.on_predict_end(trainer, None)
