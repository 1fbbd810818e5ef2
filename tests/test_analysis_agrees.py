"""The report says what the training side says: one probe (``train.py probe``'s numbers on
the same store), a gated run's gate named as such, readable model sources, and one meaning
of ``--tsne_points 0`` in docs/analysis.md and ``--help``.

$ python -m pytest -q tests/test_analysis_agrees.py
"""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import matplotlib.figure
import pytest

from analysis import __main__ as analysis_cli
from analysis.html import Section
from analysis.report import ReportOptions, build_report, model_label
from feature_store.synthetic import make_synthetic_store
from fusion.commands.probe import run_probe
from fusion.plots import plot_alpha_beta
from fusion.probe_run import PROBE_FILE
from tests.fixtures_analysis import write_fit_config, write_metrics

REPO = Path(__file__).resolve().parents[1]
QUIET = {"tsne_points": 0, "patch_images": 0, "n_query_images": 0}  # sections not under test


def _text(page: Path) -> str:
    return html.unescape(page.read_text())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Noisy enough that C matters, small enough that no cap of the report applies."""
    root = tmp_path_factory.mktemp("agree") / "store"
    make_synthetic_store(root, num_classes=6, per_class={"train": 30, "val": 20, "test": 4},
                         noise=4.0, image_dim=16, text_dim=12)  # fmt: skip
    return root


def test_the_report_probe_is_train_py_probes(store, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = run_probe(["--data.store", str(store), "--run_dir", str(tmp_path / "probe")])
    trained = json.loads((run / PROBE_FILE).read_text())["results"]
    res = build_report(ReportOptions(store=store, out=tmp_path / "report", **QUIET))
    shown = res.numbers["probes"]
    assert set(shown) == set(trained) == {"image", "text", "concat"}
    for view in trained:
        assert shown[view]["val_acc"] == trained[view]["val_acc_top1"], view
        assert shown[view]["C"] == trained[view]["C"], view
    assert "is `python train.py probe`'s result on this store" in _text(res.page)


def test_a_capped_report_says_its_probe_may_differ(store, tmp_path):
    opts = ReportOptions(store=store, out=tmp_path / "r", probe_train=60, **QUIET)
    assert "whose LR figures may differ" in _text(build_report(opts).page)


def _legends(monkeypatch) -> list[list[str]]:
    """The legend texts of every figure the report or fusion/plots.py renders."""
    seen: list[list[str]] = []
    real_figure, real_save = Section.figure, matplotlib.figure.Figure.savefig

    def texts(fig):
        legend = fig.axes[0].get_legend() if fig.axes else None
        return [t.get_text() for t in legend.get_texts()] if legend else []

    def figure(self, name, fig, caption):
        seen.append([name, caption, *texts(fig)])
        return real_figure(self, name, fig, caption)

    def savefig(fig, *args, **kwargs):
        seen.append(["savefig", fig.axes[0].get_title(), *texts(fig)])
        return real_save(fig, *args, **kwargs)

    monkeypatch.setattr(Section, "figure", figure)
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    return seen


@pytest.mark.parametrize("head", ["gated", "dual_logit"])
def test_a_gated_runs_weights_are_its_gate(head, store, tmp_path, monkeypatch):
    run = tmp_path / "run"
    write_fit_config(run, head=head)
    write_metrics(run)
    seen = _legends(monkeypatch)
    build_report(ReportOptions(store=store, out=tmp_path / "r", run=run, **QUIET))
    plot_alpha_beta([[0, 0.5, 0.5], [1, 0.6, 0.4]], tmp_path / "ab.png", title="t", head=head)
    (report_fig,) = [s for s in seen if s[0] == "alpha_beta"]
    (run_fig,) = [s for s in seen if s[0] == "savefig" and s[1].startswith("t:")]
    if head == "gated":
        assert report_fig[1].startswith("Gated head's gate: z = g f(image) + (1 - g) h(text)")
        assert report_fig[2:] == ["gate g, batch mean (image)", "1 - g (text)"]
        assert run_fig[2:] == ["gate g, batch mean (image)", "1 - g (text)"]  # no sum: it is 1
        assert "alpha" not in " ".join(report_fig[1:] + run_fig[1:])
    else:
        assert report_fig[2:] == ["alpha (image)", "beta (text)"]
        assert run_fig[2:] == ["alpha (image)", "beta (text)", "alpha + beta"]


def test_model_sources_read_as_text_not_dicts():
    csv_entry = {"captions_csv": "/data/captions.csv", "sha256": "ab" * 32}
    assert model_label(csv_entry) == "captions from /data/captions.csv"
    assert model_label({"name": "facebook/dinov2-base", "revision": "x"}) == "facebook/dinov2-base"
    assert model_label({"source": "imported:me/embeds"}) == "imported:me/embeds"
    assert model_label({"dtype": "float16", "max_new_tokens": 30}) == (
        "dtype float16, max_new_tokens 30"
    )
    assert "{" not in model_label({"x": {"nested": 1}, "k": "v"})


def test_the_caption_source_row_of_a_csv_captioned_store(store, tmp_path):
    manifest_path = store / "manifest.json"
    saved = manifest_path.read_text()
    manifest = json.loads(saved)
    manifest.setdefault("models", {})["caption"] = {
        "captions_csv": "/data/captions.csv",
        "sha256": "0" * 64,
    }
    manifest_path.write_text(json.dumps(manifest))
    try:
        page = build_report(ReportOptions(store=store, out=tmp_path / "r", **QUIET)).page
    finally:
        manifest_path.write_text(saved)
    text = _text(page)
    assert "captions from /data/captions.csv" in text and "captions_csv" not in text


def test_tsne_points_0_means_no_tsne_in_help_docs_and_report(store, tmp_path):
    helps = analysis_cli.parser().format_help()
    assert re.search(r"--tsne_points.*\(0: no t-SNE\)", " ".join(helps.split()))
    docs = " ".join((REPO / "docs" / "analysis.md").read_text().split())
    assert "(`--tsne_points`; `0` skips t-SNE)" in docs
    res = build_report(ReportOptions(store=store, out=tmp_path / "r", **QUIET))
    assert "t-SNE skipped (--tsne_points 0)." in _text(res.page)
