"""Ensemble saved ``.probs.npz`` files into one submission, without re-running any model.

$ python predict.py ensemble --probs runs/concat/cv5/submission.probs.npz \\
      --probs runs/gated/cv5/submission.probs.npz --out ens.csv --message "concat+gated"
$ python predict.py ensemble --probs A/submission.probs.npz --probs B/submission.probs.npz \\
      --fit_on A/oof.probs.npz --fit_on B/oof.probs.npz --method weights --out ens.csv

Members are ``.probs.npz`` files (``predict.py`` writes ``OUT.probs.npz``, every fit
``RUN/val.probs.npz``, ``train.py cv`` ``CV/oof.probs.npz`` and ``CV/submission.probs.npz``).
All members must hold the same ids (rows are aligned by id) and the same class names in
the same order; anything else is refused with the file named.

An alias of ``train.py stack --probs A --fit_on FA --probs B --fit_on FB --stack.method M``
(:func:`fusion.combine.combine`, the same pooling and the same submission files) that
writes ``OUT`` instead of a run directory. Its ``--method`` default is what it always was,
named on stderr when it applies: ``mean`` (the members' probabilities averaged) without
``--fit_on``, ``weights`` with it (``train.py stack`` defaults to ``logistic``). With
``--fit_on`` the pooling is fitted by ``fusion/stacking.py``'s :class:`Stacker` on
labelled probabilities of the same members on *other* rows: out-of-fold
(``CV/oof.probs.npz``) or val (``RUN/val.probs.npz``) files, in the same member order. Rows that are scored are never fitted on: an id in both
the fitted and the scored files is refused, and the accuracy printed for the fitted rows
is cross-fitted (each row scored by weights fitted on the other folds).

Each ``--fit_on`` file must be its member's own (they record the checkpoints that made
them). Writes ``OUT`` (``Id,Category``; ``--category index|name``), ``OUT.probs.npz`` and
``OUT.json`` (members, weights, scores, ``--message``): the metadata of what ``kaggle
competitions submit -f OUT -m MESSAGE`` uploads, which ``--kaggle COMPETITION`` runs
(fusion/submission.py). The ensemble is a W&B run (candidate ``ensemble``, in ``OUT``'s
folder ``wandb/``) with its score (``best/oof/acc_top1`` or ``best/val/acc_top1``) and
the submission as an artifact. ``OUT`` must be a CSV path whose three files replace no input and no
other command's files (``--out CV/oof.csv`` would replace ``CV/oof.probs.npz``); an
earlier ensemble's own output is replaced.
"""

from __future__ import annotations

import json
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from feature_store.atomic import atomic_write_text
from fusion.errors import FusionError
from fusion.submission import metadata_path, probs_path, read_metadata, write_submission


class EnsembleError(FusionError, ValueError):
    """Members that cannot be ensembled (unreadable, other ids, other classes)."""


@dataclass
class Member:
    path: Path
    ids: list[str]
    probs: np.ndarray  # [N, C]
    class_names: list[str]
    labels: np.ndarray | None
    checkpoints: list[str]
    held_out: str | None = None  # "val" or "oof": the labelled rows' kind (save_probs)


