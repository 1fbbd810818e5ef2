"""Importing the report's published embeddings (its parquet schema) as a feature store.

Offline: the tests write parquet files with the reference's schema (what its
dataset_generation.py writes: label = class folder name, visual_embedding, caption,
textual_embedding, path) and import them through ``python -m data_prep``'s own entry point.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import data_prep
from data_prep.__main__ import _cli
from data_prep.store import StoreMixError
from feature_store import load_arrays, open_store

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs" / "prep" / "import_report_embeddings.yaml")
CLASSES = ["n02", "n00", "n01", "n03", "n04"]  # folder names, deliberately not sorted
# The reference script's file names; load_dataset infers train / validation / test.
FILES = {"train": "train_images", "validation": "val_images", "test": "test_images"}
PER_CLASS = {"train": 40, "validation": 12}
TEST_ROWS = 40  # 5 x 40 + 5 x 12 + 40 = 300 rows


def make_rows(seed: int = 0, *, dims=(32, 24)) -> dict[str, dict[str, list]]:
    """Rows per source split, the way the reference stores them (lists of floats)."""
    rng = np.random.default_rng(seed)
    root = "./sketch_recvis2024/sketch_recvis2024"
    out = {}
    for split, folder in FILES.items():
        if split == "test":
            labels = ["mistery_category"] * TEST_ROWS
        else:
            labels = [c for c in CLASSES for _ in range(PER_CLASS[split])]
        n = len(labels)
        out[split] = {
            "label": labels,
            "visual_embedding": rng.standard_normal((n, dims[0])).tolist(),
            "caption": [f"a drawing of {lab} number {i}" for i, lab in enumerate(labels)],
            "textual_embedding": rng.standard_normal((n, dims[1])).tolist(),
            "path": [
                f"{root}/{folder}/{lab}/{split[:2]}_{i:04d}.JPEG" for i, lab in enumerate(labels)
            ],
        }
    return out


def write_parquet(folder: Path, rows: dict[str, dict[str, list]]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split, cols in rows.items():
        pq.write_table(pa.table(cols), folder / f"{FILES[split]}.parquet")
    return folder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """Keep load_dataset's Arrow cache inside the test's folder."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))


def run_import(source: Path, out: Path, *extra: str) -> Path:
    argv = ["--config", CONFIG, "--input.dataset", str(source), "--run.out", str(out)]
    return data_prep.main([*argv, "--run.progress", "false", *extra])


def cli_error(monkeypatch, capsys, source: Path, out: Path, *extra: str) -> str:
    """Run `python -m data_prep` in-process; assert exit 2 and one line; return it."""
    argv = ["--config", CONFIG, "--input.dataset", str(source), "--run.out", str(out), *extra]
    monkeypatch.setattr(sys, "argv", ["data_prep", *argv])
    assert _cli() == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("data_prep: error:") and "Traceback" not in err
    assert not out.exists(), "a failed import must leave no store behind"
    return err


def test_import_writes_a_normal_store(tmp_path, hf_cache):
    rows = make_rows()
    store = run_import(write_parquet(tmp_path / "src", rows), tmp_path / "store")
    info = open_store(store)
    assert info.class_names == sorted(CLASSES)
    assert (info.image_dim, info.text_dim) == (32, 24)  # read from the data
    m = info.manifest
    assert m["imported"]["note"].startswith("rows imported") and m["source"].startswith("imported:")
    assert m["models"]["image"]["name"] == "facebook/dinov2-base"
    assert m["models"]["image"]["pooling"] == "mean_all_tokens"
    assert m["models"]["caption"]["name"] == "Salesforce/blip2-flan-t5-xl"
    assert m["models"]["text"]["pooling"] == "mean_unmasked_reference"
    assert all("not run here" in m["models"][k]["declared"] for k in ("image", "caption", "text"))
    assert m["emb_dtype"] == "float32" and m["splits"]["train"]["rows"] == 200
    for ours, theirs in (("train", "train"), ("val", "validation"), ("test", "test")):
        arrays = load_arrays(store, ours)
        src = rows[theirs]
        by_id = {Path(p).stem: i for i, p in enumerate(src["path"])}
        assert arrays.ids == sorted(by_id)  # ids: file stems, rows sorted by id
        order = [by_id[i] for i in arrays.ids]
        expected_labels = [
            -1 if ours == "test" else sorted(CLASSES).index(src["label"][i]) for i in order
        ]
        assert arrays.labels.tolist() == expected_labels
        np.testing.assert_array_equal(
            arrays.image_emb, np.asarray(src["visual_embedding"], np.float32)[order]
        )
        np.testing.assert_array_equal(
            arrays.text_emb, np.asarray(src["textual_embedding"], np.float32)[order]
        )
        assert arrays.captions == [src["caption"][i] for i in order]
        assert arrays.paths == [src["path"][i] for i in order]


