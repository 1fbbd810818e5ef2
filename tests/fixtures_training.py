"""Helpers for the training/prediction tests: synthetic stores, CLI fits, W&B log reading."""

from __future__ import annotations

import csv
import json
import struct
import time
from pathlib import Path

import lightning as L

from feature_store.synthetic import make_synthetic_store
from fusion.cli import FusionCLI
from fusion.datamodule import FeatureDataModule
from fusion.module import FusionModule

REPO = Path(__file__).resolve().parents[1]
DEMO_CONFIG = str(REPO / "configs" / "demo.yaml")


def small_store(root: Path, **kwargs) -> Path:
    """A 5-class store with 16+12-dim embeddings (override any make_synthetic_store arg)."""
    opts = {"num_classes": 5, "per_class": {"train": 24, "val": 8, "test": 4}, "seed": 0}
    make_synthetic_store(root, **{**opts, **kwargs})
    return root


def fit_cli(store: Path, run_dir: Path, *extra: str, epochs: int = 2) -> FusionCLI:
    """``python train.py fit --config configs/demo.yaml`` on ``store`` into ``run_dir``."""
    args = [
        "fit",
        "--config",
        DEMO_CONFIG,
        "--data.store",
        str(store),
        "--data.batch_size",
        "32",
        "--run_dir",
        str(run_dir),
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        *extra,
    ]
    return FusionCLI(args=args)


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fit_module(
    store: Path,
    head: str,
    *,
    epochs: int,
    seed: int = 0,
    head_options: dict | None = None,
    optimizer: dict | None = None,
    **hparams,
):
    """Fit ``head`` on ``store`` with a bare Trainer; return (module, val metrics dict).
    ``head_options`` and ``optimizer`` are merged into small-store defaults."""
    L.seed_everything(seed, workers=True)
    dm = FeatureDataModule(str(store), batch_size=32)
    model = FusionModule(
        head,
        set_dims=dm.set_dims,
        class_names=dm.class_names,
        head_options={"hidden_dims": [32], "dropout": 0.0, **(head_options or {})},
        optimizer={"lr": 3e-3, **(optimizer or {})},
        schedule={"warmup_epochs": 0.0},
        **hparams,
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    metrics = trainer.validate(model, dm, verbose=False)[0]
    return model, metrics


def wandb_records(run_file: Path) -> list:
    """Every ``Record`` protobuf of an offline W&B run file (``run-<id>.wandb``), in order.

    The file is W&B's LevelDB-style log (7-byte header, 32 KiB blocks, records split into
    FULL/FIRST/MIDDLE/LAST chunks, each a serialised ``Record`` protobuf); wandb no longer
    ships a Python reader for it.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{run_file} is not a W&B transaction log")
    block, pos, pending, records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):
            pending = chunk
        elif kind in (3, 4):
            pending += chunk
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(pending)
        records.append(record)
    return records


def wandb_run_files(run: Path, count: int = 1, timeout: float = 60.0) -> list[Path]:
    """The ``count`` offline W&B run files of the run directory ``run``, once complete.

    ``wandb.finish()`` returns before W&B's service has written the run file to the end
    (it is a separate process, shared by every run of this one), so wait for each file's
    last record to be ``exit``.
    """
    deadline = time.monotonic() + timeout
    while True:
        files = sorted(run.glob("wandb/offline-run-*/run-*.wandb"))
        done = [f for f in files if _last_kind(f) == "exit"]
        if len(done) >= count or time.monotonic() > deadline:
            assert len(done) == count, f"{len(done)} complete W&B run files in {run}: {files}"
            return done
        time.sleep(0.2)


def _last_kind(run_file: Path) -> str | None:
    try:
        records = wandb_records(run_file)
    except Exception:  # caught mid-write
        return None
    return records[-1].WhichOneof("record_type") if records else None


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of an offline W&B run file, values as JSON text."""
    return [
        {_key(it): it.value_json for it in r.history.item}
        for r in wandb_records(run_file)
        if r.WhichOneof("record_type") == "history"
    ]


def wandb_config(run_file: Path) -> dict:
    """The run's config after every update (the run record's, then config records)."""
    out: dict = {}
    for r in wandb_records(run_file):
        kind = r.WhichOneof("record_type")
        items = (
            r.run.config.update if kind == "run" else r.config.update if kind == "config" else []
        )
        for it in items:
            value = json.loads(it.value_json)
            # W&B stores each config value as {"value": v}.
            out[_key(it)] = value.get("value") if isinstance(value, dict) else value
    return out


def wandb_summary(run_file: Path) -> dict:
    """The run's final summary: every summary record's updates applied in order."""
    out: dict = {}
    for r in wandb_records(run_file):
        if r.WhichOneof("record_type") == "summary":
            out.update({_key(it): json.loads(it.value_json) for it in r.summary.update})
            for it in r.summary.remove:
                out.pop(_key(it), None)
    return out


def wandb_artifacts(run_file: Path) -> list[dict]:
    """``{name, type, aliases, files}`` of every artifact the run logged."""
    return [
        {
            "name": r.artifact.name,
            "type": r.artifact.type,
            "aliases": list(r.artifact.aliases),
            "files": [e.path for e in r.artifact.manifest.contents],
        }
        for r in wandb_records(run_file)
        if r.WhichOneof("record_type") == "artifact"
    ]


def wandb_run_id(run_file: Path) -> str:
    """The id in the run file's run record."""
    for r in wandb_records(run_file):
        if r.WhichOneof("record_type") == "run":
            return r.run.run_id
    raise AssertionError(f"{run_file} has no run record")
