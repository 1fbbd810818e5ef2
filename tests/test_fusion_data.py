"""The datamodule batches by index; the LR schedule; the W&B mode decision."""

import math

import numpy as np
import pytest
import torch

from feature_store import StoreError, load_arrays
from fusion.datamodule import FeatureDataModule
from fusion.loggers import wandb_mode
from fusion.module import lr_factor
from tests.fixtures_training import small_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return small_store(tmp_path_factory.mktemp("data") / "s")


def test_datamodule_reads_dims_and_classes_from_the_manifest(store):
    dm = FeatureDataModule(str(store))
    assert dm.set_dims == {"image": 16, "text": 12}
    assert dm.class_names == [f"class_{i:03d}" for i in range(5)]


def test_train_batches_are_index_slices_covering_every_row_once(store):
    dm = FeatureDataModule(str(store), batch_size=32)
    dm.setup("fit")
    arrays = load_arrays(store, "train")
    seen = []
    for batch in dm.train_dataloader():
        idx = batch["index"].numpy()
        assert len(idx) <= 32
        np.testing.assert_array_equal(batch["x"][0].numpy(), arrays.image_emb[idx])
        np.testing.assert_array_equal(batch["x"][1].numpy(), arrays.text_emb[idx])
        np.testing.assert_array_equal(batch["label"].numpy(), arrays.labels[idx])
        assert batch["x"][0].dtype == torch.float32 and batch["label"].dtype == torch.int64
        seen.extend(idx.tolist())
    assert sorted(seen) == list(range(len(arrays)))
    assert seen != sorted(seen)  # shuffled
    val_idx = torch.cat([b["index"] for b in dm.val_dataloader()]).tolist()
    assert val_idx == list(range(len(load_arrays(store, "val"))))  # in order


def test_an_unlabelled_split_cannot_be_used_for_validation(store):
    dm = FeatureDataModule(str(store), val_split="test")
    with pytest.raises(StoreError, match="test: 20 rows have labels outside"):
        dm.setup("fit")


def test_missing_store_names_the_fix(tmp_path):
    with pytest.raises(StoreError, match="data_prep"):
        FeatureDataModule(str(tmp_path / "nope"))


def test_lr_schedule_warmup_cosine_and_step():
    opts = {"total_steps": 110, "warmup_steps": 10, "step_every": 30, "gamma": 0.5}
    cos = [lr_factor(s, schedule="cosine", min_lr_ratio=0.1, **opts) for s in range(110)]
    assert cos[0] == pytest.approx(0.1) and cos[9] == pytest.approx(1.0)
    assert cos[10] == pytest.approx(1.0)
    assert cos[60] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(cos[10:], cos[11:], strict=False))
    step = [lr_factor(s, schedule="step", min_lr_ratio=0.0, **opts) for s in (10, 39, 40, 70)]
    assert step == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(50, schedule="constant", min_lr_ratio=0.0, **opts) == 1.0


def test_wandb_goes_offline_without_a_key_or_a_server(monkeypatch, tmp_path):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    assert wandb_mode() == "offline"
    # A key, but the server is unreachable (a closed local port): offline, quickly.
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert wandb_mode() == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode() == "offline"  # asked for, but W&B would stop the fit (issue 24)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert wandb_mode() == "offline"


@pytest.mark.parametrize("classes", [3, 500])
def test_training_accuracy_equals_torchmetrics_multiclass_accuracy(classes):
    from torchmetrics.classification import MulticlassAccuracy

    from fusion.module import TrainingStats

    g = torch.Generator().manual_seed(0)
    ours = TrainingStats(k=5)
    k = min(5, classes)
    ref1 = MulticlassAccuracy(classes, top_k=1, average="micro")
    ref5 = MulticlassAccuracy(classes, top_k=k, average="micro")
    for n in (7, 64, 33):
        logits = torch.randn(n, classes, generator=g)
        target = torch.randint(0, classes, (n,), generator=g)
        target[: n // 3] = logits[: n // 3].argmax(1)  # some hits at top-1 too
        ours.update(logits, target, torch.tensor(float(n)))
        for m in (ref1, ref5):
            m.update(logits, target)
    got = ours.compute()
    assert float(got["acc_top1"]) == pytest.approx(float(ref1.compute()))
    assert float(got["acc_top5"]) == pytest.approx(float(ref5.compute()))
    assert 0 < float(got["acc_top1"]) <= float(got["acc_top5"]) <= 1
    # loss is a per-row mean: batches of n rows with mean loss n -> sum(n^2) / sum(n)
    assert float(got["loss"]) == pytest.approx((7**2 + 64**2 + 33**2) / (7 + 64 + 33))
