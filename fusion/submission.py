"""The one submission writer: ``Id,Category``, its probabilities, its metadata, and Kaggle.

$ python predict.py --checkpoint RUN/checkpoints/best.ckpt --store S --out sub.csv \\
      --category index --kaggle mva-recvis-2024 --message "concat, lr 0.1"

Every command that writes a submission (``train.py fit``/``predict``/``probe``/``stack``/
``cv``, ``predict.py`` and ``predict.py ensemble``) writes it with :func:`write_submission`:

- ``OUT``: ``Id,Category``, one row per id. ``--category index`` (the default) writes the
  class's index in the store's class list (the sorted train folder names, torchvision's
  ImageFolder order): what mva-recvis-2024's sample submission holds. ``--category name``
  writes the class name instead, for competitions whose sample submission has names.
- ``OUT.probs.npz``: every class's probability (``fusion/ensemble.py`` reads it).
- ``OUT.json``: the metadata: which candidate wrote it (``fit``, ``probe``, ``cv``,
  ``stack``, ``ensemble``, ``predict``), the message, the checkpoints and members, the
  score, the ``kaggle`` command and, once sent (:func:`send_to_kaggle`), the command run and
  its exit status.

``--kaggle COMPETITION --message M`` then runs the official client, ``kaggle competitions
submit -c COMPETITION -f OUT -m M`` (``pip install 'sketchfusion[kaggle]'`` or ``pip
install kaggle``, with an API token in ``~/.kaggle/kaggle.json``). Without the client the
submission stays written and the command exits 2 with the install line.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from feature_store.atomic import atomic_write_bytes, write_csv
from fusion.errors import FusionError, RunFailed

CATEGORIES = ("index", "name")
# mva-recvis-2024's sample submission: Id,Category with the class index (docs/architecture.md).
DEFAULT_CATEGORY = "index"
KAGGLE_INSTALL = "pip install 'sketchfusion[kaggle]' (or pip install kaggle)"


class SubmissionError(FusionError, ValueError):
    """A submission that cannot be written as asked (duplicate ids, an unknown format)."""


class KaggleClientMissing(FusionError, RuntimeError):
    """``--kaggle`` was given but no ``kaggle`` executable is on PATH."""


class KaggleUploadFailed(RunFailed):
    """``kaggle competitions submit`` exited non-zero; the submission stays written."""


def _now_utc() -> str:
    """``2026-01-01T12:00:00Z`` (isoformat: strftime goes through ``time.strftime``)."""
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0, tzinfo=None)
    return now.isoformat() + "Z"


def metadata_path(out: str | os.PathLike) -> Path:
    """``OUT.json``: the metadata beside submission ``OUT``."""
    return Path(out).with_suffix(".json")


def probs_path(out: str | os.PathLike) -> Path:
    """Where the probabilities beside submission ``out`` go: ``OUT.probs.npz``."""
    out = Path(out)
    return out.with_name(out.stem + ".probs.npz")


def save_probs(
    path: str | os.PathLike,
    ids: Sequence[str],
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    checkpoints: Sequence[str | os.PathLike] = (),
    labels: np.ndarray | None = None,
    held_out: str | None = None,
) -> Path:
    """Write a ``.probs.npz`` (``ids``, ``probs``, ``class_names``, ``checkpoints`` and,
    for a labelled split, ``labels`` and ``held_out``: ``val`` or ``oof``, the rows a score
    on them is named after) atomically; ``fusion/ensemble.py`` reads them."""
    arrays = {
        "ids": np.asarray(ids, dtype=str),
        "probs": probs.astype(np.float32),
        "class_names": np.asarray(class_names, dtype=str),
        "checkpoints": np.asarray([str(c) for c in checkpoints], dtype=str),
    }
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    if held_out is not None:
        arrays["held_out"] = np.asarray(held_out, dtype=str)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def check_outputs(out: Path, checkpoints: Sequence[str], store: str | os.PathLike) -> None:
    """Refuse (:class:`SubmissionError`) outputs that would overwrite an input or land
    inside the store, and an ``out`` that is not a file of its own beside its
    ``.probs.npz`` and ``.json``."""
    store_dir = Path(store).resolve()
    if out.suffix in (".json", ".npz"):
        raise SubmissionError(f"--out {out}: the submission's {out.suffix} file is written "
                              "beside it; give a .csv path such as submission.csv")  # fmt: skip
    for target in (out, probs_path(out), metadata_path(out)):
        resolved = target.resolve()
        if any(resolved == Path(c).resolve() for c in checkpoints):
            raise SubmissionError(f"--out {out} would overwrite the checkpoint {target}; "
                                  "choose another --out path.")  # fmt: skip
        if resolved == store_dir or store_dir in resolved.parents:
            raise SubmissionError(f"--out {out} is inside the store {store} (stores are "
                                  "written by data_prep only); write the submission "
                                  "elsewhere.")  # fmt: skip
    if out.is_dir():
        raise SubmissionError(f"--out {out} is a directory; give a file path such as "
                              f"{out / 'submission.csv'}.")  # fmt: skip


def categories(preds: np.ndarray, class_names: Sequence[str], category: str) -> list:
    """The ``Category`` column for predicted class indices: the index or the class name."""
    if category not in CATEGORIES:
        raise SubmissionError(f"--category {category!r}: choose one of {', '.join(CATEGORIES)}")
    indices = [int(p) for p in preds]
    return indices if category == "index" else [str(class_names[p]) for p in indices]


def write_submission(
    out: str | os.PathLike,
    ids: Sequence[str],
    probs: np.ndarray,
    *,
    class_names: Sequence[str],
    checkpoints: Sequence[str | os.PathLike] = (),
    category: str = DEFAULT_CATEGORY,
    candidate: str = "predict",
    message: str | None = None,
    meta: dict | None = None,
) -> tuple[Path, Path]:
    """Write ``OUT`` (Id,Category of the argmax), ``OUT.probs.npz`` and ``OUT.json``;
    return the CSV's and the probabilities' paths.

    ``meta`` joins ``OUT.json`` (scores, members, fitted weights...)."""
    out = Path(out)
    if len(set(ids)) != len(ids):
        raise SubmissionError(f"duplicate ids in the predicted split; {out} not written")
    column = categories(probs.argmax(axis=1), class_names, category)
    write_csv(out, ["Id", "Category"], zip(ids, column, strict=True))
    npz = save_probs(probs_path(out), ids, probs, class_names=class_names, checkpoints=checkpoints)
    info = {
        "submission": str(out),
        "candidate": candidate,
        "message": message,
        "category": category,
        "created_utc": _now_utc(),
        "rows": len(ids),
        "checkpoints": [str(c) for c in checkpoints],
        **(meta or {}),
        "submit": shlex.join(kaggle_command("COMPETITION", out, message)),
    }
    _write_json(metadata_path(out), info)
    return out, npz


def read_metadata(out: str | os.PathLike) -> dict:
    """``OUT.json`` as a dict (empty when missing or unreadable)."""
    try:
        info = json.loads(metadata_path(out).read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def kaggle_command(competition: str, out: str | os.PathLike, message: str | None) -> list[str]:
    """``kaggle competitions submit -c COMPETITION -f OUT -m MESSAGE`` as argv; the message
    defaults to OUT's name (the client requires one)."""
    text = message or Path(out).stem
    return ["kaggle", "competitions", "submit", "-c", competition, "-f", str(out), "-m", text]


