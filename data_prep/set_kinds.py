"""The registry of feature-set extractors: what each kind reads, produces and accepts.

$ python -c "from data_prep.set_kinds import KINDS; print(sorted(KINDS))"

Importing this module is cheap (no torch): the config is checked against it at parse time,
and the implementation class (``target``) is imported only when the set is extracted.
Adding a kind = one entry here and one class in data_prep/extractors.py or
data_prep/class_scores.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

# Image poolings over an encoder's tokens (data_prep.encoders.pool_tokens), and the model's
# own pooled vectors: ``pooler`` (the model's pooler output: DINOv2's normed CLS, CLIP's
# post-layernorm CLS, SigLIP's attention-pooling head), ``embed`` (a dual-tower model's
# projected image embedding, get_image_features), ``head`` (timm: forward_head with
# pre_logits=True, the model's own global pooling).
TOKEN_POOLINGS = ("cls", "mean", "cls+mean", "mean_all_tokens")


@dataclass(frozen=True)
class Kind:
    """One extractor kind: its set kind (image/text/scores), its input, its options."""

    set_kind: str  # image | text | scores: what the stored vector is
    reads: str  # image | caption: what each row gives the extractor
    poolings: tuple[str, ...]  # allowed values of `pooling` ("" when the kind has none)
    libraries: tuple[str, ...]
    target: str  # module:Class implementing it
    doc: str

    def load(self):
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


KINDS: dict[str, Kind] = {
    "hf_image": Kind(
        "image", "image", (*TOKEN_POOLINGS, "pooler", "embed"), ("transformers",),
        "data_prep.extractors:HFImageTower",
        "a transformers AutoModel image tower: DINOv2 (with or without registers), the "
        "vision tower of a CLIP / SigLIP checkpoint, any ViT",
    ),
    "timm_image": Kind(
        "image", "image", (*TOKEN_POOLINGS, "head"), ("timm",),
        "data_prep.extractors:TimmImage",
        "any timm model: forward_features + a token pooling, or the model's own pooling "
        "and pre-logits (head)",
    ),
    "hf_text": Kind(
        "text", "caption", ("mean", "cls", "embed"), ("transformers",),
        "data_prep.extractors:HFText",
        "the stored caption embedded by a transformers text encoder",
    ),
    "zero_shot": Kind(
        "scores", "image", ("",), ("transformers",),
        "data_prep.class_scores:ZeroShotScores",
        "a CLIPModel / SiglipModel's image-to-class-prompt logits, one per class (prompt "
        "templates averaged)",
    ),
    "caption_scores": Kind(
        "scores", "caption", ("mean", "cls", "embed"), ("transformers",),
        "data_prep.class_scores:CaptionScores",
        "cosine similarity of the stored caption to every class prompt, same text encoder",
    ),
    "imagenet_logits": Kind(
        "scores", "image", ("",), ("timm", "transformers"),
        "data_prep.class_scores:ImageNetLogits",
        "an ImageNet classifier's logits for the store's synset classes, in store order",
    ),
}  # fmt: skip

# Test-time transforms of the pixel tensor [B, 3, H, W]; features are averaged over the
# image and each listed transform.
TTA = ("hflip", "vflip")
# Prompt templates for class-name scores (CLIP's "a photo of a {}" style, for sketches).
DEFAULT_TEMPLATES = (
    "a sketch of a {}.",
    "a drawing of a {}.",
    "a black and white sketch of a {}.",
    "a pencil sketch of the {}.",
    "a doodle of a {}.",
)


def kind_of(name: str) -> Kind:
    """The registered kind ``name``; ValueError listing the kinds otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown feature kind {name!r}; use one of {sorted(KINDS)}")
    return KINDS[name]