def test_rerun_is_a_no_op_and_a_foreign_folder_is_refused(tmp_path, hf_cache):
    source = write_parquet(tmp_path / "src", make_rows())
    store = run_import(source, tmp_path / "store")
    before = (store / "manifest.json").read_text()
    assert run_import(source, tmp_path / "store") == store
    assert (store / "manifest.json").read_text() == before
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(StoreMixError, match="not empty"):
        run_import(source, other)


def test_class_map_sets_the_labels(tmp_path, hf_cache):
    # The reference's class2category.csv: header class,category.
    mapping = {"n04": 0, "n02": 1, "n00": 2, "n03": 3, "n01": 4}
    csv = tmp_path / "class2category.csv"
    csv.write_text("class,category\n" + "".join(f"{k},{v}\n" for k, v in mapping.items()))
    rows = make_rows()
    store = run_import(
        write_parquet(tmp_path / "src", rows), tmp_path / "store", "--input.class_map", str(csv)
    )
    assert open_store(store).class_names == ["n04", "n02", "n00", "n03", "n01"]
    val = load_arrays(store, "val")
    src = rows["validation"]
    by_id = {Path(p).stem: lab for p, lab in zip(src["path"], src["label"], strict=True)}
    assert val.labels.tolist() == [mapping[by_id[i]] for i in val.ids]


def test_the_reference_scripts_image_path_column_is_read(tmp_path, hf_cache):
    rows = make_rows()
    for cols in rows.values():
        cols["image_path"] = cols.pop("path")
    store = run_import(write_parquet(tmp_path / "src", rows), tmp_path / "store")
    assert load_arrays(store, "test").ids[0] == "te_0000"


def test_a_wrong_length_vector_is_a_clear_error(tmp_path, hf_cache, monkeypatch, capsys):
    rows = make_rows()
    rows["train"]["visual_embedding"][17] = rows["train"]["visual_embedding"][17][:-1]
    source = write_parquet(tmp_path / "src", rows)
    err = cli_error(monkeypatch, capsys, source, tmp_path / "store")
    assert "'train' row 17" in err and rows["train"]["path"][17] in err
    assert "visual_embedding has 31 values where 199 rows have 32" in err


def test_a_missing_column_is_a_clear_error(tmp_path, hf_cache, monkeypatch, capsys):
    rows = make_rows()
    del rows["validation"]["textual_embedding"]
    source = write_parquet(tmp_path / "src", rows)
    err = cli_error(monkeypatch, capsys, source, tmp_path / "store")
    assert "split 'validation'" in err and "no ['textual_embedding']" in err
    assert "label, visual_embedding, caption, textual_embedding, path" in err  # the schema


def test_a_val_label_outside_the_train_classes_is_an_error(tmp_path, hf_cache):
    rows = make_rows()
    rows["validation"]["label"][3] = "n99"
    with pytest.raises(ValueError, match="label 'n99' is not one of the 5 classes"):
        run_import(write_parquet(tmp_path / "src", rows), tmp_path / "store")


def test_duplicate_file_stems_are_an_error(tmp_path, hf_cache):
    rows = make_rows()
    rows["train"]["path"][5] = rows["train"]["path"][4].replace("/n02/", "/n00/")
    with pytest.raises(ValueError, match="duplicate id"):
        run_import(write_parquet(tmp_path / "src", rows), tmp_path / "store")


def test_a_missing_split_names_the_ones_there(tmp_path, hf_cache):
    rows = make_rows()
    del rows["test"]
    with pytest.raises(ValueError, match=r"has splits \['train', 'validation'\]"):
        run_import(write_parquet(tmp_path / "src", rows), tmp_path / "store")


def test_the_imported_store_trains_with_the_report_config(tmp_path, hf_cache, monkeypatch):
    from fusion.cli import FusionCLI

    monkeypatch.setenv("WANDB_MODE", "disabled")
    store = run_import(write_parquet(tmp_path / "src", make_rows()), tmp_path / "store")
    cli = FusionCLI(
        args=[
            "fit",
            "--config",
            str(REPO / "configs" / "report" / "dual_logit_l0.3.yaml"),
            "--data.store",
            str(store),
            "--runs_root",
            str(tmp_path / "runs"),
            "--trainer.max_epochs",
            "2",
            "--trainer.enable_progress_bar",
            "false",
        ],
    )
    metrics = json.loads(json.dumps({k: float(v) for k, v in cli.trainer.callback_metrics.items()}))
    assert cli.trainer.current_epoch == 2 and "val/loss" in metrics
    assert Path(cli.trainer.checkpoint_callback.best_model_path).name == "best.ckpt"
