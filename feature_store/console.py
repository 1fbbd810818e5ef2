"""What every stage prints: paths one way, and Lightning's noise kept to the block that makes it.

$ python -c "from feature_store.console import show_path; print(show_path('stores/demo'))"

- :func:`show_path`: a path relative to the working directory when it lies under it (short,
  and pastes into the next command run from the same place), else absolute. train.py,
  predict.py, data_prep and the run-directory messages all print paths through it.
- :func:`quiet_lightning`: a ``with`` block that hides Lightning's advertisements ("Tip:
  ... litlogger"), its ``LeafSpec`` deprecation (torch's warning about Lightning's own
  code, nothing a user can act on) and, on request, its banners ("GPU available: ...").
  Everything it changes (warning filters, a logger filter, a logger level) is put back
  when the block ends, so a caller's own warnings and logging are untouched.
- :func:`usable_workers`: DataLoader workers capped at the CPU cores this process may run
  on (a config written for a big machine, run on a laptop, made torch warn inside the
  progress bar), with one line saying so.

Here because data_prep, fusion and train.py all import this package, and nothing else.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from feature_store.compat import LIGHTNING_PYTREE_MODULE

# Where Lightning's rank_zero_info (banners, tips, our own "run directory:") is logged.
RANK_ZERO_LOGGER = "lightning.pytorch.utilities.rank_zero"
LIGHTNING_LOGGER = "lightning.pytorch"
# Torch deprecates LeafSpec; Lightning 2.6 still builds one on every batch it moves.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
ADVERT_PREFIX = "💡 Tip:"


def show_path(path: str | os.PathLike, *, cwd: str | os.PathLike | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the working directory) when under it, else
    absolute. Symlinks are kept as given (``abspath``, not ``resolve``)."""
    absolute = Path(os.path.abspath(path))
    base = Path(os.path.abspath(cwd if cwd is not None else os.getcwd()))
    try:
        return str(absolute.relative_to(base))
    except ValueError:  # outside the working directory: ../../.. would be longer
        return str(absolute)


# (option, asked, cores) already reported by usable_workers: one line per process.
_capped: set[tuple[str, int, int]] = set()


def cpu_cores() -> int:
    """The CPU cores this process may run on (its affinity, as torch's DataLoader counts)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def usable_workers(requested: int, *, option: str) -> int:
    """``requested`` DataLoader workers, at most :func:`cpu_cores`; when capped, one line
    naming ``option`` (printed once per process)."""
    cores = cpu_cores()
    if requested <= cores:
        return requested
    if (option, requested, cores) not in _capped:
        _capped.add((option, requested, cores))
        print(f"{option} {requested}: this machine has {cores} CPU cores; using {cores} workers")
    return cores


class _DropAdverts(logging.Filter):
    """Drops Lightning's "💡 Tip: try installing litlogger / litmodels" records."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(ADVERT_PREFIX)


@contextmanager
def quiet_lightning(*, banners: bool = True) -> Iterator[None]:
    """Within the block: no Lightning advertisement or LeafSpec deprecation; with
    ``banners=False`` none of Lightning's info lines either (data_prep's progress bars stay
    readable). Filters and levels are restored on exit, even on an exception."""
    rank_zero, lightning = logging.getLogger(RANK_ZERO_LOGGER), logging.getLogger(LIGHTNING_LOGGER)
    advert_filter, level = _DropAdverts(), lightning.level
    with warnings.catch_warnings():  # restores warnings.filters on exit
        warnings.filterwarnings(
            "ignore",
            message=LEAFSPEC_WARNING,
            category=FutureWarning,
            module=LIGHTNING_PYTREE_MODULE,
        )
        rank_zero.addFilter(advert_filter)
        if not banners:
            lightning.setLevel(logging.WARNING)
        try:
            yield
        finally:
            rank_zero.removeFilter(advert_filter)
            lightning.setLevel(level)
