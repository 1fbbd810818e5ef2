"""sketchfusion's Python API: the functions the command lines call, for notebooks.

>>> import sketchfusion as sf
>>> store = sf.build_store("configs/prep/demo.yaml")        # python -m data_prep --config ...
>>> fit = sf.fit("configs/demo.yaml", store=store, trainer__max_epochs=5)   # train.py fit
>>> sf.predict(fit.best_checkpoint, store, "submission.csv")                # predict.py
>>> sf.report(store, fit.run_dir, "report/")                                # python -m analysis
>>> sf.metrics(fit), sf.val_predictions(fit), sf.submission("submission.csv")  # DataFrames

Thin wrappers, no logic of their own: :func:`build_store` is ``data_prep.main``,
:func:`fit` is ``fusion.cli.main`` (LightningCLI), :func:`predict` is
``fusion.combine.predict_submission`` (predict.py's library call), :func:`report` is
``analysis.report.build_report``. Bad input raises the same exceptions the command lines
turn into one-line errors (``StoreError``, ``CheckpointError``, ``SubmissionError``...), with the
same messages. The files the command lines write read back as pandas DataFrames
(:mod:`sketchfusion.tables`: metrics, val predictions, out-of-fold probabilities, tune
trials, submissions). Importing this package is cheap: torch, Lightning and pandas load on
first use.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from feature_store import (
    StoreError,
    StoreInfo,
    load_arrays,
    load_dataset_dict,
    load_features,
    open_store,
)
from sketchfusion.tables import (
    metrics,
    probabilities,
    submission,
    trials,
    val_predictions,
)

__all__ = [
    "FitResult",
    "StoreError",
    "StoreInfo",
    "build_store",
    "fit",
    "load_arrays",
    "load_dataset_dict",
    "load_features",
    "metrics",
    "open_store",
    "predict",
    "probabilities",
    "report",
    "submission",
    "trials",
    "val_predictions",
]

StoreLike = str | os.PathLike  # a StoreInfo is a PathLike of its directory


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """``{"run.out": x}`` -> ``{"run": {"out": x}}`` (``__`` also separates, for kwargs)."""
    out: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.replace("__", ".").split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def build_store(config: str | os.PathLike | dict, **overrides: Any) -> StoreInfo:
    """Build (or resume, or find complete) the store a data_prep config describes.

    ``config``: a prep YAML (``configs/prep/*.yaml``) or the same content as a dict;
    ``overrides``: dotted keys, ``**{"run.out": "stores/x"}`` or ``run__out="stores/x"``.
    Returns the store's :class:`StoreInfo` (``.root``, ``.class_names``, ``.splits``...).
    """
    import data_prep

    configs = [json.dumps(config) if isinstance(config, dict) else str(config)]
    if overrides:
        configs.append(json.dumps(_nested(overrides)))
    # --config (repeatable, later wins) is the one option every entry point keeps.
    return open_store(data_prep.main([a for c in configs for a in ("--config", c)]))


@dataclass(frozen=True)
class FitResult:
    """Where a fit went: its run directory and checkpoints, and its best val top-1; a
    PathLike of its run directory."""

    run_dir: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    best_score: float | None

    def __fspath__(self) -> str:  # sf.metrics(fit), sf.val_predictions(fit) read its run
        return os.fspath(self.run_dir)


def _arg(value: Any) -> str:
    """A Python value as LightningCLI reads it on the command line."""
    return value if isinstance(value, str) else json.dumps(value)


def fit(
    config: str | os.PathLike, *, store: StoreLike | None = None, **overrides: Any
) -> FitResult:
    """``python train.py fit --config CONFIG [--data.store STORE] [--key value ...]``.

    ``overrides``: any LightningCLI option as a dotted key, ``trainer__max_epochs=5`` or
    ``**{"model.head_options.dropout": 0.5}``; ``run_dir="runs/x"`` fixes the run directory.
    """
    from fusion.cli import main as cli_main

    args = ["fit", "--config", str(config)]
    if store is not None:
        args += ["--data.store", os.fspath(store)]
    for key, value in overrides.items():
        args += [f"--{key.replace('__', '.')}", _arg(value)]
    cli = cli_main(args)
    ckpt = cli.trainer.checkpoint_callback
    best = ckpt.best_model_path if ckpt is not None else ""
    last = ckpt.last_model_path if ckpt is not None else ""
    score = ckpt.best_model_score if ckpt is not None else None
    return FitResult(
        run_dir=Path(cli.trainer.default_root_dir),
        best_checkpoint=Path(best) if best else None,
        last_checkpoint=Path(last) if last else None,
        best_score=None if score is None else float(score),
    )


def predict(
    checkpoint: str | os.PathLike | list,
    store: StoreLike,
    out: str | os.PathLike = "submission.csv",
    *,
    split: str = "test",
    strict: bool = False,
    allow_store_mismatch: bool = False,
    category: str = "index",
) -> Path:
    """predict.py: write the ``Id,Category`` submission of ``split`` (and ``OUT.probs.npz``,
    ``OUT.json``); ``category="name"`` writes class names instead of indices.

    ``checkpoint``: one train.py checkpoint or a list (their probabilities are averaged).
    Inputs that failed extraction get the train class prior, with a warning on stderr;
    ``strict`` raises ``fusion.submission.SubmissionError`` instead. The library call
    predict.py makes (``fusion.combine.predict_submission``), so it refuses what predict.py
    refuses, with the same messages. Returns the submission's path.
    """
    from fusion.combine import predict_submission

    checkpoints = checkpoint if isinstance(checkpoint, list) else [checkpoint]
    submission, _ = predict_submission(
        checkpoints,
        os.fspath(store),
        out,
        split=split,
        strict=strict,
        allow_store_mismatch=allow_store_mismatch,
        category=category,
    )
    return submission


def report(
    store: StoreLike,
    run: str | os.PathLike | None = None,
    out: str | os.PathLike = "report",
    **options: Any,
) -> Path:
    """``python -m analysis``: the store (and run) report; returns ``OUT/report.html``.

    ``options``: any field of :class:`analysis.report.ReportOptions` (``classes="10"``,
    ``queries=["a violin"]``, ``tsne_points=500``...).
    """
    from analysis.report import ReportOptions, build_report

    opts = ReportOptions(
        store=Path(os.fspath(store)),
        out=Path(out),
        run=None if run is None else Path(run),
        **options,
    )
    return Path(build_report(opts).page)
