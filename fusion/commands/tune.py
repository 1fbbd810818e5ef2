"""Hyper-parameter search with Optuna: each trial a normal fit, resumable, shareable.

$ python train.py tune --config configs/concat.yaml --n_trials 50 --data.store stores/kaggle
$ python train.py tune --config configs/concat.yaml --n_trials 50 \\
      --storage postgresql://user:pw@host/db --study_name concat     # one study, many machines

Every argument other than the ones below is a ``train.py fit`` argument, shared by all
trials. The search space is ``--search`` (default ``configs/search/<config name>.yaml``):
one entry per fit option, ``{low, high[, log]}`` (a float, or an int when both bounds are
ints) or ``{choices: [...]}``, and holds the config's own values: a new study's trial 0
is the config as it is (``enqueue_trial``), so the search starts from, and is judged
against, the untuned config. A TPE sampler (``--seed``) proposes values; a median
pruner stops a trial whose val/acc_top1 at the same share of its training falls below
the median of earlier trials (``--pruner none`` to switch it off). Each trial prints one
line when it ends (Optuna's own log is kept to warnings), and starts from the environment
the command started with (W&B rewrites ``WANDB_MODE`` inside a run).

``STUDY`` is ``--study_dir`` (default ``runs/<experiment>/tune-<store>``, ``<store>`` the
store's folder name and a hash of its path) and the study ``--study_name`` (default
``<experiment>@<store>``: the same config tuned on another store is another study)::

    STUDY/study.db          the Optuna storage (SQLite) unless --storage names another
    STUDY/trials/trial_N/   trial N's run directory (W&B runs grouped by the study name)
    STUDY/best.yaml         the best trial's config: `python train.py fit --config` reruns it
    STUDY/trials.csv        every trial: number, state, val/acc_top1, params, run directory
    STUDY/history.png, STUDY/importance.png   Optuna's plots

Rerunning the same command resumes: ``--n_trials`` counts finished (complete or pruned)
trials, so a killed search runs only the missing ones and never repeats a finished one;
the sampler is seeded with ``--seed`` plus the trials already in the study, so it draws
new parameters. Several processes may share a study (the SQLite file on one machine, or
``--storage`` across machines): each trial records its process and Optuna's heartbeat
marks it alive, so no process touches another's running trial. A trial whose process is
gone (on this host: at once; elsewhere: after ``GRACE_S`` without a heartbeat) is failed
and its parameters tried once more (``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import lightning as L
import optuna
import sqlalchemy
import yaml
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.loggers import WandbLogger

from feature_store.atomic import atomic_write_bytes, atomic_write_text, write_csv
from feature_store.console import show_path
from fusion.callbacks import NonFiniteLossError
from fusion.cli import main as cli_main
from fusion.command_options import parse_own_options
from fusion.commands.cv import config_paths, config_value, fit_experiment, option
from fusion.datamodule import FeatureDataModule
from fusion.errors import FusionError
from fusion.exit import exit_codes
from fusion.heads import head_default
from fusion.module import FusionModule
from fusion.runs import process_alive, restored_environ

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
PRUNERS = ("median", "none")


class SearchSpaceError(FusionError, ValueError):
    """A search-space YAML that cannot be read."""


class TuneError(FusionError, ValueError):
    """Bad ``train.py tune`` options or a study storage that cannot be opened."""


def load_space(path: Path) -> dict[str, dict]:
    """The search space ``{fit option: spec}``, checked."""
    if not path.is_file():
        raise SearchSpaceError(
            f"search space {path} not found; write one (see configs/search/concat.yaml) "
            "or pass --search FILE"
        )
    space = yaml.safe_load(path.read_text()) or {}
    for name, spec in space.items():
        ok = isinstance(spec, dict) and (
            ("choices" in spec and len(spec["choices"]) > 0)
            or ("low" in spec and "high" in spec and spec["low"] <= spec["high"])
        )
        if not ok:
            raise SearchSpaceError(
                f"{path}: {name}: expected {{low: L, high: H, log: bool}} with L <= H or "
                f"{{choices: [...]}}, got {spec!r}"
            )
    return space


def suggest(trial: optuna.Trial, space: dict[str, dict]) -> list[str]:
    """Sample every option of ``space``; return them as fit arguments."""
    args = []
    for name, spec in space.items():
        if "choices" in spec:
            # Optuna's categorical values must be scalars: a list ([1024, 512]) goes as JSON.
            encoded = [json.dumps(c) for c in spec["choices"]]
            value = json.loads(trial.suggest_categorical(name, encoded))
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            value = trial.suggest_int(name, spec["low"], spec["high"], log=spec.get("log", False))
        else:
            value = trial.suggest_float(
                name, float(spec["low"]), float(spec["high"]), log=spec.get("log", False)
            )
        # A string goes as it is (``auto``): jsonargparse reads '"auto"' as a quoted string.
        args += [f"--{name}", value if isinstance(value, str) else json.dumps(value)]
    return args


def _default(name: str):
    """The default of a ``model.*`` (``model.optimizer.lr``: a group's field too) or
    ``data.*`` option that no config sets."""
    import dataclasses
    import inspect

    group, _, key = name.partition(".")
    owner = {"model": FusionModule, "data": FeatureDataModule}.get(group)
    key, _, field = key.partition(".")
    param = inspect.signature(owner).parameters.get(key) if owner else None
    if param is None or param.default is inspect.Parameter.empty:
        return None
    default = param.default
    if field:  # a group's option: the field of its dataclass default
        if not dataclasses.is_dataclass(default) or not hasattr(default, field):
            return None
        default = getattr(default, field)
    return list(default) if isinstance(default, tuple) else default


def config_params(args: Sequence[str], space: dict[str, dict]) -> tuple[dict, list[str]]:
    """The config's own values of the searched options, as Optuna parameters of ``space``
    (what :func:`suggest` would draw to fit them), and the options whose value lies
    outside the space (left to the sampler)."""
    params, outside = {}, []
    for name, spec in space.items():
        value = config_value(args, name)
        if value is None and name.startswith("model.head_options."):
            # An option of some heads only, not set: the value the config's head uses.
            head = config_value(args, "model.head") or _default("model.head")
            value = head_default(head, name.rsplit(".", 1)[1])
        value = _default(name) if value is None else value
        if "choices" in spec:
            encoded = json.dumps(value)
            inside = encoded in [json.dumps(c) for c in spec["choices"]]
            value = encoded
        else:
            inside = isinstance(value, int | float) and spec["low"] <= value <= spec["high"]
            integer = isinstance(spec["low"], int) and isinstance(spec["high"], int)
            inside = inside and (not integer or float(value).is_integer())
        if inside:
            params[name] = value
        else:
            outside.append(name)
    return params, outside


def enqueue_config(study: optuna.Study, args: Sequence[str], space: dict[str, dict]) -> None:
    """A new study's trial 0: the config's own values (the untuned baseline)."""
    if study.get_trials(deepcopy=False):
        return
    params, outside = config_params(args, space)
    study.enqueue_trial(params, skip_if_exists=True)
    note = f" (outside the search space, sampled: {', '.join(outside)})" if outside else ""
    print(f"tune: trial 0 is the config's own values{note}")


class PruneOnVal(L.Callback):
    """Report val/acc_top1 to the trial after each validation; stop it when Optuna says so.

    The step reported is the percent of the fit's planned steps done, so trials with other
    batch sizes (other step counts) are compared at the same point of their training.
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/acc_top1") -> None:
        self.trial, self.monitor = trial, monitor
        self._reported: set[int] = set()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        if trainer.max_steps and trainer.max_steps > 0:
            progress = trainer.global_step / trainer.max_steps
        else:
            progress = (trainer.current_epoch + 1) / max(1, trainer.max_epochs or 1)
        step = int(100 * progress)
        if step in self._reported:  # several validations per percent: Optuna keeps the first
            return
        self._reported.add(step)
        self.trial.report(float(value), step=step)
        if self.trial.should_prune():
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):  # the next trial starts its own W&B run
                    logger.experiment.finish()
            raise optuna.TrialPruned(f"val/acc_top1 {float(value):.4f} at {progress:.0%}")


