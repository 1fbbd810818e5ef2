"""The "Python API" example of docs/python_api.md, run as written, on a tiny demo store; the wrappers'
error paths."""

from __future__ import annotations

import csv
import re
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import yaml

import sketchfusion as sf
from feature_store import load_arrays, open_store
from feature_store.synthetic import make_synthetic_store
from fusion.predict import CheckpointError
from tests.fixtures_extraction import tiny_models  # noqa: F401 - fixture
from tests.test_python_api_tables import assert_same_as_csv

REPO = Path(__file__).resolve().parents[1]


def readme_example() -> str:
    """The first python block of docs/python_api.md."""
    text = (REPO / "docs" / "python_api.md").read_text()
    return re.search(r"```python\n(.*?)```", text, re.S).group(1)


@pytest.fixture
def tiny_demo_configs(tmp_path, tiny_models, monkeypatch):  # noqa: F811
    """The example's two config paths, under a fresh working directory, made tiny: three
    demo classes on the session's tiny models, and the repo's demo fit config as it is."""
    (tmp_path / "configs" / "prep").mkdir(parents=True)
    prep = yaml.safe_load((REPO / "configs" / "prep" / "demo.yaml").read_text())
    prep["demo"].update(
        num_classes=3,
        per_class={"train": 8, "val": 3, "test": 3},
        size=48,
        models=str(Path(tiny_models["bert"]).parent),
    )
    prep["run"]["progress"] = False
    (tmp_path / "configs" / "prep" / "demo.yaml").write_text(yaml.safe_dump(prep))
    fit_cfg = yaml.safe_load((REPO / "configs" / "demo.yaml").read_text())
    fit_cfg["trainer.enable_progress_bar"] = False  # dotted keys over configs/base.yaml
    (tmp_path / "configs" / "demo.yaml").write_text(yaml.safe_dump(fit_cfg))
    shutil.copy(REPO / "configs" / "base.yaml", tmp_path / "configs" / "base.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.slow
def test_the_readme_example_runs(tiny_demo_configs):
    ns: dict = {}
    exec(compile(readme_example(), "docs/python_api.md", "exec"), ns)
    store = open_store("stores/demo")
    assert ns["store"].root == store.root and store.num_classes == 3
    assert len(ns["train"]) == store.rows("train") == 3 * 8
    assert ns["ds"]["train"].features["label"].names == store.class_names
    fit = ns["fit"]
    assert fit.run_dir.parent == Path("runs/demo") and fit.best_checkpoint.is_file()
    assert fit.best_score is not None and 0.0 <= fit.best_score <= 1.0
    # 5 epochs as asked: metrics.csv logs val once per epoch.
    with (fit.run_dir / "metrics.csv").open() as f:
        epochs = {r["epoch"] for r in csv.DictReader(f) if r.get("val/acc_top1")}
    assert len(epochs) == 5
    with ns["submission"].open() as f:
        rows = list(csv.DictReader(f))
    assert [r["Id"] for r in rows] == load_arrays(store, "test").ids
    assert {int(r["Category"]) for r in rows} <= set(range(3))
    assert ns["page"] == fit.run_dir / "report" / "report.html" and ns["page"].is_file()
    # The DataFrames are the files, read independently (tests/test_python_api_tables.py).
    assert_same_as_csv(ns["preds"], fit.run_dir / "val_predictions.csv")
    assert_same_as_csv(ns["sub"], ns["submission"])
    assert ns["sub"]["Id"].tolist() == load_arrays(store, "test").ids
    with (fit.run_dir / "metrics.csv").open() as f:
        val_rows = [r for r in csv.DictReader(f) if r["val/acc_top1"]]
    assert ns["curves"]["val/acc_top1"].tolist() == [float(r["val/acc_top1"]) for r in val_rows]


def test_build_store_takes_a_dict_and_dotted_overrides(tmp_path, monkeypatch):
    """A dict config plus ``run__out``: the store lands where the override says."""
    from data_prep import pipeline

    src = tmp_path / "src"
    make_synthetic_store(src, num_classes=2, per_class={"train": 3, "val": 2, "test": 1})
    calls = {}

    def fake_import(cfg, plain, **_):  # the import path needs no models: record the config
        calls["out"], calls["kind"] = cfg.run.out, cfg.input.kind
        shutil.copytree(src, cfg.run.out)
        return Path(cfg.run.out)

    monkeypatch.setattr(pipeline, "import_store", fake_import)  # the name pipeline calls
    info = sf.build_store(
        {"input": {"kind": "report_embeddings", "dataset": "x"}, "run": {"out": "ignored"}},
        run__out=str(tmp_path / "built"),
    )
    assert calls == {"out": str(tmp_path / "built"), "kind": "report_embeddings"}
    assert info.root == tmp_path / "built" and info.class_names == ["class_000", "class_001"]


def test_predict_refuses_what_predict_py_refuses(tmp_path):
    store = make_synthetic_store(tmp_path / "s", num_classes=2)
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        sf.predict(tmp_path / "missing.ckpt", store, tmp_path / "sub.csv")
    with pytest.raises(sf.StoreError, match="python -m data_prep"):
        sf.open_store(tmp_path / "nowhere")


def test_a_store_info_is_its_path(tmp_path):
    store = make_synthetic_store(tmp_path, num_classes=2)
    np.testing.assert_array_equal(
        sf.load_arrays(store, "val").labels, load_arrays(tmp_path, "val").labels
    )
    assert isinstance(sf.load_dataset_dict(store), datasets.DatasetDict)
