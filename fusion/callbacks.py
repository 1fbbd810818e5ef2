"""The callbacks ``train.py`` adds to every fit (the run directory is ``default_root_dir``).

- :class:`RunArtifacts`: at the end of fit, ``RUN/alpha_beta.png`` (dual-logit heads;
  also logged to W&B), ``RUN/val_predictions.csv`` (id,label,pred,confidence of best) and
  the W&B report of the best checkpoint (fusion/wandb_report.py), ``RUN/val.probs.npz``
  (its probabilities; the held-out fold's in a CV fold) and ``RUN/submission.csv``.
- :class:`RunCheckpoint`: ``best.ckpt`` by the monitored metric and ``last.ckpt`` at the
  end of *every* epoch and on SIGTERM (Lightning 2.6 rewrites last only with a new best).
- :class:`ResumeMetrics`: on resume, drops ``metrics.csv`` rows logged after the restored
  step, so every epoch appears once.
- :class:`StopOnNonFiniteLoss`: a NaN/inf training loss stops the fit with an error.
- :class:`StoreFingerprint`: every checkpoint records the store's model fingerprint.
- :class:`EpochSummary`: one line per epoch when stdout is a file (nohup, a scheduler).
"""

from __future__ import annotations

import csv
import datetime
import sys
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.exceptions import SIGTERMException

from feature_store import load_arrays, open_store
from feature_store.atomic import write_csv
from feature_store.compat import (
    last_saved_now,
    save_last_checkpoint,
    saves_on_train_epoch_end,
    wandb_logger_logs_model,
)
from feature_store.integrity import model_fingerprint
from fusion.errors import RunFailed
from fusion.loggers import RunCSVLogger
from fusion.module import answering_history
from fusion.plots import plot_alpha_beta
from fusion.predict import (
    FINGERPRINT_KEY,
    head_probs,
    load_head,
    predict_probs,
    submit,
    write_predictions_csv,
)
from fusion.submission import save_probs
from fusion.wandb_report import (
    log_checkpoint,
    log_store_manifest,
    log_submission,
    log_val_report,
    wandb_runs,
)


