"""Fusion heads: plain ``nn.Module`` classifiers over cached feature sets.

$ python -c "from fusion.heads import HEADS; print(sorted(HEADS))"

A head reads K named feature sets of the store (``--data.features``, default
``[image, text]``) in a fixed order and takes ``forward(*inputs) -> logits``, one tensor
per set, so training, prediction and the contract tests treat every head alike.
``HEADS`` is the one registry; :func:`build_head` builds a head by name from plain
hyper-parameters (what a checkpoint stores), with its sets' dims and class count read from
the feature store.

A ``scores`` set (zero-shot or caption-to-class-name scores, one value per class) can enter
like any other set, as a feature, or as a **prior** (``prior_sets``): its standardised
scores are added to the logits with a learned weight and never pass through an MLP.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from fusion.errors import UsageError

HEADS: dict[str, type[FusionHead]] = {}
# Older names that still load (checkpoints and configs written before the K-set heads).
HEAD_ALIASES = {"weighted_logits": "dual_logit"}

# The two sets every store has; a head over exactly these logs its weights as alpha/beta.
IMAGE_TEXT = ("image", "text")


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
    set_dims: Mapping[str, int],
    num_classes: int,
    members: int = 1,
    **options: Any,
) -> FusionHead:
    """Build the head registered as ``kind`` over the sets ``set_dims`` (name -> width, in
    input order); ``members`` > 1 gives a :class:`HeadSweep` of that many copies.

    ``options`` are the head's own constructor options (None: the head's default); one it
    does not take (see :func:`heads_taking`) is a :class:`HeadOptionError`, never silently
    dropped.
    """
    options = {k: v for k, v in options.items() if v is not None}
    kind = HEAD_ALIASES.get(kind, kind)
    if kind not in HEADS:
        raise UsageError(f"unknown head {kind!r}; registered heads: {sorted(HEADS)}")
    if not set_dims:
        raise UsageError("a head needs at least one feature set (--data.features)")
    check_head_options(kind, options)
    cls = HEADS[kind]
    dims = {"set_dims": dict(set_dims), "num_classes": num_classes}
    if members > 1:
        return HeadSweep([cls(**dims, **options) for _ in range(members)])
    return cls(**dims, **options)


class HeadOptionError(UsageError):
    """An option given to a head that does not take it."""


# Options the training module applies for some heads only (not constructor arguments):
# option -> the heads it applies to, and its default.
MODULE_HEAD_OPTIONS = {"branch_loss": ("gated", "dual_logit")}
MODULE_HEAD_DEFAULTS = {"branch_loss": 0.5}


def head_default(kind: str, option: str) -> Any:
    """The value head ``kind`` uses for ``option`` when it is not given (None when the head
    does not take it)."""
    kind = HEAD_ALIASES.get(kind, kind)
    if kind not in heads_taking(option):
        return None
    if option in MODULE_HEAD_DEFAULTS:
        return MODULE_HEAD_DEFAULTS[option]
    default = inspect.signature(HEADS[kind].__init__).parameters[option].default
    return list(default) if isinstance(default, tuple) else default


def heads_taking(option: str) -> list[str]:
    """The registered heads that take ``option`` (constructor argument or
    :data:`MODULE_HEAD_OPTIONS`), sorted."""
    if option in MODULE_HEAD_OPTIONS:
        return sorted(MODULE_HEAD_OPTIONS[option])
    return sorted(
        name for name, cls in HEADS.items() if option in inspect.signature(cls.__init__).parameters
    )


def check_head_options(kind: str, options: Mapping[str, Any], *, prefix: str = "") -> None:
    """Refuse, with one line, an option (not None) that head ``kind`` does not take: it
    names the option (``prefix`` + name, e.g. ``--model.head_options.``), the head, and the
    heads that take it."""
    kind = HEAD_ALIASES.get(kind, kind)
    if kind not in HEADS:
        return  # build_head names the registered heads
    for name, value in options.items():
        if value is None or kind in heads_taking(name):
            continue
        takers = ", ".join(heads_taking(name)) or "none"
        raise HeadOptionError(
            f"{prefix}{name}: the head {kind} does not take this option (heads that do: "
            f"{takers}); leave it out (null over a config that sets it), or choose one of those heads"
        )


@dataclass
class HeadOptions:
    """The head's network (``--model.head_options.*``). An option that only some heads take
    defaults to None (the head's own default, given in brackets) and is refused, with one
    line, for any other head.

    Args:
        hidden_dims: every head: hidden sizes of each MLP; ``[]`` is one linear layer.
        dropout: every head: dropout after each hidden layer.
        input_norm: every head but projection_ref: per-set input normalisation,
            ``standardize`` (train mean/std, as the probe), ``layernorm`` or ``none``
            [standardize].
        prior_sets: every head but projection_ref: scores sets (dim = classes) added to
            the logits with a learned weight instead of entering as features [none].
        linear_skip: visual_only, text_only, concat, dual_logit, gated: with hidden layers,
            a linear map from the input to the logits beside the MLP, whose last layer
            starts at zero, so the head begins as the linear model [false].
        modality_dropout: concat, projection, dual_logit, gated: per-row chance of dropping
            each set's whole input in training, at most one set per row [0].
        fusion_dim: projection, projection_ref: width each set is projected to [512].
        weighting: dual_logit: ``penalty`` (one free weight per set, the report's penalty)
            or ``softmax`` (weights = softmax(v), no penalty) [penalty].
        penalty_lambda: dual_logit: slope of the penalty's L1 pull of the weights' sum
            toward 1 (and of each weight toward >= 0); a pull, not a constraint: read
            w_k / sum w as set k's share [0.1].
        mix_on: dual_logit: where the K weights come from: ``train`` (learned by the
            optimizer on the training loss) or ``val`` (fitted on the validation rows at the
            end of each validation, as ``train.py stack`` fits its weights; ``weighting``
            and ``penalty_lambda`` then play no part) [train].
        gate_hidden: gated: hidden width of the gate, 0 for a linear gate [64].
        set_penalty: concat: a penalty per set on the weights that read it, times each
            member's weight decay, which sends the weights of a set that does not help
            to exactly 0 (:class:`ConcatHead`); 0 is off [0].
        branch_loss: gated, dual_logit: weight of the cross-entropy of each single-set
            branch (dual_logit: with ``mix_on: val`` only) [0.5].
    """

    hidden_dims: list[int] = field(default_factory=lambda: [512])
    dropout: float = 0.3
    input_norm: Literal["standardize", "layernorm", "none"] | bool | None = None
    prior_sets: list[str] | None = None
    linear_skip: bool | None = None
    modality_dropout: float | None = None
    fusion_dim: int | None = None
    weighting: Literal["penalty", "softmax"] | None = None
    penalty_lambda: float | None = None
    mix_on: Literal["train", "val"] | None = None
    gate_hidden: int | None = None
    set_penalty: float | None = None
    branch_loss: float | None = None

    def given(self) -> dict[str, Any]:
        """The options set (not None), as plain values."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    def constructor(self) -> dict[str, Any]:
        """The options set that the head's constructor takes (not the module's own)."""
        return {k: v for k, v in self.given().items() if k not in MODULE_HEAD_OPTIONS}


def checkpoint_set_dims(hparams: Mapping[str, Any]) -> dict[str, int]:
    """The sets (name -> dim, in input order) a module's hyper-parameters read; checkpoints
    written before ``--data.features`` read image and text."""
    if hparams.get("set_dims"):
        return {str(k): int(v) for k, v in dict(hparams["set_dims"]).items()}
    return {"image": int(hparams["image_dim"]), "text": int(hparams["text_dim"])}


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
# Where the weighted-logits head's weights come from (WeightedLogitsHead's mix_on).
MIX_ON = ("train", "val")


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
    """The input normalisation of one set: ``standardize`` (train statistics, the default),
    ``layernorm`` or ``none`` (``True``/``False`` are the old spellings)."""
    kind = {True: "layernorm", False: "none"}.get(kind, kind)  # type: ignore[arg-type]
    if kind == "standardize":
        return Standardize(dim)
    if kind == "layernorm":
        # One LayerNorm per set: a shared norm over the concatenation would let the larger
        # set dominate.
        return nn.LayerNorm(dim)
    if kind == "none":
        return nn.Identity()
    raise UsageError(f"input_norm must be one of {NORMS}, got {kind!r}")


# Parameter names of heads written before K sets, and where they live now (image is set 0,
# text set 1 of an [image, text] head): old checkpoints load unchanged.
_OLD_PREFIXES = {
    "image_norm.": "norms.0.",
    "text_norm.": "norms.1.",
    "image_mlp.": "branches.0.",
    "text_mlp.": "branches.1.",
    "image_proj.": "projs.0.",
    "text_proj.": "projs.1.",
}


class FusionHead(nn.Module):
    """Base class: ``forward(*inputs) -> logits [N, num_classes]``, one input per set.

    Every head normalises each set with its own norm first (``norms[k]``). Multi-set heads
    also take ``modality_dropout``: during training each row loses at most one whole set,
    each with that probability (a dropped input is zero after normalisation, i.e. the train
    mean), so the head learns to classify without any one set and never leans on a set that
    is absent or says nothing. ``prior_sets`` (scores sets, dim = classes) skip the body and
    are added to its logits with learned weights (``prior_weights``).
    """

    kind: str = ""
    modality_dropout: float = 0.0
    sets: list[str]
    norms: nn.ModuleList

    def _init_sets(
        self,
        set_dims: Mapping[str, int],
        num_classes: int,
        input_norm: str | bool,
        prior_sets: Sequence[str] | None = (),
    ) -> list[int]:
        """Norms for every set, the prior weights; returns the body's set indices."""
        self.sets = list(set_dims)
        self.dims = [int(d) for d in set_dims.values()]
        self.norms = nn.ModuleList(norm_layer(d, input_norm) for d in self.dims)
        prior_sets = list(prior_sets or ())
        unknown = [s for s in prior_sets if s not in self.sets]
        if unknown:
            raise UsageError(
                f"--model.head_options.prior_sets {unknown} are not among the head's sets "
                f"{self.sets} (--data.features)"
            )
        wrong = [s for s in prior_sets if set_dims[s] != num_classes]
        if wrong:
            raise UsageError(
                f"--model.head_options.prior_sets {wrong}: a prior is one score per class, "
                f"but their dims are {[set_dims[s] for s in wrong]} for {num_classes} classes; "
                "give them as features instead"
            )
        self.prior_idx = [self.sets.index(s) for s in prior_sets]
        body = [i for i in range(len(self.sets)) if i not in self.prior_idx]
        if not body and not isinstance(self, WeightedLogitsHead):
            raise UsageError("every set is a prior: leave at least one set as a feature")
        return body

    def _init_priors(self) -> None:
        """A weight per prior set for the heads whose body is not a weighted sum; zero at
        first, so the head starts as if the priors were absent (none without priors: the
        parameters of a head without priors are the same as before priors existed)."""
        if self.prior_idx:
            self.prior_weights = nn.Parameter(torch.zeros(len(self.prior_idx)))

    def _add_priors(self, logits: Tensor, xs: Sequence[Tensor]) -> Tensor:
        if not self.prior_idx:
            return logits
        for w, i in zip(self.prior_weights, self.prior_idx, strict=True):
            logits = logits + w * xs[i]
        return logits

    def __init__(self) -> None:
        super().__init__()
        # torch's public hook, run before this module's own keys are read.
        self.register_load_state_dict_pre_hook(_rename_old_keys)

    def set_index(self, name: str) -> int:
        """Position of set ``name`` among the inputs; ValueError naming the head's sets."""
        if name not in self.sets:
            raise UsageError(
                f"head {self.kind!r} reads the set {name!r}, but its sets are {self.sets}; "
                f"add it to --data.features, or use the head concat for any one set"
            )
        return self.sets.index(name)

    @torch.no_grad()
    def fit_input_stats(self, *inputs: Tensor) -> None:
        """Set the ``standardize`` statistics from the train split (no-op otherwise)."""
        for norm, x in zip(self.norms, inputs, strict=True):
            if isinstance(norm, Standardize):
                norm.fit(x)

    def normalised(self, *inputs: Tensor) -> list[Tensor]:
        """Every input normalised, with set dropout applied in training."""
        xs = [norm(x) for norm, x in zip(self.norms, inputs, strict=True)]
        p = self.modality_dropout
        if self.training and p > 0 and len(xs) > 1:
            draw = torch.rand(len(xs[0]), 1, device=xs[0].device)
            live = self.live_sets()
            if live is None:
                live = torch.ones(len(xs), dtype=torch.bool, device=draw.device)
            # The j-th of the k live sets is dropped when draw falls in its own band of
            # width p (the last set's band first: for [image, text], text on [0, p), image
            # on [p, 2p)); a set that is not live is never dropped, nor is the only live
            # one. Tensor arithmetic, so no host sync per step; the bounds are rounded as
            # a Python float would be, so with every set live the bands are the same
            # float32 values as before.
            rank = live.cumsum(0) - 1
            k = live.sum()
            low = ((k - 1 - rank).double() * p).float()
            high = ((k - rank).double() * p).float()
            xs = [
                x * ((draw < low[i]) | (draw >= high[i]) | ~live[i] | (k <= 1))
                for i, x in enumerate(xs)
            ]
        return xs

    def live_sets(self) -> Tensor | None:
        """Which sets modality dropout may drop (a bool per input), None for every one."""
        return None

    def aux_loss(self) -> Tensor | None:
        """A regulariser added to the training loss (``None`` when the head has none)."""
        return None

    def branch_logits(self) -> tuple[Tensor, ...]:
        """Per-set logits of the last forward, for heads trained with a loss on each branch
        too (``branch_loss`` of the module); empty for the others."""
        return ()

    def fusion_weights(self) -> Tensor | None:
        """One weight per set for heads that weight their sets (``[alpha, beta]`` over
        image and text), else ``None``."""
        return None

    def weight_names(self) -> list[str]:
        """The set each entry of :meth:`fusion_weights` belongs to."""
        return list(self.sets)


def _check_modality_dropout(p: float, sets: int) -> float:
    """``p`` as a float in [0, 1), at most 1 / ``sets`` (each row loses at most one set)."""
    p = float(p)
    if not 0 <= p < 1:
        raise UsageError(f"modality_dropout must be in [0, 1), got {p}")
    if p * sets > 1 and sets > 1:
        raise UsageError(
            f"modality_dropout {p} over {sets} sets drops more than every row; give at most "
            f"{1 / sets:.3g}"
        )
    return p


def _rename_old_keys(module, state_dict, prefix, *_) -> None:
    """Load hook: parameter names of heads written before K sets (``_OLD_PREFIXES``)."""
    for key in [k for k in state_dict if k.startswith(prefix)]:
        rest = key[len(prefix) :]
        for old, new in _OLD_PREFIXES.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old) :]] = state_dict.pop(key)
                break


