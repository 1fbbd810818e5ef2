"""Training length and batch size that scale with the store, so one config serves 500 to
500,000 rows without hand tuning.

$ python train.py fit --config configs/concat.yaml --recipe.epochs 40 --recipe.min_steps 5000

The rules (timm counts training in steps and scales the learning rate with the batch):

- batch size ``auto``: about 1/64 of the train rows, a power of two in [16, 512], so a
  small store still gets ~64 optimizer steps per epoch and a large one full batches;
- learning rate: the config's ``lr`` is for batch 256, scaled by sqrt(batch / 256) (AdamW;
  ``--model.lr_scaling``), in :class:`fusion.module.FusionModule`;
- length: ``epochs`` passes over train, but never fewer than ``min_steps`` optimizer steps
  (a 500-row store needs thousands of small steps to converge, not 10 epochs of 2) nor
  more than ``max_steps``; warm-up and cosine decay are fractions of those steps;
- early stopping cannot fire before ``min_fraction`` of the steps have run.

A run whose config sets ``trainer.max_epochs`` or ``trainer.max_steps`` keeps them: the
recipe only fills in what the config leaves open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def auto_batch_size(rows: int) -> int:
    """A power of two near ``rows / 64``, within [16, 512]."""
    target = max(1.0, rows / 64)
    return int(min(512, max(16, 2 ** round(math.log2(target)))))


@dataclass
class Recipe:
    """How long to train when the config gives neither ``max_epochs`` nor ``max_steps``.

    Args:
        epochs: passes over the train split.
        min_steps: floor on optimizer steps (small stores).
        max_steps: ceiling on optimizer steps (huge stores).
        min_fraction: share of the steps before early stopping may stop the run.
    """

    epochs: float = 30.0
    min_steps: int = 3000
    max_steps: int = 200_000
    min_fraction: float = 0.9

    def steps(self, rows: int, batch_size: int) -> int:
        per_epoch = math.ceil(rows / batch_size)
        return int(min(self.max_steps, max(self.min_steps, math.ceil(self.epochs * per_epoch))))
