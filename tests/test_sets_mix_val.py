"""The weighted-logits head with ``mix_on: val`` (issue 20): weights fitted on val by the
stacker after each validation, not trained; the val metric cross-fitted.

$ python -m pytest -q tests/test_sets_mix_val.py
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store
from fusion.datamodule import FeatureDataModule
from fusion.errors import UsageError
from fusion.heads import HeadSweep, WeightedLogitsHead, build_head, head_members
from fusion.module import FusionModule, fit_mix_on_val
from fusion.refit import RefitError, check_no_mix_on_val
from fusion.stacker import Stacker, StackError, cross_fit

# One set that tells every class, one that tells nothing, one that tells half of them.
SETS = [
    SyntheticSet("signal", dim=12, separation=3.0),
    SyntheticSet("noise", dim=12, separation=0.0),
    SyntheticSet("half", dim=8, classes=(0.0, 0.5), separation=3.0),
]
FEATURES = ["signal", "noise", "half"]
MIX_VAL = {"mix_on": "val", "hidden_dims": [16], "dropout": 0.0}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixval") / "store"
    make_feature_sets_store(root, sets=SETS, num_classes=6,
                            per_class={"train": 20, "val": 12, "test": 4}, seed=0)  # fmt: skip
    return root


def datamodule(store, batch_size: int = 32) -> FeatureDataModule:
    return FeatureDataModule(str(store), features=FEATURES, batch_size=batch_size)


def module(dm, head_options: dict, schedule: str = "cosine", **hparams) -> FusionModule:
    return FusionModule(
        "dual_logit",
        set_dims=dm.set_dims,
        class_names=dm.class_names,
        head_options=head_options,
        optimizer={"lr": 0.05},
        schedule={"name": schedule, "warmup_epochs": 0.0},
        **hparams,
    )


def trainer(epochs: int, **kwargs) -> L.Trainer:
    options = {"accelerator": "cpu", "logger": False, "enable_checkpointing": False,
               "enable_progress_bar": False, "enable_model_summary": False}  # fmt: skip
    return L.Trainer(max_epochs=epochs, **{**options, **kwargs})


def fit(store, head_options: dict, epochs: int = 4, **hparams):
    """(module, trainer) of a fit; the last validation is the end of the last epoch."""
    L.seed_everything(0, workers=True)
    dm = datamodule(store)
    model = module(dm, head_options, **hparams)
    t = trainer(epochs)
    t.fit(model, dm)
    return model, t


def val_branches(head: WeightedLogitsHead, store) -> tuple[np.ndarray, np.ndarray]:
    """Each set's branch log-probabilities on the val rows [K, N, C] and the labels,
    computed here from the head's branches."""
    dm = datamodule(store)
    dm.setup("validate")
    xs, ys = [], []
    for batch in dm.val_dataloader():
        xs.append(batch["x"]), ys.append(batch["label"])
    inputs = [torch.cat([x[k] for x in xs]) for k in range(len(FEATURES))]
    head.eval()
    with torch.no_grad():
        normed = [norm(x) for norm, x in zip(head.norms, inputs, strict=True)]
        lp = [branch(x).log_softmax(1) for branch, x in zip(head.branches, normed, strict=True)]
    return torch.stack(lp).double().numpy(), torch.cat(ys).numpy()


@pytest.fixture(scope="module")
def fitted(store):
    return fit(store, MIX_VAL)


def test_the_weights_are_the_stackers_fit_on_the_val_branch_log_probs(fitted, store):
    model, _ = fitted
    lp, labels = val_branches(model.head, store)
    expected = Stacker(len(FEATURES), "weights").fit(lp, labels).mean_weights(lp)
    torch.testing.assert_close(model.head.mix_weights, torch.tensor(expected, dtype=torch.float32))
    # Not trained: no parameter of the head is a fusion weight.
    assert "weights" not in dict(model.head.named_parameters())


def test_the_head_predicts_by_the_fitted_weights_and_trains_by_their_shares():
    head = build_head("dual_logit", set_dims={"a": 4, "b": 3, "c": 5}, num_classes=6,
                      hidden_dims=[8], mix_on="val")  # fmt: skip
    torch.testing.assert_close(head.mix_weights, torch.full((3,), 1 / 3))  # until a validation
    head.set_mix_weights(torch.tensor([2.0, 0.0, 1.0]))
    xs = [torch.randn(7, d) for d in (4, 3, 5)]
    with torch.no_grad():
        fs = [branch(x) for branch, x in zip(head.branches, xs, strict=True)]  # norms: identity
        torch.testing.assert_close(head.eval()(*xs), 2 * fs[0] + fs[2])
        # The sum of the weights is a temperature fitted on val: training mixes the shares.
        torch.testing.assert_close(head.train()(*xs), (2 * fs[0] + fs[2]) / 3)
        assert len(head.branch_logits()) == 3
        torch.testing.assert_close(head.branch_logits()[1], fs[1])
    torch.testing.assert_close(head.fusion_weights(), torch.tensor([2 / 3, 0.0, 1 / 3]))
    learned = build_head("dual_logit", set_dims={"a": 4, "b": 3}, num_classes=6)
    with pytest.raises(ValueError, match="learns its weights"):
        learned.set_mix_weights(torch.ones(2))


