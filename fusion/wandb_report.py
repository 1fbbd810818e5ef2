"""What a fit's W&B run holds beyond the logged metrics: config, ranking summary, val report.

Used by train.py's callbacks (fusion/callbacks.py, fusion/runs.py); to try it on a fit:

$ WANDB_MODE=offline python train.py fit --config configs/demo.yaml --data.store stores/demo

- :func:`run_config`: the resolved config flattened (``model.head``, ``data.batch_size``,
  ``trainer.max_epochs``...), the store's essentials (``store.models.*``, ``store.dims.*``,
  ``store.rows.*``) and package versions (``versions.*``).
- :class:`BestSummary`: the run summary ranks by the best epoch, not the last one.
- :func:`log_val_report`: from the best checkpoint's val predictions, a confusion matrix
  (W&B's own up to ``max_cm_classes``; above, a heatmap of the most confused classes and a
  table of the most confused pairs) and a table of predictions, misclassified rows first,
  capped at ``max_rows`` with small thumbnails, so a 500-class run stays small.
- :func:`log_checkpoint`, :func:`log_store_manifest`, :func:`log_submission`: artifacts
  named as W&B and Lightning name them (``model-<run id>:best``), for ``use_artifact``.
- :func:`log_candidate`: the run of a candidate that is not a Lightning fit (probe, stack,
  cv, ensemble), with the same summary keys and submission artifact as a fit's.
"""

from __future__ import annotations

import json
import platform
import re
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from lightning.pytorch.loggers import WandbLogger

from feature_store.atomic import atomic_write_bytes
from feature_store.compat import wandb_run_started
from feature_store.thumbs import load_thumb
from fusion.loggers import (
    _say_mode,
    init_settings,
    init_wandb,
    save_run_id,
    wandb_mode_and_reason,
    wandb_settings,
)
from fusion.submission import metadata_path, probs_path

PACKAGES = (
    "sketchfusion",
    "torch",
    "lightning",
    "torchmetrics",
    "transformers",
    "datasets",
    "numpy",
    "wandb",
)
# Old option names train.py still takes: logged under the current name only.
ALIASES = {"wandb_project": "wandb.project", "wandb_group": "wandb.group"}
TABLE_COLUMNS = ["id", "thumbnail", "caption", "label", "prediction", "confidence", "correct"]
PAIR_COLUMNS = ["label", "prediction", "count", "share_of_label"]


def wandb_runs(trainer: L.Trainer) -> list:
    """The W&B runs of ``trainer``'s loggers (rank 0 only; none when W&B is off)."""
    if not trainer.is_global_zero:
        return []
    return [lg.experiment for lg in trainer.loggers if isinstance(lg, WandbLogger)]


def finish_runs(trainer: L.Trainer, exit_code: int = 0) -> None:
    """Finish the W&B runs of ``trainer``'s loggers (a second fit in the process then
    starts its own run); after the fit, so Lightning's ``log_model`` uploads come first."""
    for logger in trainer.loggers if trainer is not None else []:
        run = wandb_run_started(logger) if isinstance(logger, WandbLogger) else None
        if run is not None:
            run.finish(exit_code=exit_code)


