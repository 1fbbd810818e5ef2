"""Late fusion by stacking: separately trained heads pooled on held-out rows, cross-fitted.

$ python train.py stack --checkpoint runs/visual_only/A/checkpoints/best.ckpt \\
      --checkpoint runs/text_only/B/checkpoints/best.ckpt --data.store stores/kaggle

``train.py stack`` is the one command that combines models; members are loaded, aligned
and pooled by :func:`fusion.combine.combine` (``predict.py ensemble`` and ``predict.py
--checkpoint A --checkpoint B`` are its aliases). Each member's log-probabilities are pooled
as ``z = sum_m w_m(x) * log p_m(x)``, with non-negative weights that also set the
temperature (:class:`Stacker`); ``--stack.method``:

- ``logistic`` (the default, fusion/combine.py says why): a small logistic stacker gives each
  row its own weights from the members' confidence on that row (max probability, entropy,
  top-2 margin), so a row whose caption says nothing can lean on the image head and a row
  whose caption names the class on the text head;
- ``weights``: one weight per member, the same for every row;
- ``mean``: the members' probabilities averaged, nothing fitted.

``logistic`` and ``weights`` are fitted by minimising the negative log-likelihood of
labelled rows the members did not train on (L-BFGS, a few dozen parameters):

- ``--checkpoint`` members (``train.py fit`` runs): the val split. Cheap, but val is small
  (a few hundred rows on a small store), and a stacker fitted on it can lean on a member's
  chance agreement with val labels. A ``train.py cv`` fold's checkpoint is refused (it
  trained on the val rows): pass its directory with ``--cv``;
- ``--cv`` members (``train.py cv`` directories): every train+val row's out-of-fold
  probabilities, several times more rows, and the test probabilities averaged over the
  folds. On the bench stores this kept neutral-caption rows level with ``visual_only``
  where the val-fitted stack lost up to 2.5 points (bench/README.md);
- ``--probs`` members (saved ``.probs.npz`` test probabilities), each with its own labelled
  ``--fit_on`` file (``RUN/val.probs.npz``, ``CV/oof.probs.npz``), in ``--probs`` order.

Members may be mixed: the stack is fitted on the rows every member holds out (a
checkpoint's val rows are among a CV's out-of-fold rows, so a mix is fitted on val).
The accuracy reported is cross-fitted: the fitted rows are cut into ``folds`` stratified
folds and every row is scored by a stacker fitted on the other folds, never on itself.
The submission uses the stacker fitted on all of them. Writes a run directory::

    stack.json              members, method, rows fitted on, fitted weights, cross-fitted
                            top-1 of the stack and of each member alone on those rows
    val_predictions.csv     id,label,pred,confidence (cross-fitted); oof_predictions.csv
                            when every member's rows are out of fold (--cv)
    submission.csv          Id,Category on the test split (--category index|name), with
                            submission.probs.npz and submission.json; --kaggle sends it
    wandb/                  the W&B run, candidate "stack": best/val/acc_top1 (--checkpoint)
                            or best/oof/acc_top1 (--cv), cross-fitted; the submission

$ python train.py cv --config configs/visual_only.yaml --data.folds 5 --data.store S
$ python train.py cv --config configs/text_only.yaml --data.folds 5 --data.store S
$ python train.py stack --cv runs/visual_only/cv5 --cv runs/text_only/cv5
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold

from fusion.ensemble import load_probs
from fusion.errors import FusionError
from fusion.heads import checkpoint_set_dims
from fusion.predict import load_checkpoint

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
    if path.name.endswith(".npz"):  # saved probabilities: the sets of their checkpoints
        made_by = [c for c in load_probs(path).checkpoints if Path(c).is_file()]
        return list(dict.fromkeys(s for c in made_by for s in member_sets(c)))
    if path.is_file():
        return list(checkpoint_set_dims(load_checkpoint(path)["hyper_parameters"]))
    try:
        config = yaml.safe_load((path / "fold_0" / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        return []
    data = config.get("data") if isinstance(config, dict) else None
    features = data.get("features") if isinstance(data, dict) else None
    return list(features) if features else ["image", "text"]
