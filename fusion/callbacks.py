"""End-of-fit artefacts of a run: the alpha/beta plot and the validation predictions.

Added by ``train.py`` to every fit; writes into the run directory (the trainer's
``default_root_dir``)::

    RUN/alpha_beta.png        dual-logit heads only; also logged to W&B as fusion/alpha_beta
    RUN/val_predictions.csv   id,label,pred,confidence from the best checkpoint
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from feature_store import load_arrays
from fusion.plots import plot_alpha_beta
from fusion.predict import predict_probs, write_csv


class RunArtifacts(L.Callback):
    """Write the plot and val predictions when fit ends, then close the W&B run."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run = Path(trainer.default_root_dir)
        history = getattr(pl_module, "alpha_beta_history", [])
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if history:
            png = plot_alpha_beta(
                history, run / "alpha_beta.png", title=f"{run.parent.name}/{run.name}"
            )
            for logger in wandb_loggers:
                logger.log_image(key="fusion/alpha_beta", images=[str(png)])
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
        datamodule = trainer.datamodule
        if best and datamodule is not None and hasattr(datamodule, "store"):
            write_val_predictions(best, datamodule.store, datamodule.val_split, run)
        for logger in wandb_loggers:
            # Finish now so a second fit in the same process starts its own W&B run.
            logger.experiment.finish()


def write_val_predictions(checkpoint: str, store: Path, split: str, run: Path) -> Path:
    """``RUN/val_predictions.csv``: id, true label, predicted label, its probability."""
    ids, probs = predict_probs([checkpoint], store, split)
    labels = load_arrays(store, split).labels
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    rows = (
        (i, int(lab), int(p), f"{c:.6f}")
        for i, lab, p, c in zip(ids, labels, pred, conf, strict=True)
    )
    out = run / "val_predictions.csv"
    write_csv(out, ["id", "label", "pred", "confidence"], rows)
    return out
