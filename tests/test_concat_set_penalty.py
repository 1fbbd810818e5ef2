"""The concat head's ``set_penalty`` (issue 20): a penalty per feature set on the weights
that read it, stepped after each optimiser step, which sends a set that does not help to 0.

$ python -m pytest -q -p no:cacheprovider tests/test_concat_set_penalty.py
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store
from fusion.cli import FusionCLI
from fusion.errors import UsageError
from fusion.heads import ConcatHead, HeadOptionError, build_head, head_default
from fusion.module import FusionModule
from tests.fixtures_training import REPO

SETS = {"a": 6, "b": 4, "prior": 3}


def _head(**options) -> ConcatHead:
    torch.manual_seed(0)
    return ConcatHead(
        set_dims=SETS, num_classes=3, hidden_dims=[5], linear_skip=True,
        prior_sets=["prior"], **options,
    )  # fmt: skip


def _groups(head: ConcatHead) -> dict[str, list[np.ndarray]]:
    """Each body set's columns of the first layer and of the skip, read by hand: ``a`` is
    columns 0-5 of the concatenation, ``b`` 6-9 (the prior never enters it)."""
    first, skip = head.mlp.body[0].weight.detach().numpy(), head.mlp.linear.weight.detach().numpy()
    return {"a": [first[:, :6], skip[:, :6]], "b": [first[:, 6:10], skip[:, 6:10]]}


def test_the_penalty_is_lambda_times_the_sum_of_sqrt_dim_times_the_root_of_each_group_norm():
    head = _head(set_penalty=3.0)
    norms = {s: math.sqrt(sum(float((w.astype(np.float64) ** 2).sum()) for w in ws))
             for s, ws in _groups(head).items()}  # fmt: skip
    lam = 3.0 * 0.01  # set_penalty times the weight decay
    expected = lam * (math.sqrt(6) * math.sqrt(norms["a"]) + math.sqrt(4) * math.sqrt(norms["b"]))
    assert float(head.set_penalty_value(0.01).detach()) == pytest.approx(expected, rel=1e-5)
    assert head.set_norms().tolist() == pytest.approx([norms["a"], norms["b"]], rel=1e-5)
    # Off: no penalty, whatever the decay.
    assert float(_head().set_penalty_value(0.01).detach()) == 0.0


def test_a_shrink_step_is_a_gradient_step_of_the_penalty_on_the_input_weights_only():
    head = _head(set_penalty=2.0)
    before = {n: p.detach().clone() for n, p in head.named_parameters()}
    head.zero_grad()
    head.set_penalty_value(0.1).backward()
    grads = {n: p.grad.clone() if p.grad is not None else None for n, p in head.named_parameters()}
    lr = 0.01
    head.shrink_sets(lr, 0.1)
    for name, value in head.named_parameters():
        if name in ("mlp.body.0.weight", "mlp.linear.weight"):
            assert torch.allclose(value, before[name] - lr * grads[name], atol=1e-6), name
        else:  # biases, the hidden-to-logits layer, the prior weight: untouched
            assert torch.equal(value, before[name]), name


def test_a_group_the_step_would_carry_past_zero_is_exactly_zero():
    head = _head(set_penalty=1.0)
    with torch.no_grad():
        head.mlp.body[0].weight[:, 6:10] *= 1e-3  # set b nearly off
        head.mlp.linear.weight[:, 6:10] *= 1e-3
    head.shrink_sets(0.1, 0.1)
    groups = _groups(head)
    assert all((w == 0).all() for w in groups["b"])
    assert all((w != 0).any() for w in groups["a"])


def _fit(store, run, *extra) -> FusionCLI:
    args = ["fit", "--config", str(REPO / "configs" / "concat.yaml"), "--data.store", str(store),
            "--run_dir", str(run), "--data.features", "[signal,noise]",
            "--model.head_options.hidden_dims", "[16]", "--model.weight_decay_sweep", "null",
            "--model.optimizer.weight_decay", "0.1", "--data.batch_size", "32",
            "--trainer.max_steps", "240", "--trainer.max_epochs", "-1", "--trainer.logger",
            "false", "--trainer.enable_progress_bar", "false", *extra]  # fmt: skip
    return FusionCLI(args=args)


@pytest.mark.slow
def test_a_noise_set_is_driven_to_zero_and_the_informative_one_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = tmp_path / "store"
    make_feature_sets_store(
        store, num_classes=6, per_class={"train": 20, "val": 8, "test": 4},
        sets=[SyntheticSet("signal", dim=8, separation=4.0),
              SyntheticSet("noise", dim=32, separation=0.0)],
    )  # fmt: skip
    on = _fit(store, tmp_path / "on", "--model.head_options.set_penalty", "5").model.head
    off = _fit(store, tmp_path / "off").model.head
    assert isinstance(on, ConcatHead) and on.set_penalty == 5.0
    signal, noise = on.set_norms().tolist()
    assert noise == 0.0 and signal > 0.1
    # Without the option the noise set keeps weights of the signal's order.
    assert off.set_norms()[1] > 0.1 * off.set_norms()[0]


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "much"])
def test_a_bad_set_penalty_is_refused_with_one_line(value):
    with pytest.raises(UsageError, match=r"set_penalty must be a (finite )?number >= 0"):
        build_head("concat", set_dims={"a": 4, "b": 2}, num_classes=3, set_penalty=value)


def test_only_the_concat_head_takes_it():
    with pytest.raises(HeadOptionError, match="set_penalty: the head dual_logit does not take"):
        FusionModule(
            "dual_logit", set_dims={"a": 4, "b": 2}, class_names=["x", "y"],
            head_options={"set_penalty": 1.0},
        )  # fmt: skip


def test_off_by_default_the_head_and_its_training_are_unchanged():
    assert head_default("concat", "set_penalty") == 0.0
    plain, zero = _head(), _head(set_penalty=0.0)
    assert plain.set_penalty == 0.0
    assert list(plain.state_dict()) == list(zero.state_dict())  # no new parameter or buffer
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    plain.shrink_sets(0.1, 0.1)  # off: a no-op
    assert all(torch.equal(v, before[k]) for k, v in plain.state_dict().items())
    # The module steps no member of a sweep without the option.
    module = FusionModule(
        "concat", set_dims={"a": 4, "b": 2}, class_names=["x", "y"],
        weight_decay_sweep=[0.01, 0.1],
    )  # fmt: skip
    from fusion.heads import head_members
    from fusion.module import shrink_groups

    members = head_members(module.head)
    groups = module.param_groups(0.1)
    assert shrink_groups(members, groups) == []
    module = FusionModule(
        "concat", set_dims={"a": 4, "b": 2}, class_names=["x", "y"],
        weight_decay_sweep=[0.01, 0.1], head_options={"set_penalty": 2.0},
    )  # fmt: skip
    groups = module.param_groups(0.1)
    pairs = shrink_groups(head_members(module.head), groups)
    # Each member is stepped at its own decayed group's weight decay.
    assert [groups[j]["weight_decay"] for _, j in pairs] == [0.01, 0.1]
    assert [i for i, _ in pairs] == [0, 1]


def _dropped(head: ConcatHead, rows: int = 4000, seed: int = 3) -> np.ndarray:
    """Which of the head's inputs modality dropout zeroed, per row: [rows, sets]."""
    head.train()
    ones = [torch.ones(rows, d) for d in SETS.values()]
    for norm in head.norms:  # identity inputs: a zero marks a dropped set
        norm.mean.zero_(), norm.std.fill_(1.0)
    torch.manual_seed(seed)
    return np.stack([(x == 0).all(1).numpy() for x in head.normalised(*ones)], axis=1)