HEARTBEAT_S, GRACE_S = 60, 180  # a trial without a heartbeat for GRACE_S is stale


def recover_dead(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    retry: optuna.storages.RetryHeartbeatStaleTrialCallback,
) -> int:
    """Fail and retry the RUNNING trials whose process, on this host, is gone (kill -9).

    Another live process's trials are left alone; a dead process on another host is
    found by Optuna's heartbeat (``GRACE_S``) instead. Returns how many were retried."""
    host, retried = socket.gethostname(), 0
    study_id = storage.get_study_id_from_name(study.study_name)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        pid = t.user_attrs.get("pid")
        if t.user_attrs.get("host") != host or not isinstance(pid, int) or process_alive(pid):
            continue
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        try:
            storage.set_trial_state_values(trial_id, optuna.trial.TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another process failed it first
        retry(study, storage.get_trial(trial_id))
        retried += 1
    return retried


def open_study(study_dir: Path, *, name: str, storage_url: str | None, seed: int, pruner: str):
    """The study (created or loaded) and its storage.

    Every storage (the default SQLite file too) runs Optuna's heartbeat: a process's
    RUNNING trials are its own while it beats, so several processes can share a study;
    a stale trial is failed and retried once (``RetryHeartbeatStaleTrialCallback``). The
    sampler's seed is ``seed`` plus the trials the study already holds, so a resumed
    search draws new parameters instead of replaying the first trials'."""
    pruning = (
        optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=20)
        if pruner == "median"
        else optuna.pruners.NopPruner()
    )
    if not storage_url:
        study_dir.mkdir(parents=True, exist_ok=True)
    url = storage_url or f"sqlite:///{study_dir.resolve() / 'study.db'}"
    try:
        with warnings.catch_warnings():  # heartbeat: "experimental" since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
            storage = optuna.storages.RDBStorage(
                url,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=GRACE_S,
                heartbeat_stale_trial_callback=retry,
            )
        summaries = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
        if not storage_url and summaries and name not in summaries:
            raise TuneError(
                f"{study_dir} holds the study {sorted(summaries)[0]!r}, not {name!r} (another "
                "store or --study_name); pass --study_dir for the new study, or that name"
            )
        existing = summaries[name].n_trials if name in summaries else 0
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            sampler=optuna.samplers.TPESampler(seed=seed + existing),
            pruner=pruning,
            direction="maximize",
            load_if_exists=True,
        )
    except (ImportError, sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError,
            ValueError) as err:  # fmt: skip
        if isinstance(err, TuneError):
            raise
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise TuneError(
            f"cannot open the study storage {storage_url or url} ({first}); "
            + ("install its database driver or pass another --storage" if storage_url else
               f"move the damaged {study_dir / 'study.db'} aside, or pass another --study_dir")
        ) from err  # fmt: skip
    retried = recover_dead(study, storage, retry)
    if retried:
        print(f"tune: {retried} trial(s) left running by a killed search will be retried")
    return study


