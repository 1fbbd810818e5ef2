"""The one place that relies on other libraries' private names (no public API does the job).

Everything else in the project uses Lightning, W&B, `datasets`, Optuna, jsonargparse and
transformers through their public APIs (tests/test_compat.py checks that no other module
names one of the private names below). Each shim says what it relies on; each has a test
in tests/test_compat.py that runs it against the installed release and fails when the
private name or its behaviour changes, and pyproject.toml bounds these libraries to the
minor releases tested. It lives in ``feature_store``, the lowest package that needs a
shim, and imports nothing at import time: each shim works on the object it is given.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# --- datasets: a split directory that `datasets.load_from_disk` reads -----------------

# `Dataset.save_to_disk` writes its rows again; the store's shards are written once, shard
# by shard with resume, so the split's index is written here instead: the `state.json`
# that `save_to_disk` writes beside the Arrow files and `load_from_disk` reads (datasets
# 2.x-5.x: `_data_files` lists the files in order, `_fingerprint` is the cache key).
STATE_FILE = "state.json"


def dataset_state(files: list[str], fingerprint: str, split: str) -> dict:
    """The ``state.json`` of a saved `datasets.Dataset` over the Arrow ``files`` (names in
    the split directory, in row order). Relies on the private keys of
    ``Dataset.save_to_disk``'s ``state.json`` (``_data_files``, ``_fingerprint``,
    ``_format_*``, ``_output_all_columns``, ``_split``)."""
    return {
        "_data_files": [{"filename": f} for f in files],
        "_fingerprint": fingerprint,
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": split,
    }


def dataset_files(split_dir: str | os.PathLike) -> tuple[list[str], str]:
    """``(files, fingerprint)`` of the saved `datasets.Dataset` in ``split_dir``, read from
    its ``state.json`` (the private keys ``_data_files`` and ``_fingerprint``)."""
    state = json.loads((Path(split_dir) / STATE_FILE).read_text())
    return [f["filename"] for f in state.get("_data_files") or []], state.get("_fingerprint")


def dataset_fingerprint(dataset) -> str | None:
    """The cache key `datasets` gives a ``Dataset`` (it changes when the rows do), None for
    anything else: its private ``_fingerprint``."""
    return getattr(dataset, "_fingerprint", None)


# --- argparse (jsonargparse's parsers are argparse parsers) ----------------------------


def parser_actions(parser) -> list:
    """The argparse ``Action`` of each argument of ``parser`` (its options and their help,
    as ``--help`` prints them): argparse lists them only in its private ``_actions``."""
    return list(parser._actions)


def option_strings(parser) -> list[str]:
    """Every option string of an argparse ``parser`` (``--model.dropout``, ``-c``...), for
    the "did you mean" of an unknown option (:func:`parser_actions`)."""
    return [s for action in parser_actions(parser) for s in action.option_strings]


# --- Lightning: ModelCheckpoint's last.ckpt --------------------------------------------

# A ModelCheckpoint writes `last.ckpt` only on a step where it also saves a top-k
# checkpoint (Lightning 2.6); fusion/callbacks.py:RunCheckpoint writes it at the end of
# every epoch and on SIGTERM with the callback's own routine, so that `last.ckpt` is
# named, linked and replaced exactly as Lightning does it. Lightning has no public method
# for it.


def saves_on_train_epoch_end(callback, trainer) -> bool:
    """Whether ``callback`` (a ``ModelCheckpoint``) saves at the end of a training epoch
    rather than at the end of validation: its private ``_should_save_on_train_epoch_end``."""
    return callback._should_save_on_train_epoch_end(trainer)


def last_saved_now(callback, trainer) -> bool:
    """Whether ``callback`` (a ``ModelCheckpoint``) wrote its last checkpoint at this step:
    its private ``_last_global_step_saved`` (the step of its latest save) and
    ``_last_checkpoint_saved`` (that file) against the public ``last_model_path``."""
    return (
        callback._last_global_step_saved == trainer.global_step
        and bool(callback.last_model_path)
        and callback._last_checkpoint_saved == callback.last_model_path
    )


def save_last_checkpoint(callback, trainer) -> None:
    """Write ``callback``'s ``last.ckpt`` now, as Lightning does after a top-k save: its
    private ``_save_last_checkpoint(trainer, _monitor_candidates(trainer))``."""
    callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))


# --- Lightning: the fit loop ------------------------------------------------------------

# fusion/stopping.py holds a stop that early stopping asks for before min_steps until the
# fit may stop, which Lightning's loop decides with a private property.


def fit_may_stop(trainer) -> bool:
    """Whether the fit would end now if asked to (``min_epochs`` and ``min_steps``
    reached): the fit loop's private ``_can_stop_early``."""
    return trainer.fit_loop._can_stop_early


