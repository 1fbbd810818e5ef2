"""The thin LightningModule around a fusion head: loss, metrics, optimiser, schedule.

$ python train.py fit --config configs/sets_weighted.yaml --model.optimizer.lr 0.03

The network itself is a plain ``nn.Module`` from :mod:`fusion.heads`; this module keeps
only training concerns. Its options come in groups (the head's network, the optimiser, the
schedule; ``python train.py fit --help``); its hyper-parameters are saved as plain values
(strings, numbers, lists, dicts), so checkpoints load with ``torch.load(weights_only=True)`` and ``predict.py`` rebuilds the
head from them alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from feature_store.compat import attached_trainer
from fusion.errors import UsageError
from fusion.heads import (
    HEAD_ALIASES,
    MODULE_HEAD_DEFAULTS,
    HeadOptions,
    HeadSweep,
    build_head,
    check_head_options,
    checkpoint_set_dims,
    head_members,
    heads_taking,
)
from fusion.stacker import Stacker, StackError, cross_fit


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """torchmetrics' top-1 and top-5 accuracy (top-k capped at the class count)."""
    return MetricCollection(
        {
            # validate_args=False: the range checks cost more than the update on a CPU.
            "acc_top1": MulticlassAccuracy(
                num_classes, top_k=1, average="micro", validate_args=False
            ),
            "acc_top5": MulticlassAccuracy(
                num_classes, top_k=min(5, num_classes), average="micro", validate_args=False
            ),
        },
        prefix=prefix,
    )


class TrainingStats(Metric):
    """Epoch means of the training loss and penalty, and top-1 / top-k accuracy.

    One metric and in-place state updates per step, no host copy: the accuracies equal
    ``MulticlassAccuracy(top_k=1)`` and ``(top_k=k)`` with micro averaging (tests check
    it), but ``MulticlassAccuracy(top_k=5)`` builds one-hot [N, classes] tensors (~2 ms
    per update at 500 classes on a CPU) and each extra metric adds its own bookkeeping, a
    visible share of a small head's step. Validation keeps ``MulticlassAccuracy``.
    """

    full_state_update = False

    def __init__(self, k: int = 5) -> None:
        super().__init__()
        self.k = k
        for name in ("top1", "topk", "total", "loss_sum", "penalty_sum"):
            self.add_state(name, default=torch.tensor(0.0), dist_reduce_fx="sum")

    def update(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        loss: torch.Tensor,
        penalty: torch.Tensor | None = None,
    ) -> None:
        # A row is a top-k hit when fewer than k classes score above its target: one
        # comparison pass over [N, classes], half the cost of topk(5) on a CPU (ties,
        # measure zero for float logits, count as hits).
        above = logits.gt(logits.gather(1, target[:, None])).sum(dim=1)
        n = target.numel()
        # add_() instead of +=: no nn.Module.__setattr__ per state per step.
        self.top1.add_(above.eq(0).sum())
        self.topk.add_(above.lt(self.k).sum())
        self.total.add_(n)
        self.loss_sum.add_(loss * n)
        if penalty is not None:
            self.penalty_sum.add_(penalty * n)

    def compute(self) -> dict[str, torch.Tensor]:
        total = self.total.clamp(min=1)
        return {
            "acc_top1": self.top1 / total,
            "acc_top5": self.topk / total,
            "loss": self.loss_sum / total,
            "penalty": self.penalty_sum / total,
        }


