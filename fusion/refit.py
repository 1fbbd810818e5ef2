"""The final refit: a validated config trained again on every labelled row, for the submission.

$ python train.py fit --config configs/concat.yaml --data.store S                  # RUN: validated
$ python train.py fit --config RUN/config.yaml --data.train_splits '[train, val]' --recipe.from_run RUN

Once val has chosen a config and its length, the last few points come from training it on
val's rows too. There is no val left to select on, so the refit:

- trains on the pooled ``--data.train_splits`` (fusion/datamodule.py), never validates,
  never stops early and keeps no ``best.ckpt``: ``checkpoints/last.ckpt`` is the model,
  and ``RUN/submission.csv`` (and ``train.py predict --run_dir RUN``) come from it;
- takes its length from ``--recipe.from_run``, the validated run: as many epochs as that
  run's ``best.ckpt`` had trained, at that run's batch size (``data.batch_size: auto``
  takes it), with the learning-rate schedule of that run's planned length, scaled to the
  larger train set the same way (``fusion/recipe.py:refit_steps``). The refit is then the
  validated best checkpoint's training replayed on more rows: the same epochs, the same
  learning rate at each epoch (up to the warm-up's rounding), stopped where val said to;
- keeps the weight decay that val chose when the validated run swept several;
- writes ``RUN/refit.json`` before training: the validated run, its best step and score,
  the splits, rows, batch and length of the refit.

Refused with one line, before anything is written (exit 2): the val split among
``train_splits`` without ``--recipe.from_run`` (or the reverse); a from_run that is not a
run directory or has no ``checkpoints/best.ckpt`` with its training plan (every fit's
checkpoints record it, :class:`FitPlan`); a model config that differs from the validated
run's; a weighted-logits head whose weights are fitted on val (``mix_on: val``); and a
command line that asks a refit for validation, early stopping or a length of its own
(:data:`ASKED`): the config file's values of those (the validated run's) are set aside.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L

from fusion.errors import UsageError
from fusion.heads import checkpoint_set_dims
from fusion.predict import CheckpointError, load_checkpoint
from fusion.recipe import refit_steps

PLAN_KEY = "fit_plan"  # a checkpoint's training plan (FitPlan)
MARKER = "refit.json"
# Command-line options that ask for what a refit cannot do: validate, stop early, pick a
# best checkpoint, or train for a length other than the validated run's.
ASKED = (
    "--early_stopping",
    "--checkpoint.monitor",
    "--trainer.check_val_every_n_epoch",
    "--trainer.val_check_interval",
    "--trainer.limit_val_batches",
    "--trainer.num_sanity_val_steps",
    "--trainer.max_epochs",
    "--trainer.max_steps",
    "--trainer.min_epochs",
    "--trainer.min_steps",
)


class RefitError(UsageError):
    """A refit asked for something it cannot do, or its validated run cannot give a length."""


@dataclass
class ValidatedRun:
    """What a refit takes from its validated run's ``checkpoints/best.ckpt``."""

    run: str
    best_step: int  # optimizer steps the best checkpoint had trained
    best_score: float | None  # its val/acc_top1
    train_splits: list[str]
    train_rows: int
    batch_size: int
    steps_per_epoch: int
    planned_steps: int | None  # the run's planned length (its schedule's)
    weight_decay: float | None  # the member val chose, when the run swept several
    hparams: dict[str, Any]

    @property
    def best_epochs(self) -> float:
        return self.best_step / self.steps_per_epoch


def read_validated_run(run: str | Path) -> ValidatedRun:
    """The best checkpoint's step, score and training plan of the run directory ``run``."""
    run = Path(run)
    where = f"--recipe.from_run {run}"
    if not run.is_dir():
        raise RefitError(f"{where} is not a run directory; pass RUN of a fit validated on val")
    best = run / "checkpoints" / "best.ckpt"
    if not best.is_file():
        raise RefitError(
            f"{where} has no checkpoints/best.ckpt (a refit, or a run that never validated); "
            "pass a run of the same config validated on val"
        )
    try:
        ckpt = load_checkpoint(best)
    except CheckpointError as err:
        raise RefitError(f"{where}: {err}") from err
    plan, step = ckpt.get(PLAN_KEY), int(ckpt.get("global_step") or 0)
    if not isinstance(plan, dict) or step < 1:
        raise RefitError(
            f"{where}: {best} records no training plan or best step (a run older than the "
            "refit, or one stopped before its first step); refit from a run trained by this "
            "version of train.py fit"
        )
    from fusion.module import grouped_hparams

    hp = grouped_hparams(ckpt["hyper_parameters"])  # a run from before the groups: flat
    decays = hp.get("weight_decay_sweep")
    chosen = None
    if isinstance(decays, list | tuple) and len(decays) > 1:
        selected = ckpt["state_dict"].get("head.selected")
        chosen = float(decays[int(selected) if selected is not None else 0])
    return ValidatedRun(
        run=str(run),
        best_step=step,
        best_score=best_score(ckpt),
        train_splits=list(plan["train_splits"]),
        train_rows=int(plan["train_rows"]),
        batch_size=int(plan["batch_size"]),
        steps_per_epoch=int(plan["steps_per_epoch"]),
        planned_steps=None if plan.get("steps") is None else int(plan["steps"]),
        weight_decay=chosen,
        hparams=hp,
    )