# --- Lightning: a warning's source ------------------------------------------------------

# Lightning 2.6 calls torch's deprecated `isinstance(treespec, LeafSpec)` on every fit;
# feature_store/console.py:quiet_lightning silences that warning only where it comes from:
# Lightning's private module `lightning.pytorch.utilities._pytree`.
LIGHTNING_PYTREE_MODULE = r"lightning\.pytorch\.utilities\._pytree"


# --- Lightning: LightningModule -------------------------------------------------------


def attached_trainer(module):
    """The Trainer a ``LightningModule`` is attached to, or None (a head used on its own, by
    predict.py or a test): its private ``_trainer``; the public ``trainer`` raises when
    there is none."""
    return module._trainer


# --- Lightning: WandbLogger -------------------------------------------------------------

# WandbLogger keeps the `wandb.init` arguments it was built with and starts the run on the
# first use of its `experiment`. A run that starts online and fails is retried offline
# (fusion/loggers.py:start_or_fallback), and a user's logger from a config gets the run
# directory's settings; both change those arguments after the logger is built, which
# WandbLogger has no public way to do.


def wandb_run_started(logger):
    """The W&B run of a ``WandbLogger``, or None when it has not started (the public
    ``experiment`` would start it): its private ``_experiment``."""
    return logger._experiment


def restart_wandb_run(logger):
    """Forget a ``WandbLogger``'s run and start one with its (changed) ``wandb.init``
    arguments: sets its private ``_experiment`` to None, then the public ``experiment``."""
    logger._experiment = None
    return logger.experiment


def wandb_init_arguments(logger) -> dict:
    """The ``wandb.init`` arguments a ``WandbLogger`` will start its run with (the dict
    itself: a change applies to the run): its private ``_wandb_init``."""
    return logger._wandb_init


def wandb_logger_offline(logger) -> bool:
    """``WandbLogger(offline=True)``: its private ``_offline``."""
    return bool(logger._offline)


def wandb_logger_logs_model(logger) -> bool:
    """``WandbLogger(log_model=...)`` set (``True`` or ``"all"``): its private ``_log_model``."""
    return bool(logger._log_model)


def set_wandb_identity(logger, init: dict) -> None:
    """Make a ``WandbLogger``'s public ``name``, ``version`` and ``save_dir`` (read before
    its run starts, e.g. by ModelCheckpoint) agree with ``init``'s project, dir, name and
    id: its private ``_project``, ``_save_dir``, ``_name`` and ``_id``."""
    logger._project, logger._save_dir = init.get("project"), init.get("dir")
    logger._name, logger._id = init.get("name"), init.get("id")


def wandb_staging_dir() -> Path:
    """Where W&B copies an artifact's files before uploading them (bench/bench_wandb_report.py
    measures what a report leaves there): ``wandb.sdk.artifacts.staging.get_staging_dir``,
    an internal module of the SDK."""
    from wandb.sdk.artifacts.staging import get_staging_dir

    return Path(get_staging_dir())
