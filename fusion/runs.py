"""Run directories of train.py: what a new fit, a rerun and a resume may write, and where.

$ python train.py fit --config RUN/config.yaml          # a new run of RUN's experiment
$ python train.py fit --config RUN/config.yaml --ckpt_path last --run_dir RUN   # resume RUN

Rules (issue 9): a new fit never writes into an existing run; ``RUN/config.yaml`` holds
no run paths (:data:`RUN_PATHS`) but the experiment name, so rerunning it starts a fresh
run of the same experiment; a resume is checked against its checkpoint before anything
is written, and its config is rewritten only once the checkpoint is restored. Values that
would fail deep inside a fit (an unknown head, a negative learning rate, a batch of 0)
are refused here with one line.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from lightning.pytorch.cli import SaveConfigCallback

from feature_store.atomic import atomic_write_text
from fusion.errors import FusionError
from fusion.heads import HEAD_ALIASES, HEADS, check_head_options, checkpoint_set_dims
from fusion.predict import CheckpointError, load_checkpoint
from fusion.wandb_report import run_config, wandb_runs

# Paths that belong to one run: never saved in RUN/config.yaml (a rerun gets its own).
RUN_PATHS = ("run_dir", "ckpt_path", "trainer.default_root_dir", "checkpoint.dirpath")


@contextmanager
def restored_environ() -> Iterator[None]:
    """The process environment put back as it was after the block: one fit of several in a
    process (tune's trials, cv's folds) must not see what the previous one set
    (Lightning's ``WandbLogger`` sets ``WANDB_MODE=dryrun`` for an offline run, so the next
    run said ``WANDB_MODE=dryrun`` where the user exported ``offline``)."""
    saved = dict(os.environ)
    try:
        yield
    finally:
        for key in set(os.environ) - set(saved):
            del os.environ[key]
        os.environ.update(saved)


class ResumeError(FusionError, FileNotFoundError):
    """``--ckpt_path last`` was asked for but there is no checkpoint to resume."""


class RunDirError(FusionError, ValueError):
    """A new fit was pointed at an existing run, or a setting is out of range."""


class RunConfigSaver(SaveConfigCallback):
    """``RUN/config.yaml`` without the run's own paths (:data:`RUN_PATHS`), and the same
    config flattened into the W&B run's config (with the store's essentials and package
    versions, fusion/wandb_report.py:run_config).

    A new run writes it at setup; a resume only once its checkpoint is restored
    (``on_train_start``), so a resume that fails leaves the run's config as it was.
    """

    resuming = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        if not self.resuming:
            self._save(trainer)

    def on_train_start(self, trainer, pl_module) -> None:
        self._save(trainer)

    def _save(self, trainer) -> None:
        if self.already_saved:
            return
        config = self.config.clone()
        for key in RUN_PATHS:
            if key in config:
                config[key] = None
        if trainer.is_global_zero:
            path = Path(trainer.default_root_dir) / self.config_filename
            path.parent.mkdir(parents=True, exist_ok=True)
            self.parser.save(config, str(path), skip_none=False, overwrite=True)
            runs = wandb_runs(trainer)
            if runs:
                flat = run_config(self.parser.dump(config, format="json", skip_none=False))
                for run in runs:
                    run.config.update(flat, allow_val_change=True)
        self.already_saved = True


def is_existing_run(run_dir: Path) -> bool:
    """True when ``run_dir`` already holds a run (anything in it)."""
    return run_dir.is_dir() and any(run_dir.iterdir())


def new_run_dir(base: Path) -> Path:
    """``base/<timestamp>``, suffixed ``-1``, ``-2``... when two runs start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run, n = base / stamp, 0
    while run.exists():
        n += 1
        run = base / f"{stamp}-{n}"
    return run


def claim_new_run_dir(base: Path) -> tuple[Path, list[Path]]:
    """:func:`new_run_dir`, created at once (``mkdir`` is atomic), so that two fits of one
    experiment started in the same second get two directories; returns it and the folders
    made for it (removed again if the fit is refused before it writes anything)."""
    made = [d for d in (base, *base.parents) if not d.exists()]
    base.mkdir(parents=True, exist_ok=True)
    run = new_run_dir(base)
    while True:
        try:
            run.mkdir()
            return run, [run, *made]
        except FileExistsError:  # another process took the name since new_run_dir looked
            run = new_run_dir(base)