def store_tag(store) -> str:
    """``<store folder>-<hash of its absolute path>``: names the default study after the
    data, so the same config tuned on another store starts its own study."""
    path = Path(str(store or "stores/kaggle")).resolve()
    return f"{path.name}-{hashlib.sha1(str(path).encode()).hexdigest()[:6]}"


def parser():
    """``train.py tune``'s own options; every other argument is a ``train.py fit`` one."""
    from feature_store.cli import CliParser

    p = CliParser(
        prog="train.py tune",
        description=__doc__.split("\n\n")[0] + " Every option not listed here is a "
        "`train.py fit` option (python train.py fit --help), shared by all trials.",
    )
    p.add_argument(
        "--n_trials", type=PositiveInt, default=None,
        help="required: finished (complete or pruned) trials the study ends with, N >= 1",
    )  # fmt: skip
    p.add_argument(
        "--search", type=str | None, default=None,
        help="the search-space YAML (default: configs/search/<experiment>.yaml beside the "
        "first --config)",
    )  # fmt: skip
    p.add_argument(
        "--study_dir", type=str | None, default=None,
        help="default: RUNS_ROOT/<experiment>/tune-<store>",
    )  # fmt: skip
    p.add_argument(
        "--storage", type=str | None, default=None,
        help="an Optuna storage URL shared by several machines (default: STUDY/study.db)",
    )  # fmt: skip
    p.add_argument(
        "--study_name", type=str | None, default=None, help="default: <experiment>@<store>"
    )
    p.add_argument(
        "--seed", type=NonNegativeInt, default=0,
        help="the TPE sampler's seed (plus the trials the study holds)",
    )  # fmt: skip
    p.add_argument(
        "--pruner", type=Literal[PRUNERS], default="median",
        help="median: stop a trial below the median of earlier ones at the same point",
    )  # fmt: skip
    return p


