"""The one way to combine trained models: checkpoints, CV directories and ``.probs.npz`` files
pooled into one set of class probabilities.

$ python train.py stack --checkpoint runs/visual_only/A/checkpoints/best.ckpt \\
      --cv runs/text_only/cv5 --probs B/submission.probs.npz --fit_on B/val.probs.npz \\
      --data.store stores/kaggle

:func:`combine` is the library function behind every command that combines models
(``train.py stack``, and its aliases ``predict.py ensemble`` and ``predict.py --checkpoint A
--checkpoint B``); it raises :class:`CombineError`, or a member's own typed error
(``CheckpointError``, ``EnsembleError``, ``StackError``, ``StoreError``), and never exits.
A member is one of:

- a checkpoint (``RUN/checkpoints/best.ckpt``): run on the store's ``fit_split`` (labelled
  rows it did not train on) and ``predict_split``. A ``train.py cv`` fold's checkpoint is
  refused: it trained on most of the val rows (pass its CV directory instead);
- a ``train.py cv`` directory: ``CV/oof.probs.npz`` (every train+val row, out of fold) and
  ``CV/submission.probs.npz`` (the folds' test probabilities, averaged);
- a ``.probs.npz`` file (``predict.py``'s ``OUT.probs.npz``, a CV's or a fit's
  ``submission.probs.npz``): the predicted rows, with, for a fitted method, its own
  labelled val or out-of-fold file (``fit_on``: ``RUN/val.probs.npz``, ``CV/oof.probs.npz``).

Members' rows are joined by id. The predicted rows must be the same in every member; the
fitted rows are those of the member with the fewest, which every other member must hold
(a checkpoint's val rows are among a CV's out-of-fold train+val rows, so a mix is fitted
on val), with the same labels. A row both fitted and predicted is refused.

Methods (:data:`METHODS`): ``logistic`` and ``weights`` fit :class:`fusion.stacker.Stacker`
on the fitted rows (and report a cross-fitted top-1 there: each row scored by a stacker
fitted on the other folds); ``mean`` averages the probabilities and fits nothing (the only
method for members without labelled rows; ``train.py cv`` averages its own folds so).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from feature_store import load_arrays, open_store
from fusion import predict as predicting
from fusion.ensemble import (
    Member,
    average,
    check_fit_on_order,
    check_members,
    load_probs,
    log_probs,
)
from fusion.errors import FusionError
from fusion.predict import CheckpointError, complete_split, submit
from fusion.stacker import Stacker, cross_fit
from fusion.stacking import cv_fold_of
from fusion.submission import check_outputs

METHODS = ("logistic", "weights", "mean")
# The default is the method behind every goal the accuracy bench meets (bench/README.md,
# `python bench/bench_accuracy.py`): `logistic` stacks were above the concatenation probe on
# all seven stores (cvstack3 +2.2 to +12.4 points, val-fitted stack3 +0.6 to +10.7) and kept
# caption-less rows within 0.7 points of `visual_only` (out of fold). `weights` was never
# better out of fold (cvstack3: equal on five stores, 1.4 points lower on `sketch`, 0.3 on
# `gauss-500`) and 4.6 points lower fitted on val on `sketch`. `mean` fits nothing: a text
# head that says nothing on a row still pulls its average toward chance.
DEFAULT_METHOD = "logistic"
OOF = "out-of-fold"  # fitted_on for members whose fitted rows are all out of fold


class CombineError(FusionError, ValueError):
    """Members that cannot be combined as asked; ``str(err)`` names the input and the fix."""


@dataclass(frozen=True)
class Source:
    """A member as given: a checkpoint, a ``train.py cv`` directory or a ``.probs.npz`` file
    (with ``fit_on``, the same model's labelled val or out-of-fold ``.probs.npz``)."""

    path: Path
    fit_on: Path | None = None

    @property
    def kind(self) -> str:
        """``cv`` (a directory), ``probs`` (``.npz``) or ``checkpoint`` (any other file)."""
        if self.path.is_dir():
            return "cv"
        return "probs" if self.path.name.endswith(".npz") else "checkpoint"


def source(member: str | os.PathLike | Source) -> Source:
    return member if isinstance(member, Source) else Source(Path(member))


@dataclass
class Combined:
    """What :func:`combine` returns: the pooled probabilities of the predicted rows and, when
    the members hold labelled rows, what the pooling scores there."""

    method: str
    members: list[str]
    kinds: list[str]
    class_names: list[str]
    ids: list[str] = field(default_factory=list)  # predicted rows (none without a split)
    probs: np.ndarray | None = None  # [N, C]
    checkpoints: list[str] = field(default_factory=list)  # every checkpoint behind it
    fallback: list[dict] = field(default_factory=list)  # failure rows given the prior
    fitted_on: str | None = None  # the val split's name or "out-of-fold"; None: no rows
    fit_ids: list[str] = field(default_factory=list)
    fit_labels: np.ndarray | None = None
    fit_probs: np.ndarray | None = None  # pooled on the fitted rows, cross-fitted if fitted
    member_acc: list[float] = field(default_factory=list)  # each member alone there
    mean_weights: list[float] | None = None  # the stacker's, over the fitted rows

    @property
    def held_out(self) -> str | None:
        """``oof`` or ``val``: what a score on the fitted rows is named after."""
        if self.fitted_on is None:
            return None
        return "oof" if self.fitted_on == OOF else "val"

    @property
    def acc(self) -> float | None:
        """Top-1 of the pooling on the fitted rows (cross-fitted for a fitted method)."""
        if self.fit_probs is None:
            return None
        return float((self.fit_probs.argmax(1) == self.fit_labels).mean())

    def score(self) -> dict:
        """``{"best/<oof|val>/acc_top1": acc}``, the candidate's score; empty without rows."""
        return {} if self.acc is None else {f"best/{self.held_out}/acc_top1": self.acc}


def combine(
    members: Sequence[str | os.PathLike | Source],
    method: str = DEFAULT_METHOD,
    *,
    store: str | os.PathLike | None = None,
    fit_split: str | None = "val",
    predict_split: str | None = "test",
    folds: int = 5,
    complete: bool = True,
    batch_size: int = 4096,
    allow_store_mismatch: bool = False,
) -> Combined:
    """Pool ``members`` (see the module docstring) with ``method``.

    ``store`` is needed by checkpoint members, which are run on its ``fit_split`` (None:
    fit nothing, only ``mean`` then) and ``predict_split`` (None: predict nothing).
    ``complete`` gives a checkpoint's predicted rows the inputs that failed extraction,
    with the train class prior (``fusion.predict.complete_split``; listed in
    ``Combined.fallback``), as CV and ``.probs.npz`` members already hold them; without it
    the stored rows are returned for the caller to complete (``predict.py``, whose
    ``--strict`` refuses them). ``folds``: cross-fitting folds of the printed score.
    """
    if method not in METHODS:
        raise CombineError(f"method {method!r}: choose one of {', '.join(METHODS)}")
    sources = [source(m) for m in members]
    return _combine(sources, method, store, fit_split, predict_split, folds, complete,
                    batch_size, allow_store_mismatch)  # fmt: skip


@dataclass
class MemberRows:
    """Every member's probabilities, aligned by id (:func:`member_rows`)."""

    fit: list[Member]  # labelled rows no member trained on; empty unless every member has them
    predicted: list[Member]  # the predicted rows; empty without a predict split
    fallback: list[dict]  # failure rows a checkpoint's predicted rows got the prior for


def member_rows(
    members: Sequence[str | os.PathLike | Source],
    *,
    store: str | os.PathLike | None = None,
    fit_split: str | None = "val",
    predict_split: str | None = "test",
    complete: bool = True,
    batch_size: int = 4096,
    allow_store_mismatch: bool = False,
    need_fit: bool = False,
) -> MemberRows:
    """Load, check and align the members' fitted and predicted rows (what :func:`combine`
    pools; ``bench/bench_accuracy.py`` scores each member on them). ``need_fit``: refuse a
    member without labelled rows. Raises :class:`CombineError` and the members' own typed
    errors."""
    sources = [source(m) for m in members]
    if not sources:
        raise CombineError("no members to combine")
    check_sources(sources, store=store, fit_split=fit_split, predict=predict_split is not None)
    run = _Runner(store, batch_size, allow_store_mismatch)
    fit = [_fit_member(s, fit_split, run) for s in sources]
    if need_fit and None in fit:
        lacking = next(s for s, f in zip(sources, fit, strict=True) if f is None)
        give = "--data.val_split" if lacking.kind == "checkpoint" else "--fit_on"
        raise CombineError(
            f"{lacking.path} has no labelled rows to fit a pooling on: give its own val or "
            f"out-of-fold rows ({give}), or method 'mean'"
        )
    predicted, fallback = [], []
    if predict_split is not None:
        for s in sources:
            m, failed = _predict_member(s, predict_split, run, complete)
            predicted.append(m)
            fallback = fallback or failed
        predicted = check_members(predicted)
        pairs = [(f, m) for s, f, m in zip(sources, fit, predicted, strict=True)
                 if s.kind == "probs" and f is not None]  # fmt: skip
        if pairs:  # each --fit_on file is its own member's (the checkpoints they record)
            check_fit_on_order([f for f, _ in pairs], [m for _, m in pairs])
    fit = _align_fit(fit) if None not in fit else []
    if fit and predicted:
        _check_disjoint(fit, predicted)
        if fit[0].class_names != predicted[0].class_names:
            raise CombineError(f"{fit[0].path}: class order differs from {predicted[0].path}")
    return MemberRows(fit, predicted, fallback)


def _combine(sources, method, store, fit_split, predict_split, folds, complete, batch_size,
             allow_store_mismatch) -> Combined:  # fmt: skip
    rows = member_rows(sources, store=store, fit_split=fit_split, predict_split=predict_split,
                       complete=complete, batch_size=batch_size,
                       allow_store_mismatch=allow_store_mismatch,
                       need_fit=method != "mean")  # fmt: skip
    fit, predicted = rows.fit, rows.predicted
    if not fit and method == "mean" and predicted and all(m.labels is not None for m in predicted):
        fit = predicted  # nothing is fitted: labelled predicted rows score the average
    first = (predicted or fit)[0]
    out = Combined(
        method=method,
        members=[str(s.path) for s in sources],
        kinds=[s.kind for s in sources],
        class_names=list(first.class_names),
        fallback=rows.fallback,
    )
    stacker = None
    if fit:
        out.fit_ids, out.fit_labels = list(fit[0].ids), fit[0].labels
        kinds = [m.held_out or "val" for m in fit]  # files written before held_out: val
        out.fitted_on = OOF if set(kinds) == {"oof"} else next(k for k in kinds if k != "oof")
        out.member_acc = [float((m.probs.argmax(1) == out.fit_labels).mean()) for m in fit]
        if method == "mean":
            out.fit_probs = average(fit)
        else:
            lp = log_probs(fit)
            out.fit_probs = cross_fit(lp, out.fit_labels, method=method, folds=folds)
            stacker = Stacker(len(fit), method).fit(lp, out.fit_labels)
            out.mean_weights = stacker.mean_weights(lp)
    if predicted:
        out.ids = list(predicted[0].ids)
        pooled = average if stacker is None else lambda m: stacker.predict_proba(log_probs(m))
        out.probs = pooled(predicted)
        out.checkpoints = [c for m in predicted for c in m.checkpoints]
    else:
        out.checkpoints = [c for m in fit for c in m.checkpoints]
    return out


def check_sources(sources: Sequence[Source], *, store=None, fit_split: str | None = "val",
                  predict: bool = True) -> None:  # fmt: skip
    """Refuse, before any model runs: a missing member, ``fit_on`` given to a member that is
    not a ``.probs.npz``, checkpoints without a store, and, when rows are fitted, a refit's or
    a ``train.py cv`` fold's checkpoint (each trained on the val rows a stack is fitted on)."""
    if store is not None and any(s.kind == "checkpoint" for s in sources):
        open_store(store)  # a store that is not one is named first, before its members
    for s in sources:
        if not s.path.exists():
            if s.kind == "checkpoint":  # predict.py's (and sketchfusion.predict's) own error
                raise CheckpointError(f"checkpoint not found: {s.path}")
            raise CombineError(f"probabilities file not found: {s.path}")
        if s.fit_on is not None and s.kind != "probs":
            raise CombineError(f"{s.path}: only a .probs.npz member takes a --fit_on file")
        if s.kind == "checkpoint":
            if store is None:
                raise CombineError(f"checkpoint {s.path} needs a store to run on (--data.store)")
            run = s.path.parent.parent if s.path.parent.name == "checkpoints" else None
            if run is not None and (run / "refit.json").is_file() and fit_split is not None:
                raise CombineError(  # fusion/refit.py: trained on train and val
                    f"--checkpoint {s.path} is a refit: it trained on the {fit_split} rows a "
                    "stack is fitted on (a leaked, optimistic stack); stack the run it was "
                    "refitted from (RUN/refit.json names it)"
                )
            fold = cv_fold_of(s.path)
            if fold is not None and fit_split is not None:
                raise CombineError(
                    f"--checkpoint {s.path} is a fold of the {fold[1]}-fold CV {fold[0]}: "
                    f"it trained on most of the {fit_split} rows a stack is fitted on (a "
                    f"leaked, optimistic stack); stack CV runs out of fold with --cv {fold[0]}"
                )
        if s.kind == "cv":
            needed = ["oof.probs.npz"] + (["submission.probs.npz"] if predict else [])
            lacking = [n for n in needed if not (s.path / n).is_file()]
            if lacking:
                inside = sorted(str(f.parent) for f in s.path.glob("*/oof.probs.npz"))
                hint = f"; did you mean {' or '.join(inside)}?" if inside else ""
                raise CombineError(
                    f"{s.path} has no {' or '.join(lacking)}: pass a `train.py cv` directory "
                    f"and rerun its command to finish it (finished folds are kept){hint}"
                )


class _Runner:
    """Checkpoints run on the store, each split's labels read once."""

    def __init__(self, store, batch_size: int, allow_store_mismatch: bool) -> None:
        self.store, self.batch_size = store, batch_size
        self.allow_store_mismatch = allow_store_mismatch
        self._labels: dict[str, dict[str, int]] = {}

    def probs(self, checkpoint: Path, split: str) -> tuple[list[str], np.ndarray]:
        # Looked up on its module at each call: tests stand in for it there.
        return predicting.predict_probs([checkpoint], self.store, split, batch_size=self.batch_size,
                             allow_store_mismatch=self.allow_store_mismatch)  # fmt: skip

    def labels(self, split: str, ids: Sequence[str]) -> np.ndarray:
        if split not in self._labels:
            arrays = load_arrays(self.store, split)
            self._labels[split] = dict(zip(arrays.ids, arrays.labels.tolist(), strict=True))
        by_id = self._labels[split]
        return np.array([by_id[i] for i in ids], dtype=np.int64)

    def class_names(self) -> list[str]:
        return list(open_store(self.store).class_names)


def _fit_member(s: Source, split: str | None, run: _Runner) -> Member | None:
    """A member's labelled rows it did not train on, or None when it has none."""
    if s.kind == "cv":
        return load_probs(s.path / "oof.probs.npz")
    if s.kind == "probs":
        if s.fit_on is None:
            return None
        m = load_probs(s.fit_on)
        if m.labels is None:
            raise CombineError(
                f"--fit_on {s.fit_on} holds no labels; give a labelled val or out-of-fold "
                "file (RUN/val.probs.npz or CV/oof.probs.npz)"
            )
        return m
    if split is None:
        return None
    ids, probs = run.probs(s.path, split)
    return Member(s.path, ids, probs, run.class_names(), run.labels(split, ids),
                  [str(s.path)], held_out=split)  # fmt: skip


def _predict_member(s: Source, split: str, run: _Runner, complete: bool):
    """A member's predicted rows and the failure rows a checkpoint's got the prior for."""
    if s.kind == "cv":
        return load_probs(s.path / "submission.probs.npz"), []
    if s.kind == "probs":
        return load_probs(s.path), []
    ids, probs = run.probs(s.path, split)
    failed: list[dict] = []
    if complete:
        ids, probs, failed = complete_split(run.store, split, ids, probs)
    return Member(s.path, list(ids), probs, run.class_names(), None, [str(s.path)]), failed


def _align_fit(fit: Sequence[Member]) -> list[Member]:
    """The members' labelled rows on the ids of the member with the fewest, in its order;
    every other member must hold them all, with the same labels and classes."""
    ref = min(fit, key=lambda m: len(m.ids))
    if len(set(ref.ids)) != len(ref.ids):
        raise CombineError(f"{ref.path}: duplicate ids")
    out = []
    for m in fit:
        if m.class_names != ref.class_names:
            raise CombineError(
                f"{m.path}: class order differs from {ref.path} ({len(m.class_names)} vs "
                f"{len(ref.class_names)} classes); combine members trained on stores with the "
                "same class list"
            )
        position = {i: n for n, i in enumerate(m.ids)}
        lacking = [i for i in ref.ids if i not in position]
        if lacking:
            raise CombineError(
                f"{m.path}: lacks {len(lacking)} of the {len(ref.ids)} labelled rows of "
                f"{ref.path} (e.g. {lacking[:3]}); combine members of the same store"
            )
        rows = np.fromiter((position[i] for i in ref.ids), dtype=np.int64, count=len(ref.ids))
        labels = m.labels[rows]
        if (labels != ref.labels).any():
            raise CombineError(
                f"{m.path}: labels differ from {ref.path} on the same ids; combine members "
                "of the same store"
            )
        out.append(Member(m.path, list(ref.ids), m.probs[rows], m.class_names, labels,
                          m.checkpoints, m.held_out))  # fmt: skip
    return out


def _check_disjoint(fit: Sequence[Member], predicted: Sequence[Member]) -> None:
    overlap = set(fit[0].ids) & set(predicted[0].ids)
    if overlap:
        raise CombineError(
            f"{len(overlap)} ids (e.g. {sorted(overlap)[:3]}) are both fitted ({fit[0].path}) "
            f"and predicted ({predicted[0].path}); fit on out-of-fold or val rows, not on the "
            "predicted ones"
        )


def predict_submission(
    checkpoints: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    out: str | os.PathLike = "submission.csv",
    *,
    split: str = "test",
    batch_size: int = 4096,
    strict: bool = False,
    allow_store_mismatch: bool = False,
    category: str = "index",
    message: str | None = None,
) -> tuple[Path, Path]:
    """What ``predict.py`` does (and ``sketchfusion.predict``): refuse outputs that are
    inputs (``fusion.predict.check_outputs``), predict ``split`` with ``checkpoints``
    averaged (:func:`combine`, method ``mean``: ``predict.py --checkpoint A --checkpoint B``
    is the alias of ``train.py stack --stack.method mean``), write the submission
    (``fusion.predict.submit``, which gives the inputs that failed extraction the prior, or
    refuses them with ``strict``); the submission's and its probabilities' paths."""
    checkpoints = [str(c) for c in checkpoints]
    check_outputs(Path(out), checkpoints, store)
    other = next((c for c in checkpoints if Source(Path(c)).kind != "checkpoint"), None)
    if other is not None and Path(other).exists():
        raise CombineError(
            f"--checkpoint {other} is not a checkpoint; combine CV directories and .probs.npz "
            "files with train.py stack --cv/--probs (or predict.py ensemble --probs)"
        )
    got = combine(checkpoints, "mean", store=store, fit_split=None, predict_split=split,
                  complete=False, batch_size=batch_size,
                  allow_store_mismatch=allow_store_mismatch)  # fmt: skip
    return submit(out, got.ids, got.probs, store=store, split=split, checkpoints=checkpoints,
                  strict=strict, category=category, message=message)  # fmt: skip
