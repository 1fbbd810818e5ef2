"""Atomic file writes: a reader (or a crash, or a full disk) sees the old file or the new
one, never a torn one.

$ python -c "from pathlib import Path; from feature_store.atomic import atomic_write_text; atomic_write_text(Path('x.txt'), 'hi\n')"

Every file the store and the training side write whole (the manifest, JSON records,
failures.csv, submissions, ``.probs.npz``, plots, run markers) goes through
:func:`atomic_write_bytes`: a temporary file beside the target, renamed over it. It lives
at the bottom of the lowest package so feature_store, data_prep and fusion share it.
Written otherwise, on purpose: Arrow shards (streamed into a temporary name by their
writer, checksummed, then renamed: feature_store/writer.py) and metrics.csv, which grows by
whole rows (fusion/loggers.py).
"""

from __future__ import annotations

import csv
import io
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path``, then rename it into place.

    The file gets the ordinary mode of a new file (0666 less the umask), not mkstemp's
    private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` in UTF-8."""
    atomic_write_bytes(path, text.encode())


def write_csv(path: Path, header: Sequence[str], rows) -> None:
    """A CSV with ``header`` and ``rows``, written atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    atomic_write_bytes(path, buf.getvalue().encode())
