"""LightningCLI for fusion heads: one YAML per experiment, every value overridable.

$ python train.py fit --config configs/dual_logit_l0.1.yaml --data.store stores/kaggle
$ python train.py fit --config configs/dual_logit_l0.1.yaml --ckpt_path last   # resume
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
    RUN/confusion_top.png     over 50 classes: the most confused classes (also in W&B)

W&B (fusion/loggers.py, fusion/wandb_report.py): ``--wandb.project/entity/group/tags/
job_type`` (``--wandb_project`` is an alias of ``--wandb.project``), else W&B's
environment variables, else project ``sketchfusion`` grouped by experiment. A logger of
your own (``--trainer.logger WandbLogger --trainer.logger.log_model true``, or any
Lightning logger in the config) gets the same run directory, and metrics.csv beside it.
    RUN/val.probs.npz         every class's val probability from best.ckpt (ensemble weights)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from pathlib import Path

from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info

from feature_store.console import quiet_lightning, show_path
from fusion.callbacks import (
    EpochSummary,
    ResumeMetrics,
    RunArtifacts,
    RunCheckpoint,
    StopOnNonFiniteLoss,
    StoreFingerprint,
)
from fusion.datamodule import FeatureDataModule
from fusion.loggers import adopt_user_loggers, make_loggers, wandb_settings
from fusion.module import FusionModule
from fusion.predict import CheckpointError, load_checkpoint
from fusion.probe_run import latest_probe, probe_line
from fusion.recipe import Recipe
from fusion.runs import (
    ResumeError,
    RunConfigSaver,
    RunDirError,
    check_resume,
    check_settings,
    experiment_name,
    is_existing_run,
)
from fusion.wandb_report import BestSummary, finish_runs

RUN_DIR_ENV = "SKETCHFUSION_RUN_DIR"


def new_run_dir(base: Path) -> Path:
    """``base/<timestamp>``, suffixed ``-1``, ``-2``... when two runs start in one second."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run, n = base / stamp, 0
    while run.exists():
        n += 1
        run = base / f"{stamp}-{n}"
    return run


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


