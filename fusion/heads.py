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
    kind: str,
    *,
    image_dim: int,
    text_dim: int,
    num_classes: int,
    members: int = 1,
    **hparams: Any,
) -> FusionHead:
    """Build the head registered as ``kind`` (``members`` > 1: a :class:`HeadSweep` of that
    many copies).

    ``hparams`` may hold options of other heads too (the LightningModule keeps one flat set
    of hyper-parameters); only the ones ``kind`` accepts are passed on.
    """
    if kind not in HEADS:
        raise ValueError(f"unknown head {kind!r}; registered heads: {sorted(HEADS)}")
    cls = HEADS[kind]
    accepted = inspect.signature(cls.__init__).parameters
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    dims = {"image_dim": image_dim, "text_dim": text_dim, "num_classes": num_classes}
    if members > 1:
        return HeadSweep([cls(**dims, **kwargs) for _ in range(members)])
    return cls(**dims, **kwargs)


def mlp(
    in_dim: int,
    hidden_dims: Sequence[int],
    out_dim: int,
    dropout: float,
    linear_skip: bool = False,
) -> nn.Module:
    """Linear -> ReLU -> Dropout per hidden size, then a linear classifier.

    ``linear_skip`` (with hidden layers) gives a :class:`SkipMLP` instead: a linear layer
    from the input straight to the output plus the MLP, whose last layer starts at zero.
    """
    layers: list[nn.Module] = []
    width_in = in_dim
    for width in hidden_dims:
        layers += [nn.Linear(width_in, width), nn.ReLU(), nn.Dropout(dropout)]
        width_in = width
    layers.append(nn.Linear(width_in, out_dim))
    body = nn.Sequential(*layers)
    if linear_skip and hidden_dims:
        return SkipMLP(nn.Linear(in_dim, out_dim), body)
    return body


class SkipMLP(nn.Module):
    """``linear(x) + mlp(x)``, the MLP's last layer initialised to zero.

    The head starts as the linear probe's model and the MLP only adds what a linear map
    cannot do. Why: on frozen features with few rows per class (500 classes x 20 rows) a
    plain MLP overfits to 50% where a linear layer reaches 85% (bench/README.md), while
    on stores with non-linear class structure the MLP gains 5-10 points over the linear
    layer; the sum keeps both.
    """

    def __init__(self, linear: nn.Linear, body: nn.Sequential) -> None:
        super().__init__()
        self.linear = linear
        self.body = body
        nn.init.zeros_(body[-1].weight)
        nn.init.zeros_(body[-1].bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x) + self.body(x)


NORMS = ("standardize", "layernorm", "none")


