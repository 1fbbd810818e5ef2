"""Training length and batch size that scale with the store, so one config serves 500 to
500,000 rows without hand tuning.

$ python train.py fit --config configs/concat.yaml --recipe.epochs 40 --recipe.min_steps 5000

The rules (timm counts training in steps and scales the learning rate with the batch):

- batch size ``auto``: about 1/64 of the train rows, a power of two in [64, 512]: ~64
  optimizer steps per epoch from 4,096 rows up, fewer and larger ones below (a step of a
  small head costs the same at batch 16 as at 64, so small batches only made small stores
  slow), full batches on a large store;
- learning rate: the config's ``lr`` is for batch 256, scaled by sqrt(batch / 256) (AdamW;
  ``--model.optimizer.lr_scaling``), in :class:`fusion.module.FusionModule`;
- length: ``epochs`` passes over train, but never fewer than a floor of optimizer steps
  nor more than ``max_steps``; warm-up and cosine decay are fractions of those steps. The
  floor is ``min_steps`` from ``full_rows`` train rows up and shrinks with the square root
  of the rows below (1,000 rows: a third of it, 949 steps of 64 rows instead of 3,000 of
  16), so a large store with few batches per epoch still gets enough steps and a small one
  is not held to thousands of tiny ones (bench/README.md, "Small stores");
- early stopping cannot fire before ``min_fraction`` of the steps have run;
- the final refit on train+val (``--recipe.from_run RUN``, fusion/refit.py) trains as many
  epochs as RUN's best checkpoint had, under RUN's schedule scaled to the larger train set
  the same way (:func:`refit_steps`): epochs, not steps, carry over, since val's rows
  add steps to every epoch.

A run whose config sets ``trainer.max_epochs`` or ``trainer.max_steps`` keeps them: the
recipe only fills in what the config leaves open.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MIN_AUTO_BATCH, MAX_AUTO_BATCH = 64, 512


def auto_batch_size(rows: int) -> int:
    """A power of two near ``rows / 64``, within [64, 512]."""
    target = max(1.0, rows / 64)
    return int(min(MAX_AUTO_BATCH, max(MIN_AUTO_BATCH, 2 ** round(math.log2(target)))))


@dataclass
class Recipe:
    """How long to train when the config gives neither ``max_epochs`` nor ``max_steps``.

    Args:
        epochs: passes over the train split.
        min_steps: floor on optimizer steps for a store of ``full_rows`` train rows or more.
        max_steps: ceiling on optimizer steps (huge stores).
        min_fraction: share of the steps before early stopping may stop the run.
        full_rows: train rows from which the whole ``min_steps`` floor applies; a smaller
            store's floor is ``min_steps * sqrt(rows / full_rows)`` (0: the whole floor
            always).
        from_run: a validated run directory whose length a refit takes (``--data.train_splits
            [train, val]``, fusion/refit.py): the epochs of its best checkpoint, under its
            planned schedule; this recipe's own length rules then do not apply.
    """

    epochs: float = 30.0
    min_steps: int = 3000
    max_steps: int = 200_000
    min_fraction: float = 0.9
    full_rows: int = 10_000
    from_run: str | None = None

    def step_floor(self, rows: int) -> int:
        """The fewest optimizer steps a store of ``rows`` train rows gets."""
        if self.full_rows <= 0 or rows >= self.full_rows:
            return self.min_steps
        # sqrt: a tenth of the rows keeps a third of the steps. In proportion to the rows
        # (a tenth of them) lost up to 4.7 points on the bench's 1,000-row stores.
        return math.ceil(self.min_steps * math.sqrt(rows / self.full_rows))

    def steps(self, rows: int, batch_size: int) -> int:
        per_epoch = math.ceil(rows / batch_size)
        epochs = math.ceil(self.epochs * per_epoch)
        return int(min(self.max_steps, max(self.step_floor(rows), epochs)))


def refit_steps(
    best_step: int, planned_steps: int | None, per_epoch_then: int, per_epoch_now: int
) -> tuple[int, int]:
    """``(steps, schedule steps)`` of a refit: the validated run's best checkpoint had trained
    ``best_step`` steps of ``per_epoch_then`` an epoch, under a schedule of ``planned_steps``
    (None: its best step); the refit trains as many epochs at ``per_epoch_now`` steps each,
    under the planned schedule scaled alike, so its learning rate at every epoch is the
    validated run's."""
    scale = per_epoch_now / per_epoch_then
    steps = max(1, round(best_step * scale))
    planned = planned_steps if planned_steps is not None else best_step
    return steps, max(steps, round(planned * scale))
