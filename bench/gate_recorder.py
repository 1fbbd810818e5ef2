"""A bench-only callback: the gate of every val row after each validation (``RUN/gates.npz``),
of the member a weight-decay sweep answers with at the end.

The batch mean of a per-row gate moves with each batch's mix of captions, so it says little
about whether the gate has found its regime; the gate of the same val rows, validation after
validation, does (``bench_accuracy.gate_settled``). Added to ``gated`` fits by
``bench/bench_accuracy.py`` as ``--trainer.callbacks+=gate_recorder.GateRecorder``.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch

from fusion.heads import head_members


class GateRecorder(L.Callback):
    def __init__(self) -> None:
        self.steps: list[int] = []
        self.gates: list[np.ndarray] = []  # [members, val rows] per validation
        self.chosen = 0

    def _record(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Every member of a weight-decay sweep: the member chosen on val can change from one
        # validation to the next, and its gate is not the same function as the last one's.
        members = head_members(module.head)
        if not hasattr(members[0], "gate_values"):
            return
        gates = []
        for head in members:
            was_training, rows = head.training, []
            head.eval()
            with torch.no_grad():
                for batch in trainer.val_dataloaders:
                    xs = [x.to(module.device) for x in batch["x"]]
                    rows.append(head.gate_values(*xs)[:, 0].float().cpu().numpy())
            head.train(was_training)
            gates.append(np.concatenate(rows))
        self.steps.append(int(trainer.global_step))
        self.gates.append(np.stack(gates))
        self.chosen = module._chosen()

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._record(trainer, module)  # the gate before any step

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._record(trainer, module)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self.gates:
            np.savez(
                Path(trainer.default_root_dir) / "gates.npz",
                steps=np.array(self.steps),
                gates=np.stack(self.gates)[:, self.chosen],  # the member that answers at the end
            )
