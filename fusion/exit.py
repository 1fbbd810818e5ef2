"""One-line errors for the command lines (train.py, predict.py): stderr, then exit code.

$ python predict.py --checkpoint missing.ckpt --store STORE    # "predict.py: error: ..." rc 2

Bad input exits 2 with one line naming the input and the fix; a run stopped by SIGTERM
exits 143 (128 + SIGTERM) after saving what a rerun needs.
"""

from __future__ import annotations

import sys

EXIT_BAD_INPUT = 2
EXIT_SIGTERM = 143


class ExitError(SystemExit):
    """``SystemExit(code)`` whose message is printed once and kept as ``str(err)``."""

    def __init__(self, message: str, code: int = EXIT_BAD_INPUT) -> None:
        super().__init__(code)
        self.message = message
        print(message, file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return self.message