def send_to_kaggle(out: str | os.PathLike, *, competition: str, message: str | None) -> int:
    """Run the official ``kaggle`` client on the written submission ``out``; return its exit
    status. The command and its status are recorded in ``OUT.json`` (``kaggle``).

    Raises :class:`KaggleClientMissing` (after recording it) when ``kaggle`` is not on PATH.
    """
    command = kaggle_command(competition, out, message)
    executable = shutil.which("kaggle")
    record = {
        "competition": competition,
        "command": command,
        "time_utc": _now_utc(),
    }
    if executable is None:
        _record(out, {**record, "exit_status": None, "error": "kaggle client not installed"})
        raise KaggleClientMissing(
            f"--kaggle needs the Kaggle client: {KAGGLE_INSTALL}, token in "
            f"~/.kaggle/kaggle.json; {out} is written, then run: {shlex.join(command)}"
        )
    # The client's own output (progress, "Successfully submitted") goes to the user as is.
    status = subprocess.run([executable, *command[1:]], check=False).returncode
    _record(out, {**record, "exit_status": status})
    return status


def _record(out: str | os.PathLike, kaggle: dict) -> None:
    info = read_metadata(out)
    info["kaggle"] = kaggle
    _write_json(metadata_path(out), info)


def _write_json(path: Path, info: dict) -> None:
    atomic_write_bytes(path, (json.dumps(info, indent=2) + "\n").encode())


def finish(out: str | os.PathLike, *, competition: str | None, message: str | None) -> None:
    """The commands' last step: send ``out`` with ``--kaggle`` when given. A missing client
    raises :class:`KaggleClientMissing` (exit 2, the install line), a failed upload
    :class:`KaggleUploadFailed` (exit 1); the submission stays written either way."""
    if not competition:
        return
    status = send_to_kaggle(out, competition=competition, message=message)
    if status != 0:
        raise KaggleUploadFailed(
            f"`kaggle competitions submit` exited {status} (its message is above); {out} is "
            f"written, rerun: {shlex.join(kaggle_command(competition, out, message))}"
        )
    print(f"sent {out} to the Kaggle competition {competition} (recorded in "
          f"{metadata_path(out)})")  # fmt: skip
