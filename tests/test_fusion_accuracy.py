"""Issue 8's behaviours on small synthetic stores with a known answer: input
standardisation, the step recipe, parameter groups, the gated head, modality dropout,
stacking with cross-fitting, and the probe run."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from sklearn.preprocessing import StandardScaler

from feature_store import load_arrays
from feature_store.synthetic import caption_kind, make_caption_mix_store
from fusion.heads import GatedHead, Standardize, build_head, head_members
from fusion.recipe import Recipe, auto_batch_size
from fusion.stacker import Stacker, cross_fit
from tests.fixtures_training import fit_module, small_store


@pytest.fixture(scope="module")
def mix_store(tmp_path_factory):
    """Half the captions name the class, half say nothing; images are noisy."""
    root = tmp_path_factory.mktemp("mix") / "store"
    make_caption_mix_store(
        root,
        num_classes=6,
        per_class={"train": 60, "val": 20, "test": 20},
        image_dim=16,
        image_rank=4,
        image_noise=0.8,
        text_dim=12,
        caption_mix={"informative": 0.5, "neutral": 0.5},
    )
    return root


def test_standardize_matches_sklearn_standard_scaler():
    x = np.random.default_rng(0).normal(3.0, [0.1, 5.0, 50.0], size=(200, 3)).astype(np.float32)
    x[:, 0] = 7.0  # a constant feature is left unscaled, as StandardScaler does
    norm = Standardize(3)
    norm.fit(torch.from_numpy(x))
    expected = StandardScaler().fit_transform(x)
    torch.testing.assert_close(norm(torch.from_numpy(x)), torch.from_numpy(expected).float())


def test_heads_fit_their_standardisation_from_train_and_checkpoint_it(tmp_path):
    store = small_store(tmp_path / "s")
    model, _ = fit_module(store, "concat", epochs=1)
    train = load_arrays(store, "train")
    torch.testing.assert_close(
        model.head.norms[0].mean, torch.from_numpy(train.image_emb.mean(0))
    )
    assert "head.norms.0.std" in model.state_dict()


@pytest.mark.parametrize(
    ("rows", "batch"),
    [(10, 64), (500, 64), (1100, 64), (10_000, 128), (20_000, 256), (500_000, 512)],
)
def test_auto_batch_size_scales_with_rows_within_bounds(rows, batch):
    assert auto_batch_size(rows) == batch


def test_recipe_steps_have_a_floor_and_a_ceiling():
    recipe = Recipe(epochs=30, min_steps=3000, max_steps=100_000, full_rows=10_000)
    assert recipe.steps(10_000, 128) == 3000  # 30 epochs would be 2,370 steps: the floor wins
    assert recipe.steps(200_000, 512) == 30 * 391  # 30 epochs of 391 batches
    assert recipe.steps(5_000_000, 512) == 100_000
    # full_rows 0: the whole floor at any size (the rule before it scaled)
    assert Recipe(min_steps=3000, full_rows=0).steps(500, 16) == 3000


def test_the_length_rule_scales_down_with_the_store():
    """A 1,000-row store gets sqrt(1/10) of the step floor at batch 64; a 20,000-row store
    keeps the whole floor (3,000 steps at batch 256, as before the floor scaled)."""
    recipe = Recipe()  # the defaults every config uses
    small, large = 1_000, 20_000
    assert auto_batch_size(small) == 64 and auto_batch_size(large) == 256
    assert recipe.step_floor(large) == recipe.min_steps == 3000
    assert recipe.step_floor(small) == math.ceil(3000 * math.sqrt(small / 10_000)) == 949
    small_steps = recipe.steps(small, auto_batch_size(small))
    large_steps = recipe.steps(large, auto_batch_size(large))
    assert small_steps == 949  # above 30 epochs of 16 batches (480)
    assert large_steps == 3000  # 30 epochs of 79 batches (2,370) is below the floor
    # Fewer steps of 4x the rows: a third of the steps the rule gave before it scaled.
    assert small_steps * 3 < Recipe(full_rows=0).steps(small, 16) == 3000
    assert [recipe.step_floor(n) for n in (100, 1_000, 5_000, 10_000, 50_000)] == sorted(
        recipe.step_floor(n) for n in (100, 1_000, 5_000, 10_000, 50_000)
    )


def test_a_fit_prints_its_planned_steps_in_one_line(tmp_path, caplog):
    """The plan line: the steps the fit will take, from the recipe or from max_epochs."""
    from fusion.cli import FusionCLI
    from tests.fixtures_training import DEMO_CONFIG

    store = small_store(tmp_path / "s")  # 120 train rows -> batch 64 -> 2 batches per epoch
    base = ["--config", DEMO_CONFIG, "--data.store", str(store), "--trainer.logger", "false"]
    base += ["--data.batch_size", "auto", "--trainer.max_epochs", "null"]
    caplog.set_level(logging.INFO)
    cli = FusionCLI(args=[*base, "--run_dir", str(tmp_path / "a")], run=False)
    steps = Recipe().steps(120, 64)
    assert cli.trainer.max_steps == steps == Recipe().step_floor(120) == 329  # > 30 epochs
    params = sum(p.numel() for p in cli.model.parameters())
    plan = [m for m in caplog.messages if m.startswith("fit: ")]
    assert plan == [
        f"fit: {steps} steps ({steps / 2:.1f} epochs of 120 rows) from the recipe, batch 64, "
        f"lr {cli.model.effective_lr_for(64):.2e}, {params:,} trainable parameters"
    ]
    # Lightning logs no more often than an epoch's batches (its warning otherwise).
    assert cli.trainer.log_every_n_steps == 1
    caplog.clear()
    cli = FusionCLI(
        args=[*base, "--run_dir", str(tmp_path / "b"), "--trainer.max_epochs", "3"], run=False
    )
    plan = [m for m in caplog.messages if m.startswith("fit: ")]
    assert len(plan) == 1
    assert plan[0].startswith("fit: 6 steps (3.0 epochs of 120 rows) from --trainer.max_epochs")


def test_cli_fills_training_length_from_the_store_but_keeps_explicit_epochs(tmp_path):
    from fusion.cli import FusionCLI
    from tests.fixtures_training import DEMO_CONFIG

    store = small_store(tmp_path / "s")  # 120 train rows -> batch 16
    base = ["--config", DEMO_CONFIG, "--data.store", str(store), "--trainer.logger", "false"]
    cli = FusionCLI(
        args=[*base, "--run_dir", str(tmp_path / "a"), "--recipe.min_steps", "40"]
        + ["--recipe.epochs", "2", "--recipe.full_rows", "0"]  # the whole floor
        + ["--trainer.max_epochs", "null"],
        run=False,
    )
    assert cli.datamodule.batch_size == 16
    assert cli.trainer.max_steps == 40
    assert cli.trainer.fit_loop.min_steps == 36  # early stopping waits for 90% of the steps
    cli = FusionCLI(
        args=[*base, "--run_dir", str(tmp_path / "b"), "--trainer.max_epochs", "3"], run=False
    )
    assert cli.trainer.max_epochs == 3 and cli.trainer.max_steps == -1


def test_early_stopping_before_min_steps_waits_without_logging_every_step(
    tmp_path, monkeypatch, caplog
):
    """A stop early stopping asks for before the recipe's min_steps ends the fit at
    min_steps with a validation there, as Lightning's own ``should_stop`` did, and trains
    the same weights; the steps in between log on the ``log_every_n_steps`` schedule, not at
    every step (Lightning treats each step with ``should_stop`` set as a logging step)."""
    from lightning.pytorch.callbacks import Callback

    from fusion.cli import FusionCLI
    from fusion.stopping import ResumableEarlyStopping
    from tests.fixtures_training import DEMO_CONFIG, read_csv

    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = small_store(tmp_path / "s")  # 120 train rows, batch 16: 8 steps per epoch
    args = ["fit", "--config", DEMO_CONFIG, "--data.store", str(store), "--trainer.max_epochs",
            "null", "--recipe.min_steps", "40", "--recipe.epochs", "2", "--recipe.full_rows",
            "0", "--trainer.log_every_n_steps", "4", "--trainer.enable_progress_bar", "false",
            # no val/acc_top1 gain of 1.0: the stop is asked for at the second validation
            "--early_stopping.patience", "1", "--early_stopping.min_delta", "1.0"]  # fmt: skip

    def fit(run: str):
        cli = FusionCLI(args=[*args, "--run_dir", str(tmp_path / run)])
        rows = read_csv(tmp_path / run / "metrics.csv")
        lr = next(k for k in rows[0] if k.startswith("lr-"))
        val = [int(r["step"]) for r in rows if r["val/acc_top1"]]
        return cli, [int(r["step"]) for r in rows if r[lr]], val

    caplog.set_level(logging.INFO)
    cli, lr_steps, val_steps = fit("waits")
    assert cli.trainer.fit_loop.min_steps == 36 and cli.trainer.global_step == 36
    assert lr_steps == [s for s in range(36) if (s + 1) % 4 == 0]
    notes = [m for m in caplog.messages if m.startswith("early stopping at step")]
    assert len(notes) == 1 and notes[0].startswith("early stopping at step 16:")

    # Lightning's own: the stop sits in trainer.should_stop from step 16 on.
    monkeypatch.setattr(ResumableEarlyStopping, "_hold_stop", lambda self, trainer, asked: None)
    monkeypatch.setattr(ResumableEarlyStopping, "on_train_batch_end", Callback.on_train_batch_end)
    before, before_lr, before_val = fit("lightning")
    assert before.trainer.global_step == 36 and val_steps == before_val
    assert val_steps[-1] == 35  # the step that reaches min_steps validates, then stops
    assert set(range(16, 36)) <= set(before_lr)  # every step once the stop was asked for
    weights, lightning_weights = cli.model.state_dict(), before.model.state_dict()
    assert all(torch.equal(weights[k], lightning_weights[k]) for k in weights)
    assert float(cli.trainer.checkpoint_callback.best_model_score) == float(
        before.trainer.checkpoint_callback.best_model_score
    )


def test_param_groups_never_decay_biases_or_alpha_beta_and_speed_up_alpha_beta():
    from fusion.module import FusionModule

    model = FusionModule(
        "dual_logit", set_dims={"image": 4, "text": 3}, class_names=["a", "b"],
        optimizer={"fusion_lr_scale": 10},
    )  # fmt: skip
    groups = model.param_groups(lr=1e-3)
    fusion = next(g for g in groups if any(p is model.head.weights for p in g["params"]))
    assert fusion["weight_decay"] == 0 and fusion["lr"] == pytest.approx(1e-2)
    for group in groups:
        if group["weight_decay"] > 0:
            assert all(p.ndim >= 2 for p in group["params"])


def test_a_gate_never_decays_and_learns_at_the_fusion_scale():
    from fusion.module import FusionModule

    model = FusionModule(
        "gated", set_dims={"image": 4, "text": 3}, class_names=["a", "b"],
        optimizer={"fusion_lr_scale": 3}, weight_decay_sweep=[0.01, 0.1],
    )  # fmt: skip
    groups = model.param_groups(lr=0.1)
    gate_params = {id(p) for member in head_members(model.head) for p in member.gate.parameters()}
    for group in groups:
        in_group = {id(p) for p in group["params"]}
        if in_group & gate_params:
            assert in_group <= gate_params  # the gate's own group
            assert group["weight_decay"] == 0 and group["lr"] == pytest.approx(0.3)
    grouped = {id(p) for g in groups for p in g["params"]}
    assert gate_params <= grouped and len(grouped) == len(list(model.parameters()))


def test_gate_opens_toward_the_informative_caption(mix_store):
    model, metrics = fit_module(
        mix_store, "gated", epochs=15, head_options={"modality_dropout": 0.1, "branch_loss": 0.5}
    )
    val = load_arrays(mix_store, "val")
    names = [f"class_{i:03d}" for i in range(6)]
    kinds = np.array(
        [caption_kind(c, int(y), names) for c, y in zip(val.captions, val.labels, strict=True)]
    )
    head = model.head.eval()
    assert isinstance(head, GatedHead)
    with torch.no_grad():
        gate = head.gate_values(
            torch.from_numpy(val.image_emb), torch.from_numpy(val.text_emb)
        )[:, 0]
    image_weight = {k: float(gate[torch.from_numpy(kinds == k)].mean()) for k in set(kinds)}
    # The gate is the image branch's weight: low where the caption names the class.
    assert image_weight["informative"] < 0.4 < 0.6 < image_weight["neutral"], image_weight
    assert metrics["val/acc_top1"] > 0.75


def test_modality_dropout_keeps_image_only_accuracy(tmp_path):
    # Every caption names its class: without modality dropout concat needs only the text.
    store = tmp_path / "s"
    make_caption_mix_store(
        store,
        num_classes=5,
        per_class={"train": 60, "val": 30, "test": 2},
        image_dim=16,
        image_rank=6,
        image_noise=1.0,
        text_noise=0.05,
        caption_mix={"informative": 1.0},
    )
    val = load_arrays(store, "val")

    def image_only_acc(model) -> float:
        head = model.head.eval()
        text_mean = head.norms[1].mean.expand(len(val.labels), -1)  # a caption that says nothing
        with torch.no_grad():
            logits = head(torch.from_numpy(val.image_emb), text_mean)
        return float((logits.argmax(1).numpy() == val.labels).mean())

    visual = fit_module(store, "visual_only", epochs=15)[1]["val/acc_top1"]
    dropped = image_only_acc(fit_module(store, "concat", epochs=15, head_options={"modality_dropout": 0.3})[0])
    # With its caption replaced by one that says nothing, the concat head trained with
    # modality dropout classifies from the image as well as the image-only head.
    assert dropped >= visual - 0.05, (dropped, visual)


def test_cross_fitting_never_scores_a_row_with_a_stacker_fitted_on_it(monkeypatch):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 15)
    log_probs = np.log(rng.dirichlet(np.ones(4), size=(2, len(labels))))
    seen = []
    real_fit = Stacker.fit

    def spy(self, lp, y):
        seen.append({tuple(row) for row in lp[0]})
        return real_fit(self, lp, y)

    monkeypatch.setattr(Stacker, "fit", spy)
    original = {tuple(row) for row in log_probs[0]}
    out = cross_fit(log_probs, labels, method="logistic", folds=5)
    assert len(seen) == 5 and out.shape == (60, 4)
    for fitted in seen:
        held_out = original - fitted
        assert len(held_out) == 12  # each fold's 12 scored rows were never fitted on


def test_stacker_weights_the_informative_member_and_beats_both_per_row():
    rng = np.random.default_rng(0)
    n, c = 400, 5
    labels = rng.integers(0, c, n)
    informative_caption = rng.random(n) < 0.5

    def member(correct_rows, sharpness):
        logits = rng.normal(size=(n, c))
        logits[correct_rows, labels[correct_rows]] += sharpness
        return torch.log_softmax(torch.from_numpy(logits), 1).numpy()

    image = member(rng.random(n) < 0.7, 3.0)  # right 70% of the time, everywhere
    text = member(informative_caption, 6.0)  # sure and right only where the caption names it
    lp = np.stack([image, text])
    crossed = cross_fit(lp, labels, method="logistic", folds=5)
    accs = {
        "image": (image.argmax(1) == labels).mean(),
        "text": (text.argmax(1) == labels).mean(),
        "stack": (crossed.argmax(1) == labels).mean(),
    }
    assert accs["stack"] > max(accs["image"], accs["text"]) + 0.05, accs
    noise = torch.log_softmax(torch.from_numpy(rng.normal(size=(n, c)) * 3), 1).numpy()
    weights = Stacker(2, "weights").fit(np.stack([image, noise]), labels)
    w_image, w_noise = weights.mean_weights(np.stack([image, noise]))
    assert w_noise < 0.1 * w_image, (w_image, w_noise)  # a useless member: ~0


def test_a_nearly_flat_member_gets_no_weight_and_moves_no_prediction():
    """A text head on captions that say nothing gives nearly flat probabilities: with
    weights on the simplex and a free temperature it worked as a second temperature and
    kept weight, and its small wobble flipped predictions of the image member."""
    rng = np.random.default_rng(1)
    n, c = 300, 10
    labels = rng.integers(0, c, n)
    logits = rng.normal(size=(n, c))
    logits[np.arange(n), labels] += rng.random(n) < 0.6  # a weak, poorly calibrated image
    image = torch.log_softmax(torch.from_numpy(3 * logits), 1).numpy()
    flat = torch.log_softmax(torch.from_numpy(rng.normal(size=(n, c)) * 0.3), 1).numpy()
    lp = np.stack([image, flat])
    for method in ("weights", "logistic"):
        stacker = Stacker(2, method).fit(lp[:, :200], labels[:200])
        w_image, w_flat = stacker.mean_weights(lp[:, 200:])
        assert w_flat < 0.1 * w_image, (method, w_image, w_flat)
        same = stacker.predict_proba(lp[:, 200:]).argmax(1) == image[200:].argmax(1)
        assert same.mean() >= 0.98, (method, same.mean())


def test_probe_run_writes_a_run_and_fits_print_it(tmp_path, caplog):
    from fusion.commands.probe import run_probe
    from fusion.probe_run import latest_probe
    from tests.fixtures_training import fit_cli

    store = small_store(tmp_path / "s")
    run = run_probe(["--data.store", str(store), "--runs_root", str(tmp_path / "runs")])
    summary = json.loads((run / "probe.json").read_text())
    assert set(summary["results"]) == {"image", "text", "concat"}
    rows = (run / "submission.csv").read_text().splitlines()
    assert rows[0] == "Id,Category" and len(rows) == 1 + len(load_arrays(store, "test"))
    assert (run / "val_predictions.csv").is_file() and (run / "metrics.csv").is_file()
    assert latest_probe(store, tmp_path / "runs")["best"] == summary["best"]
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        fit_cli(store, tmp_path / "runs" / "fit", "--runs_root", str(tmp_path / "runs"), epochs=1)
    assert "linear probe on these sets (val/acc_top1): image" in caplog.text


def test_dual_logit_weights_settle_within_the_first_fifth_of_training(tmp_path):
    store = small_store(tmp_path / "s", signal="image", per_class={"train": 60, "val": 20})
    model, _ = fit_module(store, "dual_logit", epochs=40, head_options={"penalty_lambda": 0.1})
    history = np.array(model.alpha_beta_history)
    alpha = history[:, 1]
    early = alpha[len(alpha) // 5]
    assert alpha[-1] > 0.6
    assert early - 0.5 > 0.8 * (alpha[-1] - 0.5), (early, alpha[-1])


def test_every_head_builds_with_an_empty_hidden_list():
    for kind in ("visual_only", "concat", "dual_logit", "gated"):
        head = build_head(kind, set_dims={"image": 4, "text": 3}, num_classes=2, hidden_dims=[])
        assert head(torch.randn(5, 4), torch.randn(5, 3)).shape == (5, 2)


def test_stack_entry_point_writes_a_run_and_refuses_bad_members(tmp_path):
    import train
    from tests.fixtures_training import fit_cli

    store = small_store(tmp_path / "s")
    members = []
    for head in ("visual_only", "text_only"):
        cli = fit_cli(store, tmp_path / head, "--model.head", head, "--trainer.logger", "false")
        members += ["--checkpoint", cli.trainer.checkpoint_callback.best_model_path]
    runs = tmp_path / "runs"
    base = ["stack", "--data.store", str(store), "--runs_root", str(runs)]
    train.main([*base, *members])
    (run,) = (runs / "stack").iterdir()
    summary = json.loads((run / "stack.json").read_text())
    assert len(summary["member_acc_top1"]) == 2
    assert summary["fitted_on"] == "val"
    assert summary["rows_fitted"] == len(load_arrays(store, "val"))
    assert 0 <= summary["acc_top1_cross_fitted"] <= 1
    rows = (run / "submission.csv").read_text().splitlines()
    assert len(rows) == 1 + len(load_arrays(store, "test"))
    other = small_store(tmp_path / "other", image_dim=8)  # another store's dims
    for bad in (
        [*base, members[1]],  # --checkpoint missing: one member given as a bare path
        [*base, "--checkpoint", str(tmp_path / "missing.ckpt"), *members[:2]],
        ["stack", "--data.store", str(other), "--runs_root", str(runs), *members],
    ):
        with pytest.raises(SystemExit) as exit_info:
            train.main(bad)
        assert exit_info.value.code == 2
    assert len(list((runs / "stack").iterdir())) == 1  # a refused stack leaves no run behind


def test_probe_entry_point_refuses_bad_options_before_writing(tmp_path):
    import train

    store = small_store(tmp_path / "s")
    runs = tmp_path / "runs"
    for bad in (["--probe.views", "[imag]"], ["--probe.cs", "[0, 1]"]):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["probe", "--data.store", str(store), "--runs_root", str(runs), *bad])
        assert exit_info.value.code == 2
    assert not runs.exists()
