"""The two loggers of every run: a CSV log at ``RUN/metrics.csv`` and W&B.

W&B runs online only when it can: with no API key (``WANDB_API_KEY`` or ``wandb login``)
or no route to the server, it runs offline into ``RUN/wandb/offline-run-*`` (upload later
with ``wandb sync``), never prompting. ``WANDB_MODE=disabled`` leaves it out;
``--trainer.logger false`` leaves out both.
"""

from __future__ import annotations

import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter


class _AppendingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing metrics.csv; on resume we append to it."""

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if path.is_file():
            with path.open() as f:
                header = f.readline().strip()
            # Known columns, so the first save appends instead of rewriting a header.
            self.metrics_keys = sorted(k for k in header.split(",") if k)


class RunCSVLogger(CSVLogger):
    """``CSVLogger(save_dir=RUN, name="", version="")``: metrics at ``RUN/metrics.csv``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__(save_dir=str(run_dir), name="", version="")

    @property
    def experiment(self) -> _ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def _reachable(url: str, timeout: float = 2.0) -> bool:
    parsed = urlparse(url)
    try:
        with socket.create_connection(
            (parsed.hostname, parsed.port or (80 if parsed.scheme == "http" else 443)),
            timeout=timeout,
        ):
            return True
    except OSError:
        return False


def wandb_mode() -> str:
    """``online``, ``offline`` or ``disabled``: an explicit WANDB_MODE wins; else online
    only with an API key and a reachable server (checked with a 2 s connect, never a hang)."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode
    if mode == "dryrun":
        return "offline"
    if not _has_api_key():
        return "offline"
    return (
        "online"
        if _reachable(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
        else "offline"
    )


def make_loggers(
    run_dir: Path, *, project: str, name: str, group: str | None = None
) -> list[Logger]:
    """CSV always; W&B unless ``WANDB_MODE=disabled``."""
    # Exists before W&B starts, so wandb finds the git repository above it.
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    mode = wandb_mode()
    if mode != "disabled":
        loggers.append(
            WandbLogger(
                project=project,
                name=name,
                group=group,  # W&B's run group: a tune study, a cv's folds
                save_dir=str(run_dir),
                offline=mode == "offline",
                log_model=False,
            )
        )
    return loggers
