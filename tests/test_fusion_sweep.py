"""The weight-decay sweep inside one fit (``--model.weight_decay_sweep``:
:class:`fusion.heads.HeadSweep`) and ``linear_skip`` heads."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from feature_store import load_arrays
from fusion.heads import HeadSweep, SkipMLP, build_head
from fusion.module import FusionModule, answering_history
from fusion.predict import load_head
from tests.fixtures_training import fit_cli, fit_module, small_store


def test_linear_skip_head_starts_as_its_linear_map():
    torch.manual_seed(0)
    head = build_head(
        "visual_only", set_dims={"image": 6, "text": 3}, num_classes=4, hidden_dims=[8], linear_skip=True
    )
    assert isinstance(head.mlp, SkipMLP)
    x = torch.randn(10, 6)
    torch.testing.assert_close(head(x, torch.randn(10, 3)), head.mlp.linear(head.norms[0](x)))
    # Without hidden layers the head already is the linear map: no second one.
    plain = build_head(
        "visual_only", set_dims={"image": 6, "text": 3}, num_classes=4, hidden_dims=[], linear_skip=True
    )
    assert sum(p.numel() for p in plain.parameters()) == 6 * 4 + 4


def test_sweep_members_train_as_if_each_were_trained_alone():
    """One SGD step on the summed loss = one step of each member with its own weight decay."""
    torch.manual_seed(0)
    options = {
        "head_options": {"hidden_dims": [8], "dropout": 0.0},
        "optimizer": {"name": "sgd", "momentum": 0.9},
    }
    sweep = FusionModule(
        "concat", set_dims={"image": 5, "text": 3}, class_names=list("abcd"),
        weight_decay_sweep=[0.0, 0.5], **options,
    )  # fmt: skip
    assert isinstance(sweep.head, HeadSweep) and len(sweep.head.members) == 2
    alone = []
    for member, decay in zip(sweep.head.members, (0.0, 0.5), strict=True):
        single = FusionModule(
            "concat", set_dims={"image": 5, "text": 3}, class_names=list("abcd"),
            head_options=options["head_options"],
            optimizer={**options["optimizer"], "weight_decay": decay},
        )  # fmt: skip
        single.head.load_state_dict(member.state_dict())
        alone.append(single)
    gen = torch.Generator().manual_seed(1)
    batches = [
        {
            "x": [torch.randn(16, 5, generator=gen), torch.randn(16, 3, generator=gen)],
            "label": torch.randint(0, 4, (16,), generator=gen),
        }
        for _ in range(5)
    ]
    for module in (sweep, *alone):
        opt = torch.optim.SGD(module.param_groups(0.1), momentum=0.9)
        for batch in batches:
            opt.zero_grad()
            module.training_step(batch, 0).backward()
            opt.step()
    for member, single in zip(sweep.head.members, alone, strict=True):
        for (name, got), want in zip(
            member.state_dict().items(), single.head.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(got, want, msg=name)
    # The decayed member's weights shrank toward zero more than the other's.
    norms = [m.mlp[0].weight.norm().item() for m in sweep.head.members]
    assert norms[1] < norms[0]


def _val_accuracy(head, split) -> float:
    with torch.no_grad():
        logits = head(torch.from_numpy(split.image_emb), torch.from_numpy(split.text_emb))
    return float((logits.argmax(1).numpy() == split.labels).mean())


def test_sweep_answers_with_the_member_best_on_val(tmp_path):
    store = small_store(tmp_path / "s", signal="image", per_class={"train": 40, "val": 20})
    # A huge decay pins its member's weights near zero (chance level): the other must win.
    model, metrics = fit_module(
        store, "visual_only", epochs=15, weight_decay_sweep=[50.0, 0.0],
        optimizer={"name": "sgd", "lr": 0.1},
    )
    val = load_arrays(store, "val")
    model.eval()
    accuracies = [_val_accuracy(m, val) for m in model.head.members]
    assert accuracies[1] > accuracies[0] + 0.2, accuracies
    assert int(model.head.selected) == 1
    # The module answers with the chosen member, and reports its accuracy.
    assert _val_accuracy(model.head, val) == accuracies[1]
    assert abs(metrics["val/acc_top1"] - accuracies[1]) < 1e-6
    assert metrics["val/weight_decay"] == 0.0


def test_sweep_checkpoint_predicts_with_the_chosen_member(tmp_path):
    store = small_store(tmp_path / "s", signal="image")
    run = tmp_path / "run"
    options = ["--model.head", "visual_only", "--model.optimizer.name", "sgd", "--model.optimizer.lr", "0.3"]
    fit_cli(store, run, "--model.weight_decay_sweep", "[50.0, 0.0]", *options, epochs=10)
    head, hparams = load_head(run / "checkpoints" / "best.ckpt")
    assert hparams["weight_decay_sweep"] == [50.0, 0.0]
    assert isinstance(head, HeadSweep) and int(head.selected) == 1
    test = load_arrays(store, "test")
    x, t = torch.from_numpy(test.image_emb), torch.from_numpy(test.text_emb)
    with torch.no_grad():
        np.testing.assert_allclose(head(x, t).numpy(), head.members[1](x, t).numpy())
        assert not torch.allclose(head(x, t), head.members[0](x, t))


def test_sweep_loss_is_the_sum_of_member_losses():
    torch.manual_seed(0)
    module = FusionModule(
        "visual_only", set_dims={"image": 4, "text": 2}, class_names=list("abc"),
        head_options={"hidden_dims": []}, weight_decay_sweep=[0.0, 0.1, 1.0],
    )  # fmt: skip
    batch = {"x": [torch.randn(8, 4), torch.randn(8, 2)], "label": torch.arange(8) % 3}
    loss = module.training_step(batch, 0)
    expected = sum(
        F.cross_entropy(m(batch["x"][0], batch["x"][1]), batch["label"])
        for m in copy.deepcopy(module.head).members
    )
    torch.testing.assert_close(loss, expected)


def test_sweep_ties_go_to_the_stronger_weight_decay():
    """As the probe keeps the smallest C among equal val scores."""
    torch.manual_seed(0)
    module = FusionModule(
        "visual_only", set_dims={"image": 4, "text": 2}, class_names=list("abc"),
        head_options={"hidden_dims": []}, weight_decay_sweep=[0.0, 0.1, 0.01],
    )  # fmt: skip
    for member in module.head.members[1:]:
        member.load_state_dict(module.head.members[0].state_dict())
    batch = {"x": [torch.randn(9, 4), torch.randn(9, 2)], "label": torch.arange(9) % 3}
    module.eval()
    module.validation_step(batch, 0)
    module.on_validation_epoch_end()
    assert int(module.head.selected) == 1


def test_a_sweep_keeps_every_members_alpha_beta_through_the_run(tmp_path):
    """alpha/beta as logged follow the member answering at each step, which can change at a
    validation; ``member_weights_history`` follows each member, and survives a checkpoint."""
    store = small_store(tmp_path / "s")
    model, _ = fit_module(store, "dual_logit", epochs=4, weight_decay_sweep=[0.0, 1.0])
    logged, every = model.alpha_beta_history, model.member_weights_history
    assert len(every) == len(logged) > 0
    for (step, alpha, beta), row in zip(logged, every, strict=True):
        assert row[0] == step and len(row) == 5
        assert [alpha, beta] in (row[1:3], row[3:5])  # the answering member's pair
    pairs = np.array([row[1:] for row in every])
    assert not np.allclose(pairs[-1, :2], pairs[-1, 2:])  # two members, two trajectories
    checkpoint = {}
    model.on_save_checkpoint(checkpoint)
    restored = FusionModule("dual_logit", set_dims={"image": 16, "text": 12}, class_names=list("abcde"),
                            weight_decay_sweep=[0.0, 1.0])  # fmt: skip
    restored.on_load_checkpoint(checkpoint)
    assert restored.member_weights_history == every
    # The plot and the bench read the member that answers at the end, through the run.
    chosen = model._chosen()
    series = answering_history(logged, every, chosen)
    assert series == [[r[0], r[1 + 2 * chosen], r[2 + 2 * chosen]] for r in every]
    assert answering_history(logged, [], 0) is logged  # no sweep: the logged history
