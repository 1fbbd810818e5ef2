"""The image encoder: DINOv2 (or any transformers vision backbone) or a timm model.

$ python -c "from data_prep.encoders import *; help(ImageEncoder)"

Preprocessing is the model's own (transformers image processor: shortest-edge resize then
centre crop for DINOv2; timm's resolved data config). A squashing resize to a square
(``image.squash``, the reference report's) is an option for exact reproduction, off by
default: it distorts the aspect ratio. Preprocessing lives in a separate small picklable
object so DataLoader workers run it, not the model process.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_prep.config import POOLINGS_IMAGE, ImageConfig
from data_prep.loading import load_pretrained, model_source

# PIL filters by the names the config uses.
RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "lanczos": 1}


def pool_tokens(tokens: torch.Tensor, pooling: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """[B, T, D] encoder output -> [B, D] (or [B, 2D] for ``cls+mean``).

    ``cls`` is token 0; ``mean`` averages the patch tokens only (after the CLS and any
    register tokens); ``cls+mean`` concatenates both, as Dinov2ForImageClassification
    feeds its linear head. ``mean_all_tokens`` averages every token, CLS and registers
    included: the reference report's ``last_hidden_state.mean(dim=1)``.
    """
    if pooling == "mean_all_tokens":
        return tokens.mean(dim=1)
    cls = tokens[:, 0]
    if pooling == "cls":
        return cls
    mean = tokens[:, num_prefix_tokens:].mean(dim=1)
    if pooling == "mean":
        return mean
    if pooling == "cls+mean":
        return torch.cat([cls, mean], dim=1)
    raise ValueError(f"unknown image pooling {pooling!r}; use one of {list(POOLINGS_IMAGE)}")


class ImagePreprocessor:
    """PIL images -> a float pixel tensor [B, 3, H, W], with the model's own transform."""

    def __init__(self, cfg: ImageConfig, model: Any = None):
        self.library = cfg.library
        self.squash = cfg.squash
        self.resample = RESAMPLE[cfg.squash_resample]
        if cfg.library == "timm":
            import timm.data

            data_cfg = timm.data.resolve_model_data_config(model)
            self.transform = timm.data.create_transform(**data_cfg, is_training=False)
            self.description = {"library": "timm", **{k: _plain(v) for k, v in data_cfg.items()}}
        else:
            from transformers import AutoImageProcessor

            self.processor = load_pretrained(
                "image processor",
                "image.model",
                AutoImageProcessor.from_pretrained,
                cfg.model,
                revision=cfg.revision,
                **(cfg.processor_kwargs or {}),
            )
            self.description = {"library": "transformers", **_plain(self.processor.to_dict())}
        if cfg.squash is not None:  # only when set: stores built without it keep their record
            self.description["squash"] = {"size": cfg.squash, "resample": cfg.squash_resample}

    def __call__(self, images: list) -> torch.Tensor:
        if self.squash is not None:
            size = (self.squash, self.squash)
            images = [im.resize(size, resample=self.resample) for im in images]
        if self.library == "timm":
            return torch.stack([self.transform(im) for im in images])
        return self.processor(images=images, return_tensors="pt")["pixel_values"]


class ImageEncoder(nn.Module):
    """Pixel tensor -> pooled float32 features [B, dim] under the configured pooling."""

    def __init__(self, cfg: ImageConfig, *, dtype: torch.dtype):
        super().__init__()
        self.cfg = cfg
        if cfg.pooling not in POOLINGS_IMAGE:
            raise ValueError(f"--image.pooling {cfg.pooling!r}: use one of {list(POOLINGS_IMAGE)}")
        if cfg.library == "timm":
            import timm

            kwargs = {"pretrained": cfg.pretrained, "num_classes": 0}
            if cfg.weights_file:  # timm's own way to read pretrained weights from disk
                kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": cfg.weights_file})
            self.model = load_pretrained(
                "image encoder", "image.weights_file" if cfg.weights_file else "image.model",
                timm.create_model, cfg.model, **kwargs,
            )  # fmt: skip
            self.model.to(dtype)
            self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
            width = int(self.model.num_features)
            if cfg.pooling in ("cls", "cls+mean") and self.num_prefix_tokens == 0:
                raise ValueError(
                    f"timm model {cfg.model!r} has no CLS token; use --image.pooling mean"
                )
        else:
            from transformers import AutoModel

            self.model = load_pretrained(
                "image encoder",
                "image.model",
                AutoModel.from_pretrained,
                cfg.model,
                revision=cfg.revision,
                dtype=dtype,
            )
            # DINOv2 with registers keeps them right after CLS; they are not patches.
            self.num_prefix_tokens = 1 + int(getattr(self.model.config, "num_register_tokens", 0))
            width = int(self.model.config.hidden_size)
        self.model.eval()
        self.dtype = dtype
        self.dim = width * (2 if cfg.pooling == "cls+mean" else 1)
        self.source = model_source(cfg.model, self.model)
        if cfg.library == "timm":
            self.source["weights"] = (
                str(Path(cfg.weights_file).resolve()) if cfg.weights_file
                else "timm pretrained" if cfg.pretrained else "random init"
            )  # fmt: skip

    def tokens(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The encoder's final (normalised) token sequence [B, T, D]."""
        pixel_values = pixel_values.to(self.dtype)
        if self.cfg.library == "timm":
            out = self.model.forward_features(pixel_values)
            if out.ndim == 4:  # a CNN: [B, C, H, W] -> [B, HW, C], no prefix tokens
                out = out.flatten(2).transpose(1, 2)
            return out
        return self.model(pixel_values=pixel_values).last_hidden_state

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        tokens = self.tokens(pixel_values)
        return pool_tokens(tokens, self.cfg.pooling, self.num_prefix_tokens).float()


def _plain(value):
    """JSON-safe copy of a processor / data config (tuples -> lists, objects -> str)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