def best_score(ckpt: dict) -> float | None:
    """The monitored score a checkpoint was saved for (its ModelCheckpoint's state)."""
    for key, state in (ckpt.get("callbacks") or {}).items():
        if "Checkpoint" in str(key) and isinstance(state, dict):
            score = state.get("best_model_score")
            if score is not None:
                return float(score)
    return None


def asked_options(argv: list[str]) -> list[str]:
    """The :data:`ASKED` options given on the command line ``argv``."""
    names = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    return [n for n in names if any(n == o or n.startswith(o + ".") for o in ASKED)]


def check_refit(cfg, argv: list[str]) -> ValidatedRun | None:
    """Refuse a refit that cannot be one; return its validated run (None: not a refit).

    ``cfg``: the fit's parsed config, completed here for the refit (its checkpoint keeps
    no best, the batch size and a swept weight decay are the validated run's)."""
    data, recipe = cfg["data"], cfg.get("recipe")
    splits = list(data.get("train_splits") or [])
    from_run = recipe.get("from_run") if recipe is not None else None
    val = data.get("val_split")
    if val not in splits:
        if from_run:
            raise RefitError(
                f"--recipe.from_run {from_run} gives a refit its length; a refit trains on "
                f"the val split too: add --data.train_splits '[{data.get('train_split')}, "
                f"{val}]', or drop --recipe.from_run"
            )
        return None
    if not from_run:
        raise RefitError(
            f"--data.train_splits {splits} trains on the val split {val!r}: nothing is left "
            "to validate on or stop early by, so the length comes from a validated run: add "
            "--recipe.from_run RUN (a fit of this config on the other splits)"
        )
    asked = asked_options(argv)
    if asked:
        raise RefitError(
            f"{asked[0]}: a refit (--data.train_splits {splits}) trains on the val split, "
            "so it neither validates nor stops early, and its length is --recipe.from_run's; "
            "drop the option"
        )
    check_no_mix_on_val(cfg)
    validated = read_validated_run(from_run)
    check_same_model(cfg, validated)
    if validated.weight_decay is not None:  # one head, with the decay val chose
        cfg["model.optimizer.weight_decay"] = validated.weight_decay
        cfg["model.weight_decay_sweep"] = None
    if data.get("batch_size") == "auto":
        data["batch_size"] = validated.batch_size
    if cfg.get("checkpoint") is not None:  # last.ckpt only: there is no val to pick a best by
        cfg["checkpoint"]["monitor"] = None
        cfg["checkpoint"]["save_top_k"] = 0
    return validated


def check_no_mix_on_val(cfg) -> None:
    """Refuse a weighted-logits head that fits its weights on val (``mix_on: val``): a refit
    never validates, so nothing would fit them. Refused rather than taken from the validated
    run: its weights were fitted on branches that the refit trains again on other rows."""
    model = cfg["model"].as_dict() if hasattr(cfg["model"], "as_dict") else dict(cfg["model"])
    options = model.get("head_options") or {}
    if (options.get("mix_on") if isinstance(options, dict) else None) == "val":
        raise RefitError(
            "--model.head_options.mix_on val fits the head's weights on val at each "
            "validation, and a refit trains on val and never validates: submit the validated "
            "run instead (its checkpoints/best.ckpt holds the weights fitted on val; "
            "train.py predict --run_dir RUN)"
        )


