"""Predict a store split with one or more trained heads and write a Kaggle submission.

$ python predict.py --checkpoint runs/concat/RUN/checkpoints/best.ckpt --store stores/kaggle \\
      --out submission.csv
$ python predict.py --checkpoint A.ckpt --checkpoint B.ckpt --store STORE --out ens.csv

Writes ``OUT`` (``Id,Category``, one row per id of the split) and ``OUT`` with suffix
``.probs.npz`` (``ids``, ``probs`` [N, classes], ``class_names``, ``checkpoints``) so runs
can be averaged later. Several ``--checkpoint`` average their class probabilities. Each
checkpoint is rebuilt from its own plain hyper-parameters (``torch.load(weights_only=True)``)
and refused if its dims or class names differ from the store's.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from feature_store import StoreError, StoreInfo, load_arrays, open_store
from fusion.heads import FusionHead, build_head
from fusion.module import head_options


def load_head(checkpoint: str | os.PathLike) -> tuple[FusionHead, dict]:
    """The head of a training checkpoint, in eval mode, and its hyper-parameters."""
    ckpt = torch.load(Path(checkpoint), map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters")
    if not hp or "head" not in hp or "class_names" not in hp:
        raise ValueError(
            f"{checkpoint} has no fusion-head hyper-parameters; pass a checkpoint written "
            "by `python train.py fit` (RUN/checkpoints/best.ckpt or last.ckpt)."
        )
    head = build_head(
        hp["head"],
        image_dim=hp["image_dim"],
        text_dim=hp["text_dim"],
        num_classes=len(hp["class_names"]),
        **head_options(hp),
    )
    state = {k[5:]: v for k, v in ckpt["state_dict"].items() if k.startswith("head.")}
    head.load_state_dict(state)  # strict: a key mismatch means a different head version
    return head.eval(), dict(hp)


def check_compatible(hparams: dict, info: StoreInfo, checkpoint: str | os.PathLike) -> None:
    """Raise :class:`StoreError` naming every dim or class-list difference."""
    diffs = []
    for key, store_value in (("image_dim", info.image_dim), ("text_dim", info.text_dim)):
        if int(hparams[key]) != store_value:
            diffs.append(f"{key}: checkpoint {hparams[key]}, store {store_value}")
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
    head: FusionHead, image: np.ndarray, text: np.ndarray, *, batch_size: int = 4096
) -> np.ndarray:
    """Softmax probabilities of ``head`` over in-memory embeddings, in batches."""
    image_t, text_t = torch.from_numpy(image), torch.from_numpy(text)
    out = [
        head(image_t[i : i + batch_size], text_t[i : i + batch_size]).softmax(dim=1)
        for i in range(0, len(image_t), batch_size)
    ]
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def predict_probs(
    checkpoints: Sequence[str | os.PathLike],
    store: str | os.PathLike,
    split: str = "test",
    *,
    batch_size: int = 4096,
) -> tuple[list[str], np.ndarray]:
    """``(ids, probs)`` for ``split``: class probabilities averaged over ``checkpoints``."""
    if not checkpoints:
        raise ValueError("give at least one checkpoint")
    info = open_store(store)
    heads = []
    for path in checkpoints:
        head, hp = load_head(path)
        check_compatible(hp, info, path)
        heads.append(head)
    arrays = load_arrays(store, split)
    probs = np.zeros((len(arrays), info.num_classes), dtype=np.float64)
    for head in heads:
        probs += head_probs(head, arrays.image_emb, arrays.text_emb, batch_size=batch_size)
    return arrays.ids, (probs / len(heads)).astype(np.float32)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: Path, header: Sequence[str], rows) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())


def probs_path(out: str | os.PathLike) -> Path:
    """Where the probabilities beside submission ``out`` go: ``OUT.probs.npz``."""
    out = Path(out)
    return out.with_name(out.stem + ".probs.npz")


def write_submission(
    out: str | os.PathLike,
    ids: Sequence[str],
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    checkpoints: Sequence[str | os.PathLike] = (),
) -> tuple[Path, Path]:
    """Write ``Id,Category`` (argmax) and the probabilities; return both paths."""
    out = Path(out)
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate ids in the predicted split; {out} not written")
    preds = probs.argmax(axis=1)
    write_csv(out, ["Id", "Category"], zip(ids, preds.tolist(), strict=True))
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        ids=np.asarray(ids, dtype=str),
        probs=probs.astype(np.float32),
        class_names=np.asarray(class_names, dtype=str),
        checkpoints=np.asarray([str(c) for c in checkpoints], dtype=str),
    )
    npz = probs_path(out)
    atomic_write_bytes(npz, buf.getvalue())
    return out, npz


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkpoint",
        action="append",
        required=True,
        help="a train.py checkpoint (.ckpt); repeat to average several runs' probabilities",
    )
    parser.add_argument("--store", required=True, help="feature-store directory")
    parser.add_argument("--out", default="submission.csv", help="submission CSV to write")
    parser.add_argument("--split", default="test", help="store split to predict (default test)")
    parser.add_argument("--batch_size", type=int, default=4096)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> Path:
    """Entry point of ``predict.py``; returns the submission path."""
    args = parse_args(argv)
    missing = [c for c in args.checkpoint if not Path(c).is_file()]
    if missing:
        raise SystemExit(f"checkpoint not found: {', '.join(missing)}")
    try:
        ids, probs = predict_probs(
            args.checkpoint, args.store, args.split, batch_size=args.batch_size
        )
    except StoreError as err:
        raise SystemExit(str(err)) from err
    out, npz = write_submission(
        args.out,
        ids,
        probs,
        class_names=open_store(args.store).class_names,
        checkpoints=args.checkpoint,
    )
    print(f"wrote {out} ({len(ids)} rows, {len(args.checkpoint)} checkpoint(s)) and {npz}")
    return out
