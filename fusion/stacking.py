"""Late fusion by stacking: separately trained heads pooled on held-out rows, cross-fitted.

$ python train.py stack --checkpoint runs/visual_only/A/checkpoints/best.ckpt \\
      --checkpoint runs/text_only/B/checkpoints/best.ckpt --data.store stores/kaggle

Each member's log-probabilities are pooled as ``z = sum_m w_m(x) * log p_m(x)``, with
non-negative weights that also set the temperature (:class:`Stacker`):

- ``weights``: one weight per member, the same for every row;
- ``logistic``: a small logistic stacker gives each row its own weights from the members'
  confidence on that row (max probability, entropy, top-2 margin), so a row whose caption
  says nothing can lean on the image head and a row whose caption names the class on the
  text head.

Both are fitted by minimising the negative log-likelihood of labelled rows the members did
not train on (L-BFGS, a few dozen parameters):

- ``--checkpoint`` members (``train.py fit`` runs): the val split. Cheap, but val is small
  (a few hundred rows on a small store), and a stacker fitted on it can lean on a member's
  chance agreement with val labels;
- ``--cv`` members (``train.py cv`` directories): every train+val row's out-of-fold
  probabilities, several times more rows, and the test probabilities averaged over the
  folds. On the bench stores this kept neutral-caption rows level with ``visual_only``
  where the val-fitted stack lost up to 2.5 points (bench/README.md).

The accuracy reported is cross-fitted: the fitted rows are cut into ``folds`` stratified
folds and every row is scored by a stacker fitted on the other folds, never on itself.
The submission uses the stacker fitted on all of them. Writes a run directory::

    stack.json              members, method, rows fitted on, fitted weights, cross-fitted
                            top-1 of the stack and of each member alone on those rows
    val_predictions.csv     id,label,pred,confidence (cross-fitted); oof_predictions.csv
                            with --cv
    submission.csv          Id,Category on the test split (--category index|name), with
                            submission.probs.npz and submission.json; --kaggle sends it
    wandb/                  the W&B run, candidate "stack": best/val/acc_top1 (--checkpoint)
                            or best/oof/acc_top1 (--cv), cross-fitted; the submission

$ python train.py cv --config configs/visual_only.yaml --data.folds 5 --data.store S
$ python train.py cv --config configs/text_only.yaml --data.folds 5 --data.store S
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from feature_store import load_arrays, open_store
from fusion.ensemble import (
    EnsembleError,
    Member,
    check_members,
    load_probs,
    log_probs,
    same_labels,
)
from fusion.errors import FusionError
from fusion.heads import checkpoint_set_dims
from fusion.predict import load_checkpoint, predict_probs

METHODS = ("weights", "logistic")


class StackError(FusionError, ValueError):
    """Rows a stacker cannot be fitted and cross-checked on, or members it must not use."""


def meta_features(log_probs: torch.Tensor) -> torch.Tensor:
    """Per member and row: max probability, entropy, top-2 margin -> ``[N, 3 * members]``."""
    feats = []
    for lp in log_probs:  # [N, C] per member
        p = lp.exp()
        top2 = p.topk(min(2, p.shape[1]), dim=1).values
        margin = top2[:, 0] - (top2[:, 1] if top2.shape[1] > 1 else 0)
        feats += [top2[:, 0], -(p * lp).sum(1), margin]
    return torch.stack(feats, dim=1)


class Stacker:
    """Fitted pooling weights of M members (see the module docstring).

    The weights are non-negative (``softplus``), not tied to sum to one, with no separate
    temperature, and their mean over the fitted rows is penalised (``weight_penalty``).
    Why: with weights on the simplex and a free temperature, a member whose probabilities
    are nearly flat (a text head on captions that say nothing) costs nothing and works as
    a second temperature knob, so it kept a third of the weight and its small
    non-flatness moved the argmax (4.7 points below `visual_only` on neutral-caption rows
    of the `sketch` bench store). Free weights scale the pooled logits themselves, and the
    penalty sends an uninformative member's weight to zero (bench/README.md).
    """

    def __init__(
        self,
        members: int,
        method: str = "weights",
        l2: float = 1e-3,
        weight_penalty: float = 0.03,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"stacking method must be one of {METHODS}, got {method!r}")
        self.members, self.method, self.l2 = members, method, l2
        self.weight_penalty = weight_penalty
        n_meta = 3 * members if method == "logistic" else 0
        self.coef = torch.zeros(n_meta, members, dtype=torch.float64)
        self.bias = torch.zeros(members, dtype=torch.float64)
        self.meta_mean = torch.zeros(n_meta, dtype=torch.float64)
        self.meta_std = torch.ones(n_meta, dtype=torch.float64)

    def _weights(self, log_probs: torch.Tensor) -> torch.Tensor:
        logits = self.bias.expand(log_probs.shape[1], -1)
        if self.method == "logistic":
            meta = (meta_features(log_probs) - self.meta_mean) / self.meta_std
            logits = logits + meta @ self.coef
        return torch.nn.functional.softplus(logits)  # [N, M], >= 0

    def _pooled(self, log_probs: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nm,mnc->nc", self._weights(log_probs), log_probs)

    def fit(self, log_probs: np.ndarray, labels: np.ndarray) -> Stacker:
        lp = torch.as_tensor(log_probs, dtype=torch.float64)
        y = torch.as_tensor(labels, dtype=torch.long)
        if self.method == "logistic":
            meta = meta_features(lp)
            self.meta_mean, self.meta_std = meta.mean(0), meta.std(0).clamp_min(1e-6)
        params = [self.bias] + ([self.coef] if self.method == "logistic" else [])
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.LBFGS(params, max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(self._pooled(lp), y)
            loss = loss + self.l2 * self.coef.square().sum()
            loss = loss + self.weight_penalty * self._weights(lp).mean(0).sum()
            loss.backward()
            return loss

        opt.step(closure)
        for p in params:
            p.requires_grad_(False)
        return self

    def predict_proba(self, log_probs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            lp = torch.as_tensor(log_probs, dtype=torch.float64)
            return self._pooled(lp).softmax(dim=1).float().numpy()

    def mean_weights(self, log_probs: np.ndarray) -> list[float]:
        with torch.no_grad():
            w = self._weights(torch.as_tensor(log_probs, dtype=torch.float64))
        return w.mean(0).tolist()


def cross_fit(
    log_probs: np.ndarray, labels: np.ndarray, *, method: str, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Val probabilities where each row comes from a stacker fitted on the other folds."""
    out = np.zeros(log_probs.shape[1:], dtype=np.float32)
    counts = np.bincount(labels)
    if counts.max(initial=0) < 2:
        raise StackError(
            f"{len(labels)} labelled rows with at most one per class: too few to fit a "
            "stacker and score it on rows it was not fitted on; fit it on more rows "
            "(train.py stack --cv CV_DIR: every train+val row, out of fold)"
        )
    k = int(max(2, min(folds, counts[counts > 0].min(initial=folds))))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(np.zeros(len(labels)), labels):
        stacker = Stacker(len(log_probs), method).fit(log_probs[:, fit_rows], labels[fit_rows])
        out[score_rows] = stacker.predict_proba(log_probs[:, score_rows])
    return out