class _SingleSetHead(FusionHead):
    """MLP on one named set; the other inputs are accepted and ignored."""

    modality: str = "image"

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        linear_skip: bool = False,
        prior_sets: Sequence[str] | None = (),
    ) -> None:
        super().__init__()
        self._init_sets(set_dims, num_classes, input_norm, prior_sets)
        self._init_priors()
        self.which = self.set_index(self.modality)
        self.mlp = mlp(self.dims[self.which], hidden_dims, num_classes, dropout, linear_skip)

    def forward(self, *inputs: Tensor) -> Tensor:
        xs = self.normalised(*inputs)
        return self._add_priors(self.mlp(xs[self.which]), xs)


@register("visual_only")
class VisualOnlyHead(_SingleSetHead):
    """MLP on the ``image`` set alone (the report's DINOv2 baseline; ``hidden_dims: []``
    makes it the linear layer on frozen features). Any other single set: ``concat`` with
    ``--data.features [NAME]``."""

    modality = "image"


@register("text_only")
class TextOnlyHead(_SingleSetHead):
    """MLP on the ``text`` (caption embedding) set alone."""

    modality = "text"


@register("concat")
class ConcatHead(FusionHead):
    """MLP over the concatenation of every set (the report's "Concat."); over one set
    (``--data.features [siglip]``) it is that set's single-set head.

    ``set_penalty`` (> 0) lets it drop a set that does not help. Each set owns a group of
    the weights that read the input (its columns of the first layer and of the linear skip),
    of Frobenius norm ``n_k``; the penalty is ``lambda * sum_k sqrt(d_k) * sqrt(n_k)`` with
    ``lambda = set_penalty * weight_decay`` (each member of a weight-decay sweep has its own
    lambda, so the sweep chooses it on val with the decay). After each optimiser step,
    :meth:`shrink_sets` takes a gradient step of it on every group and sets a group whose
    norm that step would cross to exactly 0. Why: over the concatenation of one informative
    set and wide noise sets the head fits the training rows through the noise (one-signal
    store: 0.557 test against the informative set's probe 0.779, and L2 cannot help: the
    tuned concat probe is 0.574); a group penalty zeroes the noise sets' columns, and its
    square root (not the norm itself, the group lasso) pulls a large group far less than a
    small one, so the informative set is not shrunk with them (bench/README.md). Measured
    with SGD (configs/concat.yaml); under AdamW the step is still ``lr`` times the
    penalty's gradient, not Adam-scaled. Modality dropout then draws only among the sets
    still read (:meth:`live_sets`).
    """

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        linear_skip: bool = False,
        prior_sets: Sequence[str] | None = (),
        set_penalty: float = 0.0,
    ) -> None:
        super().__init__()
        self.body_idx = self._init_sets(set_dims, num_classes, input_norm, prior_sets)
        self._init_priors()
        self.modality_dropout = _check_modality_dropout(modality_dropout, len(self.sets))
        self.set_penalty = _check_set_penalty(set_penalty)
        width = sum(self.dims[i] for i in self.body_idx)
        self.mlp = mlp(width, hidden_dims, num_classes, dropout, linear_skip)

    def forward(self, *inputs: Tensor) -> Tensor:
        xs = self.normalised(*inputs)
        body = self.mlp(torch.cat([xs[i] for i in self.body_idx], dim=1))
        return self._add_priors(body, xs)

    def live_sets(self) -> Tensor | None:
        """With ``set_penalty``: the sets the head still reads, i.e. every set but the body
        sets whose weights the penalty has set to exactly 0. Dropping a set the head no
        longer reads drops nothing, and dropping the last live set only throws the row's
        signal away: on the one-signal bench store, where the penalty zeroes three noise
        sets, the backbone was dropped from 20% of the rows to the end (test top-1 over
        seeds 0-2: 0.7665 -> 0.7727; the backbone's probe 0.779, bench/README.md)."""
        if self.set_penalty <= 0:
            return None
        with torch.no_grad():
            read = self.set_norms() > 0
        # Built on the device (no index tensor copied from the host, which would wait for
        # the GPU at every step); a prior set never enters the body and stays droppable.
        body = {i: pos for pos, i in enumerate(self.body_idx)}
        always = torch.ones((), dtype=torch.bool, device=read.device)
        return torch.stack([read[body[i]] if i in body else always for i in range(len(self.sets))])

    def _input_layers(self) -> list[nn.Linear]:
        """The layers that read the concatenated input: the MLP's first, and the skip."""
        if isinstance(self.mlp, SkipMLP):
            return [self.mlp.body[0], self.mlp.linear]
        return [self.mlp[0]]

    def _set_columns(self) -> list[slice]:
        """The input columns of each body set, in ``body_idx`` order."""
        out, start = [], 0
        for i in self.body_idx:
            out.append(slice(start, start + self.dims[i]))
            start += self.dims[i]
        return out

    def set_norms(self) -> Tensor:
        """Frobenius norm of each body set's weights on the input (``body_idx`` order)."""
        layers = self._input_layers()
        return torch.stack(
            [
                torch.sqrt(sum(layer.weight[:, cols].square().sum() for layer in layers))
                for cols in self._set_columns()
            ]
        )

    def set_penalty_value(self, weight_decay: float) -> Tensor:
        """``lambda * sum_k sqrt(d_k) * sqrt(n_k)``, ``lambda = set_penalty * weight_decay``:
        what :meth:`shrink_sets` steps down (0 when the option is off)."""
        dims = torch.tensor([float(self.dims[i]) for i in self.body_idx])
        lam = self.set_penalty * float(weight_decay)
        return lam * (dims.sqrt() * self.set_norms().sqrt()).sum()

    @torch.no_grad()
    def shrink_sets(self, lr: float, weight_decay: float) -> None:
        """One gradient step of :meth:`set_penalty_value` of size ``lr`` on each set's
        group, ``W_k <- W_k * (1 - lr * lambda * sqrt(d_k) / (2 n_k^1.5))``, with the factor
        clipped at 0: a group that the step would carry past 0 is set to exactly 0. A
        proximal step rather than a term of the loss, so a set that does not help ends at
        0 instead of oscillating around it under momentum (plain subgradients reached 0.68
        on one-signal, bench/README.md). No-op when the option is off."""
        lam = self.set_penalty * float(weight_decay)
        if lam <= 0:
            return
        layers = self._input_layers()
        for i, cols, norm in zip(self.body_idx, self._set_columns(), self.set_norms(), strict=True):
            step = lr * lam * math.sqrt(self.dims[i]) * 0.5 * norm.clamp_min(1e-12) ** -1.5
            factor = (1 - step).clamp_min(0)
            for layer in layers:
                layer.weight[:, cols] *= factor


