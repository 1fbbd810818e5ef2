"""LightningCLI for fusion heads: one YAML per experiment, every value overridable.

$ python train.py fit --config configs/sets_weighted.yaml --data.store stores/kaggle
$ python train.py fit --config configs/sets_weighted.yaml --ckpt_path last    # resume
$ python train.py fit --config configs/concat.yaml --print_config             # scaffold

Each fit gets a run directory ``RUN`` (``--run_dir``, default
``runs/<experiment>/<YYYYmmdd-HHMMSS>``, the experiment being ``--experiment`` or the
config file's name; with ``--ckpt_path last`` the newest run of that experiment that has
``checkpoints/last.ckpt``; on several nodes pass ``--run_dir``). A new fit never writes
into an existing run, checkpoint paths always come from the run directory, and
``RUN/config.yaml`` holds no run paths, so ``--config RUN/config.yaml`` starts a new run
of the same experiment. A resume writes nothing before its checkpoint is restored::

    RUN/config.yaml           the resolved config
    RUN/metrics.csv           CSV log (train/*, val/*, fusion/alpha, fusion/beta)
    RUN/checkpoints/best.ckpt best val/acc_top1; RUN/checkpoints/last.ckpt
    RUN/wandb/                the W&B run (offline unless logged in and online)
    RUN/wandb_run_id          its id: a resume continues the same W&B run
    RUN/alpha_beta.png        dual-logit heads
    RUN/val_predictions.csv   id,label,pred,confidence from best.ckpt
    RUN/submission.csv        Id,Category of --data.predict_split from best.ckpt (--category
                              index|name), with .probs.npz and .json (fusion/submission.py)
    RUN/confusion_top.png     over 50 classes: the most confused classes (also in W&B)
    RUN/refit.json            a refit on train+val (--data.train_splits '[train, val]'
                              --recipe.from_run VALIDATED_RUN): no best.ckpt, no val files,
                              last.ckpt is the model (fusion/refit.py, docs/refit.md)

W&B (fusion/loggers.py, fusion/wandb_report.py): ``--wandb.project/entity/group/tags/
job_type`` (``--wandb_project`` is an alias of ``--wandb.project``), else W&B's
environment variables, else project ``sketchfusion`` grouped by experiment. A logger of
your own (``--trainer.logger WandbLogger --trainer.logger.log_model true``, or any
Lightning logger in the config) gets the same run directory, and metrics.csv beside it.
    RUN/val.probs.npz         every class's val probability from best.ckpt (ensemble weights)

``validate``, ``test`` and ``predict`` score a trained checkpoint (``--ckpt_path FILE``,
or ``best``/``last`` of ``--run_dir RUN`` or of the experiment's newest run) on the
store, after checking that the store matches it (dims, classes, models). They start no
run: no run directory, no logger, no W&B run. ``validate`` and ``test`` print the metrics
(``--data.test_split`` names the labelled split ``test`` scores); ``predict`` writes the
submission predict.py would write (``fusion/submission_writer.py``), by default into
``RUN/predict/<split>/submission.csv``::

    $ python train.py test --ckpt_path RUN/checkpoints/best.ckpt --data.store S --data.test_split val
    $ python train.py predict --config configs/concat.yaml --ckpt_path best --data.store S
"""

from __future__ import annotations

import difflib
import math
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml
from jsonargparse import get_loader, set_loader
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_info

from feature_store import open_store
from feature_store.cli import EXIT_BAD_INPUT, option_names, unknown_option
from feature_store.compat import wandb_run_started
from feature_store.console import quiet_lightning, show_path
from fusion.callbacks import (
    EpochSummary,
    ResumeMetrics,
    RunArtifacts,
    RunCheckpoint,
    StopOnNonFiniteLoss,
    StoreFingerprint,
)
from fusion.command_options import add_submission_arguments
from fusion.datamodule import FeatureDataModule
from fusion.errors import UsageError
from fusion.loggers import adopt_user_loggers, make_loggers, start_loggers, wandb_settings
from fusion.module import (
    RENAMED,
    FusionModule,
    group_flat,
    grouped_hparams,
    is_old_value,
    regrouped,
    renamed,
)
from fusion.predict import (
    FINGERPRINT_KEY,
    CheckpointError,
    check_compatible,
    check_fingerprint,
    load_checkpoint,
)
from fusion.probe_run import latest_probe, probe_line
from fusion.recipe import Recipe
from fusion.refit import MARKER, FitPlan, StopAtStep, check_refit, refit_plan
from fusion.runs import (
    ResumeError,
    RunConfigSaver,
    RunDirError,
    check_resume,
    check_settings,
    claim_new_run_dir,
    experiment_name,
    export_run_dir,
    is_existing_run,
    launch_rank,
    resume_run_dir,
    worker_run_dir,
)
from fusion.stopping import CtrlCSaves, ResumableEarlyStopping
from fusion.submission import check_outputs, finish
from fusion.submission_writer import SubmissionWriter
from fusion.wandb_report import BestSummary, finish_runs