def fit_weights(fit: Sequence[Member], scored: Sequence[Member], *, method: str, folds: int = 5):
    """A :class:`Stacker` fitted on the labelled ``fit`` members, to score ``scored``.

    Returns ``(stacker, cross-fitted top-1 on the fit rows, each member's top-1 there)``.
    Refuses any id present in both: weights are never fitted on rows they score.
    """
    fit = check_members(fit)
    overlap = set(fit[0].ids) & set(scored[0].ids)
    if overlap:
        raise EnsembleError(
            f"{len(overlap)} ids (e.g. {sorted(overlap)[:3]}) are in both {fit[0].path} and "
            f"{scored[0].path}; fit weights on out-of-fold or val rows, not on the scored ones."
        )
    labels = same_labels(fit)
    if labels is None:
        raise EnsembleError(
            "every --fit_on file needs the same labels (RUN/val.probs.npz or CV/oof.probs.npz)"
        )
    lp = log_probs(fit)
    try:
        crossed = cross_fit(lp, labels, method=method, folds=folds)
    except StackError as err:
        raise EnsembleError(f"--fit_on: {err}") from err
    stacker = Stacker(len(fit), method).fit(lp, labels)
    member_acc = [float((m.probs.argmax(1) == labels).mean()) for m in fit]
    return stacker, float((crossed.argmax(1) == labels).mean()), member_acc


def member_log_probs(checkpoints: Sequence[str], store: str, split: str) -> tuple[list, np.ndarray]:
    ids, stacked = None, []
    for ckpt in checkpoints:
        split_ids, probs = predict_probs([ckpt], store, split)
        if ids is not None and split_ids != ids:
            raise StackError(f"{ckpt}: the {split} ids differ from the first member's")
        ids = split_ids
        stacked.append(np.log(np.clip(probs, 1e-12, None)))
    return ids, np.stack(stacked)


