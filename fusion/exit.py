"""The one place errors become exit codes: the command layer's, the only code that exits.

$ python predict.py --checkpoint missing.ckpt --store STORE    # "predict.py: error: ..." rc 2

Library code raises typed errors (fusion/errors.py, ``feature_store.StoreError``) and never
exits; every command (train.py and its subcommands, predict.py, predict.py ensemble) runs
inside :func:`exit_codes`, which prints the error's one line once, prefixed with the
command's name, and raises :class:`ExitError` (a ``SystemExit``) with its code.

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from feature_store import StoreError
from fusion.errors import FusionError, RunFailed, Stopped

EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_SIGTERM = 143
EXIT_SIGINT = 130  # 128 + SIGINT: a fit stopped by Ctrl-C after saving last.ckpt


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


def exit_error(err: BaseException, prog: str, *, run: Path | None = None) -> ExitError | None:
    """The :class:`ExitError` (line printed, code set) for ``err`` raised in command
    ``prog``, or None for an error no user input explains (a bug: its traceback is kept).

    ``run``: the fit's run directory, named in the lines for a full disk and a stop.
    """
    if isinstance(err, Stopped):
        code = EXIT_SIGINT if err.signal == "SIGINT" else EXIT_SIGTERM
        return ExitError(f"{prog}: {err}", code=code)
    if isinstance(err, RunFailed):
        return ExitError(f"{prog}: error: {err}", code=EXIT_INTERNAL)
    if isinstance(err, FusionError | StoreError):
        return ExitError(f"{prog}: error: {err}")
    if _lightning_stop(err):
        # Lightning raises this (a SystemExit with code 0) at the next batch after SIGTERM,
        # or after a first Ctrl-C (fusion/stopping.py); RunCheckpoint has saved the current
        # state as last.ckpt by now.
        from fusion.stopping import stopped_by  # loaded already: Lightning raised

        sigint = stopped_by() == "SIGINT"
        where = run or "RUN"
        return ExitError(
            f"{prog}: stopped by {'Ctrl-C (SIGINT)' if sigint else 'SIGTERM'}; the current "
            f"state is in {where}/checkpoints/last.ckpt. Continue with the same command plus "
            f"--ckpt_path last --run_dir {where}",
            code=EXIT_SIGINT if sigint else EXIT_SIGTERM,
        )
    if isinstance(err, UnicodeDecodeError):
        return ExitError(f"{prog}: error: {not_utf8_line(err, sys.argv[1:])}")
    full = disk_full(err) if isinstance(err, Exception) else None
    if full is not None:
        # Checkpoints are written atomically: the last one is whole; metrics.csv rows are
        # whole or absent (fusion/loggers.py), so the resume it names continues cleanly.
        return ExitError(disk_full_line(full, prog=prog, run=run), code=EXIT_INTERNAL)
    return None


def not_utf8_line(err: UnicodeDecodeError, argv: list[str]) -> str:
    """One line for a config (or other text file) that is not UTF-8: jsonargparse and our
    readers decode as UTF-8, and the error itself names no file. The file is the first one
    named on the command line that does not decode (a config it includes is named by the
    generic line)."""
    for arg in argv:
        path = Path(arg.split("=", 1)[-1])
        try:
            if path.is_file() and path.stat().st_size < 2**24:
                path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as bad:
            return (
                f"{path} is not UTF-8 text (byte {bad.object[bad.start]:#x} at offset "
                f"{bad.start}): save it as UTF-8, e.g. iconv -f latin1 -t utf-8 {path} > "
                f"{path.with_suffix('.utf8' + path.suffix).name}"
            )
        except OSError:
            continue
    return (
        f"a file it read is not UTF-8 text ({err.reason} at byte {err.start}): save the "
        "config (and any config it includes) as UTF-8"
    )


def _lightning_stop(err: BaseException) -> bool:
    """Whether ``err`` is Lightning's ``SIGTERMException`` (a fit stopped by a signal)."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return exceptions is not None and isinstance(err, exceptions.SIGTERMException)


@contextmanager
def exit_codes(prog: str, *, run: Callable[[], Path | None] | None = None) -> Iterator[None]:
    """Run a command's body: its typed errors become one line and an exit code
    (:func:`exit_error`); an :class:`ExitError` of an inner command passes as it is.
    ``run``: called on error, the run directory to name (a fit's, once chosen)."""
    try:
        yield
    except ExitError:
        raise
    except BaseException as err:
        exit_ = exit_error(err, prog, run=run() if run else None)
        if exit_ is None:
            raise
        raise exit_ from err