def _check_set_penalty(value: float) -> float:
    """``set_penalty`` as a finite float >= 0."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"set_penalty must be a number >= 0 (0: off), got {value!r}") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"set_penalty must be a finite number >= 0 (0: off), got {value!r}")
    return value


@register("projection")
class ProjectionHead(FusionHead):
    """Project each set to ``fusion_dim``, concatenate, MLP (the original "fusion")."""

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        fusion_dim: int = 512,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        prior_sets: Sequence[str] | None = (),
    ) -> None:
        super().__init__()
        self.body_idx = self._init_sets(set_dims, num_classes, input_norm, prior_sets)
        self._init_priors()
        self.modality_dropout = _check_modality_dropout(modality_dropout, len(self.sets))
        self.projs = nn.ModuleList(nn.Linear(self.dims[i], fusion_dim) for i in self.body_idx)
        width = len(self.body_idx) * fusion_dim
        self.mlp = nn.Sequential(nn.ReLU(), mlp(width, hidden_dims, num_classes, dropout))

    def forward(self, *inputs: Tensor) -> Tensor:
        xs = self.normalised(*inputs)
        projected = [proj(xs[i]) for proj, i in zip(self.projs, self.body_idx, strict=True)]
        return self._add_priors(self.mlp(torch.cat(projected, dim=1)), xs)


@register("dual_logit")
class WeightedLogitsHead(FusionHead):
    """``z = sum_k w_k * f_k(x_k)``: one branch per set, mixed by K weights (the report's
    alpha/beta dual-logit for K = 2 over image and text; ``weighted_logits`` is the same
    head).

    ``mix_on="train"`` (the default) learns the weights with the branches, on the training
    loss. ``weighting="penalty"`` is the report's form: raw weights start at 1/K and the loss
    gains ``penalty_lambda * (sum_k relu(-w_k) + |sum_k w_k - 1|)``, which only pulls them
    toward the simplex, with a constant force of ``penalty_lambda`` however far the sum is.
    The sum also scales the logits (a temperature), so while a sharper softmax lowers the
    cross-entropy by more than ``penalty_lambda`` per unit of sum, the sum keeps growing: it
    settles well above 1 on data the head fits easily (alpha + beta 2.57 on the demo at
    lambda 0.1). Set k's share is ``w_k / sum w``. ``weighting="softmax"`` keeps them on the
    simplex by construction: ``w = softmax(v)``, ``v`` starting at zero (1/K each), no
    penalty. A prior set (``prior_sets``) is a branch whose logits are its standardised
    scores, with no MLP.

    ``mix_on="val"``: the weights are not trained. Trained on the training loss they go to
    the sets that fit the train rows fastest, not to the ones that generalise (0.58/0.42 on
    two wide backbones, ~0 on two equally informative sets of the ``halves`` bench store:
    0.607 test top-1 where a stack of per-set fits with weights fitted on val reaches 0.804,
    bench/README.md). So each branch is also trained on its own cross-entropy (the module's
    ``branch_loss``), and the module fits the weights after each validation on the
    branches' val log-probabilities with the stacker of ``train.py stack``
    (:class:`fusion.stacker.Stacker`, ``weights``: non-negative, their sum a temperature);
    :meth:`set_mix_weights` stores them in a buffer (``mix_weights``, 1/K each until the
    first validation), so checkpoints carry them. ``log_softmax(f_k)`` differs from ``f_k``
    by a per-row constant, so weights fitted on the log-probabilities are weights on the
    logits: the head then predicts what the stacker would. The training loss mixes the
    branches by the shares ``w_k / sum w`` (:meth:`fusion_weights`), at temperature 1.
    """

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        weighting: str = "penalty",
        penalty_lambda: float = 0.1,
        mix_on: str = "train",
        linear_skip: bool = False,
        prior_sets: Sequence[str] | None = (),
    ) -> None:
        super().__init__()
        if weighting not in ("penalty", "softmax"):
            raise UsageError(f"weighting must be 'penalty' or 'softmax', got {weighting!r}")
        if mix_on not in MIX_ON:
            raise UsageError(
                f"mix_on must be 'train' (weights learned on the training loss) or 'val' "
                f"(weights fitted on the val split), got {mix_on!r}"
            )
        self._init_sets(set_dims, num_classes, input_norm, prior_sets)
        self.modality_dropout = _check_modality_dropout(modality_dropout, len(self.sets))
        self.weighting = weighting
        self.penalty_lambda = float(penalty_lambda)
        self.mix_on = mix_on
        self.branches = nn.ModuleList(
            nn.Identity()
            if i in self.prior_idx
            else mlp(d, hidden_dims, num_classes, dropout, linear_skip)
            for i, d in enumerate(self.dims)
        )
        k = len(self.sets)
        if mix_on == "val":
            # A buffer, not a parameter: the optimizer never moves it, checkpoints keep it.
            self.register_buffer("mix_weights", torch.full((k,), 1.0 / k))
            self._last: tuple[Tensor, ...] = ()
        else:
            init = torch.full((k,), 1.0 / k) if weighting == "penalty" else torch.zeros(k)
            # Raw weights for "penalty", logits for "softmax"; fusion_weights() maps either
            # to the weights that multiply the branches.
            self.weights = nn.Parameter(init)

    def fusion_weights(self) -> Tensor:
        if self.mix_on == "val":
            # Each set's share: the sum of the fitted weights is a temperature.
            return self.mix_weights / self.mix_weights.sum()
        return self.weights if self.weighting == "penalty" else self.weights.softmax(dim=0)

    def set_mix_weights(self, weights: Tensor) -> None:
        """``mix_on="val"``: the weights fitted on val (one per set, >= 0, not normalised)."""
        if self.mix_on != "val":
            raise ValueError("set_mix_weights: this head learns its weights (mix_on 'train')")
        self.mix_weights.copy_(torch.as_tensor(weights, dtype=self.mix_weights.dtype))

    def aux_loss(self) -> Tensor | None:
        if self.weighting == "softmax" or self.mix_on == "val":
            return None
        w = self.weights
        return self.penalty_lambda * (torch.relu(-w).sum() + (w.sum() - 1).abs())

    def set_logits(self, *inputs: Tensor) -> list[Tensor]:
        """Each set's branch logits (a prior's: its standardised scores), unweighted."""
        xs = self.normalised(*inputs)
        return [branch(x) for branch, x in zip(self.branches, xs, strict=True)]

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.mix(self.set_logits(*inputs))

    def mix(self, fs: Sequence[Tensor]) -> Tensor:
        """The head's logits from its sets' branch logits (:meth:`set_logits`)."""
        weights = self.fusion_weights()
        if self.mix_on == "val":
            body = [f for i, f in enumerate(fs) if i not in self.prior_idx]
            self._last = tuple(body) if self.training else ()
            # Training mixes by the shares, predicting by the fitted weights: their sum is a
            # temperature fitted on val (up to 9 on the one-signal bench store), which on the
            # training loss would scale the logits as weight decay never sees them and undo
            # the sweep's choice between decays (0.761 test top-1 there, 0.777 by the shares).
            if not self.training:
                weights = self.mix_weights
        logits = weights[0] * fs[0]
        for k in range(1, len(fs)):
            logits = logits + weights[k] * fs[k]
        return logits

    def branch_logits(self) -> tuple[Tensor, ...]:
        return self._last if self.mix_on == "val" else ()


@register("gated")
class GatedHead(FusionHead):
    """``z = sum_k g_k(x) * f_k(x_k)`` with a per-row gate over the sets.

    Where the weighted-logits head learns one weight per set for the whole data set, the
    gate looks at each row: a caption that names the class opens it toward the text, a
    caption that says nothing ("a sketch") closes it toward the image. Over two sets the
    gate is ``g = sigmoid(q([x_1; x_2]))`` and ``(g, 1 - g)`` (the report-era head); over
    K > 2 it is ``softmax(q([x_1; ...; x_K]))``. Each branch ``f_k`` is also trained on its
    own (the module's ``branch_loss``), so each is a full single-set classifier whichever
    way the gate swings. ``fusion_weights()`` is the batch mean of the gate.
    """

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
        input_norm: str | bool = "standardize",
        modality_dropout: float = 0.0,
        gate_hidden: int = 64,
        linear_skip: bool = False,
        prior_sets: Sequence[str] | None = (),
    ) -> None:
        super().__init__()
        self.body_idx = self._init_sets(set_dims, num_classes, input_norm, prior_sets)
        self._init_priors()
        self.modality_dropout = _check_modality_dropout(modality_dropout, len(self.sets))
        self.branches = nn.ModuleList(
            mlp(self.dims[i], hidden_dims, num_classes, dropout, linear_skip)
            for i in self.body_idx
        )
        k = len(self.body_idx)
        width = sum(self.dims[i] for i in self.body_idx)
        # Two branches: one sigmoid output (old checkpoints' shape); more: a softmax over K.
        self.gate = mlp(width, [gate_hidden] if gate_hidden else [], 1 if k <= 2 else k, 0.0)
        self._last: tuple[Tensor, ...] = ()
        self._mean_gate = torch.full((k,), 1.0 / k)

    def _gate(self, xs: Sequence[Tensor]) -> Tensor:
        """The gate of normalised inputs, shape ``[N, K]`` (rows sum to 1)."""
        q = self.gate(torch.cat([xs[i] for i in self.body_idx], dim=1))
        if len(self.body_idx) == 1:
            return torch.ones_like(q)
        if q.shape[1] == 1:
            g = torch.sigmoid(q)
            return torch.cat([g, 1 - g], dim=1)
        return q.softmax(dim=1)

    def forward(self, *inputs: Tensor) -> Tensor:
        xs = self.normalised(*inputs)
        fs = [branch(xs[i]) for branch, i in zip(self.branches, self.body_idx, strict=True)]
        g = self._gate(xs)
        self._last = tuple(fs) if self.training else ()
        self._mean_gate = g.detach().mean(dim=0)
        logits = g[:, :1] * fs[0]
        for k in range(1, len(fs)):
            logits = logits + g[:, k : k + 1] * fs[k]
        return self._add_priors(logits, xs)

    def gate_values(self, *inputs: Tensor) -> Tensor:
        """The per-row gate, shape ``[N, K]`` (column k: the weight of set k's branch)."""
        xs = [norm(x) for norm, x in zip(self.norms, inputs, strict=True)]
        return self._gate(xs)

    def branch_logits(self) -> tuple[Tensor, ...]:
        return self._last

    def fusion_weights(self) -> Tensor:
        return self._mean_gate

    def weight_names(self) -> list[str]:
        return [self.sets[i] for i in self.body_idx]


@register("projection_ref")
class ReferenceProjectionHead(FusionHead):
    """The reference code's ``FusionClassifier`` (its "fusion" model), for reproduction.

    Each set linearly projected to ``fusion_dim``, concatenated, then
    Linear -> ReLU -> Dropout -> Linear: unlike ``projection`` there is no ReLU between the
    projections and the MLP, and no input normalisation.
    """

    def __init__(
        self,
        *,
        set_dims: Mapping[str, int],
        num_classes: int,
        fusion_dim: int = 512,
        hidden_dims: Sequence[int] = (512,),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self._init_sets(set_dims, num_classes, "none")  # the reference normalises nothing
        self.projs = nn.ModuleList(nn.Linear(d, fusion_dim) for d in self.dims)
        self.mlp = mlp(len(self.dims) * fusion_dim, hidden_dims, num_classes, dropout)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.mlp(torch.cat([p(x) for p, x in zip(self.projs, inputs, strict=True)], 1))


class HeadSweep(FusionHead):
    """Several copies of one head trained side by side; the one that is best on val answers.

    The module gives each member its own weight decay (``--model.weight_decay_sweep``)
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

    @property
    def sets(self) -> list[str]:  # type: ignore[override]
        return self.members[0].sets

    def fit_input_stats(self, *inputs: Tensor) -> None:
        for member in self.members:
            member.fit_input_stats(*inputs)

    def forward(self, *inputs: Tensor) -> Tensor:
        return self.chosen(*inputs)

    def aux_loss(self) -> Tensor | None:
        return self.chosen.aux_loss()

    def branch_logits(self) -> tuple[Tensor, ...]:
        return self.chosen.branch_logits()

    def fusion_weights(self) -> Tensor | None:
        return self.chosen.fusion_weights()

    def weight_names(self) -> list[str]:
        return self.chosen.weight_names()


def head_members(head: FusionHead) -> list[FusionHead]:
    """The heads that train: a sweep's members, or the head itself."""
    return list(head.members) if isinstance(head, HeadSweep) else [head]
