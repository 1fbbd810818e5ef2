"""Run ``python train.py`` with a pause at one training step, for kill -9 / SIGTERM tests.

$ python -m tests.train_runner --pause-at-step 10 --flag DIR/paused -- fit --config ...

The pause lives in the tests: this wrapper adds a callback to the fit (by patching
``FusionCLI.instantiate_trainer``) and then runs train.py's own ``main`` in this process.
At ``--pause-at-step`` the callback flushes the loggers (so metrics.csv holds rows past
the last checkpoint, as a long-running job's would), touches ``--flag`` and waits: for
ever (to be killed), or until a SIGTERM has reached Lightning's handler.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L


class PauseAtStep(L.Callback):
    def __init__(self, step: int, flag: Path) -> None:
        self.step, self.flag = step, flag

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self.step:
            return
        for logger in trainer.loggers:
            logger.save()
        self.flag.write_text(str(trainer.global_step))
        deadline = time.monotonic() + 120
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)


REPO = Path(__file__).resolve().parents[1]


def wait_for_pause(flag: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Wait until ``proc`` touched ``flag`` (it reached its pause); fail with its stderr if
    it ended first, or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not flag.exists():
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "train.py never reached the pause"
        time.sleep(0.1)


def start_paused(argv: list[str], flag: Path, step: int) -> subprocess.Popen:
    """``python train.py ARGV`` in its own process group (W&B off), returned once paused at
    ``step``: kill it (-9) or SIGTERM it (``os.killpg(proc.pid, ...)``)."""
    cmd = [sys.executable, "-m", "tests.train_runner", "--pause-at-step", str(step),
           "--flag", str(flag), "--", *argv]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    wait_for_pause(flag, proc)
    return proc


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pause-at-step", type=int, required=True)
    parser.add_argument("--flag", type=Path, required=True)
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv

    from fusion.cli import FusionCLI

    original = FusionCLI.instantiate_trainer

    def instantiate_trainer(self, **kwargs):
        trainer = original(self, **kwargs)
        trainer.callbacks.insert(0, PauseAtStep(args.pause_at_step, args.flag))
        return trainer

    FusionCLI.instantiate_trainer = instantiate_trainer
    import train

    train.main(argv)


if __name__ == "__main__":
    main()