def run_tune(argv: Sequence[str]) -> Path:
    """Entry point of ``python train.py tune``; returns the study directory."""
    own, args, _ = parse_own_options(parser(), argv)
    verbosity = optuna.logging.get_verbosity()
    # Optuna's INFO lines ("[I ...] A new study created", "Trial 3 finished with value...")
    # repeat what trial_line prints once per trial; its warnings stay.
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with exit_codes("train.py tune"):
            return _run_tune(own, args)
    finally:
        optuna.logging.set_verbosity(verbosity)


def _run_tune(own, args: list[str]) -> Path:
    for banned in ("--run_dir", "--ckpt_path"):
        if option(args, banned) is not None:
            raise TuneError(f"{banned} is set per trial; drop it")
    if own.n_trials is None:
        raise TuneError("give --n_trials N (N >= 1)")
    configs = config_paths(args)
    experiment = fit_experiment(args)  # the fit's own name: trials run in it
    first = Path(configs[0]).parent if configs else Path(".")
    search = Path(own.search or first / "search" / f"{experiment}.yaml")
    space = load_space(search)
    root = Path(config_value(args, "runs_root") or "runs")
    tag = store_tag(config_value(args, "data.store"))
    study_dir = Path(own.study_dir or root / experiment / f"tune-{tag}")
    name = own.study_name or f"{experiment}@{tag}"
    study = open_study(
        study_dir, name=name, storage_url=own.storage, seed=own.seed, pruner=own.pruner
    )
    enqueue_config(study, args, space)

    def objective(trial: optuna.Trial) -> float:
        run = study_dir / "trials" / f"trial_{trial.number}"
        trial.set_user_attr("run_dir", str(run))
        # Whose trial this is: recover_dead retries it at once if this process dies.
        trial.set_user_attr("pid", os.getpid())
        trial.set_user_attr("host", socket.gethostname())
        # Every trial's W&B run lands in the study's group (unless the user names one).
        group = [] if option(args, "--wandb_group") else ["--wandb_group", name]
        fit_args = ["fit", *args, *group, *suggest(trial, space), "--run_dir", str(run)]
        with restored_environ():  # W&B sets WANDB_MODE=dryrun for an offline run
            cli = cli_main(fit_args, extra_callbacks=[PruneOnVal(trial)], candidate="tune_trial")
        score = cli.trainer.checkpoint_callback.best_model_score
        if score is None:
            raise RuntimeError(f"trial {trial.number}: no val/acc_top1 was logged ({run})")
        return float(score)

    done = len(study.get_trials(deepcopy=False, states=FINISHED))
    _optimize(study, objective, n_trials=own.n_trials, done=done, name=name)
    return report(study, study_dir)