def cv_members(cv_dirs: Sequence[str], predict: bool):
    """``train.py cv`` directories -> (fit members, test members) of ``fusion.ensemble``.

    The fit members are each directory's ``oof.probs.npz`` (every train+val row scored by
    the fold that did not train on it), the test members its ``submission.probs.npz``
    (the folds' test probabilities averaged)."""
    needed = ["oof.probs.npz"] + (["submission.probs.npz"] if predict else [])
    for cv_dir in cv_dirs:
        lacking = [n for n in needed if not (Path(cv_dir) / n).is_file()]
        if lacking:
            inside = sorted(str(f.parent) for f in Path(cv_dir).glob("*/oof.probs.npz"))
            hint = f"; did you mean {' or '.join(inside)}?" if inside else ""
            raise StackError(
                f"{cv_dir} has no {' or '.join(lacking)}: pass a `train.py cv` directory and "
                f"rerun its command to finish it (finished folds are kept){hint}"
            )
    fit = check_members([load_probs(Path(d) / "oof.probs.npz") for d in cv_dirs])
    test = check_members([load_probs(Path(d) / needed[-1]) for d in cv_dirs]) if predict else []
    return fit, test


@dataclass
class StackRows:
    """What a stack is fitted on (labelled rows its members did not train on) and scores."""

    ids: list[str]
    log_probs: np.ndarray  # [members, N, C]
    labels: np.ndarray
    fitted_on: str  # "val" (the split's name) or "out-of-fold"
    predictions_file: str
    test_ids: list[str] = field(default_factory=list)
    test_log_probs: np.ndarray | None = None
    class_names: list[str] = field(default_factory=list)
    checkpoints: list[str] = field(default_factory=list)


def cv_fold_of(checkpoint: str | Path) -> tuple[Path, int] | None:
    """``(CV directory, K)`` when ``checkpoint`` is a ``train.py cv`` fold's, else None.

    A fold trains on train+val less one fold, so the val split holds rows it trained on.
    Its run's ``config.yaml`` says so (``data.folds``)."""
    import yaml

    ckpt = Path(checkpoint)
    run = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    try:
        config = yaml.safe_load((run / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return None
    data = config.get("data") if isinstance(config, dict) else None
    folds = data.get("folds") if isinstance(data, dict) else None
    return (run.parent, int(folds)) if isinstance(folds, int) and folds > 1 else None


def member_sets(member: str | Path) -> list[str]:
    """The feature sets a member reads: a checkpoint's, or a ``train.py cv`` directory's
    (its folds' ``data.features``; ``[image, text]`` when the config leaves it out)."""
    import yaml

    path = Path(member)
    if path.is_file():
        return list(checkpoint_set_dims(load_checkpoint(path)["hyper_parameters"]))
    try:
        config = yaml.safe_load((path / "fold_0" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    data = config.get("data") if isinstance(config, dict) else None
    features = data.get("features") if isinstance(data, dict) else None
    return list(features) if features else ["image", "text"]


def from_checkpoints(cfg, predict: bool) -> StackRows:
    """``--checkpoint`` members: fitted on the val split of ``--data.store``."""
    store, members = cfg.data.store, cfg.checkpoint
    for ckpt in members:
        ckpt_path = Path(ckpt)
        run = ckpt_path.parent.parent if ckpt_path.parent.name == "checkpoints" else None
        if run is not None and (run / "refit.json").is_file():  # fusion/refit.py
            raise StackError(
                f"--checkpoint {ckpt} is a refit: it trained on the {cfg.data.val_split} "
                "rows a stack is fitted on (a leaked, optimistic stack); stack the run it "
                "was refitted from (RUN/refit.json names it)"
            )
        fold = cv_fold_of(ckpt)
        if fold is not None:
            raise StackError(
                f"--checkpoint {ckpt} is a fold of the {fold[1]}-fold CV {fold[0]}: it "
                f"trained on most of the {cfg.data.val_split} rows a stack is fitted on "
                f"(a leaked, optimistic stack); stack CV runs out of fold with --cv {fold[0]}"
            )
    ids, log_probs = member_log_probs(members, store, cfg.data.val_split)
    rows = StackRows(ids, log_probs, load_arrays(store, cfg.data.val_split).labels,
                     cfg.data.val_split, "val_predictions.csv")  # fmt: skip
    if predict:
        rows.test_ids, rows.test_log_probs = member_log_probs(
            members, store, cfg.data.predict_split
        )
        rows.class_names, rows.checkpoints = open_store(store).class_names, list(members)
    return rows


def from_cv(cv_dirs: Sequence[str], predict: bool) -> StackRows:
    """``--cv`` members: fitted on every train+val row's out-of-fold probabilities."""
    fit, test = cv_members(cv_dirs, predict)  # EnsembleError: a member file is unreadable
    labels = same_labels(fit)
    if labels is None:
        raise StackError("the --cv directories hold other rows or labels")
    rows = StackRows(fit[0].ids, log_probs(fit), labels, "out-of-fold", "oof_predictions.csv")
    if predict:
        rows.test_ids, rows.test_log_probs = test[0].ids, log_probs(test)
        rows.class_names = test[0].class_names
        rows.checkpoints = [c for m in test for c in m.checkpoints]
    return rows
