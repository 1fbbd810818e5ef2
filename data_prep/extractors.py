"""Feature-set extractors: image towers (transformers, timm) and caption text encoders.

$ python -c "from data_prep.set_kinds import KINDS; print(KINDS['hf_image'].doc)"

Every extractor is an ``nn.Module`` that maps one batch (a pixel tensor, or a list of
captions) to float32 vectors [B, dim], with what the manifest records about it
(:meth:`SetExtractor.describe`). Its dim and its prefix tokens (CLS, registers) are
measured on one blank image at load time, never assumed: a pooling the model cannot give
(``cls`` on SigLIP, which has no CLS token) fails there, before any row is written.
The class-name score kinds are in data_prep/class_scores.py; the registry in
data_prep/set_kinds.py.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image
from torch import nn

from data_prep.config import FeatureSetConfig, ImageConfig
from data_prep.encoders import ImagePreprocessor, pool_tokens
from data_prep.loading import load_pretrained, model_source
from data_prep.set_kinds import KINDS


class SetExtractor(nn.Module):
    """What every kind shares: its config, input, dim, source and preprocessing record."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype):
        super().__init__()
        self.fs = fs
        self.kind = KINDS[fs.kind]
        self.reads = self.kind.reads
        self.pooling = fs.pooling if fs.pooling is not None else self.kind.poolings[0]
        self.dtype = dtype
        self.option = f"features[{fs.name}].model"  # what error messages tell the user to fix
        self.dim = 0
        self.source: dict[str, Any] = {}
        self.preprocess = None  # picklable PIL list -> tensor, run in DataLoader workers
        self.preprocessing: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}  # kind-specific manifest fields

    def describe(self) -> dict[str, Any]:
        """The manifest entry's model fields (name, revision or local path, ...)."""
        return {
            "kind": self.kind.set_kind,
            "extractor": self.fs.kind,
            "model": self.source.get("name"),
            "revision": self.source.get("revision"),
            "local_path": self.source.get("local_path"),
            "weights": self.source.get("weights"),
            "library": self.fs.library,
            "pooling": self.pooling or None,
            "preprocessing": self.preprocessing,
            "tta": list(self.fs.tta),
            "dim": int(self.dim),
            "compute_dtype": str(self.dtype).replace("torch.", ""),
            **self.extra,
        }

    def probe(self) -> torch.Tensor:
        """One blank image through preprocessing and forward: the output's shape is the dim."""
        with torch.inference_mode():
            return self(self.preprocess([Image.new("RGB", (64, 64), "white")]))


def hf_image_processor(fs: FeatureSetConfig, model=None) -> ImagePreprocessor:
    """The model's own image preprocessing (transformers processor or timm data config)."""
    cfg = ImageConfig(model=fs.model, library=fs.library, revision=fs.revision,
                      processor_kwargs=fs.processor_kwargs)  # fmt: skip
    return ImagePreprocessor(cfg, model)


def create_timm(fs: FeatureSetConfig, option: str, **overrides):
    """``timm.create_model`` with the set's weights (hub, a local file, or random)."""
    import timm

    kwargs = {"pretrained": fs.pretrained, **(fs.model_kwargs or {}), **overrides}
    if fs.weights_file:  # timm's own way to read pretrained weights from disk
        overlay = {**kwargs.get("pretrained_cfg_overlay", {}), "file": fs.weights_file}
        kwargs.update(pretrained=True, pretrained_cfg_overlay=overlay)
    model = load_pretrained("image model", option, timm.create_model, fs.model, **kwargs)
    source = model_source(fs.model, model)
    source["weights"] = (fs.weights_file if fs.weights_file else
                         "timm pretrained" if fs.pretrained else "random init")  # fmt: skip
    return model.eval(), source


