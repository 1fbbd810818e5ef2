"""The training step's bookkeeping without a host copy per step: alpha/beta of every step
reach the loggers in batches at logging steps, and a NaN loss still stops the fit before
any checkpoint of the NaN model is written."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fusion.callbacks import NonFiniteLossError, StopOnNonFiniteLoss
from fusion.datamodule import FeatureDataModule
from fusion.loggers import RunCSVLogger
from fusion.module import FusionModule
from tests.fixtures_training import read_csv, small_store

pytestmark = pytest.mark.slow


def _module(dm: FeatureDataModule, **hparams) -> FusionModule:
    return FusionModule(
        "dual_logit", set_dims=dm.set_dims, class_names=dm.class_names,
        head_options={"hidden_dims": [16]}, **hparams,
    )  # fmt: skip


def test_every_steps_alpha_beta_is_logged_though_copied_every_n_steps(tmp_path):
    """log_every_n_steps 5 on 8 batches an epoch: rows flushed at steps 4, 9, 14 and at the
    epoch ends, yet metrics.csv has one row per step, equal to the histories."""
    store = small_store(tmp_path / "s")
    L.seed_everything(0)
    dm = FeatureDataModule(str(store), batch_size=16)
    model = _module(dm, weight_decay_sweep=[0.0, 1.0])
    trainer = L.Trainer(
        max_epochs=2, accelerator="cpu", logger=RunCSVLogger(tmp_path / "run"),
        log_every_n_steps=5, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm)
    rows = [r for r in read_csv(tmp_path / "run" / "metrics.csv") if r["fusion/alpha"]]
    assert (
        [int(r["step"]) for r in rows]
        == list(range(trainer.global_step))
        == [step for step, _, _ in model.alpha_beta_history]
    )
    for row, (step, alpha, beta) in zip(rows, model.alpha_beta_history, strict=True):
        assert float(row["fusion/alpha"]) == pytest.approx(alpha)
        assert float(row["fusion/beta"]) == pytest.approx(beta)
        assert int(row["epoch"]) == step // 8
    assert [r[0] for r in model.member_weights_history] == list(range(trainer.global_step))
    assert model._pending_weights == []


def test_a_nan_loss_stops_the_fit_before_a_checkpoint_of_it_is_written(tmp_path):
    store = small_store(tmp_path / "s")
    L.seed_everything(0)
    dm = FeatureDataModule(str(store), batch_size=16)
    model = _module(dm)
    step = model.training_step

    def nan_from_step_5(batch, batch_idx):
        loss = step(batch, batch_idx)
        return loss * float("nan") if model.global_step >= 5 else loss

    model.training_step = nan_from_step_5
    saver = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="{step}", every_n_train_steps=3,
                            save_top_k=-1)  # fmt: skip
    trainer = L.Trainer(
        max_epochs=3, accelerator="cpu", logger=False, log_every_n_steps=50,
        callbacks=[StopOnNonFiniteLoss(), saver], enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    with pytest.raises(NonFiniteLossError, match="training loss is nan"):
        trainer.fit(model, dm)
    # Neither a logging step nor an epoch's end comes before the checkpoint after step 5
    # (NaN): the check before writing it stops the fit; the checkpoint of step 3 stays.
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.ckpt")) == ["step=3.ckpt"]
    assert trainer.global_step == 6
    good = torch.load(tmp_path / "ckpt" / "step=3.ckpt", weights_only=True)["state_dict"]
    assert all(bool(torch.isfinite(v).all()) for v in good.values())
