"""``train.py predict``: a checkpoint's submission, written by a Lightning prediction writer.

$ python train.py predict --ckpt_path RUN/checkpoints/best.ckpt --data.store stores/kaggle
$ python train.py predict --ckpt_path RUN/checkpoints/best.ckpt --data.store S --out sub.csv
$ python train.py predict --run_dir RUN --data.store S --kaggle mva-recvis-2024 --message M

Lightning runs the head over ``--data.predict_split`` (``FusionModule.predict_step``:
row indices and class probabilities); :class:`SubmissionWriter` puts the rows back in
store order and hands them to :func:`fusion.predict.submit`, the code behind
``predict.py``, so both write the same ``Id,Category`` file, ``.probs.npz`` and ``.json``
(fusion/submission.py), and neither starts a W&B run.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from fusion.predict import submit


class SubmissionWriter(BasePredictionWriter):
    """Write the predicted split as a submission at ``out`` once the epoch ends."""

    def __init__(
        self,
        out: Path,
        checkpoint: Path,
        *,
        strict: bool = False,
        category: str = "index",
        message: str | None = None,
    ) -> None:
        super().__init__(write_interval="epoch")
        self.out, self.checkpoint, self.strict = Path(out), Path(checkpoint), strict
        self.category, self.message = category, message
        self.written: tuple[Path, Path] | None = None  # (submission, probabilities)

    def write_on_epoch_end(
        self, trainer, pl_module, predictions: Sequence[dict], batch_indices
    ) -> None:
        datamodule = trainer.datamodule
        split = datamodule.predict_split
        index = torch.cat([batch["index"] for batch in predictions])
        probs = torch.cat([batch["probs"] for batch in predictions]).float()
        order = index.argsort()
        all_ids = datamodule.ids(split)
        ids = [all_ids[i] for i in index[order].tolist()]
        self.written = submit(
            self.out,
            ids,
            probs[order].numpy(),
            store=datamodule.store,
            split=split,
            checkpoints=[self.checkpoint],
            strict=self.strict,
            category=self.category,
            message=self.message,
        )