# Subcommands that score a trained checkpoint and start no run.
EVAL_SUBCOMMANDS = ("validate", "test", "predict")
DESCRIPTIONS = {
    "fit": "Train a fusion head on a feature store into a new run directory "
    "(runs/<experiment>/<time>/), or resume one (--ckpt_path last).",
    "validate": "Score a trained checkpoint (--ckpt_path) on the store's val split "
    "(--data.val_split) and print val/loss and val/acc_top1/5; writes nothing.",
    "test": "Score a trained checkpoint (--ckpt_path) on a labelled split "
    "(--data.test_split; the Kaggle test split has no labels: use val) and print "
    "test/loss and test/acc_top1/5; writes nothing.",
    "predict": "Write the submission of --data.predict_split from a trained checkpoint "
    "(--ckpt_path): the same Id,Category CSV and .probs.npz as predict.py, by default in "
    "RUN/predict/<split>/submission.csv.",
}


def run_of_checkpoint(ckpt: Path) -> Path:
    """The run directory a checkpoint belongs to (``RUN/checkpoints/x.ckpt`` -> ``RUN``)."""
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def eval_checkpoint(cfg, subcommand: str) -> Path:
    """The checkpoint ``validate``/``test``/``predict`` score: ``--ckpt_path FILE``, or
    ``best``/``last`` (default ``best``; ``last`` for a refit) of ``--run_dir RUN``, or
    (``best``/``last`` only) of the newest run of the experiment under ``--runs_root``."""
    path = cfg.get("ckpt_path")
    if path not in (None, "best", "last"):
        if path in ("hpc", "registry"):
            raise UsageError(f"--ckpt_path {path} is not supported; pass a checkpoint file")
        return Path(path)
    name = f"{path or 'best'}.ckpt"
    if cfg.get("run_dir"):
        if path is None and (Path(cfg["run_dir"]) / MARKER).is_file():
            name = "last.ckpt"  # a refit keeps no best (fusion/refit.py)
        return Path(cfg["run_dir"]) / "checkpoints" / name
    base = Path(cfg["runs_root"]) / experiment_name(cfg)
    found = sorted(base.glob(f"*/checkpoints/{name}"), key=lambda p: p.stat().st_mtime)
    if path is None or not found:
        where = f"no {base}/*/checkpoints/{name}; " if path else ""
        raise UsageError(
            f"{subcommand} scores a trained checkpoint: {where}pass --ckpt_path "
            "RUN/checkpoints/best.ckpt, or --run_dir RUN, or --config CONFIG --ckpt_path "
            "best for the newest run of that experiment."
        )
    return found[-1]


# Old flat model options already announced in this parse (one deprecation line each).
_ANNOUNCED: set[str] = set()


def _announce(moved: list[tuple[str, str]]) -> None:
    for old, new in moved:
        if old not in _ANNOUNCED:
            _ANNOUNCED.add(old)
            print(
                f"train.py: --model.{old} is deprecated, read as --model.{new} (the model's "
                "options are grouped: python train.py fit --help); rename it",
                file=sys.stderr,
                flush=True,
            )


def regroup_config(value):
    """A loaded config (``model:`` sections, dotted ``model.x`` keys, subcommand sections)
    with the model's old flat options moved into their groups, announced."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        name = key[len("model.") :] if key.startswith("model.") else None
        if key == "model" and isinstance(item, dict):
            grouped, moved = group_flat(item)
            out[key] = grouped
            _announce(moved)
        elif key in DESCRIPTIONS and isinstance(item, dict):  # a subcommand's section
            out[key] = regroup_config(item)
        elif is_old_value(name, item):
            new, out[f"model.{new}"] = regrouped(name, item)
            _announce([(name, new)])
        else:
            out[key] = item
    return out


def regroup_argv(argv: Sequence[str]) -> list[str]:
    """``argv`` with the model's old flat options (``--model.lr 0.1``) renamed, announced."""
    out = list(argv)
    for i, arg in enumerate(out):
        name, eq, text = arg.partition("=")
        old = name[len("--model.") :] if name.startswith("--model.") else ""
        if old not in RENAMED:
            continue
        text = text if eq else (out[i + 1] if i + 1 < len(out) else "")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            value = text
        if is_old_value(old, value):
            new = renamed(old, value)
            _announce([(old, new)])
            out[i] = f"--model.{new}" + (f"={text}" if eq else "")
    return out


