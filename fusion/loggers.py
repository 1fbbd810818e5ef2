"""The two loggers of every run: a CSV log at ``RUN/metrics.csv`` and W&B.

W&B runs online only when it can: with no API key (``WANDB_API_KEY`` or ``wandb login``)
or no route to the server, it runs offline into ``RUN/wandb/offline-run-*`` (upload later
with ``wandb sync``), never prompting, and says why in one line. ``WANDB_MODE=disabled``
leaves it out; ``--trainer.logger false`` leaves out both.

W&B settings (:func:`wandb_settings`): ``--wandb.project/entity/group/tags/job_type`` when
given, else W&B's own environment variables (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_RUN_GROUP``, ``WANDB_TAGS``, ``WANDB_JOB_TYPE``), else ours (project
``sketchfusion``, group = the experiment, job type ``train``). The run is named after the
run directory and its id is kept in ``RUN/wandb_run_id``, so ``--ckpt_path last``
continues the same W&B run.
"""

from __future__ import annotations

import netrc
import os
import socket
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities import rank_zero_info

from feature_store.console import show_path


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


def wandb_mode_and_reason() -> tuple[str, str]:
    """``(mode, why)``: mode ``online``, ``offline`` or ``disabled`` and a one-line reason."""
    mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if mode in ("online", "offline", "disabled"):
        return mode, f"WANDB_MODE={mode}"
    if mode == "dryrun":
        return "offline", "WANDB_MODE=dryrun"
    if not _has_api_key():
        return "offline", "no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _reachable(url):
        return "offline", f"no answer from the W&B server {url} within 2 s"
    return "online", "logged in and the server answers"


def wandb_mode() -> str:
    """``online``, ``offline`` or ``disabled``: an explicit WANDB_MODE wins; else online
    only with an API key and a reachable server (checked with a 2 s connect, never a hang)."""
    return wandb_mode_and_reason()[0]


RUN_ID_FILE = "wandb_run_id"
DEFAULT_PROJECT = "sketchfusion"


def saved_run_id(run_dir: Path) -> str | None:
    """The W&B run id a previous fit of ``run_dir`` saved, if any."""
    path = Path(run_dir) / RUN_ID_FILE
    return (path.read_text().strip() or None) if path.is_file() else None


def run_id_for(run_dir: Path) -> str:
    """The run's W&B id: the saved one (a resume continues that run), else ``WANDB_RUN_ID``,
    else a new one."""
    run_id = saved_run_id(run_dir)
    if run_id is None:
        from wandb.sdk.lib.runid import generate_id  # what wandb.init uses

        run_id = os.environ.get("WANDB_RUN_ID") or generate_id()
    return run_id


def save_run_id(run_dir: Path, run_id: str) -> None:
    """``RUN/wandb_run_id``, read back by a resume of the run."""
    if saved_run_id(run_dir) != run_id:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        (Path(run_dir) / RUN_ID_FILE).write_text(run_id + "\n")


def wandb_settings(
    run_dir: Path,
    *,
    group: str,
    project: str | None = None,
    entity: str | None = None,
    tags: Sequence[str] | None = None,
    job_type: str | None = None,
    group_override: str | None = None,
    default_job_type: str = "train",
) -> dict:
    """``wandb.init`` arguments of a run: our options, else W&B's environment, else ours.

    Keys left ``None`` are W&B's to fill from its environment (``WANDB_ENTITY``,
    ``WANDB_TAGS``); ``group`` is the default group (the experiment), ``group_override``
    the user's ``--wandb.group``.
    """
    env = os.environ
    tag_env = [t for t in env.get("WANDB_TAGS", "").split(",") if t.strip()]
    return {
        "project": project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        "entity": entity or env.get("WANDB_ENTITY") or None,
        "group": group_override or env.get("WANDB_RUN_GROUP") or group,
        "tags": list(tags) if tags else (tag_env or None),
        "job_type": job_type or env.get("WANDB_JOB_TYPE") or default_job_type,
        "name": Path(run_dir).name,
        "id": run_id_for(run_dir),
        "resume": "allow",
    }


