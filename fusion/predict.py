"""Inference and the checkpoint contract: load a trained head from its checkpoint
(``torch.load(weights_only=True)``, rebuilt from its own plain hyper-parameters), refuse it
where its dims, class names or store model fingerprint differ from the store's, predict a
split's class probabilities, and write a submission of them (:func:`submit`), inputs that
failed extraction predicted from the train split's class prior.

$ python -c "from fusion.predict import predict_probs; print(predict_probs(['RUN/checkpoints/best.ckpt'], 'stores/demo', 'test')[1].shape)"

The command over it, its options and outputs: fusion/commands/predict.py (``predict.py``).
"""

from __future__ import annotations

import os
import pickle
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from feature_store import (
    StoreError,
    StoreInfo,
    load_arrays,
    load_features,
    open_store,
    read_failures,
)
from feature_store.atomic import write_csv
from feature_store.console import show_path
from feature_store.integrity import fingerprint_diff, model_fingerprint
from feature_store.sets import entry
from fusion.errors import FusionError
from fusion.heads import FusionHead, build_head, checkpoint_set_dims
from fusion.submission import SubmissionError, write_submission

FINGERPRINT_KEY = "store_fingerprint"  # written by fusion.callbacks.StoreFingerprint


class CheckpointError(FusionError, ValueError):
    """A file given as a checkpoint is not a readable train.py checkpoint."""