def test_the_noise_set_gets_no_weight_and_the_informative_one_the_most(fitted):
    model, _ = fitted
    share = dict(zip(FEATURES, model.head.fusion_weights().tolist(), strict=True))
    assert share["noise"] < 0.05, share
    assert share["signal"] > 0.5 and share["signal"] > share["half"] > share["noise"], share


def test_the_reported_val_metric_is_cross_fitted(fitted, store):
    model, t = fitted
    lp, labels = val_branches(model.head, store)
    probs = cross_fit(lp, labels, method="weights")
    expected = float((probs.argmax(1) == labels).mean())
    assert float(t.callback_metrics["val/acc_top1"]) == pytest.approx(expected, abs=1e-6)
    loss = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean()
    assert float(t.callback_metrics["val/loss"]) == pytest.approx(loss, rel=1e-5)
    # Scored with the weights fitted on every val row, val would read higher than this.
    stacker = Stacker(len(FEATURES), "weights").fit(lp, labels)
    assert (stacker.predict_proba(lp).argmax(1) == labels).mean() >= expected


def test_the_logged_weights_are_the_fitted_shares(store):
    fitted_after: list[torch.Tensor] = []

    class Keep(L.Callback):
        def on_validation_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                fitted_after.append(pl_module.head.fusion_weights().detach().clone())

    L.seed_everything(0, workers=True)
    dm = datamodule(store)
    model = module(dm, MIX_VAL)
    trainer(3, callbacks=[Keep()], log_every_n_steps=1).fit(model, dm)
    steps = len(model.alpha_beta_history) // 3
    assert steps * 3 == len(model.alpha_beta_history)
    for i, row in enumerate(model.alpha_beta_history):
        epoch = i // steps
        share = fitted_after[epoch - 1] if epoch else torch.full((3,), 1 / 3)
        torch.testing.assert_close(torch.tensor(row[1:]), share)


def test_a_sweeps_members_each_fit_their_own_weights_and_val_picks_by_the_cross_fit(store):
    model, t = fit(store, MIX_VAL, epochs=3, weight_decay_sweep=[0.001, 0.3])
    assert isinstance(model.head, HeadSweep)
    accs = []
    for member in head_members(model.head):
        lp, labels = val_branches(member, store)
        expected = Stacker(len(FEATURES), "weights").fit(lp, labels).mean_weights(lp)
        torch.testing.assert_close(member.mix_weights, torch.tensor(expected, dtype=torch.float32))
        accs.append(float((cross_fit(lp, labels, method="weights").argmax(1) == labels).mean()))
    # Among equals the larger weight decay, as the module chooses.
    best = max(range(2), key=lambda i: (accs[i], i))
    assert int(model.head.selected) == best
    assert float(t.callback_metrics["val/acc_top1"]) == pytest.approx(accs[best], abs=1e-6)
    a, b = (m.mix_weights for m in head_members(model.head))
    assert not torch.equal(a, b)


def test_the_sanity_check_fits_nothing(store):
    seen: list[torch.Tensor] = []

    class Keep(L.Callback):
        def on_train_start(self, trainer, pl_module):
            seen.append(pl_module.head.mix_weights.clone())

    L.seed_everything(0, workers=True)
    dm = datamodule(store, batch_size=16)  # the sanity check's 2 batches: part of val
    model = module(dm, MIX_VAL)
    trainer(1, callbacks=[Keep()], num_sanity_val_steps=2).fit(model, dm)
    torch.testing.assert_close(seen[0], torch.full((3,), 1 / 3))
    assert not torch.equal(model.head.mix_weights, seen[0])  # fitted at the epoch's end


