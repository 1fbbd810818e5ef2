"""Training batches drawn by index from tensors on the training device (fusion/batches.py),
and exact resumes: from an epoch-end checkpoint and from one written mid-epoch."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from fusion.batches import TensorBatches
from fusion.datamodule import FeatureDataModule
from fusion.module import FusionModule
from tests.fixtures_training import fit_cli, small_store


def _batches(rows: int, batch_size: int, **kwargs) -> TensorBatches:
    columns = {"x": torch.arange(rows) * 10, "label": torch.arange(rows)}
    return TensorBatches(columns, batch_size=batch_size, **kwargs)


def test_every_row_is_drawn_exactly_once_per_epoch():
    loader = _batches(103, 16, seed=3)
    for _ in range(3):
        batches = list(loader)
        assert len(batches) == len(loader) == 7  # 6 full batches and one of 7 rows
        assert [len(b["label"]) for b in batches] == [16] * 6 + [7]
        rows = torch.cat([b["index"] for b in batches])
        assert sorted(rows.tolist()) == list(range(103))
        for b in batches:  # every column cut with the same indices
            assert torch.equal(b["x"], b["index"] * 10) and torch.equal(b["label"], b["index"])


def test_the_order_is_a_function_of_seed_and_epoch():
    def orders(seed: int, epochs: int) -> list[list[int]]:
        loader = _batches(50, 8, seed=seed)
        return [torch.cat([b["index"] for b in loader]).tolist() for _ in range(epochs)]

    torch.manual_seed(123)
    first = orders(7, 3)
    torch.manual_seed(456)  # torch's global generator plays no part
    assert orders(7, 3) == first
    assert first[0] != first[1] != first[2]  # a new permutation each epoch
    assert orders(8, 1)[0] != first[0]
    # The epoch can come from outside (the Trainer's): epoch 2 is epoch 2 from the start.
    epoch_two = _batches(50, 8, seed=7, epoch=lambda: 2)
    assert torch.cat([b["index"] for b in epoch_two]).tolist() == first[2]


def test_ranks_split_each_epoch_like_a_distributed_sampler():
    ranks = [_batches(10, 2, seed=0, rank=r, world_size=3) for r in range(3)]
    drawn = [torch.cat([b["index"] for b in loader]).tolist() for loader in ranks]
    assert [len(loader) for loader in ranks] == [2, 2, 2]  # 10 rows padded to 12: 4 a rank
    assert all(len(rows) == 4 for rows in drawn)
    # Every row once, plus the permutation's first two rows again as padding.
    perm = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    assert sorted(sum(drawn, [])) == sorted([*range(10), *perm[:2]])
    assert drawn[0][0] == perm[0] and drawn[1][0] == perm[1]  # rank r from position r on


def test_a_resumed_epoch_draws_the_batches_left():
    loader = _batches(40, 8, seed=1)
    it = iter(loader)
    first, second = next(it), next(it)
    assert loader.state_dict() == {"epoch": 0, "batches": 2}
    resumed = _batches(40, 8, seed=1)
    resumed.load_state_dict(loader.state_dict())
    rest = [b["index"] for b in resumed]
    whole = [b["index"] for b in _batches(40, 8, seed=1)]
    assert torch.equal(first["index"], whole[0]) and torch.equal(second["index"], whole[1])
    assert len(rest) == 3 and all(torch.equal(a, b) for a, b in zip(rest, whole[2:], strict=True))
    assert len(list(resumed)) == 5  # the next epoch is whole again


def test_the_datamodule_draws_tensor_batches_by_default(tmp_path):
    store = small_store(tmp_path / "s")
    dm = FeatureDataModule(str(store), batch_size=32)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, TensorBatches)
    rows = dm._rows[dm.train_split]
    batch = next(iter(loader))
    assert torch.equal(batch["x"][0], rows.x[0][batch["index"]])
    assert torch.equal(batch["x"][1], rows.x[1][batch["index"]])
    assert torch.equal(batch["label"], rows.label[batch["index"]])
    old = FeatureDataModule(str(store), batch_size=32, loader="dataloader")
    old.setup("fit")
    assert isinstance(old.train_dataloader(), torch.utils.data.DataLoader)
    with pytest.raises(ValueError, match="--data.loader"):
        FeatureDataModule(str(store), loader="workers")


def _fit(store, root, *, epochs: int, ckpt_path=None, every_n_steps: int = 0):
    """A dual-logit head with dropout on the tensor path; checkpoints every n steps."""
    L.seed_everything(0)
    dm = FeatureDataModule(str(store), batch_size=16)
    model = FusionModule(
        "dual_logit", set_dims=dm.set_dims, class_names=dm.class_names,
        head_options={"hidden_dims": [16], "dropout": 0.3, "modality_dropout": 0.1},
        weight_decay_sweep=[0.0, 0.1],
    )  # fmt: skip
    saver = ModelCheckpoint(
        dirpath=root, filename="{step}", every_n_train_steps=every_n_steps or None,
        save_top_k=-1, save_on_train_epoch_end=every_n_steps == 0,
    )  # fmt: skip
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, callbacks=[saver],
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model


def _assert_same_weights(a: FusionModule, b: FusionModule) -> None:
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert a.alpha_beta_history == b.alpha_beta_history
    assert a.member_weights_history == b.member_weights_history


@pytest.mark.slow
def test_resume_mid_epoch_and_at_epoch_end_equals_the_uninterrupted_run(tmp_path):
    store = small_store(tmp_path / "s")  # 120 train rows: 8 batches of 16 per epoch
    whole = _fit(store, tmp_path / "whole", epochs=3)
    _fit(store, tmp_path / "a", epochs=3, every_n_steps=5)
    for step in (5, 10, 15):  # mid-epoch 0, mid-epoch 1, mid-epoch 1
        resumed = _fit(
            store, tmp_path / f"r{step}", epochs=3, ckpt_path=tmp_path / "a" / f"step={step}.ckpt"
        )
        _assert_same_weights(resumed, whole)
    epoch_end = tmp_path / "whole" / "step=8.ckpt"  # the end of epoch 0
    assert torch.load(epoch_end, weights_only=True)["global_step"] == 8
    _assert_same_weights(_fit(store, tmp_path / "e", epochs=3, ckpt_path=epoch_end), whole)


@pytest.mark.slow
def test_train_py_resume_from_last_equals_the_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = small_store(tmp_path / "s")
    # A learning rate that does not depend on the fit's length (cosine over 2 epochs is
    # not the first half of cosine over 4).
    same_lr = ("--model.schedule.name", "constant", "--model.schedule.warmup_fraction", "0")
    fit_cli(store, tmp_path / "whole", *same_lr, epochs=4)
    fit_cli(store, tmp_path / "run", *same_lr, epochs=2)
    fit_cli(store, tmp_path / "run", *same_lr, "--ckpt_path", "last", epochs=4)
    a = torch.load(tmp_path / "whole" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"]
    for name, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][name]), name
    assert a["alpha_beta_history"] == b["alpha_beta_history"]
