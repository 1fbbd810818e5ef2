"""The stacker's fit: pooling weights of M members' log-probabilities, fitted on labelled rows
they did not train on, and cross-fitted scores (what :mod:`fusion.stacking` describes).

Apart from :mod:`fusion.stacking`'s members and files (checkpoints, CV directories), so the
training module can fit a ``mix_on: val`` head's weights with this code
(:func:`fusion.module.fit_mix_on_val`) without importing what loads checkpoints.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from fusion.errors import FusionError

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
    """Fitted pooling weights of M members (see :mod:`fusion.stacking`'s docstring).

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
