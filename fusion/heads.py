"""Fusion heads: plain ``nn.Module`` classifiers over cached image and text embeddings.

$ python -c "from fusion.heads import HEADS; print(sorted(HEADS))"

Every head takes ``forward(image_emb, text_emb) -> logits`` (it may ignore one modality),
so training, prediction and the contract tests treat them alike. ``HEADS`` is the one
registry; :func:`build_head` builds a head by name from plain hyper-parameters (what a
checkpoint stores), with its dims and class count read from the feature store.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

HEADS: dict[str, type[FusionHead]] = {}


def register(name: str):
    """Class decorator: add a head to :data:`HEADS` under ``name``."""

    def wrap(cls: type[FusionHead]) -> type[FusionHead]:
        if name in HEADS:
            raise ValueError(f"head {name!r} is registered twice ({HEADS[name]} and {cls})")
        cls.kind = name
        HEADS[name] = cls
        return cls

    return wrap


def build_head(
    kind: str, *, image_dim: int, text_dim: int, num_classes: int, **hparams: Any
) -> FusionHead:
    """Build the head registered as ``kind``.

    ``hparams`` may hold options of other heads too (the LightningModule keeps one flat set
    of hyper-parameters); only the ones ``kind`` accepts are passed on.
    """
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; registered heads: {sorted(HEADS)}")
    cls = HEADS[kind]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    return cls(image_dim=image_dim, text_dim=text_dim, num_classes=num_classes, **kwargs)


def mlp(in_dim: int, hidden_dims: Sequence[int], out_dim: int, dropout: float) -> nn.Sequential:
    """Linear -> ReLU -> Dropout per hidden size, then a linear classifier."""
    layers: list[nn.Module] = []
    for width in hidden_dims:
        layers += [nn.Linear(in_dim, width), nn.ReLU(), nn.Dropout(dropout)]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


def norm_layer(dim: int, enabled: bool) -> nn.Module:
    # One LayerNorm per modality: DINOv2 and BERT features live on different scales, and a
    # shared norm over the concatenation would let the larger one dominate.
    return nn.LayerNorm(dim) if enabled else nn.Identity()


class FusionHead(nn.Module):
    """Base class: ``forward(image_emb, text_emb) -> logits [N, num_classes]``."""

    kind: str = ""

    def aux_loss(self) -> Tensor | None:
        """A regulariser added to the training loss (``None`` when the head has none)."""
        return None

    def fusion_weights(self) -> Tensor | None:
        """``tensor([alpha, beta])`` for heads that weight the modalities, else ``None``."""
        return None


class _SingleModalityHead(FusionHead):
    """MLP on one modality; the other input is accepted and ignored."""

    modality: str = "image"

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        dim = image_dim if self.modality == "image" else text_dim
        self.norm = norm_layer(dim, input_norm)
        self.mlp = mlp(dim, hidden_dims, num_classes, dropout)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(self.norm(image_emb if self.modality == "image" else text_emb))


@register("visual_only")
class VisualOnlyHead(_SingleModalityHead):
    """MLP on the image embedding alone (the report's DINOv2 baseline)."""

    modality = "image"


@register("text_only")
class TextOnlyHead(_SingleModalityHead):
    """MLP on the caption embedding alone."""

    modality = "text"


@register("concat")
class ConcatHead(FusionHead):
    """MLP over ``[image_emb; text_emb]`` (the report's "Concat.")."""

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.image_norm = norm_layer(image_dim, input_norm)
        self.text_norm = norm_layer(text_dim, input_norm)
        self.mlp = mlp(image_dim + text_dim, hidden_dims, num_classes, dropout)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(torch.cat([self.image_norm(image_emb), self.text_norm(text_emb)], dim=1))


@register("projection")
class ProjectionHead(FusionHead):
    """Project each modality to ``fusion_dim``, concatenate, MLP (the original "fusion")."""

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        fusion_dim: int = 512,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        self.image_proj = nn.Sequential(
            norm_layer(image_dim, input_norm), nn.Linear(image_dim, fusion_dim)
        )
        self.text_proj = nn.Sequential(
            norm_layer(text_dim, input_norm), nn.Linear(text_dim, fusion_dim)
        )
        self.mlp = nn.Sequential(nn.ReLU(), mlp(2 * fusion_dim, hidden_dims, num_classes, dropout))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(torch.cat([self.image_proj(image_emb), self.text_proj(text_emb)], dim=1))


@register("dual_logit")
class DualLogitHead(FusionHead):
    """``z = alpha * f(image_emb) + beta * g(text_emb)`` with learnable alpha and beta.

    ``weighting="penalty"`` is the report's form: raw alpha, beta start at 0.5 and the loss
    gains ``penalty_lambda * (relu(-alpha) + relu(-beta) + |alpha + beta - 1|)``, which only
    pulls them toward the simplex. ``weighting="softmax"`` keeps them on it by construction:
    ``(alpha, beta) = softmax(w)``, with ``w`` starting at zero (0.5 each) and no penalty.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: bool = True,
        weighting: str = "penalty",
        penalty_lambda: float = 0.1,
    ) -> None:
        super().__init__()
        if weighting not in ("penalty", "softmax"):
            raise ValueError(f"weighting must be 'penalty' or 'softmax', got {weighting!r}")
        self.weighting = weighting
        self.penalty_lambda = float(penalty_lambda)
        self.image_mlp = nn.Sequential(
            norm_layer(image_dim, input_norm), mlp(image_dim, hidden_dims, num_classes, dropout)
        )
        self.text_mlp = nn.Sequential(
            norm_layer(text_dim, input_norm), mlp(text_dim, hidden_dims, num_classes, dropout)
        )
        init = torch.full((2,), 0.5) if weighting == "penalty" else torch.zeros(2)
        # Raw weights for "penalty", logits for "softmax"; fusion_weights() maps either to
        # (alpha, beta).
        self.weights = nn.Parameter(init)

    def fusion_weights(self) -> Tensor:
        return self.weights if self.weighting == "penalty" else self.weights.softmax(dim=0)

    def aux_loss(self) -> Tensor | None:
        if self.weighting == "softmax":
            return None
        alpha, beta = self.weights
        negative = torch.relu(-alpha) + torch.relu(-beta)
        return self.penalty_lambda * (negative + (alpha + beta - 1).abs())

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        alpha, beta = self.fusion_weights()
        return alpha * self.image_mlp(image_emb) + beta * self.text_mlp(text_emb)


@register("projection_ref")
class ReferenceProjectionHead(FusionHead):
    """The reference code's ``FusionClassifier`` (its "fusion" model), for reproduction.

    Each modality linearly projected to ``fusion_dim``, concatenated, then
    Linear -> ReLU -> Dropout -> Linear: unlike ``projection`` there is no ReLU between the
    projections and the MLP, and no input normalisation.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        fusion_dim: int = 512,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.image_proj = nn.Linear(image_dim, fusion_dim)
        self.text_proj = nn.Linear(text_dim, fusion_dim)
        self.mlp = mlp(2 * fusion_dim, hidden_dims, num_classes, dropout)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(torch.cat([self.image_proj(image_emb), self.text_proj(text_emb)], dim=1))