def _load_config(text: str):
    """jsonargparse's YAML loader, old flat model options regrouped (:func:`regroup_config`)."""
    return regroup_config(YAML_LOADER(text))


YAML_LOADER = get_loader("yaml")
set_loader("fusion_yaml", _load_config, exceptions=(yaml.YAMLError,))


class FusionArgumentParser(LightningArgumentParser):
    """LightningCLI's parser; an unknown option (``--model.droput``) is one line naming the
    nearest real one, exit code 2. Other usage errors keep jsonargparse's usage text.

    ``fusion_subcommand``: the subcommand whose options it parses (None: the main parser),
    given through LightningCLI's per-subcommand ``parser_kwargs``, so that
    ``add_arguments_to_parser`` adds each subcommand's own options.

    The model's flat options of before issue 21 (``--model.lr``, ``model.weight_decay: [..]``
    in a config) are read as their grouped names, with one deprecation line each, and a
    checkpoint's flat hyper-parameters (``--ckpt_path``) as the head was trained."""

    def __init__(self, *args, fusion_subcommand: str | None = None, **kwargs) -> None:
        kwargs.setdefault("parser_mode", "fusion_yaml")
        super().__init__(*args, **kwargs)
        self.fusion_subcommand = fusion_subcommand

    def parse_args(self, args=None, *rest, **kwargs):
        _ANNOUNCED.clear()
        argv = regroup_argv(sys.argv[1:] if args is None else args)
        return super().parse_args(argv, *rest, **kwargs)

    def parse_object(self, cfg_obj, *rest, **kwargs):
        """LightningCLI parses a ``--ckpt_path`` file's hyper-parameters as
        ``{subcommand: {"model": hparams}}``; ones written before the options were grouped
        are flat (:func:`fusion.module.grouped_hparams`)."""
        if isinstance(cfg_obj, dict):
            cfg_obj = {
                key: {**item, "model": grouped_hparams(item["model"])}
                if isinstance(item, dict) and isinstance(item.get("model"), dict)
                else item
                for key, item in cfg_obj.items()
            }
        return super().parse_object(cfg_obj, *rest, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        parser = getattr(ex, "subcommand_parser", None) or self
        line = unknown_option(message, parser) if self.exit_on_error else None
        listed = re.search(r'"model\.optimizer\.weight_decay":\s+Expected .*value: (\[.*?\])', message)
        if listed and self.exit_on_error:  # the old spelling of a sweep, under the new name
            line = (
                f"--model.optimizer.weight_decay {listed.group(1)}: one value; several (one head "
                f"each, the best on val kept) are --model.weight_decay_sweep {listed.group(1)}"
            )
            print(f"train.py: error: {line}", file=sys.stderr, flush=True)
            self.exit(EXIT_BAD_INPUT)
        if line is None:
            return super().error(message, ex)
        print(f"train.py: error: {grouped_guess(line, parser)}", file=sys.stderr, flush=True)
        self.exit(EXIT_BAD_INPUT)


def grouped_guess(line: str, parser) -> str:
    """``unknown option --model.droput; did you mean ...`` naming the grouped option whose
    last name is nearest (``--model.head_options.dropout``): the whole dotted name of an old
    flat option is nearer to a group's name than to the option in it."""
    found = re.match(r"unknown option (--model\.(\w+))(;|\s)", line)
    if not found:
        return line
    options = [o for o in option_names(parser) if o.startswith("--model.")]
    leaves = {o.rsplit(".", 1)[1]: o for o in options}
    close = difflib.get_close_matches(found.group(2), list(leaves), n=1)
    return f"unknown option {found.group(1)}; did you mean {leaves[close[0]]}?" if close else line


def batches_per_epoch(rows: int, batch_size: int, trainer_cfg: dict) -> int:
    """Optimizer steps per epoch of one process: its share of ``rows`` (every device of
    every node takes one) in batches, over the gradient accumulation."""
    devices = trainer_cfg.get("devices")
    processes = (devices if isinstance(devices, int) and devices > 0 else 1) * max(
        1, int(trainer_cfg.get("num_nodes") or 1)
    )
    batches = math.ceil(math.ceil(rows / processes) / batch_size)
    return max(1, batches // max(1, int(trainer_cfg.get("accumulate_grad_batches") or 1)))


def expected_steps(per_epoch: int, max_epochs: int | None, max_steps: int | None) -> int | None:
    """The optimizer steps a fit plans: ``max_steps``, or ``max_epochs`` epochs, whichever
    ends first (Lightning's default, 1,000 epochs, when neither is set); None: no limit."""
    limits = []
    if max_steps is not None and max_steps > 0:
        limits.append(max_steps)
    if max_epochs is None and not limits:
        max_epochs = 1000
    if max_epochs is not None and max_epochs >= 0:
        limits.append(per_epoch * max_epochs)
    return min(limits) if limits else None


class FusionCLI(LightningCLI):
    """LightningCLI with the store's dims linked into the model and a run directory per fit."""

    def __init__(
        self,
        args: Sequence[str] | None = None,
        *,
        finish_wandb: bool = True,
        extra_callbacks: Sequence = (),
        candidate: str = "fit",
        **kwargs,
    ) -> None:
        # finish_wandb False: the caller logs more, then finishes. extra_callbacks: added to
        # this fit only (train.py tune: the pruner). candidate: the W&B config's `candidate`
        # (fusion/callbacks.py:RunArtifacts; only a "fit" writes RUN/submission.csv).
        self.finish_wandb, self.candidate = finish_wandb, candidate
        self.extra_callbacks = list(extra_callbacks)
        kwargs.setdefault("parser_class", FusionArgumentParser)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # resume rewrites it
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        parser_kwargs = {
            "description": "Train, score and predict with fusion heads on a feature store "
            "(python train.py --help: the overview and the other subcommands).",
            **{k: {"description": v} for k, v in DESCRIPTIONS.items()},
            **kwargs.get("parser_kwargs", {}),
        }
        for name in self.subcommands():  # each subcommand's parser knows its subcommand
            parser_kwargs[name] = {**parser_kwargs.get(name, {}), "fusion_subcommand": name}
        kwargs["parser_kwargs"] = parser_kwargs
        self.claimed: list[Path] = []  # a new run's directory and the folders made for it
        # The command line as given: a refit refuses options that ask it to validate
        # (fusion/refit.py), which the config file's values (the validated run's) do not.
        self.argv = [str(a) for a in (sys.argv[1:] if args is None else args)]
        self.validated = None  # a refit's validated run (fusion/refit.py)
        self.refit = None  # its plan: RUN/refit.json
        self.fit_plan: dict | None = None  # this fit's, recorded in its checkpoints
        try:
            super().__init__(FusionModule, FeatureDataModule, args=args, **kwargs)
        except BaseException:
            finish_runs(getattr(self, "trainer", None), exit_code=1)
            for d in self.claimed:  # deepest first; only while nothing was written in it
                if d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise
        if self.subcommand is not None and self.finish_wandb:
            finish_runs(self.trainer)

    def section(self, config):
        """The running subcommand's part of a parsed ``config`` (all of it without one)."""
        return config[self.subcommand] if self.subcommand else config

    def add_subcommand_arguments(self, parser: LightningArgumentParser, subcommand: str) -> None:
        """Options of one subcommand only: scoring a checkpoint, predict's output."""
        if subcommand in EVAL_SUBCOMMANDS:
            parser.add_argument(
                "--allow_store_mismatch",
                type=bool,
                default=False,
                help="score the checkpoint even if the store was built with other models "
                "than its training store (dims and classes must still match)",
            )
        if subcommand == "predict":
            parser.add_argument(
                "--out",
                type=str | None,
                default=None,
                help="submission CSV to write (default: RUN/predict/<split>/submission.csv "
                "beside the checkpoint's run); OUT.probs.npz is written beside it",
            )
            parser.add_argument(
                "--strict",
                type=bool,
                default=False,
                help="fail when an input of the split failed extraction instead of giving "
                "it the train class prior",
            )
            add_submission_arguments(parser, kaggle=True, message=True)
        elif subcommand == "fit":  # the fit's own RUN/submission.csv
            add_submission_arguments(parser, kaggle=False, message=False)

    def parse_arguments(self, parser: LightningArgumentParser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads a --ckpt_path file's hyper-parameters right after parsing; a
        # truncated or foreign file must be a one-line error here, not torch's traceback.
        sub = self.config.get("subcommand")
        if sub in EVAL_SUBCOMMANDS:
            self.config[sub]["ckpt_path"] = str(eval_checkpoint(self.config[sub], sub))
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in ("last", "best", "hpc", "registry"):
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                raise ResumeError(f"--ckpt_path: {err}") from err

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        subcommand = getattr(parser, "fusion_subcommand", None)
        if subcommand is not None:
            self.add_subcommand_arguments(parser, subcommand)
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="fit: this run's directory (default: RUNS_ROOT/<experiment>/<time>; an "
            "existing run only with --ckpt_path last); validate/test/predict: the run whose "
            "checkpoints/best.ckpt (or --ckpt_path last) is scored",
        )
        parser.add_argument(
            "--runs_root", type=str, default="runs", help="parent of the experiments' run dirs"
        )
        parser.add_argument(
            "--wandb_project", type=str | None, default=None, help="alias of --wandb.project"
        )
        parser.add_argument(
            "--wandb.project",
            type=str | None,
            default=None,
            help="fit: W&B project (default: $WANDB_PROJECT, else sketchfusion)",
        )
        parser.add_argument(
            "--wandb.entity",
            type=str | None,
            default=None,
            help="fit: W&B entity, user or team (default: $WANDB_ENTITY)",
        )
        parser.add_argument(
            "--wandb.group",
            type=str | None,
            default=None,
            help="fit: W&B run group (default: $WANDB_RUN_GROUP, else the experiment)",
        )
        parser.add_argument(
            "--wandb.tags",
            type=list[str] | None,
            default=None,
            help="fit: W&B run tags (default: $WANDB_TAGS)",
        )
        parser.add_argument(
            "--wandb.job_type",
            type=str | None,
            default=None,
            help="fit: W&B job type (default: $WANDB_JOB_TYPE, else train)",
        )
        parser.add_argument(
            "--wandb_group",
            type=str | None,
            default=None,
            help="alias of --wandb.group (set by train.py tune and cv)",
        )
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="name of the runs/<experiment>/ folder and W&B group (default: the config "
            "file's name, e.g. concat for configs/concat.yaml)",
        )
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc_top1",
                "checkpoint.mode": "max",
                "checkpoint.filename": "best",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(ResumableEarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/acc_top1",
                "early_stopping.mode": "max",
                "early_stopping.patience": 10,
            }
        )
        parser.add_class_arguments(Recipe, "recipe")
        # Lightning's 13-line table of a head's parts ("Total FLOPs: 0") on every fit: the
        # fit's plan line gives its parameter count (--trainer.enable_model_summary true).
        parser.set_defaults({"trainer.enable_model_summary": False})
        for key in ("set_dims", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_settings(cfg)
        self.experiment = experiment_name(cfg)
        if self.subcommand in EVAL_SUBCOMMANDS:
            self.prepare_eval(cfg)
            return
        cfg["experiment"] = self.experiment  # saved in RUN/config.yaml for reruns
        # A refit (the val split among --data.train_splits) is checked, and its config
        # completed from its validated run, before any run directory exists.
        self.validated = check_refit(cfg, self.argv)
        base = Path(cfg["runs_root"]) / self.experiment
        ckpt_path = cfg.get("ckpt_path")
        # Resuming: `last`, or a checkpoint file of the run given by --run_dir.
        self.resuming = ckpt_path == "last" or bool(
            ckpt_path
            and cfg.get("run_dir")
            and Path(cfg["run_dir"]).resolve() in Path(ckpt_path).resolve().parents
        )
        if launch_rank() > 0:
            # A DDP worker: rank 0's directory (fusion/runs.py:worker_run_dir), checked to
            # be this launch's; rank 0 checks and creates it, a worker writes nothing there.
            self.run_dir = worker_run_dir(cfg.get("run_dir"))
        elif ckpt_path == "last":
            self.run_dir = resume_run_dir(base, cfg.get("run_dir"))
        elif cfg.get("run_dir"):
            self.run_dir = Path(cfg["run_dir"])
            if not self.resuming and is_existing_run(self.run_dir):
                raise RunDirError(
                    f"--run_dir {self.run_dir} is an existing run; a new fit never writes "
                    "into one. Pass a new --run_dir (or none for runs/<experiment>/<time>), "
                    "or add --ckpt_path last to resume it."
                )
        else:
            self.run_dir, self.claimed = claim_new_run_dir(base)
        self.ckpt_file = (
            self.run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else ckpt_path
        )
        if launch_rank() == 0:
            export_run_dir(self.run_dir)  # inherited, and checked, by the DDP workers
        # Always from the run directory, never from a config (a saved one names another run).
        cfg["trainer"]["default_root_dir"] = str(self.run_dir)
        if cfg.get("checkpoint") is not None:
            cfg["checkpoint"]["dirpath"] = str(self.run_dir / "checkpoints")
        if cfg["trainer"].get("logger") is not False:
            self.wandb_settings()  # a project or tag W&B would refuse: refused now, one line

    def prepare_eval(self, cfg) -> None:
        """validate/test/predict: check the checkpoint against the store and point the
        trainer at the checkpoint's run, where nothing is written but predict's output."""
        self.ckpt_file = Path(cfg["ckpt_path"])
        self.run_dir = run_of_checkpoint(self.ckpt_file)
        self.resuming = False
        ckpt = load_checkpoint(self.ckpt_file)
        hparams = {**ckpt["hyper_parameters"], FINGERPRINT_KEY: ckpt.get(FINGERPRINT_KEY)}
        info = open_store(cfg["data"]["store"])
        check_compatible(hparams, info, self.ckpt_file)
        if not cfg.get("allow_store_mismatch"):
            check_fingerprint(hparams, info, self.ckpt_file)
        cfg["trainer"]["default_root_dir"] = str(self.run_dir)
        if cfg.get("checkpoint") is not None:  # the run's own; nothing is saved in eval
            cfg["checkpoint"]["dirpath"] = str(self.ckpt_file.parent)
            if (self.run_dir / MARKER).is_file():  # a refit's: monitors nothing (refit.py)
                cfg["checkpoint"]["monitor"], cfg["checkpoint"]["save_top_k"] = None, 0
        if self.subcommand == "predict":
            split = cfg["data"]["predict_split"]
            default = self.run_dir / "predict" / split / "submission.csv"
            self.predict_out = Path(cfg.get("out") or default)
            check_outputs(self.predict_out, [str(self.ckpt_file)], info.root)

    def wandb_settings(self) -> dict:
        """``wandb.init`` arguments from ``--wandb.*`` (fusion/loggers.py:wandb_settings)."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        return wandb_settings(
            self.run_dir,
            group=self.experiment,
            project=cfg.get("wandb.project") or cfg.get("wandb_project"),
            entity=cfg.get("wandb.entity"),
            tags=cfg.get("wandb.tags"),
            job_type=cfg.get("wandb.job_type"),
            group_override=cfg.get("wandb.group") or cfg.get("wandb_group"),
        )

    def instantiate_trainer(self, **kwargs):
        if self.subcommand in EVAL_SUBCOMMANDS:
            return self.instantiate_eval_trainer(**kwargs)
        # The loggers create the run directory before Trainer(...) checks its options; a
        # refused option must not leave an empty run behind.
        missing = self.claimed or [
            d for d in (self.run_dir, *self.run_dir.parents) if not d.exists()
        ]
        try:
            return self.instantiate_fit_trainer(**kwargs)
        except UsageError:
            for logger in kwargs.get("logger") or []:  # a user's logger may have started
                run = wandb_run_started(logger) if isinstance(logger, WandbLogger) else None
                if run is not None:
                    run.finish(exit_code=1)
            for d in missing:  # deepest first: the new run, then folders made for it
                if d == self.run_dir:
                    shutil.rmtree(d, ignore_errors=True)
                elif d.is_dir() and not any(d.iterdir()):
                    d.rmdir()
            raise

    def build_trainer(self, **kwargs):
        try:
            return super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError) as err:
            # Trainer(...) refuses the --trainer.* options (an accelerator this machine
            # lacks, devices 0, an unknown strategy): bad input, not a crash.
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UsageError(f"--trainer options: {first}") from err

    def instantiate_eval_trainer(self, **kwargs):
        """No logger, no run files: only the user's callbacks (and predict's writer)."""
        kwargs["logger"] = False
        trainer_cfg = self.section(self.config_init).get("trainer", {})
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        # BestSummary has state in every fit checkpoint (Lightning warns when it is absent);
        # with no logger it writes nothing.
        callbacks = [*callbacks, BestSummary()]
        if self.subcommand == "predict":
            cfg = self.config_init[self.subcommand]
            self.writer = SubmissionWriter(
                self.predict_out,
                self.ckpt_file,
                strict=bool(cfg.get("strict")),
                category=cfg.get("category") or "index",
                message=cfg.get("message"),
            )
            callbacks = [*callbacks, self.writer]
        kwargs["callbacks"] = callbacks
        # No 0.00it/s bar frames in a redirected log (the metrics are printed at the end).
        kwargs.update(EpochSummary.trainer_kwargs(trainer_cfg, callbacks))
        trainer = self.build_trainer(**kwargs)
        # LightningCLI adds the config saver to every trainer; a scored run is not a new run.
        trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, SaveConfigCallback)]
        return trainer

    def instantiate_fit_trainer(self, **kwargs):
        # The store's rows are checked (finite, labelled, two classes) before the loggers
        # create the run directory: a store the fit refuses leaves no run behind.
        self.datamodule.setup("fit")
        trainer_cfg = self.section(self.config_init).get("trainer", {})
        user_logger = trainer_cfg.get("logger")
        if user_logger in (None, True):
            kwargs["logger"] = make_loggers(self.run_dir, settings=self.wandb_settings())
        elif user_logger is not False:
            user = user_logger if isinstance(user_logger, list) else [user_logger]
            kwargs["logger"] = adopt_user_loggers(
                user, self.run_dir, settings=self.wandb_settings()
            )
        self.apply_recipe(kwargs)
        callbacks = trainer_cfg.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        cfg = self.config_init[self.subcommand] if self.subcommand else self.config_init
        artifacts = RunArtifacts(self.candidate, category=cfg.get("category") or "index")
        extra = [artifacts, ResumeMetrics(), StopOnNonFiniteLoss(), StoreFingerprint()]
        extra.append(FitPlan(self.fit_plan))
        if self.refit is not None:
            extra.append(StopAtStep(self.refit.steps))
        extra.append(CtrlCSaves())  # Ctrl-C saves last.ckpt as SIGTERM does
        extra += [BestSummary(), EpochSummary()]  # EpochSummary: a line per epoch in a log file
        kwargs.update(EpochSummary.trainer_kwargs(trainer_cfg, callbacks))
        if user_logger is not False and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            extra.append(LearningRateMonitor(logging_interval="step"))
        extra += self.extra_callbacks
        kwargs["callbacks"] = [*callbacks, *extra]
        trainer = self.build_trainer(**kwargs)
        for callback in trainer.callbacks:
            if isinstance(callback, RunConfigSaver):
                callback.resuming = self.resuming
        if self.refit is not None:  # nothing to stop early by (the config's own is set aside)
            trainer.callbacks = [c for c in trainer.callbacks if not isinstance(c, EarlyStopping)]
        # W&B starts now, not at the first log: a run that cannot start online falls back
        # to offline (or to no W&B) with one line, before training (fusion/loggers.py).
        # Only when a subcommand runs: FusionCLI(run=False) (the Python API, tests) builds
        # a Trainer that may never train, and must not leave a W&B run open.
        if self.subcommand is not None:
            trainer.loggers = start_loggers(trainer.loggers, self.run_dir)
        return trainer

    def apply_recipe(self, kwargs: dict) -> None:
        """Fill in the training length from the store (fusion/recipe.py) when the config
        sets neither ``max_epochs`` nor ``max_steps``, and keep early stopping off until
        ``min_fraction`` of it has run; a refit (fusion/refit.py) takes its validated run's
        length and does not validate; log metrics at most once per epoch's batches; print
        the plan (steps, batch, lr, parameters) as one line."""
        trainer_cfg = self.section(self.config_init).get("trainer", {})
        recipe = self.section(self.config_init).get("recipe")
        dm = self.datamodule
        rows = getattr(dm, "train_rows", 0)
        if self.subcommand not in ("fit", None) or not rows:
            return
        per_epoch = batches_per_epoch(rows, dm.batch_size, trainer_cfg)
        # Lightning warns when an epoch has fewer batches than the logging interval.
        every = trainer_cfg.get("log_every_n_steps")
        if every is not None and every > per_epoch:
            kwargs["log_every_n_steps"] = per_epoch
        max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps", -1)
        source = "--trainer.max_epochs/max_steps"
        if self.validated is not None:  # a refit: the validated run's length, no validation
            self.refit = refit_plan(self.validated, dm.train_splits, rows, dm.batch_size, per_epoch)
            max_epochs, max_steps = -1, self.refit.schedule_steps
            kwargs.update(max_epochs=-1, max_steps=max_steps, min_steps=None, min_epochs=None,
                          limit_val_batches=0, num_sanity_val_steps=0)  # fmt: skip
        elif recipe is not None and max_epochs is None and max_steps in (None, -1):
            max_epochs, max_steps = -1, recipe.steps(rows, dm.batch_size)
            kwargs["max_steps"], kwargs["max_epochs"] = max_steps, max_epochs
            if trainer_cfg.get("min_steps") is None:
                kwargs["min_steps"] = round(recipe.min_fraction * max_steps)
            source = "the recipe"
        steps = expected_steps(per_epoch, max_epochs, max_steps)
        # Recorded in every checkpoint: what a later refit from this run scales (FitPlan).
        self.fit_plan = {"train_splits": list(getattr(dm, "train_splits", [])),
                         "train_rows": int(rows), "batch_size": int(dm.batch_size),
                         "steps_per_epoch": int(per_epoch), "steps": steps}  # fmt: skip
        params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        batch = (
            f"batch {dm.batch_size}, lr {self.model.effective_lr_for(dm.batch_size):.2e}, "
            f"{params:,} trainable parameters"
        )
        if self.refit is not None:
            rank_zero_info(self.refit.line(rows) + f"; {batch}")
            return
        length = f"{steps} steps" if steps is not None else "no step limit"
        epochs = f" ({steps / per_epoch:.1f} epochs of {rows} rows)" if steps else ""
        rank_zero_info(f"fit: {length}{epochs} from {source}, {batch}")

    def before_predict(self) -> None:
        if self.trainer.world_size > 1:
            raise UsageError(
                "train.py predict writes one submission from one process; pass "
                "--trainer.devices 1 (or use predict.py)."
            )

    def after_predict(self) -> None:
        """``--kaggle COMPETITION``: send the written submission (fusion/submission.py)."""
        cfg = self.config[self.subcommand]
        if self.writer.written is not None:
            finish(self.writer.written[0], competition=cfg.get("kaggle"),
                   message=cfg.get("message"))  # fmt: skip

    def before_fit(self) -> None:
        if self.ckpt_file:
            check_resume(Path(self.ckpt_file), self.model)
        rank_zero_info(f"run directory: {show_path(self.run_dir)}")
        if self.refit is not None and self.trainer.is_global_zero:
            self.refit.write(self.run_dir)  # before training: even a killed refit says so

    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        if self.refit is not None:
            rank_zero_info(
                f"refit: {self.trainer.global_step} steps on {'+'.join(self.refit.train_splits)}"
                f" ({self.refit.train_rows} rows); the model is "
                f"{show_path(self.run_dir / 'checkpoints' / 'last.ckpt')} (no val left to "
                f"score it on; {MARKER} says how it was refitted). Run directory: "
                f"{show_path(self.run_dir)}"
            )
            return
        if ckpt is not None and ckpt.best_model_path:
            score = ckpt.best_model_score
            rank_zero_info(
                f"best checkpoint: {show_path(ckpt.best_model_path)} (val/acc_top1 "
                f"{float(score):.4f}); run directory: {show_path(self.run_dir)}"
            )
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            sets = cfg["data"].get("features") or None
            probe = latest_probe(cfg["data"]["store"], cfg["runs_root"], sets)
            flag = f" --data.features [{','.join(sets)}]" if sets else ""
            rank_zero_info(
                probe_line(probe, sets)
                if probe
                else "no linear probe on these sets yet: `python train.py probe --data.store "
                f"{cfg['data']['store']}{flag}` gives the baseline to beat"
            )


def main(
    args: Sequence[str] | None = None,
    *,
    finish_wandb: bool = True,
    extra_callbacks: Sequence = (),
    candidate: str = "fit",
) -> FusionCLI:
    """Run the CLI on ``args`` (``sys.argv[1:]`` when None); return it for its trainer.

    ``finish_wandb=False`` leaves the W&B run open for the caller to log more and finish
    (``fusion.wandb_report.finish_runs(cli.trainer)``); ``extra_callbacks`` join this fit's
    (``train.py tune``'s pruner); ``candidate`` names the run's kind (``fit``, ``cv_fold``,
    ``tune_trial``: fusion/callbacks.py:RunArtifacts)."""
    with quiet_lightning():  # no litlogger advertisement, no LeafSpec deprecation
        return FusionCLI(
            args=args,
            finish_wandb=finish_wandb,
            extra_callbacks=extra_callbacks,
            candidate=candidate,
        )
