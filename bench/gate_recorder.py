"""A bench-only callback: the gate of every val row after each validation (``RUN/gates.npz``).

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
        self.gates: list[np.ndarray] = []

    def _record(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        head = head_members(module.head)[module._chosen()]  # a sweep's member chosen on val
        if not hasattr(head, "gate_values"):
            return
        was_training, rows = head.training, []
        head.eval()
        with torch.no_grad():
            for batch in trainer.val_dataloaders:
                image, text = batch["image"].to(module.device), batch["text"].to(module.device)
                rows.append(head.gate_values(image, text).float().cpu().numpy())
        head.train(was_training)
        self.steps.append(int(trainer.global_step))
        self.gates.append(np.concatenate(rows))

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
                gates=np.stack(self.gates),
            )