def resume_run_dir(base: Path, run_dir: str | None) -> Path:
    """The run to resume: ``run_dir`` if given, else the newest under ``base`` with a last.ckpt."""
    if run_dir:
        candidates = [Path(run_dir)]
    else:
        candidates = sorted(base.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        candidates = [p.parent.parent for p in candidates]
    if not candidates or not (candidates[-1] / "checkpoints" / "last.ckpt").is_file():
        where = candidates[-1] if candidates else base / "*"
        raise ResumeError(
            f"--ckpt_path last: no checkpoint at {where}/checkpoints/last.ckpt. Start a fresh "
            "run without --ckpt_path, or pass --run_dir RUN (or --ckpt_path FILE) of the run "
            "to resume."
        )
    return candidates[-1]


def experiment_name(cfg) -> str:
    """``--experiment``, else the name of the first config file that no other given config
    file includes (``config: base.yaml`` in configs/concat.yaml names the run ``concat``);
    a saved ``RUN/config.yaml`` of an older run (without ``experiment``) is named after its
    run's experiment folder."""
    if cfg.get("experiment"):
        return str(cfg["experiment"])
    configs = [_config_path(p) for p in cfg.get("config") or []]
    included = {inc for p in configs for inc in _includes(p)}
    configs = [p for p in configs if p.resolve() not in included]
    if not configs:
        return "default"
    path = configs[0]
    if path.name == "config.yaml" and (path.parent / "checkpoints").is_dir():
        return path.parent.parent.name
    return path.stem


def _config_path(path) -> Path:
    # jsonargparse's Path knows the directory it was given relative to (a nested include
    # is relative to its including file); a plain string is relative to the cwd.
    return Path(getattr(path, "absolute", None) or str(path))


def _includes(path: Path) -> set[Path]:
    """The files a config file includes with its own ``config:`` key, resolved."""
    try:
        spec = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return set()
    names = spec.get("config") if isinstance(spec, dict) else None
    names = [names] if isinstance(names, str) else names or []
    return {(path.parent / str(n)).resolve() for n in names}


def check_settings(cfg) -> None:
    """One-line errors for values that would otherwise fail deep inside a fit."""
    head = cfg.get("model.head")
    if head is not None and head not in HEADS and head not in HEAD_ALIASES:
        raise RunDirError(
            f"--model.head {head!r} is not a head; choose one of {sorted({*HEADS, *HEAD_ALIASES})}"
        )
    options = cfg.get("model.head_options")
    if head is not None and options is not None:
        given = options.as_dict() if hasattr(options, "as_dict") else dict(vars(options))
        check_head_options(head, given, prefix="--model.head_options.")
    checks = [
        ("model.optimizer.lr", lambda v: v > 0, "> 0"),
        ("model.optimizer.weight_decay", lambda v: v >= 0, ">= 0"),
        ("model.head_options.dropout", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("model.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1)"),
        ("model.head_options.modality_dropout", lambda v: 0 <= v <= 0.5, "in [0, 0.5]"),
        ("model.optimizer.fusion_lr_scale", lambda v: v > 0, "> 0"),
        ("recipe.min_steps", lambda v: v >= 1, ">= 1"),
        ("recipe.full_rows", lambda v: v >= 0, ">= 0"),
        ("data.batch_size", lambda v: v >= 1, ">= 1"),
        ("data.eval_batch_size", lambda v: v >= 1, ">= 1"),
    ]
    for key, ok, rule in checks:
        value = cfg.get(key)
        if isinstance(value, int | float) and not ok(value):
            raise RunDirError(f"--{key} {value} is out of range: it must be {rule}")
    decays = cfg.get("model.weight_decay_sweep")
    if isinstance(decays, list) and (not decays or any(d < 0 for d in decays)):
        raise RunDirError(
            f"--model.weight_decay_sweep {decays} is not a sweep: give a non-empty list of "
            "values >= 0 (one head is trained per value, the best on val kept), or none"
        )
    hidden = cfg.get("model.head_options.hidden_dims") or []
    if any(not isinstance(h, int) or h < 1 for h in hidden):
        raise RunDirError(
            f"--model.head_options.hidden_dims {list(hidden)} is out of range: every hidden "
            "size must be >= 1 ([] for one linear layer)"
        )


def check_resume(ckpt_path: Path, model) -> None:
    """Refuse, before anything is written, a checkpoint this model cannot continue from."""
    try:
        ckpt = load_checkpoint(ckpt_path)
    except CheckpointError as err:
        raise ResumeError(f"--ckpt_path: {err}") from err
    hp, want = dict(ckpt["hyper_parameters"]), dict(model.hparams)
    hp["set_dims"], want["set_dims"] = checkpoint_set_dims(hp), checkpoint_set_dims(want)
    diffs = [
        f"{k}: checkpoint {hp.get(k)!r}, config {want.get(k)!r}"
        for k in ("head", "set_dims", "class_names")
        if hp.get(k) != want.get(k)
    ]
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in ckpt["state_dict"].items()}
    if not diffs and mine != theirs:
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        diffs.append(f"weights differ in shape or name ({', '.join(changed[:3])})")
    if diffs:
        raise ResumeError(
            f"cannot resume from {ckpt_path}: {'; '.join(diffs)}. Resume with the run's own "
            "config (--config RUN/config.yaml), or start a new run without --ckpt_path."
        )


# -- which process owns which run directory ------------------------------------------------
RUN_DIR_ENV = "SKETCHFUSION_RUN_DIR"
LAUNCH_ENV = "SKETCHFUSION_LAUNCH"  # "<pid>:<start>" of the process that chose RUN_DIR_ENV


def _process_token(pid: int) -> str:
    """``pid:start``, the start time (clock ticks since boot, Linux) telling a live process
    from an earlier one that had the same pid; the pid alone elsewhere."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        start = stat[stat.rindex(")") + 2 :].split()[19]  # field 22: starttime
    except (OSError, ValueError, IndexError):
        start = ""
    return f"{pid}:{start}"


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a lock's or a trial's owner: cv, tune)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def launch_rank() -> int:
    """This process's rank as a launcher set it (``RANK``, else ``LOCAL_RANK``; 0 if none)."""
    for key in ("RANK", "LOCAL_RANK"):
        value = os.environ.get(key, "").strip()
        if value:
            try:
                return int(value)
            except ValueError:
                raise RunDirError(f"{key}={value!r} is not a process rank (an integer)") from None
    return 0


def export_run_dir(run_dir: Path) -> None:
    """Hand ``run_dir`` to the workers Lightning launches from this process (DDP): they
    inherit the environment, and :func:`handed_run_dir` checks that it is this launch's."""
    os.environ[RUN_DIR_ENV] = str(run_dir)
    os.environ[LAUNCH_ENV] = _process_token(os.getpid())


def handed_run_dir() -> Path | None:
    """Rank 0's run directory when this process is a worker Lightning launched from it:
    the environment names a run directory *and* the launch token names this process's
    parent. A ``SKETCHFUSION_RUN_DIR`` left in a shell by an earlier launch fails the check
    (its launcher is not this process's parent) and is ignored."""
    run_dir, token = os.environ.get(RUN_DIR_ENV), os.environ.get(LAUNCH_ENV)
    if run_dir and token and token == _process_token(os.getppid()):
        return Path(run_dir)
    return None


def worker_run_dir(run_dir: str | None) -> Path:
    """The run directory of a process with a non-zero rank (``LOCAL_RANK``/``RANK``).

    - a worker Lightning launched from rank 0 (DDP on one node): rank 0's directory,
      verified by :func:`handed_run_dir`;
    - a rank of an outside launcher (``torchrun``, ``WORLD_SIZE`` > 1): ``--run_dir``,
      which every rank must be given (rank 0 checks and creates it);
    - else the rank is a leftover of a launcher in the environment: refused, since a
      non-zero rank writes no metrics and trusts a run directory it did not choose.
    """
    handed = handed_run_dir()
    if handed is not None:
        return handed
    rank = launch_rank()
    world = os.environ.get("WORLD_SIZE", "").strip()
    if world.isdigit() and int(world) > 1:
        if not run_dir:
            raise RunDirError(
                f"rank {rank} of {world} processes (WORLD_SIZE={world}) needs --run_dir: "
                "give every rank the same --run_dir"
            )
        return Path(run_dir)
    raise RunDirError(
        f"LOCAL_RANK/RANK={rank} is set but no multi-process launch is (WORLD_SIZE is "
        f"{world or 'unset'}): a leftover of a launcher in this shell? `unset LOCAL_RANK "
        f"RANK {RUN_DIR_ENV} {LAUNCH_ENV}` and rerun"
    )


# -- probe and stack runs: unfinished until their last file ---------------------------------
UNFINISHED = ".unfinished"  # written first and removed last by train.py probe and stack


def claim_command_run(run: Path, prog: str) -> bool:
    """Take ``run`` for a ``probe``/``stack`` run: a new directory, or an unfinished one of
    the same command (killed before its end: ``RUN/.unfinished`` names it), whose files are
    removed. Returns whether it replaced one; refuses (:class:`RunDirError`) any other
    existing run. Call it once the inputs are checked: it writes the marker."""
    marker = run / UNFINISHED
    replaced = is_existing_run(run) and marker.is_file() and marker.read_text().strip() == prog
    if is_existing_run(run) and not replaced:
        raise RunDirError(f"{run} already holds a run; pass a new --run_dir")
    if replaced:
        for entry in run.iterdir():
            if entry.name != UNFINISHED:
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    run.mkdir(parents=True, exist_ok=True)
    atomic_write_text(marker, prog + "\n")
    return replaced


def finish_command_run(run: Path) -> None:
    """The run is complete: remove its ``.unfinished`` marker (its last write)."""
    (run / UNFINISHED).unlink(missing_ok=True)