def test_a_resumed_fit_ends_with_the_uninterrupted_fits_weights(store, tmp_path):
    # A constant learning rate: a 2-epoch fit is then the first half of a 4-epoch one.
    whole, _ = fit(store, MIX_VAL, epochs=4, schedule="constant")
    L.seed_everything(0, workers=True)
    dm = datamodule(store)
    first = module(dm, MIX_VAL, schedule="constant")
    t = trainer(2)
    t.fit(first, dm)
    ckpt = tmp_path / "half.ckpt"
    t.save_checkpoint(ckpt)
    saved = torch.load(ckpt, weights_only=True)["state_dict"]["head.mix_weights"]
    torch.testing.assert_close(saved, first.head.mix_weights)
    L.seed_everything(0, workers=True)
    resumed = module(dm, MIX_VAL, schedule="constant")
    assert not torch.equal(resumed.head.mix_weights, saved)
    trainer(4).fit(resumed, dm, ckpt_path=str(ckpt))
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)


def test_mix_on_train_is_the_head_as_before(store):
    # The default: a learned weight parameter, no buffer of fitted weights, no branch loss,
    # and a fit equal to one that names mix_on train.
    plain = {"hidden_dims": [16], "dropout": 0.0, "weighting": "softmax"}
    default, _ = fit(store, plain, epochs=2)
    named, _ = fit(store, {**plain, "mix_on": "train"}, epochs=2)
    keys = set(default.head.state_dict())
    assert "weights" in keys and not any("mix_weights" in k for k in keys)
    assert keys == set(named.head.state_dict())
    for key, value in default.head.state_dict().items():
        torch.testing.assert_close(named.head.state_dict()[key], value, rtol=0, atol=0)
    assert default.head.branch_logits() == ()
    # The forward is softmax(v)-weighted branch logits, computed here.
    head = default.head.eval()
    xs = [torch.randn(5, d) for d in default.hparams.set_dims.values()]
    with torch.no_grad():
        normed = [norm(x) for norm, x in zip(head.norms, xs, strict=True)]
        w = head.weights.softmax(0)
        expected = sum(w[k] * head.branches[k](normed[k]) for k in range(len(xs)))
        torch.testing.assert_close(head(*xs), expected)


def test_a_bad_mix_on_and_a_branch_loss_without_mix_on_val_are_refused(store):
    dm = datamodule(store)
    with pytest.raises(ValueError, match=r"mix_on must be 'train' .* or 'val' .*got 'test'"):
        module(dm, {"mix_on": "test"})
    with pytest.raises(UsageError, match=r"branch_loss: .* only with head_options\.mix_on val"):
        module(dm, {"branch_loss": 1.0})
    with pytest.raises(UsageError, match=r"does not take this option"):
        FusionModule("concat", set_dims=dm.set_dims, class_names=dm.class_names,
                     head_options={"mix_on": "val"})  # fmt: skip


def test_a_refit_of_a_mix_on_val_head_is_refused():
    with pytest.raises(RefitError, match=r"mix_on val .* a refit trains on val and never"):
        check_no_mix_on_val({"model": {"head_options": {"mix_on": "val"}}})
    check_no_mix_on_val({"model": {"head_options": {"mix_on": "train"}}})
    check_no_mix_on_val({"model": {"head_options": None}})


def test_a_val_split_too_small_to_cross_fit_on_is_refused_in_one_line():
    head = build_head("dual_logit", set_dims={"a": 4, "b": 3}, num_classes=3, mix_on="val")
    lp = torch.randn(2, 3, 3).log_softmax(-1).double().numpy()
    with pytest.raises(StackError, match=r"mix_on val: 3 val rows with at most one per class"):
        fit_mix_on_val(head, lp, np.array([0, 1, 2]))


def test_cv_of_a_mix_on_val_head_is_refused_before_fold_0(tmp_path, capsys):
    """Each fold would fit the weights on its own held-out rows: not out of fold. Refused
    from the shipped config (dotted keys) and from the command line, nothing written."""
    from fusion.commands import cv as cv_command

    config = Path(__file__).resolve().parents[1] / "configs" / "sets_weighted.yaml"
    for extra in (["--config", str(config)], ["--model.head", "dual_logit",
                                               "--model.head_options.mix_on", "val"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_info:
            cv_command.run_cv([*extra, "--data.folds", "3", "--data.store", str(tmp_path / "s"),
                    "--cv_dir", str(tmp_path / "cv")])  # fmt: skip
        assert exit_info.value.code == 2
        assert not (tmp_path / "cv").exists()
        # the way out it names is one that holds: per-set configs stacked, or concat
        err = capsys.readouterr().err
        assert "would not be out of fold" in err and "train.py stack --cv" in err
        assert "mix_on train" not in err  # the trained weights are not a way out
    # mix_on train passes this check (it fails later, on the missing store)
    cv_command.check_weights_not_fitted_on_folds(["--config", str(config), "--model.head_options.mix_on", "train"])
