"""Training batches drawn by index from a split kept as tensors on the training device.

$ python train.py fit --config configs/concat.yaml --data.loader tensors   # the default

Frozen features fit in memory (22,500 rows x 3 sets x 1,536 float16 is about 200 MB), so
:class:`TensorBatches` keeps the train split on the device the head trains on and cuts
each batch out of it with one index per column: no DataLoader, no worker, no collate and
no host-to-device copy per step. ``FeatureDataModule(loader="dataloader")`` keeps the
DataLoader path (``bench/bench_train.py`` times both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch


class TensorBatches:
    """Shuffled batches of ``tensors`` (columns of equal length), one pass per epoch.

    Epoch ``e`` visits the rows in the order ``torch.randperm`` draws from a generator
    seeded with ``seed + e``: every row once per epoch, the same order for the same seed
    and epoch, whatever else drew random numbers. The last batch may be smaller.

    With ``world_size`` processes (DDP) every rank draws the same permutation, pads it to
    a multiple of ``world_size`` with its first rows and takes every ``world_size``-th
    index from ``rank`` on, as ``DistributedSampler`` does, so all ranks step together.

    Lightning saves :meth:`state_dict` in checkpoints written mid-epoch and, on resume,
    passes it to :meth:`load_state_dict`: the resumed epoch then draws only the batches
    the interrupted one had not trained on.

    Args:
        tensors: the columns (``x``: one tensor per feature set, ``label``...), on the
            training device; a list of tensors is indexed tensor by tensor.
        batch_size: rows per batch.
        seed: the shuffle seed (the same on every rank).
        epoch: returns the current epoch when an epoch starts (the Trainer's); without it
            each pass over the batches counts as the next epoch.
        rank, world_size: this process's rank and the number of processes.
    """

    def __init__(
        self,
        tensors: dict[str, torch.Tensor | list[torch.Tensor]],
        *,
        batch_size: int,
        seed: int,
        epoch: Callable[[], int] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.tensors = tensors
        first = next(t for v in tensors.values() for t in (v if isinstance(v, list) else [v]))
        self.rows = len(first)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self.rank, self.world_size = rank, world_size
        self._epoch_of = epoch
        self._passes = 0
        self._epoch, self._yielded = 0, 0  # for state_dict
        self._resume: dict | None = None
        self._device = first.device

    def __len__(self) -> int:
        return math.ceil(self._rows_per_rank() / self.batch_size)

    def _rows_per_rank(self) -> int:
        return math.ceil(self.rows / self.world_size)

    def order(self, epoch: int) -> torch.Tensor:
        """This rank's row indices for ``epoch``, in visiting order (on the CPU)."""
        generator = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.rows, generator=generator)
        total = self._rows_per_rank() * self.world_size
        if total > self.rows:  # DistributedSampler's padding: repeat the first rows
            perm = torch.cat([perm, perm[: total - self.rows]])
        return perm[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # The epoch is read and the resume point used when the first batch is drawn, not
        # here: Lightning also makes iterators it never draws from.
        return self._batches()

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = self._epoch_of() if self._epoch_of is not None else self._passes
        self._passes += 1
        skip = 0
        if self._resume is not None and self._resume["epoch"] == epoch:
            skip = self._resume["batches"]
        self._resume = None
        order = self.order(epoch).to(self._device)
        self._epoch, self._yielded = epoch, skip
        for start in range(skip * self.batch_size, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            self._yielded += 1
            yield {**{k: _take(v, idx) for k, v in self.tensors.items()}, "index": idx}

    def state_dict(self) -> dict[str, int]:
        """The epoch and how many of its batches were drawn.

        Lightning fetches a batch right before its step when the loader has a length (no
        fetch-ahead), and writes checkpoints between steps: the batches drawn are the
        batches trained on (tests/test_fusion_batches.py resumes mid-epoch to check it).
        """
        return {"epoch": self._epoch, "batches": self._yielded}

    def load_state_dict(self, state: dict) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}


def _take(column: torch.Tensor | list[torch.Tensor], idx: torch.Tensor):
    """Rows ``idx`` of a column, or of each tensor of a list column (the feature sets)."""
    return [t[idx] for t in column] if isinstance(column, list) else column[idx]
