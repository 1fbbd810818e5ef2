"""Helpers for the training/prediction tests: synthetic stores, CLI fits, W&B log reading."""

from __future__ import annotations

import csv
import struct
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


def fit_module(store: Path, head: str, *, epochs: int, seed: int = 0, **hparams):
    """Fit ``head`` on ``store`` with a bare Trainer; return (module, val metrics dict)."""
    L.seed_everything(seed, workers=True)
    dm = FeatureDataModule(str(store), batch_size=32)
    options = {"hidden_dims": [32], "dropout": 0.0, "lr": 3e-3, "warmup_epochs": 0.0}
    model = FusionModule(
        head,
        image_dim=dm.image_dim,
        text_dim=dm.text_dim,
        class_names=dm.class_names,
        **{**options, **hparams},
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


def wandb_history(run_file: Path) -> list[dict[str, str]]:
    """History rows of an offline W&B run file (``run-<id>.wandb``), values as JSON text."""
    return [
        {it.key or "/".join(it.nested_key): it.value_json for it in record.history.item}
        for record in wandb_records(run_file)
        if record.WhichOneof("record_type") == "history"
    ]


def wandb_records(run_file: Path) -> list:
    """Every ``Record`` protobuf of an offline W&B run file (``run-<id>.wandb``).

    The file is W&B's LevelDB-style log (7-byte header, 32 KiB blocks, records split into
    FULL/FIRST/MIDDLE/LAST chunks, each a serialised ``Record`` protobuf); wandb no longer
    ships a Python reader for it.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    data = run_file.read_bytes()
    assert data[:4] == b":W&B", f"{run_file} is not a W&B transaction log"
    block, pos, pending, rows = 32768, 7, b"", []
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
        rows.append(record)
    return rows