def load_probs(path: str | Path) -> Member:
    """A ``.probs.npz`` file, checked to be well formed."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as err:
        # A truncated file (a copy cut short, a full disk) is a BadZipFile, or a zlib or
        # EOF error when only one of its arrays is cut.
        raise EnsembleError(
            f"{path} is not a readable .probs.npz ({type(err).__name__}); pass a file "
            "written by predict.py, train.py fit (RUN/val.probs.npz) or train.py cv."
        ) from err
    missing = {"ids", "probs", "class_names"} - set(data)
    probs = data.get("probs")
    if missing or probs.ndim != 2 or probs.shape != (len(data["ids"]), len(data["class_names"])):
        raise EnsembleError(
            f"{path}: expected arrays ids [N], probs [N, classes], class_names [classes]"
            + (f"; missing {sorted(missing)}" if missing else f", got probs {probs.shape}")
        )
    if not np.isfinite(probs).all():
        raise EnsembleError(f"{path}: probs holds NaN or infinite values; regenerate it")
    return Member(
        path=path,
        ids=data["ids"].tolist(),
        probs=probs.astype(np.float32),
        class_names=data["class_names"].tolist(),
        labels=data.get("labels"),
        checkpoints=data.get("checkpoints", np.array([], dtype=str)).tolist(),
        held_out=str(data["held_out"]) if "held_out" in data else None,
    )


def check_members(members: Sequence[Member]) -> list[Member]:
    """The members with rows in the first member's id order; refuse other ids or classes."""
    if not members:
        raise EnsembleError("no members to ensemble")
    first = members[0]
    if len(set(first.ids)) != len(first.ids):
        raise EnsembleError(f"{first.path}: duplicate ids")
    position = {i: n for n, i in enumerate(first.ids)}
    out = [first]
    for m in members[1:]:
        if m.class_names != first.class_names:
            diff = next(
                (
                    n
                    for n, (a, b) in enumerate(zip(m.class_names, first.class_names, strict=False))
                    if a != b
                ),
                min(len(m.class_names), len(first.class_names)),
            )
            raise EnsembleError(
                f"{m.path}: class order differs from {first.path} (first at label {diff}, "
                f"{len(m.class_names)} vs {len(first.class_names)} classes); ensemble "
                "members trained on stores with the same class list."
            )
        if len(m.ids) != len(first.ids) or set(m.ids) != position.keys():
            extra = sorted(set(m.ids) - position.keys())[:3]
            lacking = sorted(position.keys() - set(m.ids))[:3]
            raise EnsembleError(
                f"{m.path}: ids differ from {first.path} ({len(m.ids)} vs "
                f"{len(first.ids)} rows; only here: {extra}, only there: {lacking}); "
                "ensemble predictions of the same split of the same store."
            )
        if m.ids == first.ids:  # the usual case: same split, same store order; no copy
            out.append(m)
            continue
        order = np.fromiter((position[i] for i in m.ids), dtype=np.int64, count=len(m.ids))
        inverse = np.empty_like(order)
        inverse[order] = np.arange(len(order))
        labels = m.labels[inverse] if m.labels is not None else None
        out.append(
            Member(
                m.path,
                first.ids,
                m.probs[inverse],
                m.class_names,
                labels,
                m.checkpoints,
                m.held_out,
            )  # fmt: skip
        )
    return out


def average(members: Sequence[Member]) -> np.ndarray:
    """The members' probabilities averaged (aligned members, see :func:`check_members`)."""
    total = np.zeros_like(members[0].probs, dtype=np.float64)
    for m in members:
        total += m.probs
    return (total / len(members)).astype(np.float32)


def log_probs(members: Sequence[Member]) -> np.ndarray:
    return np.log(np.clip(np.stack([m.probs for m in members]), 1e-12, None))


def _paths(paths) -> set[Path]:
    return {Path(p).resolve() for p in paths}


def check_out(out: Path, inputs: Sequence[str]) -> None:
    """Refuse an ``--out`` whose CSV, ``.probs.npz`` or ``.json`` would be one file, or would
    overwrite an input or another command's probabilities (``CV/oof.probs.npz`` for
    ``--out CV/oof.csv``): only an earlier ``predict.py ensemble`` output is replaced."""
    npz, meta = probs_path(out), out.with_suffix(".json")
    if len({out, npz, meta}) < 3 or out.name.endswith(".npz"):
        raise EnsembleError(
            f"--out {out}: the submission CSV, {npz.name} and {meta.name} are written beside "
            "each other and must be three files; give a .csv path such as ensemble.csv"
        )
    taken = _paths(inputs) & _paths((out, npz, meta))
    if taken:
        raise EnsembleError(f"--out {out} would overwrite the input {sorted(taken)[0]}; "
                            "choose another --out")  # fmt: skip
    if npz.exists() and not _ensemble_output(meta, out):
        raise EnsembleError(
            f"--out {out} would overwrite {npz}, which another command wrote (train.py cv, "
            "fit or predict.py); choose another --out"
        )
    if out.is_dir():
        raise EnsembleError(f"--out {out} is a directory; give a file such as {out / 'ens.csv'}")


