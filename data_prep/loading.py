"""Loading models by hub id or local directory, with errors that say how to fix them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TORCH_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


class ModelLoadError(RuntimeError):
    """A model or its processor could not be loaded; the message names it and the fix."""


def load_pretrained(role: str, option: str, loader: Callable[..., Any], name: str, **kwargs):
    """``loader(name, **kwargs)``, turning any failure into a :class:`ModelLoadError`.

    ``role`` is what the model is for ("image encoder"), ``option`` the config key that
    names it ("image.model"), so the message can say exactly what to change.
    """
    try:
        return loader(name, **kwargs)
    except Exception as err:  # OSError, HF hub errors, ValueError from a bad config...
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        where = (
            f"the directory {name} exists but does not hold a loadable model"
            if Path(name).is_dir()
            else "it is neither a local directory nor a model in the Hugging Face cache"
            + (" (HF_HUB_OFFLINE=1 is set, so the hub was not asked)" if offline else "")
        )
        raise ModelLoadError(
            f"Cannot load the {role} {name!r}: {where}.\n"
            f"  Fix: on a machine with network run `hf download {name} --local-dir DIR`, copy "
            f"DIR here and pass `--{option} DIR` (or set {option}: DIR in the config); with the "
            f"model already in the HF cache, set HF_HUB_OFFLINE=1.\n"
            f"  Cause: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        ) from err


@contextmanager
def hf_progress_bars_off() -> Iterator[None]:
    """No transformers progress bar ("Loading weights") within the block; the setting the
    caller had is restored after it (a notebook keeps its bars)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def resolve_dtype(name: str, accelerator: str):
    """The torch dtype for ``run.dtype``: auto is bf16 on a GPU that supports it, else fp32."""
    import torch

    if name == "auto":
        on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        if on_gpu:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return getattr(torch, TORCH_DTYPES[name])


def model_source(name: str, model) -> dict[str, Any]:
    """Where a model came from: the local path, or the hub id and the resolved commit."""
    if Path(name).is_dir():
        return {"name": name, "local_path": str(Path(name).resolve())}
    commit = getattr(getattr(model, "config", None), "_commit_hash", None)
    return {"name": name, "revision": commit}
