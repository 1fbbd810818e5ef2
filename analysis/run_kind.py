"""What ``--run`` points at: a ``train.py fit``, ``probe`` or ``stack`` run directory, or
something the report refuses in one line before any section runs.

$ python -c "from analysis.run_kind import identify_run; print(identify_run('runs/stack/X'))"

Each kind is told by the file its command writes: ``stack.json`` (``train.py stack``),
``probe.json`` (``train.py probe``), ``metrics.csv`` or ``checkpoints/`` (``train.py fit``,
also a ``train.py cv`` fold). A ``train.py cv`` directory (``cv.json``), a folder of runs
(``runs/<experiment>``), a checkpoint file or a missing path raise :class:`RunError`,
whose message says which directory to give instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The marker file of each run kind, as fusion/ writes it (named here, not imported, so the
# report needs no Lightning import to tell the kinds apart).
STACK_FILE = "stack.json"  # fusion.commands.stack.run_stack
PROBE_FILE = "probe.json"  # fusion.probe_run.PROBE_FILE
CV_FILE = "cv.json"  # fusion.commands.cv
FIT_FILES = ("metrics.csv", "checkpoints")
EXPECTED = (
    "a run directory of train.py fit, probe or stack (the folder holding metrics.csv or "
    "checkpoints/, probe.json or stack.json, e.g. runs/<experiment>/<time>)"
)


class RunError(ValueError):
    """``--run`` is not a run directory the report can read; the message names the fix."""


@dataclass(frozen=True)
class RunDir:
    path: Path
    kind: str  # "fit" | "probe" | "stack"

    @property
    def predictions(self) -> Path:
        """The per-row predictions: a ``--cv`` stack writes out-of-fold ones instead of val."""
        oof = self.path / "oof_predictions.csv"
        return oof if self.kind == "stack" and oof.is_file() else self.path / "val_predictions.csv"


def _kind(path: Path) -> str | None:
    if (path / STACK_FILE).is_file():
        return "stack"
    if (path / PROBE_FILE).is_file():
        return "probe"
    if any((path / f).exists() for f in FIT_FILES):
        return "fit"
    return None


def identify_run(path: str | Path) -> RunDir:
    """The run at ``path`` and its kind; :class:`RunError` for anything else."""
    path = Path(path)
    if path.is_file():
        owner = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        hint = f"; its run is probably --run {owner}" if _kind(owner) else ""
        raise RunError(f"--run {path} is a file; give {EXPECTED}{hint}")
    if not path.is_dir():
        raise RunError(f"--run {path} does not exist; give {EXPECTED}")
    kind = _kind(path)
    if kind is not None:
        return RunDir(path, kind)
    if (path / CV_FILE).is_file() or (path / "fold_0").is_dir():
        raise RunError(
            f"--run {path} is a train.py cv directory (one run per fold); give one fold's run "
            f"(--run {path / 'fold_0'}), or stack CV runs with train.py stack --cv and give "
            "that stack's run"
        )
    runs = sorted(d.name for d in path.iterdir() if d.is_dir() and _kind(d))
    if runs:
        shown = ", ".join(runs[-3:]) + (", ..." if len(runs) > 3 else "")
        raise RunError(
            f"--run {path} holds {len(runs)} run directories ({shown}); give one of them, "
            f"e.g. --run {path / runs[-1]}"
        )
    raise RunError(f"--run {path} is not a run directory (it has no metrics.csv, checkpoints/, "
                   f"probe.json or stack.json); give {EXPECTED}")  # fmt: skip