def check_same_model(cfg, validated: ValidatedRun) -> None:
    """The refit's model options and feature sets are the validated run's (its length was
    validated for that model only); a swept weight decay may stay the same list."""
    model = cfg["model"].as_dict() if hasattr(cfg["model"], "as_dict") else dict(cfg["model"])
    hp = validated.hparams
    mine_all, theirs_all = trained_values(model), trained_values(hp)
    diffs = []
    for key in sorted(set(mine_all) & set(theirs_all)):
        mine, theirs = mine_all[key], theirs_all[key]
        if key == "weight_decay_sweep" and validated.weight_decay is not None:
            # The same sweep, or the single decay val chose from it.
            same = mine == theirs or (
                mine is None and mine_all.get("optimizer.weight_decay") == validated.weight_decay
            )
        elif key == "optimizer.weight_decay" and theirs_all.get("weight_decay_sweep"):
            same = True  # the validated run swept: its single decay was not used
        else:
            same = mine == theirs
        if not same:
            diffs.append(f"--model.{key} {mine!r} (validated: {theirs!r})")
    sets = list(cfg["data"].get("features") or ["image", "text"])
    if sets != list(checkpoint_set_dims(hp)):
        diffs.append(f"--data.features {sets} (validated: {list(checkpoint_set_dims(hp))})")
    if diffs:
        raise RefitError(
            f"--recipe.from_run {validated.run} validated another model: {'; '.join(diffs)}. "
            f"Refit with its own config (--config {validated.run}/config.yaml)"
        )


def trained_values(model: dict) -> dict[str, Any]:
    """A model section or a checkpoint's (grouped) hyper-parameters as the values it trains
    with, by dotted option (``optimizer.lr``): a head option left unset is the head's own
    default, a tuple a list; the store's dims and classes left out."""
    from fusion.heads import head_default

    values: dict[str, Any] = {}
    for key, value in model.items():
        if key in ("set_dims", "class_names", "image_dim", "text_dim", "_instantiator"):
            continue
        if isinstance(value, dict):
            for name, item in value.items():
                if key == "head_options" and item is None:
                    item = head_default(model.get("head", ""), name)
                values[f"{key}.{name}"] = list(item) if isinstance(item, tuple) else item
        else:
            values[key] = list(value) if isinstance(value, tuple) else value
    return values


@dataclass
class RefitPlan:
    """What ``RUN/refit.json`` says: the validated run and the refit's own length."""

    validated: dict[str, Any]
    train_splits: list[str]
    train_rows: int
    batch_size: int
    steps_per_epoch: int
    steps: int
    schedule_steps: int
    epochs: float

    def line(self, rows: int) -> str:
        """The fit's plan line."""
        v = self.validated
        score = "" if v["best_score"] is None else f", val/acc_top1 {v['best_score']:.4f}"
        return (
            f"fit: refit of {v['run']} on {'+'.join(self.train_splits)}: {self.steps} steps "
            f"({self.epochs:.2f} epochs of {rows} rows, as its best checkpoint: step "
            f"{v['best_step']}, {v['best_epochs']:.2f} epochs{score}), learning-rate schedule "
            f"over {self.schedule_steps}; no validation, last.ckpt is the model"
        )

    def write(self, run: Path) -> Path:
        path = Path(run) / MARKER
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(path)
        return path


def refit_plan(validated: ValidatedRun, splits: list[str], rows: int, batch: int,
               per_epoch: int) -> RefitPlan:  # fmt: skip
    """The refit's length for ``rows`` train rows in ``per_epoch`` steps an epoch."""
    steps, schedule = refit_steps(
        validated.best_step, validated.planned_steps, validated.steps_per_epoch, per_epoch
    )
    summary = {k: v for k, v in asdict(validated).items() if k != "hparams"}
    summary["best_epochs"] = round(validated.best_epochs, 4)
    return RefitPlan(
        validated=summary,
        train_splits=list(splits),
        train_rows=rows,
        batch_size=batch,
        steps_per_epoch=per_epoch,
        steps=steps,
        schedule_steps=schedule,
        epochs=round(steps / per_epoch, 4),
    )


class FitPlan(L.Callback):
    """Every checkpoint records how its fit was planned (train splits, rows, batch, steps
    per epoch, planned steps): a refit from this run reads it (:func:`read_validated_run`)."""

    def __init__(self, plan: dict[str, Any] | None) -> None:
        self.plan = plan

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self.plan is not None:
            checkpoint[PLAN_KEY] = dict(self.plan)


class StopAtStep(L.Callback):
    """Stop the fit after ``steps`` optimizer steps, before its planned (schedule) length:
    the refit replays the validated run's schedule and stops where its best checkpoint was."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.global_step >= self.steps:  # a resume of a refit that had finished
            trainer.should_stop = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if trainer.global_step >= self.steps:
            trainer.should_stop = True