class Standardize(nn.Module):
    """``(x - mean) / std`` with the train split's per-feature statistics.

    What the linear probe's ``StandardScaler`` does: frozen DINOv2 and BERT features have
    per-dimension scales that differ by orders of magnitude, and a per-sample LayerNorm
    keeps those differences. The statistics are buffers, so checkpoints carry them and
    ``predict.py`` needs nothing else; :meth:`FusionHead.fit_input_stats` sets them once
    from the train split before the first step.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        x = x.double()
        std = x.std(dim=0, unbiased=False)
        # A constant feature (std 0) is left unscaled, as StandardScaler does.
        self.mean.copy_(x.mean(dim=0))
        self.std.copy_(torch.where(std > 1e-12, std, torch.ones_like(std)))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def norm_layer(dim: int, kind: str | bool) -> nn.Module:
    """The input normalisation of one modality: ``standardize`` (train statistics, the
    default), ``layernorm`` or ``none`` (``True``/``False`` are the old spellings)."""
    kind = {True: "layernorm", False: "none"}.get(kind, kind)  # type: ignore[arg-type]
    if kind == "standardize":
        return Standardize(dim)
    if kind == "layernorm":
        # One LayerNorm per modality: a shared norm over the concatenation would let the
        # larger modality dominate.
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"input_norm must be one of {NORMS}, got {kind!r}")


class FusionHead(nn.Module):
    """Base class: ``forward(image_emb, text_emb) -> logits [N, num_classes]``.

    Every head normalises each modality with ``image_norm`` / ``text_norm`` first.
    Two-modality heads also take ``modality_dropout``: during training each row loses its
    whole text input with that probability, or else its whole image input with the same
    probability (a dropped input is zero after normalisation, i.e. the train mean), so the
    head learns to classify from either modality alone and never leans on one that is
    absent or says nothing.
    """

    kind: str = ""
    image_norm: nn.Module
    text_norm: nn.Module
    modality_dropout: float = 0.0

    def _init_norms(self, image_dim: int, text_dim: int, input_norm: str | bool) -> None:
        self.image_norm = norm_layer(image_dim, input_norm)
        self.text_norm = norm_layer(text_dim, input_norm)

    @torch.no_grad()
    def fit_input_stats(self, image_emb: Tensor, text_emb: Tensor) -> None:
        """Set the ``standardize`` statistics from the train split (no-op otherwise)."""
        for norm, x in ((self.image_norm, image_emb), (self.text_norm, text_emb)):
            if isinstance(norm, Standardize):
                norm.fit(x)

    def normalised(self, image_emb: Tensor, text_emb: Tensor) -> tuple[Tensor, Tensor]:
        """Both inputs normalised, with modality dropout applied in training."""
        image, text = self.image_norm(image_emb), self.text_norm(text_emb)
        p = self.modality_dropout
        if self.training and p > 0:
            draw = torch.rand(len(image), 1, device=image.device)
            text = text * (draw >= p)
            image = image * ((draw < p) | (draw >= 2 * p))
        return image, text

    def aux_loss(self) -> Tensor | None:
        """A regulariser added to the training loss (``None`` when the head has none)."""
        return None

    def branch_logits(self) -> tuple[Tensor, ...]:
        """Per-modality logits of the last forward, for heads trained with a loss on each
        branch too (``branch_loss`` of the module); empty for the others."""
        return ()

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
        input_norm: str | bool = "standardize",
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        self._init_norms(image_dim, text_dim, input_norm)
        dim = image_dim if self.modality == "image" else text_dim
        self.mlp = mlp(dim, hidden_dims, num_classes, dropout, linear_skip)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        if self.modality == "image":
            return self.mlp(self.image_norm(image_emb))
        return self.mlp(self.text_norm(text_emb))


@register("visual_only")
class VisualOnlyHead(_SingleModalityHead):
    """MLP on the image embedding alone (the report's DINOv2 baseline; ``hidden_dims: []``
    makes it the linear layer on frozen features)."""

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
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        self._init_norms(image_dim, text_dim, input_norm)
        self.modality_dropout = float(modality_dropout)
        self.mlp = mlp(image_dim + text_dim, hidden_dims, num_classes, dropout, linear_skip)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(torch.cat(self.normalised(image_emb, text_emb), dim=1))


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
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_norms(image_dim, text_dim, input_norm)
        self.modality_dropout = float(modality_dropout)
        self.image_proj = nn.Linear(image_dim, fusion_dim)
        self.text_proj = nn.Linear(text_dim, fusion_dim)
        self.mlp = nn.Sequential(nn.ReLU(), mlp(2 * fusion_dim, hidden_dims, num_classes, dropout))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        image, text = self.normalised(image_emb, text_emb)
        return self.mlp(torch.cat([self.image_proj(image), self.text_proj(text)], dim=1))


@register("dual_logit")
class DualLogitHead(FusionHead):
    """``z = alpha * f(image_emb) + beta * g(text_emb)`` with learnable alpha and beta.

    ``weighting="penalty"`` is the report's form: raw alpha, beta start at 0.5 and the loss
    gains ``penalty_lambda * (relu(-alpha) + relu(-beta) + |alpha + beta - 1|)``, which only
    pulls them toward the simplex, with a constant force of ``penalty_lambda`` however far the
    sum is. The sum also scales the logits (a temperature), so while a sharper softmax lowers
    the cross-entropy by more than ``penalty_lambda`` per unit of sum, the sum keeps growing:
    it settles well above 1 on data the head fits easily (2.57 on the demo at lambda 0.1).
    The image's share is ``alpha / (alpha + beta)``. ``weighting="softmax"`` keeps them on
    the simplex by construction: ``(alpha, beta) = softmax(w)``, with ``w`` starting at zero
    (0.5 each) and no penalty.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        weighting: str = "penalty",
        penalty_lambda: float = 0.1,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        if weighting not in ("penalty", "softmax"):
            raise ValueError(f"weighting must be 'penalty' or 'softmax', got {weighting!r}")
        self._init_norms(image_dim, text_dim, input_norm)
        self.modality_dropout = float(modality_dropout)
        self.weighting = weighting
        self.penalty_lambda = float(penalty_lambda)
        self.image_mlp = mlp(image_dim, hidden_dims, num_classes, dropout, linear_skip)
        self.text_mlp = mlp(text_dim, hidden_dims, num_classes, dropout, linear_skip)
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
        image, text = self.normalised(image_emb, text_emb)
        alpha, beta = self.fusion_weights()
        return alpha * self.image_mlp(image) + beta * self.text_mlp(text)