def _old_bands(rows: int, p: float, k: int, seed: int) -> np.ndarray:
    """The dropout of every set as it was before live sets: set i dropped when the row's
    draw is in [(k - 1 - i) p, (k - i) p)."""
    torch.manual_seed(seed)
    draw = torch.rand(rows, 1)
    return np.stack([((draw >= (k - 1 - i) * p) & (draw < (k - i) * p)).squeeze(1).numpy()
                     for i in range(k)], axis=1)  # fmt: skip


def test_modality_dropout_leaves_a_set_the_penalty_zeroed_and_the_last_live_set_alone():
    head = _head(set_penalty=2.0, modality_dropout=0.2)
    # Every set live: the same rows dropped as before, 20% per set.
    dropped = _dropped(head)
    np.testing.assert_array_equal(dropped, _old_bands(4000, 0.2, 3, seed=3))
    assert dropped.mean(0) == pytest.approx([0.2, 0.2, 0.2], abs=0.025)
    # Set b zeroed by the penalty: a and the prior share the bands of two live sets, b is
    # never dropped (a zero set reads nothing either way), no row loses two.
    with torch.no_grad():
        for layer in head._input_layers():
            layer.weight[:, 6:10] = 0
    assert head.live_sets().tolist() == [True, False, True]
    dropped = _dropped(head)
    assert not dropped[:, 1].any() and dropped.sum(1).max() == 1
    old = _old_bands(4000, 0.2, 2, seed=3)
    np.testing.assert_array_equal(dropped[:, [0, 2]], old)
    # One live set left (the prior): nothing is dropped.
    with torch.no_grad():
        for layer in head._input_layers():
            layer.weight[:, 0:6] = 0
    assert head.live_sets().tolist() == [False, False, True]
    assert not _dropped(head).any()
    # Without the penalty every set is droppable, whatever its weights.
    assert _head(modality_dropout=0.2).live_sets() is None