class FusionCLI(LightningCLI):
    """LightningCLI with the store's dims linked into the model and a run directory per fit."""

    def __init__(
        self,
        args: Sequence[str] | None = None,
        *,
        finish_wandb: bool = True,
        extra_callbacks: Sequence = (),
        **kwargs,
    ) -> None:
        # finish_wandb False: the caller logs more (train.py's demo: the submission), then
        # finishes. extra_callbacks: added to this fit only (train.py tune: the pruner).
        self.finish_wandb = finish_wandb
        self.extra_callbacks = list(extra_callbacks)
        kwargs.setdefault("save_config_callback", RunConfigSaver)
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})  # resume rewrites it
        kwargs.setdefault("seed_everything_default", 0)
        kwargs.setdefault("auto_configure_optimizers", False)
        super().__init__(FusionModule, FeatureDataModule, args=args, **kwargs)

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads a --ckpt_path file's hyper-parameters before anything else;
        # a truncated or foreign file must be a one-line error here, not torch's traceback.
        sub = self.config.get("subcommand")
        path = self.config[sub].get("ckpt_path") if sub else None
        if path and path not in ("last", "best", "hpc", "registry"):
            try:
                load_checkpoint(path)
            except CheckpointError as err:
                raise ResumeError(f"--ckpt_path: {err}") from err
        super()._parse_ckpt_path()

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_dir", type=str | None, default=None, help="run directory")
        parser.add_argument("--runs_root", type=str, default="runs", help="parent of run dirs")
        parser.add_argument(
            "--wandb_project", type=str | None, default=None, help="= --wandb.project"
        )
        parser.add_argument(
            "--wandb.project",
            type=str | None,
            default=None,
            help="default: $WANDB_PROJECT, else sketchfusion",
        )
        parser.add_argument(
            "--wandb.entity", type=str | None, default=None, help="default: $WANDB_ENTITY"
        )
        parser.add_argument(
            "--wandb.group",
            type=str | None,
            default=None,
            help="default: $WANDB_RUN_GROUP, else the experiment",
        )
        parser.add_argument(
            "--wandb.tags", type=list[str] | None, default=None, help="default: $WANDB_TAGS"
        )
        parser.add_argument(
            "--wandb.job_type",
            type=str | None,
            default=None,
            help="default: $WANDB_JOB_TYPE, else train",
        )
        parser.add_argument(
            "--wandb_group", type=str | None, default=None, help="= --wandb.group (tune, cv)"
        )
        parser.add_argument(
            "--experiment",
            type=str | None,
            default=None,
            help="name of the runs/<experiment>/ folder (default: the config file's name)",
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
        parser.add_lightning_class_args(EarlyStopping, "early_stopping")
        parser.set_defaults(
            {
                "early_stopping.monitor": "val/acc_top1",
                "early_stopping.mode": "max",
                "early_stopping.patience": 10,
            }
        )
        parser.add_class_arguments(Recipe, "recipe")
        for key in ("image_dim", "text_dim", "class_names"):
            parser.link_arguments(f"data.{key}", f"model.{key}", apply_on="instantiate")

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        check_settings(cfg)
        self.experiment = experiment_name(cfg)
        cfg["experiment"] = self.experiment  # saved in RUN/config.yaml for reruns
        base = Path(cfg["runs_root"]) / self.experiment
        ckpt_path = cfg.get("ckpt_path")
        # Resuming: `last`, or a checkpoint file of the run given by --run_dir.
        self.resuming = ckpt_path == "last" or bool(
            ckpt_path
            and cfg.get("run_dir")
            and Path(cfg["run_dir"]).resolve() in Path(ckpt_path).resolve().parents
        )
        if os.environ.get(RUN_DIR_ENV) and int(os.environ.get("LOCAL_RANK", "0")) > 0:
            # A DDP worker that Lightning launched: use rank 0's directory, whose timestamp
            # may be a second older than this process.
            self.run_dir = Path(os.environ[RUN_DIR_ENV])
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
            self.run_dir = new_run_dir(base)
        self.ckpt_file = (
            self.run_dir / "checkpoints" / "last.ckpt" if ckpt_path == "last" else ckpt_path
        )
        os.environ[RUN_DIR_ENV] = str(self.run_dir)  # inherited by DDP workers
        # Always from the run directory, never from a config (a saved one names another run).
        cfg["trainer"]["default_root_dir"] = str(self.run_dir)
        if cfg.get("checkpoint") is not None:
            cfg["checkpoint"]["dirpath"] = str(self.run_dir / "checkpoints")

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
        trainer_cfg = self._get(self.config_init, "trainer", default={})
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
        extra = [RunArtifacts(), ResumeMetrics(), StopOnNonFiniteLoss(), StoreFingerprint()]
        extra += [BestSummary(), EpochSummary()]  # EpochSummary: a line per epoch in a log file
        kwargs.update(EpochSummary.trainer_kwargs(trainer_cfg, callbacks))
        if user_logger is not False and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            extra.append(LearningRateMonitor(logging_interval="step"))
        extra += self.extra_callbacks
        kwargs["callbacks"] = [*callbacks, *extra]
        trainer = super().instantiate_trainer(**kwargs)
        for callback in trainer.callbacks:
            if isinstance(callback, RunConfigSaver):
                callback.resuming = self.resuming
        return trainer

    def apply_recipe(self, kwargs: dict) -> None:
        """Fill in the training length from the store (fusion/recipe.py) when the config
        sets neither ``max_epochs`` nor ``max_steps``, and keep early stopping off until
        ``min_fraction`` of it has run."""
        trainer_cfg = self._get(self.config_init, "trainer", default={})
        recipe = self._get(self.config_init, "recipe", default=None)
        dm = self.datamodule
        if (
            recipe is None
            or self.subcommand not in ("fit", None)
            or not getattr(dm, "train_rows", 0)
        ):
            return
        max_epochs, max_steps = trainer_cfg.get("max_epochs"), trainer_cfg.get("max_steps", -1)
        if max_epochs is None and max_steps in (None, -1):
            kwargs["max_steps"] = recipe.steps(dm.train_rows, dm.batch_size)
            kwargs["max_epochs"] = -1
            if trainer_cfg.get("min_steps") is None:
                kwargs["min_steps"] = round(recipe.min_fraction * kwargs["max_steps"])
            rank_zero_info(
                f"recipe: batch {dm.batch_size}, {kwargs['max_steps']} steps "
                f"({kwargs['max_steps'] * dm.batch_size / dm.train_rows:.1f} epochs of "
                f"{dm.train_rows} rows), lr {self.model.effective_lr_for(dm.batch_size):.2e}"
            )

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            finish_runs(getattr(self, "trainer", None), exit_code=1)
            raise
        if self.finish_wandb:
            finish_runs(self.trainer)

    def before_fit(self) -> None:
        if self.ckpt_file:
            check_resume(Path(self.ckpt_file), self.model)
        rank_zero_info(f"run directory: {show_path(self.run_dir)}")

    def after_fit(self) -> None:
        ckpt = self.trainer.checkpoint_callback
        if ckpt is not None and ckpt.best_model_path:
            score = ckpt.best_model_score
            rank_zero_info(
                f"best checkpoint: {show_path(ckpt.best_model_path)} (val/acc_top1 "
                f"{float(score):.4f}); run directory: {show_path(self.run_dir)}"
            )
            cfg = self.config[self.subcommand] if self.subcommand else self.config
            probe = latest_probe(cfg["data"]["store"], cfg["runs_root"])
            rank_zero_info(
                probe_line(probe)
                if probe
                else "no linear probe on this store yet: `python train.py probe --data.store "
                f"{cfg['data']['store']}` gives the baseline to beat"
            )


def main(
    args: Sequence[str] | None = None,
    *,
    finish_wandb: bool = True,
    extra_callbacks: Sequence = (),
) -> FusionCLI:
    """Run the CLI on ``args`` (``sys.argv[1:]`` when None); return it for its trainer.

    ``finish_wandb=False`` leaves the W&B run open for the caller to log more and finish
    (``fusion.wandb_report.finish_runs(cli.trainer)``); ``extra_callbacks`` join this fit's
    (``train.py tune``'s pruner)."""
    with quiet_lightning():  # no litlogger advertisement, no LeafSpec deprecation
        return FusionCLI(args=args, finish_wandb=finish_wandb, extra_callbacks=extra_callbacks)
