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
