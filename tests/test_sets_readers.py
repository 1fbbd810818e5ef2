"""Everything that opens a store today (train, predict, probe, analysis) on a store with
an added feature set and on a format-2 store: today's columns read as before."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import data_prep
import predict
from analysis.__main__ import main as analysis_main
from feature_store import load_arrays, load_features, open_store, write_manifest
from fusion.commands.probe import run_probe
from tests.fixtures_sets import add_argv, set_models  # noqa: F401
from tests.fixtures_training import fit_cli, read_csv, small_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stores(tmp_path_factory, set_models):  # noqa: F811
    """The same rows three ways: a new store with an added MiniLM caption-score set, and
    its format-2 copy (no features entry, no added set)."""
    tmp = tmp_path_factory.mktemp("readers")
    new = small_store(tmp / "new")
    sets = [{"name": "capcls", "kind": "caption_scores", "model": str(set_models["minilm"])}]
    data_prep.main(add_argv(new, sets))
    old = shutil.copytree(new, tmp / "old")
    shutil.rmtree(old / "features")
    manifest = json.loads((old / "manifest.json").read_text())
    write_manifest(old, {k: v for k, v in manifest.items() if k != "features"}
                   | {"format_version": 2})  # fmt: skip
    return {"new": new, "old": old}


@pytest.mark.parametrize("which", ["new", "old"])
def test_train_predict_probe_and_analysis_open_it(stores, which, tmp_path, monkeypatch):
    store = stores[which]
    assert load_features(store, "train", ["image", "text"])["image"].shape[1] == 16
    if which == "new":
        assert load_features(store, "train", ["capcls"])["capcls"].shape[1] == 5
    monkeypatch.setenv("WANDB_MODE", "disabled")
    fit_cli(store, tmp_path / "run", epochs=1)
    out = tmp_path / "submission.csv"
    predict.main(["--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"),
                  "--store", str(store), "--out", str(out)])  # fmt: skip
    assert [r["Id"] for r in read_csv(out)] == load_arrays(store, "test").ids
    run_probe(["--data.store", str(store), "--runs_root", str(tmp_path / "probe")])
    assert analysis_main(["--store", str(store), "--out", str(tmp_path / "report")]) == 0
    # The checkpoint trained on one store is accepted on the other: same fingerprint.
    other = stores["old" if which == "new" else "new"]
    predict.main(["--checkpoint", str(tmp_path / "run" / "checkpoints" / "best.ckpt"),
                  "--store", str(other), "--out", str(tmp_path / "other.csv")])  # fmt: skip
    assert open_store(store).class_names == open_store(other).class_names
    assert np.isfinite(load_arrays(other, "val").image_emb).all()