def flatten(value: Any, prefix: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists of plain values stay lists, other lists
    become JSON text (a callback list is one filterable value, not dozens of keys)."""
    out = {} if out is None else out
    if isinstance(value, Mapping):
        for key, item in value.items():
            flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    elif isinstance(value, list | tuple):
        plain = all(isinstance(v, str | int | float | bool) or v is None for v in value)
        out[prefix] = list(value) if plain else json.dumps(value, default=str)
    elif isinstance(value, str | int | float | bool) or value is None:
        out[prefix] = value
    else:
        out[prefix] = str(value)
    return out


def store_config(store: str | Path) -> dict[str, Any]:
    """The store's manifest essentials: models (ids, revisions, pooling...), dims, rows."""
    from feature_store import open_store
    from feature_store.integrity import model_fingerprint

    info = open_store(store)
    out: dict[str, Any] = {"store.path": str(store), "store.num_classes": info.num_classes}
    out.update({f"store.{k}": v for k, v in model_fingerprint(info).items()})
    for split, counts in (info.manifest.get("splits") or {}).items():
        out[f"store.rows.{split}"] = int(counts.get("rows", 0))
        out[f"store.failed.{split}"] = int(counts.get("failed", 0))
    return out


def package_versions() -> dict[str, str]:
    """``versions.<package>`` of what decides a run's numbers, and ``versions.python``."""
    out = {"versions.python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[f"versions.{name}"] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def run_config(config: Mapping[str, Any] | str) -> dict[str, Any]:
    """The W&B config of a fit: ``config`` (the resolved CLI config as a dict) flattened,
    the store's essentials when it names a readable store, and package versions."""
    if isinstance(config, str):  # jsonargparse dump
        config = json.loads(config)
    out = flatten(dict(config))
    for alias, name in ALIASES.items():  # one key per setting: the alias's value, if set
        value = out.pop(alias, None)
        if value is not None and out.get(name) is None:
            out[name] = value
    store = out.get("data.store")
    if store:
        try:  # store.path would repeat data.store
            out.update({k: v for k, v in store_config(store).items() if k != "store.path"})
        except Exception as err:  # the fit reports a bad store itself; keep the run going
            out["store.error"] = str(err)
    out.update(package_versions())
    return out


class BestSummary(L.Callback):
    """Make the W&B summary rank runs by their best epoch, not their last one.

    W&B's summary of a metric is its last value by default. Here ``val/acc_top1`` is
    summarised by its max and ``val/loss`` by its min (``define_metric``), and
    ``best/val/acc_top1``, ``best/val/loss``, ``best/epoch`` and ``best/step`` (the best
    checkpoint's) are written after every validation. The latter survive a resume (this
    callback's state is in the checkpoint); ``fusion/alpha``/``beta`` keep their last value,
    the final one.
    """

    def __init__(self, monitor: str = "val/acc_top1", loss: str = "val/loss") -> None:
        self.monitor, self.loss = monitor, loss
        self.best: dict[str, float] = {}

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = dict(state_dict.get("best", {}))

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        for run in wandb_runs(trainer):
            # Same x-axis as Lightning's WandbLogger gives every other metric.
            step = {"step_metric": "trainer/global_step", "step_sync": True}
            run.define_metric(self.monitor, summary="max", **step)
            run.define_metric(self.loss, summary="min", **step)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        acc, loss = metrics.get(self.monitor), metrics.get(self.loss)
        best_acc, best_loss = f"best/{self.monitor}", f"best/{self.loss}"
        if acc is not None and acc == acc and acc > self.best.get(best_acc, -np.inf):
            self.best.update(
                {
                    best_acc: acc,
                    "best/epoch": trainer.current_epoch,
                    "best/step": trainer.global_step,
                }
            )
        if loss is not None and loss == loss and loss < self.best.get(best_loss, np.inf):
            self.best[best_loss] = loss
        for run in wandb_runs(trainer):
            run.summary.update(self.best)


def misclassified_first(
    labels: np.ndarray, pred: np.ndarray, max_rows: int, seed: int = 0
) -> np.ndarray:
    """Row indices for the predictions table: a seeded sample of up to ``max_rows``,
    misclassified rows first (all of them if they fit), then correct ones."""
    rng = np.random.default_rng(seed)
    wrong = np.flatnonzero(pred != labels)
    right = np.flatnonzero(pred == labels)
    take_wrong = rng.permutation(wrong)[:max_rows]
    take_right = rng.permutation(right)[: max_rows - len(take_wrong)]
    return np.concatenate([np.sort(take_wrong), np.sort(take_right)]).astype(int)


def thumbnail(path: str, size: int):
    """A ``wandb.Image`` of the file at ``path`` shrunk to ``size`` px, or None when it is
    not there (a store moved to another machine keeps its embeddings, not its images)."""
    import wandb

    pixels = load_thumb(path, None, size) if path else None
    return None if pixels is None else wandb.Image(pixels)


def confused_pairs(labels: np.ndarray, pred: np.ndarray, num_classes: int, top: int) -> list:
    """``(label, prediction, count, share of label)`` of the ``top`` most frequent errors."""
    cm = np.bincount(labels * num_classes + pred, minlength=num_classes**2)
    cm = cm.reshape(num_classes, num_classes)
    support = cm.sum(axis=1)
    np.fill_diagonal(cm, 0)
    flat = np.argsort(-cm, axis=None, kind="stable")[:top]
    rows = []
    for idx in flat:
        t, p = divmod(int(idx), num_classes)
        if cm[t, p] == 0:
            break
        rows.append((t, p, int(cm[t, p]), float(cm[t, p] / max(support[t], 1))))
    return rows


def confusion_heatmap(
    labels: np.ndarray, pred: np.ndarray, class_names: Sequence[str], out: Path, top: int
) -> Path:
    """PNG of the confusion matrix restricted to the ``top`` classes with the most errors
    (as label or as prediction); rows are true classes, each normalised to its support."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(class_names)
    cm = np.bincount(labels * n + pred, minlength=n * n).reshape(n, n).astype(float)
    errors = cm.sum(0) + cm.sum(1) - 2 * np.diag(cm)
    keep = np.sort(np.argsort(-errors, kind="stable")[:top])
    sub = cm[np.ix_(keep, keep)] / np.maximum(cm[keep].sum(axis=1, keepdims=True), 1)
    names = [class_names[i] for i in keep]
    fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
    im = ax.imshow(sub, cmap="viridis", vmin=0, vmax=1)
    ax.set_xticks(range(len(keep)), names, rotation=90, fontsize=6)
    ax.set_yticks(range(len(keep)), names, fontsize=6)
    ax.set_xlabel("prediction")
    ax.set_ylabel("label")
    ax.set_title(f"val confusion, the {len(keep)} most confused of {n} classes")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out


def log_val_report(
    run,
    *,
    ids: Sequence[str],
    labels: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    captions: Sequence[str],
    paths: Sequence[str],
    out_dir: Path,
    max_rows: int = 200,
    thumb_px: int = 64,
    max_cm_classes: int = 50,
    heatmap_classes: int = 30,
    top_pairs: int = 50,
    seed: int = 0,
) -> dict[str, Any]:
    """Log the confusion matrix and the predictions table of val rows with a label.

    Returns what was logged (keys -> objects) for the caller and the tests.
    """
    import wandb

    labels = np.asarray(labels, dtype=np.int64)
    pred = np.asarray(probs).argmax(axis=1)
    conf = np.asarray(probs).max(axis=1)
    known = np.flatnonzero(labels >= 0)
    labels_k, pred_k = labels[known], pred[known]
    names = list(class_names)
    logged: dict[str, Any] = {}
    if len(names) <= max_cm_classes:
        logged["val/confusion_matrix"] = wandb.plot.confusion_matrix(
            y_true=labels_k.tolist(),
            preds=pred_k.tolist(),
            class_names=names,
            title="val confusion (best checkpoint)",
        )
    else:
        png = confusion_heatmap(
            labels_k, pred_k, names, Path(out_dir) / "confusion_top.png", heatmap_classes
        )
        logged["val/confusion_top_classes"] = wandb.Image(str(png))
        pairs = wandb.Table(columns=PAIR_COLUMNS)
        for t, p, count, share in confused_pairs(labels_k, pred_k, len(names), top_pairs):
            pairs.add_data(names[t], names[p], count, round(share, 4))
        logged["val/confused_pairs"] = pairs
    table = wandb.Table(columns=TABLE_COLUMNS)
    for i in known[misclassified_first(labels_k, pred_k, max_rows, seed)]:
        table.add_data(
            ids[i],
            thumbnail(paths[i], thumb_px),
            captions[i],
            names[labels[i]],
            names[pred[i]],
            round(float(conf[i]), 4),
            bool(pred[i] == labels[i]),
        )
    logged["val/predictions"] = table
    run.log(logged)
    return logged


def artifact_name(text: str) -> str:
    """``text`` with only the characters W&B allows in artifact names."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "artifact"


def log_checkpoint(run, path: str | Path, *, score: float | None, monitor: str) -> None:
    """``model-<run id>`` (type ``model``, aliases ``best``, ``latest``): Lightning's
    WandbLogger name, so ``run.use_artifact("model-<id>:best")`` finds it either way."""
    import wandb

    meta = {"score": score, "monitor": monitor, "original_filename": Path(path).name}
    artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=meta)
    artifact.add_file(str(path), name="model.ckpt")
    run.log_artifact(artifact, aliases=["best", "latest"])


def log_store_manifest(run, store: str | Path) -> None:
    """``store-<store dir name>`` (type ``dataset``): the manifest the fit trained on."""
    import wandb

    store = Path(store)
    artifact = wandb.Artifact(
        artifact_name(f"store-{store.resolve().name}"),
        type="dataset",
        metadata={k: v for k, v in store_config(store).items() if k != "store.path"},
    )
    artifact.add_file(str(store / "manifest.json"), name="manifest.json")
    run.log_artifact(artifact)


def log_submission(run, submission: str | Path, probs_file: str | Path | None = None) -> None:
    """``submission-<run id>`` (type ``submission``): the CSV, its ``.probs.npz`` and its
    ``.json`` metadata (fusion/submission.py) when they are there."""
    import wandb

    submission = Path(submission)
    artifact = wandb.Artifact(f"submission-{run.id}", type="submission")
    artifact.add_file(str(submission), name=submission.name)
    for extra in (probs_file or probs_path(submission), metadata_path(submission)):
        if Path(extra).is_file():
            artifact.add_file(str(extra), name=Path(extra).name)
    run.log_artifact(artifact, aliases=["latest"])


def candidate_settings(run_dir: str | Path, cfg, *, kind: str) -> dict:
    """:func:`fusion.loggers.wandb_settings` from the options of
    :func:`fusion.command_options.add_wandb_arguments`:
    group and job type ``kind`` unless given."""
    return wandb_settings(
        Path(run_dir),
        group=kind,
        project=cfg.wandb.project or cfg.get("wandb_project"),
        entity=cfg.wandb.entity,
        tags=cfg.wandb.tags,
        job_type=cfg.wandb.job_type,
        default_job_type=kind,
        group_override=cfg.wandb.group,
    )


def log_candidate(
    run_dir: str | Path,
    *,
    candidate: str,
    settings: dict,
    config: Mapping[str, Any],
    summary: Mapping[str, Any],
    submission: str | Path | None = None,
    keep_id: bool = True,
) -> str | None:
    """The W&B run of a candidate no Lightning fit logs (``probe``, ``stack``, ``cv``,
    ``ensemble``): ``config`` flattened once with ``candidate`` in it, ``summary`` (its
    score as ``best/val/acc_top1`` or ``best/oof/acc_top1``), and ``submission`` as the
    artifact ``submission-<run id>``. ``settings`` come from
    :func:`fusion.loggers.wandb_settings`, the fits' own; ``config`` is flattened as a fit's
    (:func:`run_config`: the store's essentials when it names ``data.store``, package
    versions). Returns the run id, or None when
    W&B is disabled or failed: a logging failure is one warning, the files are written.
    """
    import sys

    mode, why = wandb_mode_and_reason()
    if mode == "disabled":
        return None
    try:
        _say_mode(mode, why, Path(run_dir))
        if keep_id:  # RUN/wandb_run_id: a rerun in the same directory continues the run
            save_run_id(run_dir, settings["id"])
        flat = {"candidate": candidate, **run_config(config)}
        run = init_wandb(  # never stops the command: offline, or off, with one line
            Path(run_dir),
            dir=str(Path(run_dir).resolve()),
            mode=mode,
            settings=init_settings(mode),
            config=flat,
            **settings,
        )
        if run is None:
            return None
        run.summary.update(dict(summary))
        if submission is not None and Path(submission).is_file():
            log_submission(run, submission)
        run.finish()
        return run.id
    except Exception as err:  # noqa: BLE001
        print(f"WARNING: the {candidate} was written but not logged to W&B: {err}",
              file=sys.stderr)  # fmt: skip
        return None