def console_settings(mode: str) -> dict:
    """``wandb.init(settings=...)`` for what W&B prints: nothing offline (our one line says
    where the run is and how to upload it), online only the run's URL (``quiet``: no
    35-line history/summary footer). ``WANDB_QUIET`` / ``WANDB_SILENT`` set by the user win."""
    if "WANDB_QUIET" in os.environ or "WANDB_SILENT" in os.environ:
        return {}
    return {"silent": True} if mode == "offline" else {"quiet": True}


def drop_anonymous(init: dict) -> None:
    """Lightning passes ``anonymous=None`` to ``wandb.init``; W&B 0.31 warns that the
    setting has no effect whenever the key is there at all, so an unset one is left out."""
    if init.get("anonymous") is None:
        init.pop("anonymous", None)


def config_logged_once(params) -> None:
    """A W&B logger's ``log_hyperparams``: nothing. Lightning would log the model's
    hyper-parameters un-prefixed (``lr`` beside the config's ``model.lr``); the run's
    config is the whole resolved config, flattened once (fusion/runs.py:RunConfigSaver)."""


class RunWandbLogger(WandbLogger):
    """``WandbLogger`` whose config is only the run's resolved config (see
    :func:`config_logged_once`), without ``anonymous=None`` (:func:`drop_anonymous`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        drop_anonymous(self._wandb_init)

    def log_hyperparams(self, params) -> None:
        config_logged_once(params)


def _say_mode(mode: str, why: str, run_dir: Path) -> None:
    if mode == "offline":
        runs = show_path(Path(run_dir) / "wandb" / "offline-run-*")
        rank_zero_info(f"W&B offline: {why}. Upload later with `wandb sync {runs}`")


def make_loggers(run_dir: Path, *, settings: dict) -> list[Logger]:
    """CSV always; W&B (``settings`` from :func:`wandb_settings`) unless ``WANDB_MODE=disabled``."""
    # Exists before W&B starts, so wandb finds the git repository above it.
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    mode, why = wandb_mode_and_reason()
    if mode != "disabled":
        _say_mode(mode, why, run_dir)
        save_run_id(run_dir, settings["id"])
        loggers.append(
            RunWandbLogger(
                # Absolute: W&B's service process (shared by the runs of this process) may
                # have started in another working directory.
                save_dir=str(Path(run_dir).resolve()),
                offline=mode == "offline",
                log_model=False,
                settings=console_settings(mode),
                **settings,
            )
        )
    return loggers


# WandbLogger's own defaults: a user's logger config that leaves them gets the run's values.
_UNSET = {"dir": (None, "."), "project": (None, "lightning_logs"), "name": (None,), "id": (None,)}


def adopt_user_loggers(loggers: Sequence[Logger], run_dir: Path, *, settings: dict) -> list[Logger]:
    """A user's ``--trainer.logger`` list, completed so the run directory layout holds.

    ``RUN/metrics.csv`` is always added (a user's CSVLogger writes its own file besides);
    a ``WandbLogger`` the
    user configured gets the run's directory, name, id, project, group... where its config
    leaves them at WandbLogger's defaults, and runs offline when W&B cannot run online.
    """
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    out = list(loggers)
    if not any(isinstance(lg, RunCSVLogger) for lg in out):
        out.insert(0, RunCSVLogger(run_dir))
    for logger in out:
        if not isinstance(logger, WandbLogger) or logger._experiment is not None:
            continue
        init = logger._wandb_init
        logger.log_hyperparams = config_logged_once  # the config once, as for our logger
        mode, why = wandb_mode_and_reason()
        offline = logger._offline or init.get("mode") in ("offline", "dryrun")
        values = {**settings, "dir": str(Path(run_dir).resolve())}
        values["settings"] = console_settings("offline" if offline else mode)
        for key, value in values.items():
            if init.get(key) in _UNSET.get(key, (None,)):
                init[key] = value
        drop_anonymous(init)
        # LightningCLI fills every wandb.init argument the config leaves out with None.
        if init.get("mode") is None and not logger._offline:
            # Not WandbLogger(offline=True): that refuses log_model, which works offline.
            init["mode"] = mode if mode != "online" else None
            _say_mode(mode, why, run_dir)
        if init.get("id"):
            save_run_id(run_dir, init["id"])
        logger._project, logger._save_dir = init.get("project"), init.get("dir")
        logger._name, logger._id = init.get("name"), init.get("id")
    return out
