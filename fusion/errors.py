"""The one base of fusion's typed errors: library code raises them, never exits.

$ python -c "from fusion.errors import FusionError; print(FusionError.__subclasses__())"

``str(err)`` is one line saying what is wrong and how to fix it, without the command's name:
the command layer (fusion/exit.py, the only place that exits) prefixes ``PROG: error:`` and
picks the exit code from the type:

- :class:`FusionError` (and every subclass not named below): bad input or usage, exit 2;
  each module's own errors subclass it (``CheckpointError``, ``SubmissionError``,
  ``EnsembleError``, ``StackError``, ``ResumeError``, ``RunDirError``...);
- :class:`RunFailed`: the input was fine but the run failed (a non-finite loss, a Kaggle
  upload the client refused), exit 1;
- :class:`Stopped`: SIGTERM (exit 143) or Ctrl-C (exit 130) stopped a command after it
  saved, or removed, what it was writing; the line says how to continue.
"""

from __future__ import annotations


class FusionError(Exception):
    """Bad input the user can fix; ``str(err)`` names it and the fix (exit 2)."""


class UsageError(FusionError, ValueError):
    """A bad option or combination of options (exit 2)."""


class RunFailed(FusionError):
    """Good input, failed run: a diverged fit, a failed upload (exit 1)."""


class Stopped(FusionError):
    """A command stopped by a signal, ``signal`` ``"SIGTERM"`` (exit 143) or ``"SIGINT"``
    (exit 130); the message says what was kept and how to continue."""

    def __init__(self, message: str, signal: str = "SIGTERM") -> None:
        super().__init__(message)
        self.signal = signal