def lr_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: str,
    step_every: int,
    gamma: float,
    min_lr_ratio: float,
) -> float:
    """Multiplier of the base learning rate at optimiser step ``step``."""
    if step < warmup_steps:
        # Linear warm-up from lr/warmup to lr: AdamW's first moments are noisy.
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        return gamma ** ((step - warmup_steps) // max(1, step_every))
    return 1.0


def answering_history(
    alpha_beta_history: list[list[float]], member_weights_history: list[list[float]], chosen: int
) -> list[list[float]]:
    """(step, w_1, ..., w_K) of member ``chosen`` through the whole run ((step, alpha, beta)
    over image and text). Without a sweep that is the logged history; with one, the logged
    history follows the member answering at each step, which can change at a validation, so
    it is read from every member's."""
    if not member_weights_history:
        return alpha_beta_history
    k = len(alpha_beta_history[0]) - 1 if alpha_beta_history else 2
    start = 1 + k * chosen
    return [[row[0], *row[start : start + k]] for row in member_weights_history]


def mixes_on_val(head: nn.Module) -> bool:
    """Whether ``head`` (one member) fits its weights on val (dual_logit, mix_on val)."""
    return getattr(head, "mix_on", None) == "val"


def fit_mix_on_val(head: nn.Module, log_probs, labels) -> dict[str, torch.Tensor]:
    """Fit a ``mix_on: val`` head's weights on one validation's branch log-probabilities
    ``[K, N, C]`` and ``labels`` and store them in the head; return its val metrics,
    cross-fitted.

    The weights are what ``train.py stack`` fits (``Stacker(method="weights")`` on every
    val row). The metrics that checkpointing, early stopping and a sweep's choice read
    are those of :func:`fusion.stacker.cross_fit`: no val row is scored by weights
    fitted on itself, else val would favour whatever the weights overfit to val.
    """
    try:
        crossed = cross_fit(log_probs, labels, method="weights")
    except StackError as err:  # cross_fit's own check of the rows, told for this option
        raise StackError(
            f"head_options.mix_on val: {len(labels)} val rows with at most one per class are "
            "too few to fit the weights on and score them on rows they were not fitted on; "
            "validate on more rows, or use mix_on train"
        ) from err
    stacker = Stacker(len(log_probs), "weights").fit(log_probs, labels)
    head.set_mix_weights(torch.tensor(stacker.mean_weights(log_probs)))
    probs = torch.from_numpy(crossed).double()
    y = torch.as_tensor(labels, dtype=torch.long)
    # Scored by the same metrics as every other member's val.
    accuracy = accuracy_metrics(probs.shape[1], "val/")
    accuracy.update(probs, y)
    device = head.mix_weights.device
    scores = {"val/loss": F.nll_loss(probs.clamp_min(1e-12).log(), y), **accuracy.compute()}
    return {name: value.float().to(device) for name, value in scores.items()}


def check_branch_loss(head: str, options: HeadOptions) -> None:
    """Refuse ``branch_loss`` for the weighted-logits head unless it mixes on val: only
    then are its branches trained on their own."""
    if HEAD_ALIASES.get(head, head) != "dual_logit":
        return
    if options.branch_loss is not None and options.mix_on != "val":
        raise UsageError(
            "head_options.branch_loss: the dual_logit head trains each branch on its own "
            "loss only with head_options.mix_on val; add that, or leave branch_loss out"
        )


def fusion_weight_keys(names: Sequence[str]) -> list[str]:
    """The logged names of a head's fusion weights: ``fusion/alpha``, ``fusion/beta`` over
    image and text (the report's names), ``fusion/weight/<set>`` otherwise."""
    if tuple(names) == ("image", "text"):
        return ["fusion/alpha", "fusion/beta"]
    return [f"fusion/weight/{n}" for n in names]


@dataclass(frozen=True)
class OptimizerOptions:
    """The optimiser (``--model.optimizer.*``).

    Args:
        name: ``adamw`` or ``sgd`` (with ``momentum``).
        lr: learning rate at batch size 256, scaled to the real batch by ``lr_scaling``.
        lr_scaling: how ``lr`` follows the batch size: ``sqrt`` (times sqrt(batch/256)),
            ``linear`` (times batch/256) or ``none`` (as given).
        weight_decay: on weight matrices only; biases, norms and the fusion weights
            (alpha/beta, a gate) never decay. Several values: --model.weight_decay_sweep.
        momentum: sgd only: momentum of the SGD optimizer.
        fusion_lr_scale: heads with fusion weights (dual_logit, gated): alpha/beta (or the
            gate) learn this many times faster than the rest and never decay, so the share
            alpha/(alpha+beta) settles in the first 3-20% of the steps (bench/README.md).
    """

    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = 1e-3
    lr_scaling: Literal["sqrt", "linear", "none"] = "sqrt"
    weight_decay: float = 0.01
    momentum: float = 0.9
    fusion_lr_scale: float = 30.0


@dataclass(frozen=True)
class ScheduleOptions:
    """The learning-rate schedule (``--model.schedule.*``).

    Args:
        name: after the warm-up: ``cosine``, ``step`` (times ``gamma`` every
            ``step_epochs``) or ``constant``.
        warmup_fraction: linear warm-up length as a fraction of all optimizer steps.
        warmup_epochs: warm-up length in epochs instead (wins over ``warmup_fraction``).
        step_epochs: step schedule only: epochs between two learning-rate drops.
        gamma: step schedule only: factor of each learning-rate drop.
        min_lr_ratio: cosine schedule only: final learning rate as a fraction of ``lr``.
    """

    name: Literal["cosine", "step", "constant"] = "cosine"
    warmup_fraction: float = 0.05
    warmup_epochs: float | None = None
    step_epochs: int = 10
    gamma: float = 0.1
    min_lr_ratio: float = 0.0


def _options(cls, value):
    """``value`` (an instance, a dict such as a checkpoint holds, or None) as ``cls``."""
    if value is None:
        return cls()
    return value if isinstance(value, cls) else cls(**dict(value))


class FusionModule(L.LightningModule):
    """Train one registered head with cross-entropy.

    Args:
        head: the head, a name in ``fusion.heads.HEADS``: visual_only, text_only, concat,
            projection, projection_ref, dual_logit (= weighted_logits) or gated.
        set_dims: the feature sets read, name -> width in input order, from the store's
            manifest and ``--data.features`` (linked by train.py).
        class_names: the class list, read from the store's manifest (linked by train.py).
        head_options: the head's network; an option the head does not take is refused
            (:class:`fusion.heads.HeadOptions`).
        optimizer: the optimiser, learning rate and weight decay.
        schedule: the learning-rate schedule.
        weight_decay_sweep: several weight decays (``[1e-4, 1e-3, 1e-2]``): one copy of the
            head per value, trained on the same batches, the copy with the best val
            accuracy kept (the probe's sweep of C inside one fit;
            :class:`fusion.heads.HeadSweep`); replaces ``optimizer.weight_decay``.
        label_smoothing: label smoothing of the training loss (validation loss is plain).
    """

    def __init__(
        self,
        head: str = "dual_logit",
        *,
        set_dims: dict[str, int],
        class_names: list[str],
        head_options: HeadOptions = HeadOptions(),  # noqa: B008 - frozen: never changed
        optimizer: OptimizerOptions = OptimizerOptions(),  # noqa: B008
        schedule: ScheduleOptions = ScheduleOptions(),  # noqa: B008
        weight_decay_sweep: list[float] | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        head_options = _options(HeadOptions, head_options)
        optimizer = _options(OptimizerOptions, optimizer)
        schedule = _options(ScheduleOptions, schedule)
        if weight_decay_sweep is not None and not list(weight_decay_sweep):
            raise UsageError(
                "weight_decay_sweep: an empty list; give several weight decays, or none "
                "(one head with optimizer.weight_decay)"
            )
        check_head_options(head, head_options.given(), prefix="head_options.")
        self.save_hyperparameters()
        # Plain values only (no tuples or config objects): checkpoints load with
        # torch.load(weights_only=True).
        hp = self.hparams
        hp.head_options = {
            **asdict(head_options),
            "hidden_dims": [int(h) for h in head_options.hidden_dims],
        }
        hp.optimizer, hp.schedule = asdict(optimizer), asdict(schedule)
        hp.weight_decay_sweep = (
            None if weight_decay_sweep is None else [float(w) for w in weight_decay_sweep]
        )
        hp.class_names = [str(c) for c in class_names]
        hp.set_dims = {str(k): int(v) for k, v in dict(set_dims).items()}
        self.head = build_head(
            head,
            set_dims=hp.set_dims,
            num_classes=len(hp.class_names),
            members=len(weight_decays(hp)),
            **head_options.constructor(),
        )
        # gated, dual_logit with mix_on val: the weight of each branch's own loss (other
        # heads have no branches trained on their own).
        check_branch_loss(head, head_options)
        self.branch_loss = head_options.branch_loss
        if self.branch_loss is None:
            self.branch_loss = MODULE_HEAD_DEFAULTS["branch_loss"]
        num_classes = len(self.hparams.class_names)
        self.train_stats = TrainingStats(k=5)
        # One set of val metrics per member of a weight-decay sweep (one otherwise).
        count = len(head_members(self.head))
        self.val_metrics = nn.ModuleList(
            accuracy_metrics(num_classes, "val/") for _ in range(count)
        )
        self.val_loss = nn.ModuleList(MeanMetric() for _ in range(count))
        # (step, alpha, beta) (over K sets: step and K weights) for the end-of-fit plot; saved in checkpoints so a resumed
        # run's plot covers the whole run.
        self.alpha_beta_history: list[list[float]] = []
        # A weight-decay sweep's every member, (step, alpha_0, beta_0, alpha_1, ...): the
        # member that answers can change at each validation, so the history above jumps
        # between members; this one follows each member through the run.
        self.member_weights_history: list[list[float]] = []
        # (step, epoch, answering member, every member's weights on the device) of the
        # steps not yet logged; _flush_fusion_weights empties it.
        self._pending_weights: list[tuple[int, int, int, torch.Tensor]] = []
        self._answering: int | None = None
        # mix_on val: per member, this validation's branch log-probabilities [K, n, C] and
        # labels, batch by batch; the weights are fitted on them at the epoch's end.
        self._val_branches: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def setup(self, stage: str) -> None:
        # Standardisation statistics from the train split, before the first step (a resumed
        # run then restores the same values from its checkpoint).
        trainer = attached_trainer(self)
        datamodule = getattr(trainer, "datamodule", None)
        if trainer is not None and trainer.world_size > 1:
            if any(mixes_on_val(member) for member in head_members(self.head)):
                # Each process would fit its own weights on its own share of the val rows.
                raise UsageError(
                    "head_options.mix_on val fits the weights on the val rows of one "
                    "process; train on one device (--trainer.devices 1)"
                )
        if stage == "fit" and hasattr(datamodule, "train_tensors"):
            self.head.fit_input_stats(*datamodule.train_tensors())

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.head(*inputs)

    def _chosen(self) -> int:
        """Index of the member that answers: the one chosen on val (0 without a sweep)."""
        return int(self.head.selected) if isinstance(self.head, HeadSweep) else 0

    def _member_loss(self, member: nn.Module, batch: dict):
        """(logits, loss, penalty) of one head on a training batch."""
        labels = batch["label"]
        logits = member(*batch["x"])
        loss = F.cross_entropy(logits, labels, label_smoothing=self.hparams.label_smoothing)
        for branch in member.branch_logits():
            loss = loss + self.branch_loss * F.cross_entropy(branch, labels)
        penalty = member.aux_loss()
        if penalty is not None:
            loss = loss + penalty
        return logits, loss, penalty

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        members = head_members(self.head)
        chosen = self._answering_member()
        # A sweep's members have disjoint parameters: the gradient of the summed loss is
        # each member's own gradient, as if each were trained alone on these batches.
        total = 0.0
        for i, member in enumerate(members):
            logits, loss, penalty = self._member_loss(member, batch)
            total = total + loss
            if i == chosen:
                # Accumulated on the device per step, logged once per epoch
                # (on_train_epoch_end): Lightning's log() costs more per call than a small
                # head's step on a CPU, and a host copy per step stalls a GPU.
                self.train_stats.update(
                    logits.detach(),
                    batch["label"],
                    loss.detach(),
                    None if penalty is None else penalty.detach(),
                )
        weights = [member.fusion_weights() for member in members]
        if weights[0] is not None:
            self._record_fusion_weights(weights, chosen)
        return total

    def _answering_member(self) -> int:
        """:meth:`_chosen`, read from the device once per validation instead of per step."""
        if self._answering is None:
            self._answering = self._chosen()
        return self._answering

    def _record_fusion_weights(self, weights: list[torch.Tensor], chosen: int) -> None:
        """Keep this step's weights (alpha, beta) of every member on the device, until the next
        logging step (``log_every_n_steps``) copies them all to the host at once."""
        pairs = torch.cat([w.detach() for w in weights])  # a copy: the optimizer moves w
        self._pending_weights.append((self.global_step, self.current_epoch, chosen, pairs))
        trainer = attached_trainer(self)
        every = trainer.log_every_n_steps if trainer is not None else 1
        if (self.global_step + 1) % max(1, every) == 0:
            self._flush_fusion_weights()

    def _flush_fusion_weights(self) -> None:
        """fusion/alpha and fusion/beta of every step since the last flush: into the
        histories and straight to the loggers, in one host copy.

        Every step is logged whatever ``log_every_n_steps`` (the report's plots are per
        step), in a batch at each logging step, epoch end and checkpoint; without
        ``self.log``, whose bookkeeping would dominate a small head's step.
        """
        if not self._pending_weights:
            return
        pending, self._pending_weights = self._pending_weights, []
        values = torch.stack([row[3] for row in pending]).float().cpu().tolist()
        # One weight per set of every member: (alpha, beta) over image and text.
        keys = fusion_weight_keys(self.head.weight_names())
        k = len(keys)
        sweep = len(values[0]) > k
        log = attached_trainer(self) is not None and self.trainer.is_global_zero
        for (step, epoch, chosen, _), weights in zip(pending, values, strict=True):
            mine = weights[k * chosen : k * chosen + k]
            if sweep:
                self.member_weights_history.append([step, *weights])
            self.alpha_beta_history.append([step, *mine])
            if log:
                row = {**dict(zip(keys, mine, strict=True)), "epoch": epoch}
                for logger in self.loggers:
                    logger.log_metrics(row, step=step)

    def on_train_start(self) -> None:
        self._answering = None  # a restored checkpoint may have chosen another member

    def on_train_epoch_end(self) -> None:
        self._flush_fusion_weights()
        stats = self.train_stats.compute()
        metrics = {f"train/{k}": stats[k] for k in ("loss", "acc_top1", "acc_top5")}
        if self.head.aux_loss() is not None:
            metrics["fusion/penalty"] = stats["penalty"]
        self.log_dict(metrics)
        self.train_stats.reset()

    def on_train_end(self) -> None:
        self._flush_fusion_weights()  # a fit stopped mid-epoch (max_steps)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._score(batch, keep_branches=True)

    def _score(self, batch: dict, keep_branches: bool) -> None:
        """Every member's val metrics on a batch; ``keep_branches``: also keep the branch
        log-probabilities of the members that fit their weights on val."""
        for i, (member, metrics, mean_loss) in enumerate(
            zip(head_members(self.head), self.val_metrics, self.val_loss, strict=True)
        ):
            if keep_branches and mixes_on_val(member):
                # The branches once: their log-probabilities are kept, and mixed for the logits.
                fs = member.set_logits(*batch["x"])
                logits = member.mix(fs)
                lp = torch.stack([f.log_softmax(dim=1) for f in fs])
                rows = self._val_branches.setdefault(i, [])
                rows.append((lp.detach().double().cpu(), batch["label"].detach().cpu()))
            else:
                logits = member(*batch["x"])
            loss = F.cross_entropy(logits, batch["label"], reduction="sum")
            mean_loss.update(loss / len(logits), weight=len(logits))
            metrics.update(logits, batch["label"])

    def on_validation_epoch_start(self) -> None:
        self._val_branches = {}

    def on_validation_epoch_end(self) -> None:
        per_member = [
            {"val/loss": mean_loss.compute(), **metrics.compute()}
            for metrics, mean_loss in zip(self.val_metrics, self.val_loss, strict=True)
        ]
        members = head_members(self.head)
        trainer = attached_trainer(self)
        # Lightning's sanity check sees a few batches only: fit nothing on them.
        sanity = trainer is not None and trainer.sanity_checking
        for i, rows in self._val_branches.items():
            if not sanity:
                lp = torch.cat([r[0] for r in rows], dim=1).numpy()
                labels = torch.cat([r[1] for r in rows]).numpy()
                per_member[i] = fit_mix_on_val(members[i], lp, labels)
        self._val_branches = {}
        # The best member on val answers from now on; among equals the one with the
        # largest weight decay, as the probe keeps the smallest C among equals.
        decays = weight_decays(self.hparams)
        best = max(
            range(len(per_member)),
            key=lambda i: (float(per_member[i]["val/acc_top1"]), decays[i]),
        )
        metrics = per_member[best]
        if isinstance(self.head, HeadSweep):
            self.head.selected.fill_(best)
            self._answering = best
            metrics = {**metrics, "val/weight_decay": decays[best]}
        self.log_dict(metrics, prog_bar=True)
        for metric in (*self.val_metrics, *self.val_loss):
            metric.reset()

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # `train.py test`: scored exactly as validation (the same metric objects, reset at
        # the end of each epoch), logged as test/*; weights fitted on val stay as they are.
        self._score(batch, keep_branches=False)

    def on_test_epoch_end(self) -> None:
        # A sweep is scored by the member chosen on val, never re-chosen on the test split.
        chosen = self._chosen()
        metrics = {
            "val/loss": self.val_loss[chosen].compute(),
            **self.val_metrics[chosen].compute(),
        }
        self.log_dict({"test/" + k.split("/", 1)[1]: v for k, v in metrics.items()})
        for metric in (*self.val_metrics, *self.val_loss):
            metric.reset()

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        probs = self.head(*batch["x"]).softmax(dim=1)
        return {"index": batch["index"], "probs": probs}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        self._flush_fusion_weights()
        checkpoint["alpha_beta_history"] = self.alpha_beta_history
        checkpoint["member_weights_history"] = self.member_weights_history
        # Dropout draws from torch's global generator: its state at the save lets a resume
        # draw the masks the uninterrupted run drew (the batches' order has its own seed,
        # fusion/batches.py).
        checkpoint[RNG_KEY] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.alpha_beta_history = list(checkpoint.get("alpha_beta_history", []))
        self.member_weights_history = list(checkpoint.get("member_weights_history", []))
        self._pending_weights, self._answering = [], None
        if (
            RNG_KEY in checkpoint
            and attached_trainer(self) is not None
            and self.trainer.state.fn == TrainerFn.FITTING
        ):
            set_rng_states(checkpoint[RNG_KEY])  # a resumed fit, never a loaded head

    def effective_lr(self) -> float:
        """``lr`` scaled from batch 256 to the training batch size."""
        datamodule = getattr(attached_trainer(self), "datamodule", None)
        return self.effective_lr_for(getattr(datamodule, "batch_size", 256))

    def effective_lr_for(self, batch: int) -> float:
        opt = self.hparams.optimizer
        ratio = batch / 256
        factor = {"sqrt": math.sqrt(ratio), "linear": ratio}.get(opt["lr_scaling"], 1.0)
        return opt["lr"] * factor

    def param_groups(self, lr: float) -> list[dict]:
        """Weight matrices decay; biases and norms do not (nanoGPT's rule), nor do the fusion
        weights (alpha/beta, a gate), which must stay free to move and learn
        ``fusion_lr_scale`` times faster."""
        fusion_lr = lr * self.hparams.optimizer["fusion_lr_scale"]
        groups = []
        decays = weight_decays(self.hparams)
        for member, weight_decay in zip(head_members(self.head), decays, strict=True):
            decay, no_decay, fusion = [], [], []
            for name, param in member.named_parameters():
                if name in ("weights", "prior_weights") or name.startswith("gate."):
                    fusion.append(param)
                elif param.ndim >= 2:
                    decay.append(param)
                else:
                    no_decay.append(param)
            groups += [
                {"params": decay, "weight_decay": weight_decay, "lr": lr},
                {"params": no_decay, "weight_decay": 0.0, "lr": lr},
                {"params": fusion, "weight_decay": 0.0, "lr": fusion_lr},
            ]
        return [g for g in groups if g["params"]]

    def configure_optimizers(self):
        optimizer, schedule = self.hparams.optimizer, self.hparams.schedule
        groups = self.param_groups(self.effective_lr())
        self._shrink_groups = shrink_groups(head_members(self.head), groups)
        if optimizer["name"] == "adamw":
            opt = torch.optim.AdamW(groups)
        else:
            opt = torch.optim.SGD(groups, momentum=optimizer["momentum"])
        total = int(self.trainer.estimated_stepping_batches)
        batches = self.trainer.num_training_batches
        per_epoch = int(batches) if batches not in (None, float("inf")) else total
        per_epoch = max(1, per_epoch // max(1, self.trainer.accumulate_grad_batches))
        if schedule["warmup_epochs"] is not None:
            warmup = round(schedule["warmup_epochs"] * per_epoch)
        else:
            warmup = round(schedule["warmup_fraction"] * total)
        options = {
            "total_steps": total,
            "warmup_steps": warmup,
            "schedule": schedule["name"],
            "step_every": schedule["step_epochs"] * per_epoch,
            "gamma": schedule["gamma"],
            "min_lr_ratio": schedule["min_lr_ratio"],
        }
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_factor(step, **options))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # The concat head's set_penalty: a proximal step after the gradient step, at the
        # learning rate and weight decay of the member's own weights (their group's values
        # now: the scheduler moves lr after this hook).
        groups = getattr(optimizer, "optimizer", optimizer).param_groups
        members = head_members(self.head)
        for member, index in getattr(self, "_shrink_groups", []):
            group = groups[index]
            members[member].shrink_sets(group["lr"], group["weight_decay"])


def shrink_groups(members: Sequence[nn.Module], groups: list[dict]) -> list[tuple[int, int]]:
    """(member, index of its decayed group in ``groups``) of each member with a
    ``set_penalty`` on: indices, not the group dicts, since loading an optimizer's state
    replaces its group dicts."""
    out = []
    for i, member in enumerate(members):
        if not getattr(member, "set_penalty", 0):
            continue
        weight = next(p for p in member.parameters() if p.ndim >= 2)
        index = next(j for j, g in enumerate(groups) if any(p is weight for p in g["params"]))
        out.append((i, index))
    return out


RNG_KEY = "rng_states"


def rng_states() -> dict[str, list[torch.Tensor]]:
    """torch's CPU generator state, and each GPU's where CUDA is in use."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []
    return {"cpu": [torch.get_rng_state()], "cuda": cuda}


def set_rng_states(states: dict) -> None:
    """Restore :func:`rng_states` (GPU states only onto as many GPUs as were saved)."""
    torch.set_rng_state(states["cpu"][0])
    cuda = states.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


# FusionModule's flat options before they were grouped (issue 21) -> where they live now.
# Old checkpoints are read through grouped_hparams; old configs and command lines through
# fusion/cli.py, with a one-line deprecation each.
RENAMED = {
    **{
        name: f"head_options.{name}"
        for name in (
            "hidden_dims", "dropout", "input_norm", "prior_sets", "linear_skip",
            "modality_dropout", "fusion_dim", "weighting", "penalty_lambda", "gate_hidden",
            "branch_loss",
        )
    },  # fmt: skip
    "optimizer": "optimizer.name",
    **{k: f"optimizer.{k}" for k in ("lr", "lr_scaling", "momentum", "fusion_lr_scale")},
    "weight_decay": "optimizer.weight_decay",  # a list: weight_decay_sweep
    "schedule": "schedule.name",
    **{
        k: f"schedule.{k}"
        for k in ("warmup_fraction", "warmup_epochs", "step_epochs", "gamma", "min_lr_ratio")
    },
}
# The old flat defaults of the options only some heads take: every head's own default, so
# an old config or checkpoint that gives one of them asks for nothing (RUN/config.yaml of an
# old run lists every option).
OLD_HEAD_DEFAULTS = {
    "input_norm": "standardize", "prior_sets": None, "linear_skip": False,
    "modality_dropout": 0.0, "fusion_dim": 512, "weighting": "penalty",
    "penalty_lambda": 0.1, "gate_hidden": 64, "branch_loss": 0.5,
}  # fmt: skip


def renamed(old: str, value) -> str:
    """The grouped name of the flat option ``old`` given ``value``."""
    if old == "weight_decay" and isinstance(value, (list, tuple)):
        return "weight_decay_sweep"
    return RENAMED[old]


def is_old_value(old: str, value) -> bool:
    """Whether the flat ``old`` option's ``value`` is its old form: every renamed option is,
    but ``optimizer`` and ``schedule`` only as a name (``sgd``), not as a group."""
    return old in RENAMED and (old not in ("optimizer", "schedule") or isinstance(value, str))


def regrouped(old: str, value) -> tuple[str, object]:
    """(grouped name, value) of the flat option ``old``; an option only some heads take at
    its old default becomes None, the head's own default (the same value): an old config
    or checkpoint lists every option, also the ones its head does not take."""
    if old in OLD_HEAD_DEFAULTS and OLD_HEAD_DEFAULTS[old] == value:
        value = None
    return renamed(old, value), value


def group_flat(model: dict) -> tuple[dict, list[tuple[str, str]]]:
    """``model`` (a model section or hyper-parameters) with its flat, pre-issue-21 options
    moved into their groups (:func:`regrouped`); returns it and the (old, new) names."""
    out, moved = {}, []
    for key, value in model.items():
        if not is_old_value(key, value):
            # A group may hold both forms (``optimizer: {name: sgd}`` and ``lr: 0.1``).
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = {**out[key], **value} if both else value
            continue
        new, value = regrouped(key, value)
        moved.append((key, new))
        group, _, name = new.rpartition(".")
        if group:
            out[group] = {**dict(out.get(group) or {}), name: value}
        else:
            out[name] = value
    return out, moved


def grouped_hparams(hparams: dict) -> dict:
    """A checkpoint's hyper-parameters in the grouped form :class:`FusionModule` takes.

    Checkpoints written before the options were grouped hold them flat, every option of
    every head with its value; the head used the ones it takes and dropped the others, so
    those are dropped here too, and the head is rebuilt as it was trained."""
    hp = dict(hparams)
    if isinstance(hp.get("optimizer"), dict) or "head_options" in hp:
        return hp
    hp, _ = group_flat(hp)
    if "image_dim" in hp:  # written before --data.features: the image and text sets
        hp["set_dims"] = checkpoint_set_dims(hp)
        hp.pop("image_dim"), hp.pop("text_dim", None)
    head = hp.get("head")
    options = dict(hp.get("head_options") or {})
    hp["head_options"] = {
        k: v for k, v in options.items() if head is None or head_takes(head, k)
    }
    return hp


def head_takes(head: str, option: str) -> bool:
    """Whether ``head`` takes ``option`` of :class:`fusion.heads.HeadOptions`."""
    return HEAD_ALIASES.get(head, head) in heads_taking(option)


def head_options(hparams: dict) -> dict:
    """The arguments of :func:`fusion.heads.build_head` but the head and its dims, from a
    module's or a checkpoint's (old or new) hyper-parameters: the head's own options and
    the number of members (one per weight decay of a sweep)."""
    hp = grouped_hparams(hparams)
    options = _options(HeadOptions, hp.get("head_options"))
    return {"members": len(weight_decays(hp)), **options.constructor()}


def weight_decays(hparams) -> list[float]:
    """The weight decay of each head a module trains: ``weight_decay_sweep``'s values, or
    ``optimizer.weight_decay`` alone."""
    sweep = hparams.get("weight_decay_sweep")
    if sweep:
        return [float(w) for w in sweep]
    return [float(_options(OptimizerOptions, hparams.get("optimizer")).weight_decay)]