class NonFiniteLossError(RunFailed, RuntimeError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class RunCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` is the end of every epoch, and of a SIGTERM.

    Lightning 2.6 writes ``last`` only on a step where a top-k checkpoint was saved, so
    with ``monitor`` set it trails the best epoch; ``--ckpt_path last`` would then go back
    in time. A SIGTERM (Lightning raises ``SIGTERMException`` at the next batch) saves the
    current state as ``last.ckpt``, never as ``best.ckpt``.
    """

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not saves_on_train_epoch_end(self, trainer):
            self._save_last_now(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if saves_on_train_epoch_end(self, trainer):
            self._save_last_now(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)
        if isinstance(exception, SIGTERMException) and trainer.state.fn == TrainerFn.FITTING:
            self._save_last_now(trainer, on_exception=True)

    def _save_last_now(self, trainer: L.Trainer, *, on_exception: bool = False) -> None:
        skip = (
            not self.save_last
            or bool(trainer.fast_dev_run)
            or trainer.sanity_checking
            or (trainer.state.fn != TrainerFn.FITTING and not on_exception)
            or last_saved_now(self, trainer)
        )
        if not skip:
            save_last_checkpoint(self, trainer)


class ResumeMetrics(L.Callback):
    """On resume, cut ``metrics.csv`` back to the rows logged before the restored step.

    A run killed after logging epoch 4 but with ``last.ckpt`` at epoch 3 would otherwise
    hold epoch 4 twice after the resume. Runs at ``on_train_start``: the checkpoint is
    restored (``global_step`` is its step) and nothing new is logged yet.
    """

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.global_step == 0:
            return
        for logger in trainer.loggers:
            if isinstance(logger, CSVLogger | RunCSVLogger):
                drop_rows_from_step(Path(logger.experiment.metrics_file_path), trainer.global_step)


def drop_rows_from_step(path: Path, step: int) -> int:
    """Rewrite the CSV log ``path`` without rows whose ``step`` is ``>= step``; return how many.

    Epoch-level rows are logged at the epoch's last step (``global_step - 1``), so an
    epoch the checkpoint contains keeps its rows.
    """
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < step]
    if len(keep) < len(rows):
        write_csv(path, header, ([r.get(k, "") for k in header] for r in keep))
    return len(rows) - len(keep)


class StopOnNonFiniteLoss(L.Callback):
    """Raise :class:`NonFiniteLossError` once a training loss has been NaN or infinite.

    (``EarlyStopping(check_finite=True)`` checks the monitored val metric only, once per
    epoch, after a NaN "best" could already be saved.) The first non-finite loss is kept
    on the device, and read on the host at each logging step (``log_every_n_steps``), at
    an epoch's last batch and before any checkpoint is written: no host copy per step, and
    no checkpoint of a NaN model.
    """

    def __init__(self) -> None:
        self._first_bad: torch.Tensor | None = None  # 0 while every loss was finite

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        if self._first_bad is None or self._first_bad.device != loss.device:
            self._first_bad = torch.zeros((), dtype=loss.dtype, device=loss.device)
        # Stays at the first non-finite loss once there is one.
        self._first_bad = torch.where(self._first_bad.isfinite(), loss, self._first_bad)
        last = batch_idx + 1 >= trainer.num_training_batches
        if last or (trainer.global_step % max(1, trainer.log_every_n_steps) == 0):
            self._check(trainer)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        self._check(trainer)

    def _check(self, trainer: L.Trainer) -> None:
        if self._first_bad is None or bool(self._first_bad.isfinite()):
            return
        # _first_bad stays non-finite: a later save (an exception handler's) refuses too.
        loss = float(self._first_bad)
        raise NonFiniteLossError(
            f"the training loss is {loss} at epoch {trainer.current_epoch} (by step "
            f"{trainer.global_step}); the fit stops and checkpoints/last.ckpt keeps the "
            "last good epoch. Lower --model.optimizer.lr or check the store's embeddings."
        )


class StoreFingerprint(L.Callback):
    """Put the training store's model fingerprint (of the sets read) into every checkpoint.

    predict.py compares it with the store it is given and refuses one whose embeddings
    come from other models, pooling or preprocessing, even when the dims match.
    """

    def __init__(self) -> None:
        self.fingerprint: dict | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        datamodule = trainer.datamodule
        if datamodule is not None and hasattr(datamodule, "store"):
            sets = getattr(datamodule, "features", None)
            self.fingerprint = model_fingerprint(open_store(datamodule.store), sets)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.fingerprint is not None:
            checkpoint[FINGERPRINT_KEY] = dict(self.fingerprint)


class RunArtifacts(L.Callback):
    """Write the plot and val predictions when fit ends, and give W&B its end-of-fit report
    (fusion/wandb_report.py). The W&B run stays open: Lightning's WandbLogger uploads
    ``log_model`` checkpoints after this, and the CLI finishes the run after the fit.

    ``candidate`` is what the run is in the W&B project (its config key ``candidate``):
    ``fit`` (a head you may submit: the fit also writes ``RUN/submission.csv`` of the
    predict split from best.ckpt, in ``category`` form, logged as the run's
    ``submission-<run id>`` artifact), ``cv_fold`` or ``tune_trial`` (parts of a ``cv`` or a
    ``tune``, which write no submission of their own)."""

    def __init__(self, candidate: str = "fit", category: str = "index") -> None:
        self.candidate, self.category = candidate, category

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for wandb_run in wandb_runs(trainer):
            wandb_run.config.update({"candidate": self.candidate}, allow_val_change=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        run = Path(trainer.default_root_dir)
        history = getattr(pl_module, "alpha_beta_history", [])
        if getattr(pl_module, "member_weights_history", None):  # a sweep: the answering member
            history = answering_history(
                history, pl_module.member_weights_history, pl_module._chosen()
            )
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        if history:
            png = plot_alpha_beta(
                history,
                run / "alpha_beta.png",
                title=f"{run.parent.name}/{run.name}",
                head=pl_module.hparams.get("head"),
                names=pl_module.head.weight_names(),
            )
            for logger in wandb_loggers:
                logger.log_image(key="fusion/alpha_beta", images=[str(png)])
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
        datamodule = trainer.datamodule
        if not (best and datamodule is not None and hasattr(datamodule, "store")):
            return
        # A refit (fusion/refit.py) trained on val: no val predictions, no val report; its
        # last.ckpt (best is empty: nothing picked a best) writes the submission.
        validated = getattr(datamodule, "validates", True)
        if validated:
            _, ids, labels, probs = write_val_predictions(best, datamodule, run)
        submission = self.write_submission(best, datamodule, run, ckpt)
        if not wandb_loggers:
            return
        # A user's WandbLogger(log_model=...) uploads checkpoints itself, after this hook.
        own_checkpoint = not any(wandb_logger_logs_model(lg) for lg in wandb_loggers)
        score = getattr(ckpt, "best_model_score", None)
        captions, paths = val_texts(datamodule, ids) if validated else ([], [])
        for wandb_run in wandb_runs(trainer):
            if validated:
                log_val_report(
                    wandb_run,
                    ids=ids,
                    labels=labels,
                    probs=probs,
                    class_names=datamodule.class_names,
                    captions=captions,
                    paths=paths,
                    out_dir=run,
                )
            if own_checkpoint:
                log_checkpoint(
                    wandb_run,
                    best,
                    score=None if score is None else float(score),
                    monitor=str(getattr(ckpt, "monitor", "")),
                )
            log_store_manifest(wandb_run, datamodule.store)
            if submission is not None:
                log_submission(wandb_run, submission)

    def write_submission(self, best: str, datamodule, run: Path, ckpt) -> Path | None:
        """``RUN/submission.csv`` (+ ``.probs.npz``, ``.json``) of the predict split from
        ``best``, for a ``fit`` candidate whose store has that split."""
        split = getattr(datamodule, "predict_split", "")
        if self.candidate != "fit" or not split:
            return None
        if split not in open_store(datamodule.store).manifest["splits"]:
            rank_zero_info(f"the store has no {split!r} split: no RUN/submission.csv")
            return None
        ids, probs = predict_probs([best], datamodule.store, split)
        score = getattr(ckpt, "best_model_score", None)
        out, _ = submit(
            run / "submission.csv",
            ids,
            probs,
            store=datamodule.store,
            split=split,
            checkpoints=[best],
            category=self.category,
            candidate="fit",
            meta={"best/val/acc_top1": None if score is None else float(score)},
        )
        return out


def val_texts(datamodule, ids: list[str]) -> tuple[list[str], list[str]]:
    """Captions and image paths of the validated rows (a CV fold's come from train + val)."""
    splits = [datamodule.val_split]
    if getattr(datamodule, "folds", 0):
        splits = [datamodule.train_split, datamodule.val_split]
    by_id = {}
    for split in splits:
        arrays = load_arrays(datamodule.store, split)
        by_id.update(zip(arrays.ids, zip(arrays.captions, arrays.paths, strict=True), strict=True))
    return [by_id[i][0] for i in ids], [by_id[i][1] for i in ids]


def write_val_predictions(checkpoint: str, datamodule, run: Path):
    """``RUN/val_predictions.csv`` (id, true label, predicted label, its probability) and
    ``RUN/val.probs.npz`` (every class's probability: out-of-fold rows in a CV fold, the
    inputs ``fusion/ensemble.py`` fits member weights on).

    Returns ``(csv path, ids, labels, probs)``.
    """
    if getattr(datamodule, "folds", 0):  # the held-out fold, not the store's val split
        ids, rows = datamodule.val_rows()
        head, hp = load_head(checkpoint)
        probs = head_probs(head, [x.numpy() for x in rows.x])
        labels, class_names = rows.label.numpy(), hp["class_names"]
    else:
        store, split = datamodule.store, datamodule.val_split
        ids, probs = predict_probs([checkpoint], store, split)
        labels, class_names = load_arrays(store, split).labels, open_store(store).class_names
    save_probs(
        run / "val.probs.npz",
        ids,
        probs,
        class_names=class_names,
        checkpoints=[checkpoint],
        labels=labels,
        held_out="oof" if getattr(datamodule, "folds", 0) else "val",
    )
    out = write_predictions_csv(run / "val_predictions.csv", ids, labels, probs)
    return out, ids, labels, probs


class EpochSummary(L.Callback):
    """When stdout is not a terminal (``nohup``, a scheduler, ``> log.txt``), one line per
    epoch on stdout, where a progress bar would leave only its last frame::

        epoch 3/29  step 32  train/loss 2.2910  val/loss 2.2702  val/acc_top1 0.2500  lr 2.95e-03  elapsed 0:00:04

    On a terminal it prints nothing: the progress bar shows the same. Epochs count from 0,
    as in ``metrics.csv``, W&B and the bar. An epoch's line is printed when the next one
    starts (or training ends): the module logs ``train/loss`` after this callback's
    ``on_train_epoch_end`` runs (Lightning calls callbacks first).
    """

    KEYS = ("train/loss", "val/loss", "val/acc_top1")

    def __init__(self) -> None:
        self.active = False
        self._start = 0.0
        self._pending: dict | None = None

    @staticmethod
    def trainer_kwargs(trainer_cfg: dict, callbacks: list) -> dict:
        """``enable_progress_bar=False`` when stdout is not a terminal and the config says
        nothing about the bar: in a log file the bar's final frame repeats these lines.
        ``--trainer.enable_progress_bar true`` keeps it."""
        if trainer_cfg.get("enable_progress_bar") is not None or sys.stdout.isatty():
            return {}
        if any(isinstance(c, ProgressBar) for c in callbacks):
            return {}
        return {"enable_progress_bar": False}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.active = trainer.is_global_zero and not sys.stdout.isatty()
        self._start, self._pending = time.monotonic(), None

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        optimizers = trainer.optimizers
        self._pending = {
            "epoch": trainer.current_epoch,
            "step": trainer.global_step,
            "lr": optimizers[0].param_groups[0]["lr"] if optimizers else None,
            "elapsed": time.monotonic() - self._start,
        }

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._flush(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._flush(trainer)

    def _flush(self, trainer: L.Trainer) -> None:
        if self._pending is not None:
            print(self.line(trainer, self._pending, trainer.callback_metrics), flush=True)
            self._pending = None

    @classmethod
    def line(cls, trainer: L.Trainer, pending: dict, metrics: dict) -> str:
        """The summary of one epoch: ``pending`` from its end, ``metrics`` logged by then."""
        epoch = f"epoch {pending['epoch']}"
        if trainer.max_epochs is not None and trainer.max_epochs > 0:
            epoch += f"/{trainer.max_epochs - 1}"
        step = f"step {pending['step']}"
        if trainer.max_steps is not None and trainer.max_steps > 0:
            step += f"/{trainer.max_steps}"
        parts = [epoch, step]
        parts += [f"{k} {float(metrics[k]):.4f}" for k in cls.KEYS if k in metrics]
        if pending["lr"] is not None:
            parts.append(f"lr {pending['lr']:.2e}")
        parts.append(f"elapsed {datetime.timedelta(seconds=round(pending['elapsed']))}")
        return "  ".join(parts)