def _patch_grid(pixel_values: torch.Tensor, patch: int | None) -> int | None:
    if not patch:
        return None
    patch = patch[0] if isinstance(patch, list | tuple) else patch
    return (pixel_values.shape[-2] // patch) * (pixel_values.shape[-1] // patch)


def _as_tokens(out: torch.Tensor) -> torch.Tensor:
    """A CNN's [B, C, H, W] map as [B, HW, C] tokens; a ViT's tokens as they are."""
    return out.flatten(2).transpose(1, 2) if out.ndim == 4 else out


class HFImageTower(SetExtractor):
    """A transformers image tower: DINOv2 (registers too), a CLIP / SigLIP vision tower."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes=None):
        super().__init__(fs, dtype=dtype)
        from transformers import AutoModel

        model = load_pretrained("image model", self.option, AutoModel.from_pretrained, fs.model,
                                revision=fs.revision, dtype=dtype).eval()  # fmt: skip
        self.model = model
        # A dual-tower checkpoint (CLIPModel, SiglipModel) holds its image tower here.
        self.tower = getattr(model, "vision_model", model)
        if self.pooling == "embed" and not hasattr(model, "get_image_features"):
            raise ValueError(f"features[{fs.name}].pooling embed needs a dual-tower model "
                             f"(CLIP / SigLIP); {fs.model} is a {type(model).__name__}")  # fmt: skip
        self.source = model_source(fs.model, model)
        self.preprocess = hf_image_processor(fs)
        self.preprocessing = self.preprocess.description
        config = getattr(model.config, "vision_config", model.config)
        self.patch = getattr(config, "patch_size", None)
        self.prefix = 0
        pixels = self.preprocess([Image.new("RGB", (64, 64), "white")])
        with torch.inference_mode():
            out = self.tower(pixel_values=pixels.to(dtype))
        tokens = _as_tokens(out.last_hidden_state)
        grid = _patch_grid(pixels, self.patch)
        # CLS + registers = tokens that are not patches, counted on a real forward.
        self.prefix = tokens.shape[1] - grid if grid and out.last_hidden_state.ndim == 3 else 0
        if self.pooling in ("cls", "cls+mean") and self.prefix == 0:
            raise ValueError(f"features[{fs.name}]: {fs.model} has no CLS token; use pooling "
                             "mean or pooler")  # fmt: skip
        self.extra = {"prefix_tokens": int(self.prefix)}
        # The dim from the same forward (a giant model's load pays one blank image, not two).
        self.dim = int(self.probe().shape[1] if self.pooling == "embed" else
                       self._pool(out).shape[1])  # fmt: skip

    def _pool(self, out) -> torch.Tensor:
        if self.pooling == "pooler":
            return out.pooler_output.flatten(1).float()
        return pool_tokens(_as_tokens(out.last_hidden_state), self.pooling, self.prefix).float()

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        pixel_values = pixel_values.to(self.dtype)
        if self.pooling == "embed":
            out = self.model.get_image_features(pixel_values=pixel_values)
            return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()
        return self._pool(self.tower(pixel_values=pixel_values))


class TimmImage(SetExtractor):
    """Any timm model: forward_features + a token pooling, or its own head's pre-logits."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes=None):
        super().__init__(fs, dtype=dtype)
        self.model, self.source = create_timm(fs, self.option)
        self.model.to(dtype)
        self.prefix = int(getattr(self.model, "num_prefix_tokens", 0))
        self.preprocess = hf_image_processor(fs, self.model)
        self.preprocessing = self.preprocess.description
        if self.pooling in ("cls", "cls+mean") and self.prefix == 0:
            raise ValueError(f"features[{fs.name}]: timm model {fs.model} has no CLS token; use "
                             "pooling mean or head")  # fmt: skip
        self.extra = {"prefix_tokens": self.prefix}
        self.dim = int(self.probe().shape[1])

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        feats = self.model.forward_features(pixel_values.to(self.dtype))
        if self.pooling == "head":  # the model's own global pooling (+ norm), before logits
            return self.model.forward_head(feats, pre_logits=True).flatten(1).float()
        prefix = self.prefix if feats.ndim == 3 else 0
        return pool_tokens(_as_tokens(feats), self.pooling, prefix).float()


class TextTower(nn.Module):
    """A transformers text encoder (BERT, MiniLM, or a CLIP / SigLIP text tower)."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, pooling: str, option: str,
                 model: nn.Module | None = None):  # fmt: skip
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = load_pretrained("tokenizer", option, AutoTokenizer.from_pretrained,
                                         fs.model, revision=fs.revision)  # fmt: skip
        # A dual-tower model already loaded for its image tower is used as it is.
        self.model = model if model is not None else load_pretrained(
            "text model", option, AutoModel.from_pretrained, fs.model, revision=fs.revision,
            dtype=dtype).eval()  # fmt: skip
        self.pooling = pooling
        if pooling == "embed" and not hasattr(self.model, "get_text_features"):
            raise ValueError(f"{option}: pooling embed needs a dual-tower model (CLIP / SigLIP); "
                             f"{fs.model} is a {type(self.model).__name__}")  # fmt: skip
        config = getattr(self.model.config, "text_config", self.model.config)
        limit = getattr(config, "max_position_embeddings", None) or 512
        self.max_length = fs.max_length or min(int(self.tokenizer.model_max_length), int(limit))
        # SigLIP was trained on text padded to its full length; its embeddings assume it.
        self.padding = "max_length" if config.model_type.startswith("siglip") else True
        self.source = model_source(fs.model, self.model)

    def encode(self, texts: list[str]) -> torch.Tensor:
        from data_prep.text_encoder import masked_mean

        device = next(self.model.parameters()).device
        tokens = self.tokenizer(texts, padding=self.padding, truncation=True,
                                max_length=self.max_length, return_attention_mask=True,
                                return_tensors="pt")  # fmt: skip
        mask = tokens["attention_mask"].to(device)
        # Only what the tokenizer says the model takes: SigLIP's takes no attention mask
        # (it was trained on padded text, unmasked), BERT / MiniLM / CLIP take one.
        names = [
            k for k in ("input_ids", "attention_mask") if k in self.tokenizer.model_input_names
        ]
        batch = {k: tokens[k].to(device) for k in names}
        if self.pooling == "embed":
            out = self.model.get_text_features(**batch)
            return (out if isinstance(out, torch.Tensor) else out.pooler_output).float()
        tower = getattr(self.model, "text_model", self.model)
        hidden = tower(**batch).last_hidden_state.float()
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)  # the mean over real tokens, never padding


class HFText(SetExtractor):
    """The stored caption, embedded by another text encoder (a ``text`` set)."""

    def __init__(self, fs: FeatureSetConfig, *, dtype: torch.dtype, classes=None):
        super().__init__(fs, dtype=dtype)
        self.text = TextTower(fs, dtype=dtype, pooling=self.pooling, option=self.option)
        self.source = self.text.source
        self.preprocessing = {"max_length": self.text.max_length, "padding": str(self.text.padding)}
        self.dim = int(self.text.encode(["a sketch"]).shape[1])

    def forward(self, captions: list[str]) -> torch.Tensor:
        return self.text.encode(captions)