def _ensemble_output(meta: Path, out: Path) -> bool:
    """Whether ``meta`` is the metadata of an earlier ``predict.py ensemble --out out``
    (``candidate: ensemble``; older ensembles wrote no candidate, and only they and
    ``train.py cv``, with ``kind``, wrote metadata at all)."""
    try:
        info = json.loads(meta.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(info, dict) or info.get("submission") != str(out):
        return False
    return info.get("candidate", "ensemble" if "kind" not in info else None) == "ensemble"


def check_fit_on_order(fit: Sequence[Member], members: Sequence[Member]) -> None:
    """Refuse ``--fit_on`` files that are not the ``--probs`` members' own, in that order.

    Each file records the checkpoints that made it; a fit file and its member share them
    (a fit's ``val.probs.npz`` and its predictions; a CV's ``oof`` and ``submission``)."""

    def made_by(m: Member) -> set[str]:
        return {str(Path(c).resolve()) if Path(c).exists() else c for c in m.checkpoints}

    for f, m in zip(fit, members, strict=True):
        mine = made_by(f)
        if not mine or not made_by(m) or mine & made_by(m):
            continue  # files that record no checkpoints cannot be checked
        other = next((o.path for o in members if mine & made_by(o)), None)
        where = f"the member {other}'s" if other else "none of the --probs members'"
        raise EnsembleError(
            f"--fit_on {f.path} is {where}, not {m.path}'s (other checkpoints); give "
            "--fit_on files in --probs order, one per member"
        )


def write_ensemble(
    out: str | Path,
    members: Sequence[Member],
    probs: np.ndarray,
    *,
    meta: dict,
    message: str | None = None,
    category: str = "index",
    candidate: str = "ensemble",
) -> Path:
    """``OUT`` (Id,Category), ``OUT.probs.npz`` and ``OUT.json`` (the submission's metadata,
    with the members and ``meta``), by fusion/submission.py's one writer."""
    out, _ = write_submission(
        out,
        members[0].ids,
        probs,
        class_names=members[0].class_names,
        checkpoints=[c for m in members for c in m.checkpoints],
        category=category,
        candidate=candidate,
        message=message,
        meta={"members": [str(m.path) for m in members], **meta},
    )
    return out


def log_run(out: Path, args, score: dict, meta: dict) -> None:
    """The ensemble's W&B run (candidate ``ensemble``) in ``OUT``'s folder (``wandb/``), a
    new run each time, named after ``OUT``; its id goes into ``OUT.json``."""
    # W&B and Lightning load only when a run is logged, not for the command's --help.
    from fusion.loggers import new_run_id
    from fusion.wandb_report import candidate_settings, log_candidate

    settings = candidate_settings(out.parent, args, kind="ensemble")
    # OUT's folder may hold other runs (and their wandb_run_id): this run is its own.
    settings.update(id=new_run_id(), name=out.stem)
    run_id = log_candidate(
        out.parent,
        candidate="ensemble",
        settings=settings,
        config={k: v for k, v in args.as_dict().items() if k != "config"},
        summary={**score, **{f"ensemble/{k}": v for k, v in meta.items() if k != "fit_on"}},
        submission=out,
        keep_id=False,
    )
    if run_id:
        info = read_metadata(out)
        info["wandb_run_id"] = run_id
        atomic_write_text(metadata_path(out), json.dumps(info, indent=2) + "\n")