@register("gated")
class GatedHead(FusionHead):
    """``z = g * f(image) + (1 - g) * h(text)`` with a per-row gate ``g = sigmoid(q([image;
    text]))``.

    Where dual-logit learns one (alpha, beta) for the whole data set, the gate looks at each
    row: a caption that names the class opens it toward the text, a caption that says
    nothing ("a sketch") closes it toward the image. ``f`` and ``h`` are also trained on
    their own (the module's ``branch_loss``), so each branch is a full single-modality
    classifier whichever way the gate swings. ``fusion_weights()`` is the batch mean of
    ``(g, 1 - g)``, logged as alpha/beta.
    """

    def __init__(
        self,
        *,
        image_dim: int,
        text_dim: int,
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        gate_hidden: int = 64,
        linear_skip: bool = False,
    ) -> None:
        super().__init__()
        self._init_norms(image_dim, text_dim, input_norm)
        self.modality_dropout = float(modality_dropout)
        self.image_mlp = mlp(image_dim, hidden_dims, num_classes, dropout, linear_skip)
        self.text_mlp = mlp(text_dim, hidden_dims, num_classes, dropout, linear_skip)
        self.gate = mlp(image_dim + text_dim, [gate_hidden] if gate_hidden else [], 1, 0.0)
        self._last: tuple[Tensor, ...] = ()
        self._mean_gate = torch.tensor(0.5)

    def _gate(self, image: Tensor, text: Tensor) -> Tensor:
        """``g`` of normalised inputs, shape ``[N, 1]``."""
        return torch.sigmoid(self.gate(torch.cat([image, text], dim=1)))

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        image, text = self.normalised(image_emb, text_emb)
        f, h = self.image_mlp(image), self.text_mlp(text)
        g = self._gate(image, text)
        self._last = (f, h) if self.training else ()
        self._mean_gate = g.detach().mean()
        return g * f + (1 - g) * h

    def gate_values(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        """The per-row gate ``g`` (weight of the image branch), shape ``[N]``."""
        return self._gate(self.image_norm(image_emb), self.text_norm(text_emb))[:, 0]

    def branch_logits(self) -> tuple[Tensor, ...]:
        return self._last

    def fusion_weights(self) -> Tensor:
        return torch.stack([self._mean_gate, 1 - self._mean_gate])


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
        self._init_norms(image_dim, text_dim, "none")  # the reference normalises nothing
        self.image_proj = nn.Linear(image_dim, fusion_dim)
        self.text_proj = nn.Linear(text_dim, fusion_dim)
        self.mlp = mlp(2 * fusion_dim, hidden_dims, num_classes, dropout)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.mlp(torch.cat([self.image_proj(image_emb), self.text_proj(text_emb)], dim=1))


class HeadSweep(FusionHead):
    """Several copies of one head trained side by side; the one that is best on val answers.

    The module gives each member its own weight decay (``--model.weight_decay`` as a list)
    and trains all of them on the same batches in one pass; after each validation it
    points :attr:`selected` at the member with the best val accuracy, so checkpoints,
    ``predict.py`` and the val predictions use that member. This is the linear probe's
    sweep of C, chosen on val, inside one fit: no single weight decay suits every store
    (1e-3 is 4 points better than 1e-2 on 10 classes x 100 rows, 4 points worse on 500
    classes x 20 rows; bench/README.md). Costs ``members`` times a head's compute, which
    is small next to feature extraction.
    """

    def __init__(self, members: Sequence[FusionHead]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.kind = members[0].kind
        self.register_buffer("selected", torch.zeros((), dtype=torch.long))

    @property
    def chosen(self) -> FusionHead:
        """The member currently selected on val."""
        return self.members[int(self.selected)]

    def fit_input_stats(self, image_emb: Tensor, text_emb: Tensor) -> None:
        for member in self.members:
            member.fit_input_stats(image_emb, text_emb)

    def forward(self, image_emb: Tensor, text_emb: Tensor) -> Tensor:
        return self.chosen(image_emb, text_emb)

    def aux_loss(self) -> Tensor | None:
        return self.chosen.aux_loss()

    def branch_logits(self) -> tuple[Tensor, ...]:
        return self.chosen.branch_logits()

    def fusion_weights(self) -> Tensor | None:
        return self.chosen.fusion_weights()


def head_members(head: FusionHead) -> list[FusionHead]:
    """The heads that train: a sweep's members, or the head itself."""
    return list(head.members) if isinstance(head, HeadSweep) else [head]