def _optimize(study: optuna.Study, objective, *, n_trials: int, done: int, name: str) -> None:
    if done < n_trials:
        print(f"tune: study {name!r}: {done} finished trial(s), running {n_trials - done} more")
        study.optimize(
            objective,
            n_trials=n_trials - done,
            callbacks=[optuna.study.MaxTrialsCallback(n_trials, states=FINISHED), trial_line],
            # A diverging trial (NaN loss at a high lr) is a FAIL in the table, not the end
            # of the search; it does not count toward --n_trials.
            catch=(NonFiniteLossError,),
        )


def trial_line(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """One line per finished trial: its state, value, the best so far and its parameters."""
    if trial.state == optuna.trial.TrialState.COMPLETE:
        outcome = f"val/acc_top1 {trial.value:.4f}"
    elif trial.state == optuna.trial.TrialState.PRUNED:
        values = trial.intermediate_values
        last = values[max(values)] if values else None
        outcome = f"pruned at val/acc_top1 {last:.4f}" if last is not None else "pruned"
    else:
        outcome = trial.state.name.lower()
    try:
        best = f"best {study.best_value:.4f} (trial {study.best_trial.number})"
    except ValueError:  # no complete trial yet
        best = "no complete trial yet"
    print(f"tune: trial {trial.number} {outcome}; {best}; {json.dumps(trial.params)}", flush=True)


def report(study: optuna.Study, study_dir: Path) -> Path:
    """best.yaml, trials.csv, the plots and a printed table of the best trials."""
    study_dir.mkdir(parents=True, exist_ok=True)
    trials = study.get_trials(deepcopy=False)
    rows = [
        {
            "number": t.number,
            "state": t.state.name,
            "val_acc_top1": t.value,
            **{f"params_{k}": v for k, v in t.params.items()},
            "run_dir": t.user_attrs.get("run_dir", ""),
        }
        for t in trials
    ]
    header = list(dict.fromkeys(k for r in rows for k in r))
    write_csv(study_dir / "trials.csv", header, ([r.get(k, "") for k in header] for r in rows))
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        print(f"tune: no complete trial yet in {show_path(study_dir)}")
        return study_dir
    best = study.best_trial
    best_run = Path(best.user_attrs["run_dir"])
    atomic_write_text(
        study_dir / "best.yaml",
        f"# best trial {best.number} of study {study.study_name!r}: val/acc_top1 "
        f"{best.value:.4f}\n# $ python train.py fit --config {study_dir / 'best.yaml'}\n"
        + (best_run / "config.yaml").read_text(),
    )
    _plots(study, study_dir)
    print(f"tune: {len(complete)} complete trial(s); best {best.number}: {best.value:.4f}")
    print("  trial  val/acc_top1  params")
    for t in sorted(complete, key=lambda t: -t.value)[:10]:
        print(f"  {t.number:5d}  {t.value:12.4f}  {json.dumps(t.params)}")
    print(
        f"best config: {show_path(study_dir / 'best.yaml')}; "
        f"all trials: {show_path(study_dir / 'trials.csv')}"
    )
    return study_dir


def _plots(study: optuna.Study, study_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from optuna.visualization import matplotlib as ovm

    plots = {
        "history.png": ovm.plot_optimization_history,
        "importance.png": ovm.plot_param_importances,
    }
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():  # "experimental" on every call: not news to us
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                ax = plot(study)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            # Importance needs two complete trials whose parameters differ.
            print(f"tune: no {name} ({err})")
            continue
        fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        atomic_write_bytes(study_dir / name, buf.getvalue())
        matplotlib.pyplot.close(fig)
