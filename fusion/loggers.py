"""The two loggers of every run: a CSV log at ``RUN/metrics.csv`` and W&B.

W&B runs online only when it can: with no API key (``WANDB_API_KEY`` or ``wandb login``)
or no route to the server, it runs offline into ``RUN/wandb/offline-run-*`` (upload later
with ``wandb sync``), never prompting, and says why in one line; ``WANDB_MODE=online``
asks for online but falls back the same way. A run the server does not start within
``WANDB_INIT_TIMEOUT`` seconds (default 30) falls back to offline, and a W&B run that
cannot start at all (offline included) leaves the fit without W&B: a logger never stops a
fit (:func:`start_wandb`). ``WANDB_MODE=disabled`` leaves it out; ``--trainer.logger
false`` leaves out both. A project or tag W&B would refuse is refused before anything is
written (:func:`wandb_settings`).

``RUN/metrics.csv`` rows are written whole or not at all (a full disk leaves the file as
it was), and a resume drops a torn last row (:func:`drop_torn_tail`).

W&B settings (:func:`wandb_settings`): ``--wandb.project/entity/group/tags/job_type`` when
given, else W&B's own environment variables (``WANDB_PROJECT``, ``WANDB_ENTITY``,
``WANDB_RUN_GROUP``, ``WANDB_TAGS``, ``WANDB_JOB_TYPE``), else ours (project
``sketchfusion``, group = the experiment, job type ``train``). The run is named after the
run directory and its id is kept in ``RUN/wandb_run_id``, so ``--ckpt_path last``
continues the same W&B run.
"""

from __future__ import annotations

import csv
import io
import netrc
import os
import secrets
import socket
import string
from argparse import Namespace
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.core.saving import save_hparams_to_yaml
from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from feature_store.atomic import atomic_write_text, write_csv
from feature_store.compat import (
    restart_wandb_run,
    set_wandb_identity,
    wandb_init_arguments,
    wandb_logger_offline,
    wandb_run_started,
)
from feature_store.console import show_path
from fusion.errors import UsageError


class RunMetricsWriter:
    """``RUN/metrics.csv`` (and ``RUN/hparams.yaml``) as Lightning's CSV writer lays them
    out, safe to resume and to run out of disk.

    Lightning's deletes an existing metrics.csv; on resume this one appends to it, after
    dropping a torn last row (:func:`drop_torn_tail`). Lightning's writes rows one by one,
    so a full disk left half a row, and the next append continued that line under the
    wrong columns; here a save appends all its rows with one write and cuts the file back
    if that write fails, and a new column rewrites the file atomically.
    """

    NAME_METRICS_FILE, NAME_HPARAMS_FILE = "metrics.csv", "hparams.yaml"

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, self.NAME_METRICS_FILE)
        self.metrics: list[dict] = []  # rows logged since the last save
        self.metrics_keys: list[str] = []  # the file's columns, sorted
        self.hparams: dict = {}
        Path(log_dir).mkdir(parents=True, exist_ok=True)
        path = Path(self.metrics_file_path)
        if path.is_file():
            # Known columns, so the first save appends instead of rewriting a header.
            self.metrics_keys = sorted(k for k in drop_torn_tail(path) if k)

    def log_metrics(self, metrics: Mapping, step: int | None = None) -> None:
        """Keep one row (``step`` added) for the next :meth:`save`."""
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def log_hparams(self, params: Mapping) -> None:
        self.hparams.update(params)
        save_hparams_to_yaml(os.path.join(self.log_dir, self.NAME_HPARAMS_FILE), self.hparams)

    def save(self) -> None:
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        keys = list(self.metrics_keys)
        new_keys = set().union(*self.metrics) - set(keys)
        self.metrics_keys = sorted([*keys, *new_keys])
        try:
            if new_keys or not path.is_file():
                old = _read_rows(path)
                write_csv(path, self.metrics_keys, _cells(self.metrics_keys, old + self.metrics))
            else:
                append_whole(path, _csv_text(self.metrics_keys, self.metrics))
        except OSError:
            self.metrics_keys = keys  # the file's header is still the old one
            raise
        self.metrics = []


