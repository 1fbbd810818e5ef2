"""One-line errors and exit codes for the command lines (train.py, predict.py).

$ python predict.py --checkpoint missing.ckpt --store STORE    # "predict.py: error: ..." rc 2

Exit codes, the same for every entry point: 0 done; 2 bad input or usage (one line on
stderr naming the input and the fix, no traceback; jsonargparse's own usage errors exit 2
too); 1 an internal error (a bug, or a run that diverged: a non-finite loss); 143
(128 + SIGTERM) a run stopped by SIGTERM after saving what a rerun needs; 130 (128 +
SIGINT) the same after Ctrl-C.
"""

from __future__ import annotations

import sys

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
