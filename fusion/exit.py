"""One-line errors and exit codes for the command lines (train.py, predict.py).

$ python predict.py --checkpoint missing.ckpt --store STORE    # "predict.py: error: ..." rc 2

Exit codes, the same for every entry point: 0 done; 2 bad input or usage (one line on
stderr naming the input and the fix, no traceback; jsonargparse's own usage errors exit 2
too); 1 an internal error (a bug, or a run that diverged: a non-finite loss); 143
(128 + SIGTERM) a run stopped by SIGTERM after saving what a rerun needs; 130 (128 +
SIGINT) the same after Ctrl-C. A full disk is 1 as well, with one line naming the disk,
what was kept and the command that continues (:func:`disk_full_line`).
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_SIGTERM = 143
EXIT_SIGINT = 130  # 128 + SIGINT: a fit stopped by Ctrl-C after saving last.ckpt


class UsageError(ValueError):
    """Bad input or usage the user can fix; the entry point exits 2 with this one line."""


class ExitError(SystemExit):
    """``SystemExit(code)`` whose message is printed once and kept as ``str(err)``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(code)
        self.message = message
        print(message, file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message


def disk_full(err: BaseException) -> OSError | None:
    """The "no space left" (``ENOSPC``, or a quota: ``EDQUOT``) error behind ``err``, if
    any: raised itself, or the cause or context of what was raised (Lightning raises a
    second error when a failed fit's loggers cannot save either)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return err
        err = err.__cause__ or err.__context__
    return None


def disk_full_line(err: OSError, *, prog: str, run: Path | None) -> str:
    """One line for a full disk: the file, the disk (its mount point, space left), what was
    kept and the command that continues."""
    where = Path(err.filename) if err.filename else run or Path.cwd()
    disk = where if where.is_dir() else where.parent
    while not disk.exists() and disk != disk.parent:
        disk = disk.parent
    mount = disk.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = shutil.disk_usage(disk).free / 2**20
    what = f"writing {err.filename} " if err.filename else ""
    line = f"{prog}: error: no space left on the disk {mount} ({what}{free:.0f} MiB free)."
    last = run / "checkpoints" / "last.ckpt" if run else None
    if last is not None and last.is_file():
        return (
            f"{line} {last} is kept: free some space, then continue with the same command "
            f"plus --ckpt_path last --run_dir {run}"
        )
    return f"{line} Free some space, then rerun the command" + (
        f" with a new --run_dir (or remove {run})" if run and run.is_dir() else ""
    )
