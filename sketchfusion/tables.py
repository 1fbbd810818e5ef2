"""What the command lines wrote, as pandas DataFrames, for a notebook.

>>> import sketchfusion as sf
>>> sf.metrics(fit)                      # RUN/metrics.csv: one row per logged step/epoch
>>> sf.val_predictions(fit)              # RUN/val_predictions.csv: id,label,pred,confidence
>>> sf.probabilities("runs/concat/cv5")  # CV/oof.probs.npz: a row per id, a column per class
>>> sf.trials("runs/concat/tune-demo-0a1b2c")  # STUDY/trials.csv
>>> sf.submission("submission.csv")      # Id,Category

Readers only: the files on disk stay what the command lines write (the ``csv`` module's
atomic writes, feature_store/atomic.py), and each DataFrame holds exactly what reading its file
gives, with ids kept as strings (``"0012"`` stays ``"0012"``, an id ``"NA"`` stays a
string). Each function takes a file, or the directory that holds it (a ``FitResult`` or a
run directory, a CV directory, a study directory); pandas loads on the first call.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

PathLike = str | os.PathLike  # a FitResult is a PathLike of its run directory


def _file(where: PathLike, *names: str) -> Path:
    """``where`` itself when it is a file, else the first of ``names`` inside it."""
    path = Path(os.fspath(where))
    if path.is_file():
        return path
    for name in names:
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(
        f"{path}: no {' or '.join(names)} here; pass the file, or the directory the command "
        "wrote it into"
    )


def _read_csv(path: Path, *, id_column: str | None = None) -> pd.DataFrame:
    import pandas as pd

    if id_column is None:  # sparse numeric tables (metrics, trials): a blank cell is NaN
        return pd.read_csv(path)
    # Id tables have no blanks; pandas' NA words ("NA", "null") are ids there, not missing.
    return pd.read_csv(path, dtype={id_column: str}, keep_default_na=False)


def metrics(run: PathLike) -> pd.DataFrame:
    """``RUN/metrics.csv`` (Lightning's CSV log: a column per metric, blank where a row did not
    log it, so NaN): ``sf.metrics(fit).dropna(subset=["val/acc_top1"])`` is the val curve."""
    return _read_csv(_file(run, "metrics.csv"))


def val_predictions(run: PathLike) -> pd.DataFrame:
    """``RUN/val_predictions.csv`` (``id,label,pred,confidence`` of the best checkpoint), or
    a ``train.py stack --cv`` run's ``oof_predictions.csv``; ``id`` as strings."""
    return _read_csv(_file(run, "val_predictions.csv", "oof_predictions.csv"), id_column="id")


def probabilities(where: PathLike) -> pd.DataFrame:
    """A ``.probs.npz`` as a table: index ``id``, a ``label`` column when the file has labels
    (out-of-fold and val files), then one float column per class name in store order.

    ``where``: the file, or a ``train.py cv`` directory (its out-of-fold ``oof.probs.npz``),
    or a directory holding ``submission.probs.npz`` or ``val.probs.npz``.
    """
    import pandas as pd

    from fusion.ensemble import load_probs

    member = load_probs(_file(where, "oof.probs.npz", "submission.probs.npz", "val.probs.npz"))
    index = pd.Index(member.ids, name="id", dtype=str)
    table = pd.DataFrame(member.probs, index=index, columns=member.class_names)
    if member.labels is not None:
        if "label" in member.class_names:
            raise ValueError(f"{member.path}: a class is named 'label'; read it with numpy")
        table.insert(0, "label", member.labels.astype("int64"))
    return table


def trials(study: PathLike) -> pd.DataFrame:
    """``STUDY/trials.csv`` of ``train.py tune``: number, state, val_acc_top1, one
    ``params_*`` column per searched option (NaN where a trial did not draw it), run_dir."""
    return _read_csv(_file(study, "trials.csv"))


def submission(path: PathLike) -> pd.DataFrame:
    """A submission CSV (``Id,Category``, one row per test input); ``Id`` as strings. Takes
    the file, or the run / CV / stack directory that wrote ``submission.csv``."""
    return _read_csv(_file(path, "submission.csv"), id_column="Id")