def load_checkpoint(path: str | os.PathLike) -> dict:
    """``torch.load(path, weights_only=True)`` of a train.py checkpoint, or CheckpointError.

    The error names the file and says to pass a train.py checkpoint; never torch's advice
    to load with ``weights_only=False`` (which would run code from an untrusted file).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile,
            pickle.UnpicklingError) as err:  # fmt: skip
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        raise CheckpointError(
            f"{path} is not a readable train.py checkpoint (truncated, another format, or "
            f"holding objects other than plain weights: {type(err).__name__} {first}); pass "
            "RUN/checkpoints/best.ckpt or last.ckpt written by `python train.py fit`."
        ) from err
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not hp or "head" not in hp or "class_names" not in hp or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{path} has no fusion-head hyper-parameters; pass a checkpoint written "
            "by `python train.py fit` (RUN/checkpoints/best.ckpt or last.ckpt)."
        )
    return ckpt


def load_head(checkpoint: str | os.PathLike) -> tuple[FusionHead, dict]:
    """The head of a training checkpoint, in eval mode, and its hyper-parameters.

    The returned hyper-parameters also carry the checkpoint's store fingerprint under
    :data:`FINGERPRINT_KEY` (None for checkpoints written before it was recorded).
    """
    from fusion.module import head_options  # Lightning: imported when needed, not for --help

    ckpt = load_checkpoint(checkpoint)
    hp = ckpt["hyper_parameters"]
    head = build_head(
        hp["head"],
        set_dims=checkpoint_set_dims(hp),
        num_classes=len(hp["class_names"]),
        **head_options(hp),
    )
    state = {k[5:]: v for k, v in ckpt["state_dict"].items() if k.startswith("head.")}
    try:  # strict: a key or shape mismatch means another version's head
        head.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(
            f"{checkpoint}: its weights do not fit this version's {hp['head']!r} head "
            f"({str(err).strip().splitlines()[0][:160]}); retrain it with this train.py."
        ) from err
    return head.eval(), {**hp, FINGERPRINT_KEY: ckpt.get(FINGERPRINT_KEY)}


def check_fingerprint(hparams: dict, info: StoreInfo, checkpoint: str | os.PathLike) -> None:
    """Raise :class:`StoreError` listing how the store's models differ from training's."""
    saved = hparams.get(FINGERPRINT_KEY)
    flag = "pass --allow_store_mismatch to predict anyway"
    if saved is None:
        raise StoreError(
            f"{checkpoint} does not record the models of its training store (written before "
            "store fingerprints); retrain it, or, if the store was built with the same "
            f"models, pooling and preprocessing, {flag}."
        )
    diffs = fingerprint_diff(saved, model_fingerprint(info, list(checkpoint_set_dims(hparams))))
    if diffs:
        raise StoreError(
            f"{info.root} was built with other models than {checkpoint}'s training store "
            f"(training -> this store): {'; '.join(diffs[:6])}"
            f"{'; ...' if len(diffs) > 6 else ''}. Predict on a store built with the same "
            f"prep config, or {flag}."
        )


def check_compatible(hparams: dict, info: StoreInfo, checkpoint: str | os.PathLike) -> None:
    """Raise :class:`StoreError` naming every dim or class-list difference."""
    diffs = []
    names = info.feature_names
    for name, dim in checkpoint_set_dims(hparams).items():
        if name not in names:
            diffs.append(f"set {name!r}: in the checkpoint, not in the store (it has {names})")
        elif int(entry(info, name)["dim"]) != dim:
            diffs.append(
                f"set {name!r} dim: checkpoint {dim}, store {int(entry(info, name)['dim'])}"
            )
    ckpt_names, store_names = list(hparams["class_names"]), info.class_names
    if len(ckpt_names) != len(store_names):
        diffs.append(f"class count: checkpoint {len(ckpt_names)}, store {len(store_names)}")
    elif ckpt_names != store_names:
        i = next(i for i, (a, b) in enumerate(zip(ckpt_names, store_names, strict=True)) if a != b)
        diffs.append(
            f"class names: first difference at label {i} "
            f"(checkpoint {ckpt_names[i]!r}, store {store_names[i]!r})"
        )
    if diffs:
        raise StoreError(
            f"{checkpoint} does not match the store {info.root}: {'; '.join(diffs)}. "
            "Predict with a store built by the same models and class list as the training store."
        )


@torch.inference_mode()
def head_probs(
    head: FusionHead, inputs: Sequence[np.ndarray], *, batch_size: int = 4096
) -> np.ndarray:
    """Softmax probabilities of ``head`` over in-memory feature sets (one array per set, in
    the head's input order), in batches."""
    xs = [torch.from_numpy(np.ascontiguousarray(x)) for x in inputs]
    rows = len(xs[0]) if xs else 0
    out = [
        head(*(x[i : i + batch_size] for x in xs)).softmax(dim=1)
        for i in range(0, rows, batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def predict_probs(
    checkpoints: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    split: str = "test",
    *,
    batch_size: int = 4096,
    allow_store_mismatch: bool = False,
) -> tuple[list[str], np.ndarray]:
    """``(ids, probs)`` for the stored rows of ``split``, averaged over ``checkpoints``.

    Refuses a store whose dims, classes or (unless ``allow_store_mismatch``) model
    fingerprint differ from a checkpoint's, and NaN or infinite probabilities.
    """
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    info = open_store(store)
    heads = []
    for path in checkpoints:
        head, hp = load_head(path)
        check_compatible(hp, info, path)
        if not allow_store_mismatch:
            check_fingerprint(hp, info, path)
        heads.append((head, list(checkpoint_set_dims(hp))))
    # Every set any checkpoint reads, loaded once (members may read different sets).
    wanted = list(dict.fromkeys(n for _, sets in heads for n in sets))
    arrays = load_features(store, split, wanted)
    probs = np.zeros((len(arrays), info.num_classes), dtype=np.float64)
    if len(arrays):
        for head, sets in heads:
            probs += head_probs(head, [arrays[n] for n in sets], batch_size=batch_size)
    probs /= len(heads)
    bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
    if len(bad):
        ids = [arrays.ids[i] for i in bad[:5]]
        raise StoreError(
            f"{info.root}/{split}: {len(bad)} rows give NaN or infinite probabilities (ids "
            f"{ids}); their embeddings are not finite. Rebuild the store with data_prep, "
            "which lists such rows in failures.csv instead of storing them."
        )
    return arrays.ids, probs.astype(np.float32)


def class_prior(store: str | os.PathLike, split: str = "train") -> np.ndarray:
    """Class frequencies of the store's ``split`` (uniform when it has no labelled rows)."""
    info = open_store(store)
    counts = np.zeros(info.num_classes, dtype=np.float64)
    if split in info.splits:
        labels = load_arrays(store, split).labels
        labels = labels[(labels >= 0) & (labels < info.num_classes)]
        counts += np.bincount(labels, minlength=info.num_classes)
    if counts.sum() == 0:
        counts[:] = 1.0
    return (counts / counts.sum()).astype(np.float32)


def complete_split(
    store: str | os.PathLike, split: str, ids: list[str], probs: np.ndarray
) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """Add a row for every input of ``split`` that failed extraction (``failures.csv``).

    Such an input has no embedding: its probabilities are the train class prior, the
    documented fallback (its argmax is the most frequent train class). Returns the ids
    and probabilities of every input, in id order when the stored ids were, and the
    failure rows used. Raises StoreError when the manifest counts inputs that neither the
    store nor failures.csv accounts for.
    """
    info = open_store(store)
    failed = [r for r in read_failures(store, split) if r.get("id") and r["id"] not in ids]
    counts = info.manifest["splits"].get(split, {})
    inputs = int(counts.get("inputs", len(ids)))
    if len(ids) + len(failed) != inputs:
        raise StoreError(
            f"{info.root}: split {split!r} has {inputs} inputs but {len(ids)} rows and "
            f"{len(failed)} failures with an id; rerun the data_prep command that built it."
        )
    if not failed:
        return ids, probs, []
    prior = class_prior(store)
    all_ids = list(ids) + [r["id"] for r in failed]
    all_probs = np.concatenate(
        [probs.reshape(len(ids), len(prior)), np.tile(prior, (len(failed), 1))]
    )
    if ids == sorted(ids):  # data_prep stores rows in id order: keep the submission so
        order = sorted(range(len(all_ids)), key=all_ids.__getitem__)
        all_ids, all_probs = [all_ids[i] for i in order], all_probs[order]
    return all_ids, all_probs.astype(np.float32), failed


def write_predictions_csv(
    path: Path, ids: Sequence[str], labels: np.ndarray, probs: np.ndarray
) -> Path:
    """``id,label,pred,confidence``: each row's true label, argmax and its probability (the
    ``val_predictions.csv`` of fits, probes and stacks)."""
    rows = (
        (i, int(y), int(p), f"{c:.6f}")
        for i, y, p, c in zip(ids, labels, probs.argmax(axis=1), probs.max(axis=1), strict=True)
    )
    write_csv(path, ["id", "label", "pred", "confidence"], rows)
    return path


def submit(
    out: str | os.PathLike,
    ids: list[str],
    probs: np.ndarray,
    *,
    store: str | os.PathLike,
    split: str,
    checkpoints: Sequence[str | os.PathLike],
    strict: bool = False,
    category: str = "index",
    candidate: str = "predict",
    message: str | None = None,
    meta: dict | None = None,
) -> tuple[Path, Path]:
    """Write the submission of ``split`` from its stored rows' probabilities; both paths.

    The one implementation behind ``predict.py``, ``train.py predict``, a fit's own
    submission and ``sketchfusion.predict``: every input that failed extraction gets a row
    with the train class prior (a warning lists them; ``strict`` refuses them), then
    ``OUT``, ``OUT.probs.npz`` and ``OUT.json`` are written (fusion/submission.py). It
    starts no W&B run. Bad input raises :class:`StoreError` or :class:`SubmissionError`
    (one line, the fix; the command layer adds the command's name).
    """
    out = Path(out)
    ids, probs, failed = complete_split(store, split, ids, probs)
    class_names = open_store(store).class_names
    if failed:
        listed = ", ".join(f"{r['id']} ({r['reason']})" for r in failed[:10])
        more = f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        if strict:
            raise SubmissionError(
                f"{len(failed)} {split} inputs failed extraction "
                f"({listed}{more}); --strict refuses a submission with fallback rows. Fix "
                f"or replace the images listed in {show_path(Path(store) / 'failures.csv')} and "
                "rerun data_prep, or drop --strict."
            )
        print(
            f"WARNING: {len(failed)} {split} inputs failed extraction and have no "
            f"embedding; their rows use the fallback (the train class prior, class "
            f"{int(probs[ids.index(failed[0]['id'])].argmax())}): {listed}{more}. "
            f"See {show_path(Path(store) / 'failures.csv')}; --strict fails instead.",
            file=sys.stderr,
        )
    try:
        out, npz = write_submission(
            out,
            ids,
            probs,
            class_names=class_names,
            checkpoints=checkpoints,
            category=category,
            candidate=candidate,
            message=message,
            meta={
                "store": str(store),
                "split": split,
                "fallback_rows": len(failed),
                **(meta or {}),
            },
        )
    except OSError as err:
        raise SubmissionError(
            f"cannot write {out} ({err.strerror or err}); choose a writable --out path."
        ) from err
    print(
        f"wrote {show_path(out)} ({len(ids)} rows, {len(checkpoints)} checkpoint(s)) "
        f"and {show_path(npz)}"
    )
    return out, npz

