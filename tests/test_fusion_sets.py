"""Training over named feature sets (``--data.features``): the sets read, their dims from the
manifest, predictions and stacks of members on different sets, and fingerprints that cover
exactly the sets a checkpoint reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import predict
from feature_store import add_feature_set, load_features, open_store
from feature_store.synthetic_sets import SyntheticSet, make_feature_sets_store
from fusion.datamodule import FeatureDataModule
from fusion.module import FusionModule, answering_history, fusion_weight_keys
from fusion.predict import load_head, predict_probs
from tests.fixtures_training import fit_cli, read_csv

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SETS = [
    SyntheticSet("left", dim=24, classes=(0.0, 0.5), separation=4.0),
    SyntheticSet("right", dim=16, classes=(0.5, 1.0), separation=4.0),
    SyntheticSet("zs", kind="scores", dim=None, rows=0.7, separation=4.0),
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """10 classes: ``left`` knows classes 0-4, ``right`` 5-9, ``zs`` scores every class on
    70% of the rows; image = left, text = right."""
    root = tmp_path_factory.mktemp("sets") / "store"
    make_feature_sets_store(
        root, sets=SETS, num_classes=10, per_class={"train": 30, "val": 12, "test": 10},
        image_from="left", text_from="right", seed=0,
    )  # fmt: skip
    return root


def test_the_datamodule_reads_the_named_sets_in_order_with_their_dims(store):
    dm = FeatureDataModule(str(store), features=["zs", "left"], batch_size=16)
    assert dm.set_dims == {"zs": 10, "left": 24}
    dm.setup("fit")
    arrays = load_features(store, "train", ["zs", "left"])
    batch = next(iter(dm.val_dataloader()))
    val = load_features(store, "val", ["zs", "left"])
    idx = batch["index"].numpy()
    np.testing.assert_array_equal(batch["x"][0].numpy(), val["zs"][idx])
    np.testing.assert_array_equal(batch["x"][1].numpy(), val["left"][idx])
    stats = dm.train_tensors()
    np.testing.assert_array_equal(stats[1].numpy(), arrays["left"])
    with pytest.raises(Exception, match="no feature set 'nope'"):
        FeatureDataModule(str(store), features=["left", "nope"])
    with pytest.raises(Exception, match="twice"):
        FeatureDataModule(str(store), features=["left", "left"])


def test_weight_names_are_alpha_beta_over_image_text_and_per_set_otherwise():
    assert fusion_weight_keys(["image", "text"]) == ["fusion/alpha", "fusion/beta"]
    assert fusion_weight_keys(["a", "b", "c"]) == [f"fusion/weight/{s}" for s in "abc"]
    # A sweep's history over 3 sets: member 1's weights are columns 4-6.
    history = [[0, 0.1, 0.2, 0.7]]
    members = [[0, 1, 2, 3, 4, 5, 6], [5, 9, 9, 9, 0.3, 0.3, 0.4]]
    assert answering_history(history, members, 1) == [[0, 4, 5, 6], [5, 0.3, 0.3, 0.4]]


@pytest.fixture(scope="module")
def members(store, tmp_path_factory):
    """Two fits on different sets: concat over ``left`` alone, and the weighted-logits head
    over ``right`` + ``zs`` (as a prior); their checkpoints."""
    root = tmp_path_factory.mktemp("members")
    out = {}
    for name, extra in {
        "left": ["--model.head", "concat", "--data.features", "[left]"],
        "right_zs": ["--model.head", "dual_logit", "--data.features", "[right, zs]",
                     "--model.head_options.prior_sets", "[zs]"],
    }.items():  # fmt: skip
        cli = fit_cli(store, root / name, *extra, "--trainer.logger", "false", epochs=15)
        out[name] = cli.trainer.checkpoint_callback.best_model_path
    return out


def test_a_checkpoint_remembers_its_sets_and_predicts_from_them(store, members, tmp_path):
    head, hp = load_head(members["right_zs"])
    assert hp["set_dims"] == {"right": 16, "zs": 10} and hp["head_options"]["prior_sets"] == ["zs"]
    assert set(hp["store_fingerprint"]) >= {"features.right", "features.zs"}
    assert not any(k.startswith("models.") for k in hp["store_fingerprint"])  # image/text unread
    # predict.py = the head on exactly those arrays.
    out = tmp_path / "sub.csv"
    predict.main(["--checkpoint", members["right_zs"], "--store", str(store), "--out", str(out)])
    test = load_features(store, "test", ["right", "zs"])
    with torch.no_grad():
        expected = head(torch.from_numpy(test["right"]), torch.from_numpy(test["zs"])).argmax(1)
    assert [int(r["Category"]) for r in read_csv(out)] == expected.tolist()


def test_adding_a_set_keeps_old_checkpoints_replacing_a_read_set_refuses_them(
    store, members, tmp_path
):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(store, copy)
    info = open_store(copy)
    rng = np.random.default_rng(0)
    arrays = {s: rng.normal(size=(info.rows(s), 8)).astype(np.float32) for s in info.splits}
    add_feature_set(copy, {"name": "extra", "kind": "image", "model": "random"}, arrays)
    ids, _ = predict_probs([members["left"]], copy, "test")  # unaffected by the new set
    assert len(ids) == info.rows("test")
    # The set the checkpoint reads, rebuilt with another model: another fingerprint.
    left = {s: load_features(copy, s, ["left"])["left"] for s in info.splits}
    add_feature_set(copy, {"name": "left", "kind": "image", "model": "another"}, left,
                    replace=True)  # fmt: skip
    with pytest.raises(Exception, match="features.left"):
        predict_probs([members["left"]], copy, "test")
    predict_probs([members["right_zs"]], copy, "test")  # it never read left


def test_a_stack_of_members_on_different_sets_names_them_and_beats_each(store, members, tmp_path):
    import train

    run = tmp_path / "stack"
    train.main(["stack", "--data.store", str(store), "--run_dir", str(run),
                "--checkpoint", members["left"], "--checkpoint", members["right_zs"]])  # fmt: skip
    summary = json.loads((run / "stack.json").read_text())
    assert summary["member_sets"] == [["left"], ["right", "zs"]]
    assert summary["acc_top1_cross_fitted"] > max(summary["member_acc_top1"]) + 0.04, summary


def test_the_weighted_head_over_k_sets_logs_one_weight_per_set(store, tmp_path):
    cli = fit_cli(store, tmp_path / "w", "--model.head", "dual_logit", "--model.head_options.weighting",
                  "softmax", "--data.features", "[left, right, zs]", epochs=3)  # fmt: skip
    model = cli.model
    assert model.head.weight_names() == ["left", "right", "zs"]
    rows = read_csv(tmp_path / "w" / "metrics.csv")
    logged = [r for r in rows if r.get("fusion/weight/left")]
    assert logged and all(
        float(r["fusion/weight/left"]) + float(r["fusion/weight/right"])
        + float(r["fusion/weight/zs"]) == pytest.approx(1.0, abs=1e-5)
        for r in logged
    )  # fmt: skip
    assert len(model.alpha_beta_history[-1]) == 4  # step + 3 weights
    assert (tmp_path / "w" / "alpha_beta.png").is_file()


def test_a_config_with_unknown_prior_sets_is_one_line(store, tmp_path, capsys):
    from fusion.errors import UsageError

    with pytest.raises(UsageError, match="prior_sets .* one score per class"):
        FusionModule("concat", set_dims={"left": 24}, class_names=list("abcdefghij"),
                     head_options={"prior_sets": ["left"]})  # fmt: skip
    # through train.py: exit 2 and one line naming the option, no traceback
    import train

    for prior in ("[left]", "[nope]"):
        with pytest.raises(SystemExit) as exit_info:
            train.main(["fit", "--config", str(CONFIGS / "sets_weighted.yaml"), "--data.store", str(store),
                      "--data.features", "[left,right,zs]", "--model.head_options.prior_sets",
                      prior, "--run_dir", str(tmp_path / "r"), "--trainer.logger", "false"])  # fmt: skip
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "Traceback" not in "\n".join(err)
        assert "--model.head_options.prior_sets" in err[-1]


def test_the_probe_fits_every_set_and_their_concatenation_and_fits_print_it(
    store, tmp_path, caplog
):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    from fusion.commands.probe import run_probe

    runs = tmp_path / "runs"
    sets = ["left", "right", "zs"]
    run = run_probe(["--data.store", str(store), "--runs_root", str(runs),
                     "--data.features", "[left, right, zs]", "--probe.cs", "[0.1, 1.0]"])  # fmt: skip
    summary = json.loads((run / "probe.json").read_text())
    assert summary["features"] == sets
    results = {v: r["val_acc_top1"] for v, r in summary["results"].items()}
    assert set(results) == {*sets, "concat"}
    # Each figure is a plain scikit-learn fit of that set at its chosen C.
    train, val = (load_features(store, s, ["right"]) for s in ("train", "val"))
    scaler = StandardScaler().fit(train["right"])
    c = summary["results"]["right"]["C"]
    clf = LogisticRegression(C=c, max_iter=300).fit(scaler.transform(train["right"]), train.labels)
    expected = (clf.predict(scaler.transform(val["right"])) == val.labels).mean()
    assert results["right"] == pytest.approx(expected, abs=0.02)
    # left and right each know half the classes: side by side they know all of them.
    assert results["concat"] > max(results["left"], results["right"]) + 0.2, results
    with caplog.at_level("INFO", logger="lightning.pytorch"):
        fit_cli(store, runs / "fit", "--runs_root", str(runs), "--data.features",
                "[left, right, zs]", "--trainer.logger", "false", epochs=1)  # fmt: skip
    assert "linear probe on these sets (val/acc_top1): left" in caplog.text
    assert "concat" in caplog.text.split("linear probe on these sets")[1].splitlines()[0]
    with pytest.raises(SystemExit):
        run_probe(["--data.store", str(store), "--data.features", "[left, nope]",
                   "--run_dir", str(tmp_path / "bad")])  # fmt: skip
    assert not (tmp_path / "bad").exists()


def test_the_weighted_logits_name_is_a_head_on_the_command_line(store, tmp_path):
    cli = fit_cli(store, tmp_path / "w", "--model.head", "weighted_logits",
                  "--data.features", "[left, right]", "--trainer.logger", "false", epochs=1)  # fmt: skip
    assert cli.model.head.kind == "dual_logit" and cli.model.head.sets == ["left", "right"]


@pytest.mark.slow
def test_sets_weighted_sends_a_noise_sets_weight_to_zero(tmp_path):
    # One set knows every class, the other is wide noise a branch can memorise (48 dims,
    # 10 classes x 24 rows): the fused training loss alone cannot tell them apart.
    root = tmp_path / "store"
    make_feature_sets_store(
        root, sets=[SyntheticSet("signal", dim=16, separation=3.0),
                    SyntheticSet("noise", dim=48, separation=0.0)],
        num_classes=10, per_class={"train": 24, "val": 10, "test": 2}, seed=0,
    )  # fmt: skip
    from tests.fixtures_training import REPO

    cli = fit_cli(root, tmp_path / "run", "--config", str(REPO / "configs" / "sets_weighted.yaml"),
                  "--data.store", str(root), "--data.features", "[noise, signal]",
                  "--trainer.logger", "false", epochs=30)  # fmt: skip
    head = cli.model.head.chosen
    w = head.fusion_weights().detach()
    assert head.sets == ["noise", "signal"] and w[0] < 0.1 < 0.9 < w[1], w
