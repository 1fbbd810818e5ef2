"""How a fit stops and resumes: Ctrl-C saves like SIGTERM; early stopping survives a resume.

$ python train.py fit --config configs/concat.yaml      # Ctrl-C: last.ckpt, exit 130
$ python train.py fit --config configs/concat.yaml --ckpt_path last --run_dir RUN

- :class:`CtrlCSaves`: the first Ctrl-C (SIGINT) of a fit is handed to Lightning's own
  SIGTERM handling, so the fit stops at the next batch boundary and ``RunCheckpoint``
  saves the current state as ``last.ckpt`` (a KeyboardInterrupt raised mid-step would
  leave nothing, or a torn state, behind). A second Ctrl-C interrupts at once, saving
  nothing new. :func:`stopped_by` names the signal for the command's one-line advice.
- :class:`ResumableEarlyStopping`: Lightning's ``EarlyStopping``, except that before this
  process's first validation a missing monitored metric is not an error. A checkpoint
  saved at an epoch's end is resumed by running that epoch's end again, before any
  validation, and ``EarlyStopping(strict=True)`` then raised "conditioned on metric
  val/acc_top1 which is not available". Its state (best score, wait count) is restored
  from the checkpoint as before, under the same key. A stop it asks for before the
  fit's ``min_steps`` (the recipe's ``min_fraction``) waits in the callback until then,
  instead of in ``trainer.should_stop``: Lightning treats every step with ``should_stop``
  set as a logging step (the learning rate logged and ``metrics.csv`` rewritten at each of
  them), which was up to 3/4 of a small store's steps (bench/README.md, "Small stores").
- :func:`stop_exits`: ``train.py probe`` and ``stack`` (no Lightning fit, no partial state
  to resume) stopped by SIGTERM or Ctrl-C raise :class:`fusion.errors.Stopped` (one line,
  exit 143/130 by fusion/exit.py); the unfinished run directory they were writing is
  removed, so the same command runs again.
"""

from __future__ import annotations

import shutil
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.utilities import rank_zero_info

from feature_store.compat import fit_may_stop
from fusion.errors import Stopped
from fusion.runs import UNFINISHED

# The signal that stopped this process's latest fit (None: none did).
_stopped_by: str | None = None


def stopped_by() -> str | None:
    """``"SIGINT"`` when the latest fit was stopped by Ctrl-C, ``"SIGTERM"`` by SIGTERM."""
    return _stopped_by


class CtrlCSaves(L.Callback):
    """Turn the first SIGINT of a fit into Lightning's SIGTERM stop (see the module doc)."""

    def __init__(self) -> None:
        self._previous = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        global _stopped_by
        _stopped_by = None
        if threading.current_thread() is threading.main_thread():  # signals: main thread only
            self._previous = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum, frame) -> None:
        global _stopped_by
        _stopped_by = "SIGINT"
        self._restore()  # a second Ctrl-C is Python's KeyboardInterrupt again
        print(
            "\nCtrl-C: saving the current state at the end of this batch "
            "(Ctrl-C again to stop at once, saving nothing)",
            flush=True,
        )
        signal.raise_signal(signal.SIGTERM)  # Lightning's handler: stop at the batch boundary

    def _restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        global _stopped_by
        if _stopped_by is None and trainer.received_sigterm:
            _stopped_by = "SIGTERM"
        self._restore()


class ResumableEarlyStopping(EarlyStopping):
    """``EarlyStopping`` that waits for this process's first validation (module doc)."""

    _validated = False
    # A stop asked for before the trainer may stop (min_steps); set at min_steps.
    _stop_pending = False

    @property
    def state_key(self) -> str:
        # EarlyStopping's own key, so checkpoints of either class restore into the other.
        return f"EarlyStopping{ {'monitor': self.monitor, 'mode': self.mode}!r}"

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._validated = False
        self._stop_pending = False

    def _hold_stop(self, trainer: L.Trainer, asked_before: bool) -> None:
        """Move a stop this callback just asked for, and that only min_steps holds back,
        from ``trainer.should_stop`` into ``_stop_pending`` (module doc)."""
        loop = trainer.fit_loop
        # Lightning checks min_epochs at an epoch boundary, min_steps after every batch (as
        # on_train_batch_end below): a stop min_epochs holds back stays Lightning's.
        min_epochs_met = loop.epoch_progress.current.processed >= (loop.min_epochs or 0)
        if trainer.should_stop and not asked_before and min_epochs_met and not fit_may_stop(trainer):
            trainer.should_stop = False
            if not self._stop_pending:
                rank_zero_info(
                    f"early stopping at step {trainer.global_step}: {self.stopping_reason_message}"
                    f" Training continues to min_steps={loop.min_steps} (--recipe.min_fraction)."
                )
            self._stop_pending = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # After the optimizer step, before Lightning's check for validation and stopping:
        # the step that reaches min_steps validates and stops, as with should_stop set.
        if self._stop_pending and fit_may_stop(trainer):
            trainer.should_stop = True
            self._stop_pending = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True
        asked_before = trainer.should_stop
        super().on_validation_end(trainer, pl_module)
        self._hold_stop(trainer, asked_before)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._validated and self.monitor not in trainer.callback_metrics:
            return  # the end of an epoch restored from a checkpoint, validated before it
        asked_before = trainer.should_stop
        super().on_train_epoch_end(trainer, pl_module)
        self._hold_stop(trainer, asked_before)


class _Signalled(Exception):
    """SIGTERM reached a command inside :func:`stop_exits`."""


def _raise_signalled(signum, frame) -> None:
    raise _Signalled(signal.Signals(signum).name)


@contextmanager
def stop_exits(prog: str, run: Path) -> Iterator[None]:
    """Within: SIGTERM (else a silent death) and Ctrl-C (else a traceback) stop ``prog``
    with :class:`Stopped` (one line; exit 143 or 130). ``run``, if this command marked it
    unfinished (fusion/runs.py:claim_command_run), is removed: it holds nothing to resume
    from."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_signalled) if main else None
    try:
        yield
    except (_Signalled, KeyboardInterrupt) as err:
        sigterm = isinstance(err, _Signalled)
        marker = run / UNFINISHED
        if marker.is_file() and marker.read_text().strip() == prog:
            shutil.rmtree(run, ignore_errors=True)
            kept = f"its unfinished run directory {run} is removed"
        else:
            kept = "it had written nothing"
        raise Stopped(
            f"stopped by {'SIGTERM' if sigterm else 'Ctrl-C (SIGINT)'}; {kept} "
            "(it keeps no partial state to resume). Rerun the same command to start again.",
            signal="SIGTERM" if sigterm else "SIGINT",
        ) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