def _read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _cells(keys: list[str], rows: list[dict]):
    return ([row.get(k, "") for k in keys] for row in rows)


def _csv_text(keys: list[str], rows: list[dict]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(_cells(keys, rows))
    return buf.getvalue()


def _write_fully(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[f.write(view) :]


def append_whole(path: Path, text: str) -> None:
    """Append ``text`` to ``path`` whole or not at all: if the write fails (a full disk),
    the file is cut back to its length before (truncating needs no space) and the error
    raised."""
    with open(path, "ab", buffering=0) as f:
        start = f.seek(0, os.SEEK_END)
        try:
            _write_fully(f, text.encode())
        except OSError as err:
            os.ftruncate(f.fileno(), start)
            err.filename = err.filename or str(path)  # the one-line error names the file
            raise


def drop_torn_tail(path: Path) -> list[str]:
    """Cut a torn end off the CSV log ``path``; return its header's columns.

    Torn: a last line without its newline, or with another number of fields than the
    header (a row cut by a full disk or a kill while it was written). A file with no whole
    header line is removed (the next save writes a new one).
    """
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1  # a last line without its newline was cut short
    lines = data[:end].splitlines(keepends=True)
    header = next(csv.reader([lines[0].decode()]), []) if lines else []
    while len(lines) > 1 and len(next(csv.reader([lines[-1].decode()]), [])) != len(header):
        lines.pop()
    keep = sum(map(len, lines))
    if keep < len(data):
        rank_zero_info(
            f"{show_path(path)}: dropped a torn last row ({len(data) - keep} bytes written "
            "when the disk filled up or the process was killed)"
        )
        if not header:
            path.unlink()
        else:
            os.truncate(path, keep)
    return header


class RunCSVLogger(Logger):
    """Lightning's ``CSVLogger(save_dir=RUN, name="", version="")`` (metrics at
    ``RUN/metrics.csv``, hyper-parameters at ``RUN/hparams.yaml``), writing with
    :class:`RunMetricsWriter`; built on Lightning's public ``Logger``."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        super().__init__()
        self.run_dir = os.fspath(run_dir)
        self.writer: RunMetricsWriter | None = None

    @property
    def name(self) -> str:
        return ""

    @property
    def version(self) -> str:
        return ""

    @property
    def save_dir(self) -> str:
        return self.run_dir

    @property
    def root_dir(self) -> str:
        return self.run_dir

    @property
    def log_dir(self) -> str:
        return self.run_dir

    @property
    @rank_zero_experiment
    def experiment(self) -> RunMetricsWriter:
        if self.writer is None:
            self.writer = RunMetricsWriter(self.run_dir)
        return self.writer

    @rank_zero_only
    def log_hyperparams(self, params) -> None:
        params = vars(params) if isinstance(params, Namespace) else dict(params or {})
        self.experiment.log_hparams(params)

    @rank_zero_only
    def log_metrics(self, metrics, step: int | None = None) -> None:
        self.experiment.log_metrics(metrics, step)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        self.experiment.save()

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self.writer is not None:  # nothing was logged in this process
            self.save()


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
    if mode in ("offline", "disabled"):
        return mode, f"WANDB_MODE={mode}"
    if mode == "dryrun":
        return "offline", "WANDB_MODE=dryrun"
    # WANDB_MODE=online asks for online; without a key or a server it would stop the fit
    # (W&B's UsageError, or its CommError after a long wait), so it falls back as well.
    asked = "WANDB_MODE=online but " if mode == "online" else ""
    if not _has_api_key():
        return "offline", f"{asked}no W&B API key (set WANDB_API_KEY or run `wandb login`)"
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    if not _reachable(url):
        return "offline", f"{asked}no answer from the W&B server {url} within 2 s"
    return "online", "WANDB_MODE=online" if asked else "logged in and the server answers"


def wandb_mode() -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE=offline/disabled`` wins; online
    only with an API key and a reachable server (checked with a 2 s connect, never a hang),
    ``WANDB_MODE=online`` included."""
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
        run_id = os.environ.get("WANDB_RUN_ID") or new_run_id()
    return run_id


def new_run_id() -> str:
    """A new W&B run id: 8 random base-36 characters, the kind ``wandb.init`` makes."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def save_run_id(run_dir: Path, run_id: str) -> None:
    """``RUN/wandb_run_id``, read back by a resume of the run."""
    if saved_run_id(run_dir) != run_id:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_text(Path(run_dir) / RUN_ID_FILE, run_id + "\n")


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
    settings = {
        "project": project or env.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        "entity": entity or env.get("WANDB_ENTITY") or None,
        "group": group_override or env.get("WANDB_RUN_GROUP") or group,
        "tags": list(tags) if tags else (tag_env or None),
        "job_type": job_type or env.get("WANDB_JOB_TYPE") or default_job_type,
        "name": Path(run_dir).name,
        "id": run_id_for(run_dir),
        "resume": "allow",
    }
    if env.get("WANDB_MODE", "").strip().lower() != "disabled":
        sources = {
            "project": "--wandb.project" if project else "WANDB_PROJECT",
            "run_tags": "--wandb.tags" if tags else "WANDB_TAGS",
            "run_id": "WANDB_RUN_ID",
        }
        check_names(settings, sources)
    return settings


def check_names(settings: dict, sources: dict[str, str]) -> None:
    """Refuse (:class:`UsageError`, one line) a project, tag or run id that ``wandb.init``
    would refuse with a traceback once the run directory exists; W&B's own ``Settings``
    say which (a project without ``/\\#?%:``, tags of 1 to 64 characters)."""
    import wandb

    values = {"project": settings["project"], "run_tags": tuple(settings["tags"] or ())}
    if settings["id"] == os.environ.get("WANDB_RUN_ID"):  # a saved or generated id is W&B's
        values["run_id"] = settings["id"]
    for key, value in values.items():
        try:
            wandb.Settings(**{key: value})
        except (ValueError, wandb.errors.Error) as err:  # pydantic's ValidationError: a ValueError
            why = err.errors()[0]["msg"] if hasattr(err, "errors") else str(err)
            why = why.removeprefix("Value error, ").splitlines()[0]
            raise UsageError(f"{sources[key]}: {why}; W&B would refuse the run") from err


# W&B's own default is 90 s; a fit should not wait that long for a server that does not
# answer before falling back to offline (WANDB_INIT_TIMEOUT, read by W&B, overrides it).
INIT_TIMEOUT_S = 30.0


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
    hyper-parameters un-prefixed (``lr`` beside the config's ``model.optimizer.lr``); the run's
    config is the whole resolved config, flattened once (fusion/runs.py:RunConfigSaver)."""


def init_settings(mode: str) -> dict:
    """``wandb.init(settings=...)`` of our runs: :func:`console_settings` and an init timeout
    of :data:`INIT_TIMEOUT_S` unless ``WANDB_INIT_TIMEOUT`` is set."""
    timeout = {} if "WANDB_INIT_TIMEOUT" in os.environ else {"init_timeout": INIT_TIMEOUT_S}
    return {**console_settings(mode), **timeout}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def start_or_fallback(start: Callable[[], object], init: dict, run_dir: Path):
    """``start()`` (a ``wandb.init`` with the arguments ``init``), never stopping the caller.

    An online start that fails (W&B's ``UsageError``, ``AuthenticationError``, or
    ``CommError`` after the init timeout) is retried offline, with one line; an offline start
    that fails returns None, with one line: the caller goes on without W&B.
    """
    try:
        return start()
    except Exception as err:  # whatever W&B raises, a fit goes on
        if init.get("mode") == "offline" or os.environ.get("WANDB_MODE") == "dryrun":
            rank_zero_info(f"W&B off: its offline run did not start ({_first_line(err)})")
            return None
        first = err
    import wandb

    if wandb.run is None:  # W&B's service still holds the failed run's id: start a new one
        wandb.teardown()
    init["mode"] = "offline"
    if isinstance(init.get("settings"), dict | None):  # a user's wandb.Settings stays theirs
        settings = {**(init.get("settings") or {}), **console_settings("offline")}
        init["settings"] = {k: v for k, v in settings.items() if k != "quiet"}
    _say_mode("offline", f"the online run did not start ({_first_line(first)})", run_dir)
    try:
        return start()
    except Exception as err:
        rank_zero_info(f"W&B off: its offline run did not start either ({_first_line(err)})")
        return None


def init_wandb(run_dir: Path, **init):
    """``wandb.init(**init)`` through :func:`start_or_fallback`: the run, or None."""
    import wandb

    return start_or_fallback(lambda: wandb.init(**init), init, run_dir)


def start_wandb(logger: WandbLogger, run_dir: Path) -> bool:
    """Start a Lightning ``WandbLogger``'s run now, falling back as :func:`start_or_fallback`
    does; False when it cannot start (the caller drops the logger)."""
    if wandb_run_started(logger) is not None:
        return True
    init = wandb_init_arguments(logger)
    return start_or_fallback(lambda: restart_wandb_run(logger), init, run_dir) is not None


def start_loggers(loggers: Sequence[Logger], run_dir: Path) -> list[Logger]:
    """``loggers`` with every W&B run started (:func:`start_wandb`), less those that could
    not start: called once the Trainer has accepted its options, so that a W&B failure
    shows before training, as one line, and never stops it."""
    return [
        lg for lg in loggers if not isinstance(lg, WandbLogger) or start_wandb(lg, Path(run_dir))
    ]


class RunWandbLogger(WandbLogger):
    """``WandbLogger`` whose config is only the run's resolved config (see
    :func:`config_logged_once`), without ``anonymous=None`` (:func:`drop_anonymous`)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        drop_anonymous(wandb_init_arguments(self))

    def log_hyperparams(self, params) -> None:
        config_logged_once(params)


def _say_mode(mode: str, why: str, run_dir: Path) -> None:
    if mode == "offline":
        runs = show_path(Path(run_dir) / "wandb" / "offline-run-*")
        rank_zero_info(f"W&B offline: {why}. Upload later with `wandb sync {runs}`")


def make_loggers(run_dir: Path, *, settings: dict) -> list[Logger]:
    """CSV always; W&B (``settings`` from :func:`wandb_settings`) unless ``WANDB_MODE=disabled``.

    The W&B run starts when first used; :func:`start_loggers` starts it at once."""
    if rank_zero_only.rank == 0:  # other ranks write nothing, and may run before rank 0
        # Exists before W&B starts, so wandb finds the git repository above it.
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    loggers: list[Logger] = [RunCSVLogger(run_dir)]
    mode, why = wandb_mode_and_reason()
    if mode != "disabled":
        _say_mode(mode, why, run_dir)
        if rank_zero_only.rank == 0:
            save_run_id(run_dir, settings["id"])
        loggers.append(
            RunWandbLogger(
                # Absolute: W&B's service process (shared by the runs of this process) may
                # have started in another working directory.
                save_dir=str(Path(run_dir).resolve()),
                offline=mode == "offline",
                log_model=False,
                settings=init_settings(mode),
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
    if rank_zero_only.rank == 0:
        Path(run_dir).mkdir(parents=True, exist_ok=True)
    out = list(loggers)
    if not any(isinstance(lg, RunCSVLogger) for lg in out):
        out.insert(0, RunCSVLogger(run_dir))
    for logger in out:
        if not isinstance(logger, WandbLogger) or wandb_run_started(logger) is not None:
            continue
        init = wandb_init_arguments(logger)
        logger.log_hyperparams = config_logged_once  # the config once, as for our logger
        mode, why = wandb_mode_and_reason()
        offline = wandb_logger_offline(logger) or init.get("mode") in ("offline", "dryrun")
        values = {**settings, "dir": str(Path(run_dir).resolve())}
        values["settings"] = init_settings("offline" if offline else mode)
        for key, value in values.items():
            if init.get(key) in _UNSET.get(key, (None,)):
                init[key] = value
        drop_anonymous(init)
        # LightningCLI fills every wandb.init argument the config leaves out with None.
        if init.get("mode") is None and not wandb_logger_offline(logger):
            # Not WandbLogger(offline=True): that refuses log_model, which works offline.
            init["mode"] = mode if mode != "online" else None
            _say_mode(mode, why, run_dir)
        if init.get("id") and rank_zero_only.rank == 0:
            save_run_id(run_dir, init["id"])
        set_wandb_identity(logger, init)
    return out
