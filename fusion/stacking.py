"""Late fusion by stacking: heads trained separately, combined on val with cross-fitting.

$ python train.py stack --checkpoint runs/visual_only/A/checkpoints/best.ckpt \\
      --checkpoint runs/text_only/B/checkpoints/best.ckpt --data.store stores/kaggle

Each member's log-probabilities are pooled as ``z = sum_m w_m(x) * log p_m(x)``, with
non-negative weights that also set the temperature (:class:`Stacker`):

- ``weights``: one weight per member, the same for every row;
- ``logistic``: a small logistic stacker gives each row its own weights from the members'
  confidence on that row (max probability, entropy, top-2 margin), so a row whose caption
  says nothing can lean on the image head and a row whose caption names the class on the
  text head.

Both are fitted by minimising the val negative log-likelihood (L-BFGS, a few dozen
parameters). The val accuracy reported is cross-fitted: val is cut into ``folds``
stratified folds and every row is scored by a stacker fitted on the other folds, never on
itself. The test submission uses the stacker fitted on all of val. Writes a run directory::

    stack.json              members, method, fitted weights, cross-fitted val top-1 of the
                            stack and of each member alone
    val_predictions.csv     id,label,pred,confidence (cross-fitted)
    submission.csv          Id,Category on the test split, and submission.probs.npz
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from feature_store.console import show_path

METHODS = ("weights", "logistic")


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
    k = int(max(2, min(folds, counts[counts > 0].min(initial=folds))))
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(np.zeros(len(labels)), labels):
        stacker = Stacker(len(log_probs), method).fit(log_probs[:, fit_rows], labels[fit_rows])
        out[score_rows] = stacker.predict_proba(log_probs[:, score_rows])
    return out


def member_log_probs(checkpoints: Sequence[str], store: str, split: str) -> tuple[list, np.ndarray]:
    from fusion.predict import predict_probs

    ids, stacked = None, []
    for ckpt in checkpoints:
        split_ids, probs = predict_probs([ckpt], store, split)
        if ids is not None and split_ids != ids:
            raise ValueError(f"{ckpt}: the {split} ids differ from the first member's")
        ids = split_ids
        stacked.append(np.log(np.clip(probs, 1e-12, None)))
    return ids, np.stack(stacked)


def run_stack(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``python train.py stack``; returns the run directory."""
    from jsonargparse import ArgumentParser

    from feature_store import load_arrays, open_store
    from fusion.cli import new_run_dir
    from fusion.exit import ExitError
    from fusion.predict import write_predictions_csv, write_submission

    p = ArgumentParser(prog="train.py stack", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", "-c", action="config", help="a YAML of these options")
    p.add_argument(
        "--checkpoint", action="append", required=True, help="a member checkpoint; repeat it"
    )
    p.add_argument("--data.store", type=str, required=True, help="feature-store directory")
    p.add_argument("--data.val_split", type=str, default="val")
    p.add_argument("--data.predict_split", type=str, default="test", help="'' to skip")
    p.add_argument("--stack.method", type=str, default="logistic", help=f"one of {METHODS}")
    p.add_argument("--stack.folds", type=int, default=5, help="cross-fitting folds on val")
    p.add_argument("--run_dir", type=str | None, default=None)
    p.add_argument("--runs_root", type=str, default="runs")
    cfg = p.parse_args(list(argv) if argv is not None else None)
    if len(cfg.checkpoint) < 2:
        raise ExitError("train.py stack: give at least two --checkpoint members")
    if cfg.stack.method not in METHODS:
        raise ExitError(f"train.py stack: --stack.method must be one of {METHODS}")
    missing = [c for c in cfg.checkpoint if not Path(c).is_file()]
    if missing:
        raise ExitError(f"train.py stack: checkpoint not found: {', '.join(missing)}")
    store, method = cfg.data.store, cfg.stack.method
    run = Path(cfg.run_dir) if cfg.run_dir else new_run_dir(Path(cfg.runs_root) / "stack")
    if run.exists() and any(run.iterdir()):
        raise ExitError(f"train.py stack: {run} already holds a run; pass a new --run_dir")
    # Every member is loaded and checked against the store before the run directory exists.
    ids, val_lp = member_log_probs(cfg.checkpoint, store, cfg.data.val_split)
    labels = load_arrays(store, cfg.data.val_split).labels
    run.mkdir(parents=True, exist_ok=True)
    p.save(cfg, run / "config.yaml", overwrite=True)
    crossed = cross_fit(val_lp, labels, method=method, folds=cfg.stack.folds)
    stacker = Stacker(len(val_lp), method).fit(val_lp, labels)
    summary = {
        "members": list(cfg.checkpoint),
        "method": method,
        "mean_weights_on_val": stacker.mean_weights(val_lp),
        "val_acc_top1_cross_fitted": float((crossed.argmax(1) == labels).mean()),
        "member_val_acc_top1": [float((lp.argmax(1) == labels).mean()) for lp in val_lp],
    }
    write_predictions_csv(run / "val_predictions.csv", ids, labels, crossed)
    if cfg.data.predict_split:
        test_ids, test_lp = member_log_probs(cfg.checkpoint, store, cfg.data.predict_split)
        write_submission(
            run / "submission.csv",
            test_ids,
            stacker.predict_proba(test_lp),
            class_names=open_store(store).class_names,
            checkpoints=cfg.checkpoint,
        )
    (run / "stack.json").write_text(json.dumps(summary, indent=2))
    print(
        f"stack ({method}): cross-fitted val/acc_top1 {summary['val_acc_top1_cross_fitted']:.4f}"
        f" vs members {[round(a, 4) for a in summary['member_val_acc_top1']]}; wrote {show_path(run)}"
    )
    return run
