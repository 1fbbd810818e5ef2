"""The report's rough edges, each fixed and held: eps line, duplicate captions, zero bars,
integer cells, caption sizes, run summary, --classes on retrieval, class mentions."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.colors import to_hex

from analysis.__main__ import main
from analysis.captions import caption_stats, class_keywords, manifest_mismatch, mentions_class
from analysis.clustering import ZERO, add_clustering, k_distance, k_distance_figure, knee
from analysis.data import load_views
from analysis.html import Report, fmt_number
from analysis.report import ReportOptions, build_report
from analysis.run_report import ZERO_STUB, per_class_figure
from analysis.style import DPI
from analysis.thumbs import Tile, tile_grid
from feature_store.synthetic import make_synthetic_store
from fusion.probe_run import PROBE_FILE, store_key
from tests.fixtures_analysis import (
    DIGITS,
    digit_store,
    image_store,
    write_fit_config,
    write_predictions,
)


def _curve(x: np.ndarray, min_samples: int) -> np.ndarray:
    """Sorted distances to the (min_samples - 1)-th neighbour, by brute force in numpy."""
    d = np.linalg.norm(x[:, None] - x[None], axis=2)
    return np.sort(np.sort(d, axis=1)[:, min_samples - 1])


def test_whole_numbers_print_as_integers():
    assert fmt_number(6.0) == "6" and fmt_number(np.float64(6.0)) == "6"
    assert fmt_number(np.int64(12)) == "12" and fmt_number(0.0) == "0"
    assert fmt_number(0.275) == "0.2750" and fmt_number(6.5) == "6.5000"
    assert fmt_number(123.45) == "123.5" and fmt_number(float("nan")) == "n/a"
    assert fmt_number(0.0001) == "0.0001" and fmt_number(2e-5) == "2e-05"
    page = Report("t").section("s").table(["a", "b", "c"], [[6.0, np.median([5, 6, 7]), 0.5]])
    cells = re.findall(r"<td class='num'>([^<]*)</td>", _render(page))
    assert cells == ["6", "6", "0.5000"]


def _render(section) -> str:
    report = Report("t")
    report.sections.append(section)
    return report.render()


def test_k_distance_figure_draws_each_eps_dotted():
    rng = np.random.default_rng(0)
    curves = {
        "image": k_distance(rng.standard_normal((60, 5)), 5),
        "text": k_distance(rng.standard_normal((60, 3)), 5),
    }
    ax = k_distance_figure(curves, 5).axes[0]
    solid = [ln for ln in ax.lines if ln.get_linestyle() == "-"]
    dotted = [ln for ln in ax.lines if ln.get_linestyle() == ":"]
    assert len(solid) == 2 and len(dotted) == 2
    for kd, curve_line in zip(curves.values(), solid, strict=True):
        assert np.array_equal(curve_line.get_ydata(), kd.curve)
        at_eps = [ln for ln in dotted if np.allclose(ln.get_ydata(), kd.eps)]
        assert len(at_eps) == 1  # a horizontal line at eps...
        assert to_hex(at_eps[0].get_color()) == to_hex(curve_line.get_color())  # ...its colour
    assert curves["image"].eps != curves["text"].eps


def test_duplicate_rows_give_the_knee_of_the_nonzero_part():
    # 80 rows that are copies of 4 vectors (identical captions) and 40 distinct ones.
    rng = np.random.default_rng(1)
    x = np.vstack(
        [np.repeat(rng.standard_normal((4, 6)), 20, axis=0), rng.standard_normal((40, 6))]
    )
    kd = k_distance(x, 5)
    curve = _curve(x, 5)
    assert np.allclose(kd.curve, curve, atol=1e-6)
    assert knee(curve) <= ZERO  # the plain knee would be 0
    positive = curve[curve > ZERO]
    t = np.linspace(0, 1, len(positive))
    expect = positive[np.argmax(positive[0] + t * (positive[-1] - positive[0]) - positive)]
    assert kd.eps == pytest.approx(expect, rel=1e-6) and kd.eps > 0
    assert kd.zero_share == pytest.approx(80 / 120)
    assert "exact duplicates" in kd.note and "non-zero part" in kd.note


def test_all_duplicate_text_skips_dbscan_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    split = {
        "id": [f"r{i}" for i in range(30)],
        "label": labels,
        "caption": [f"a sketch of {y}" for y in labels],
        "image_emb": rng.standard_normal((3, 8))[labels] + 0.1 * rng.standard_normal((30, 8)),
        "text_emb": rng.standard_normal((3, 4))[labels],  # 10 copies of each caption
    }
    from feature_store.writer import write_store

    write_store(tmp_path / "s", splits={"train": split}, class_names=["a", "b", "c"])
    report = Report("t")
    got = add_clustering(report, load_views(tmp_path / "s"), cap=None)
    assert "dbscan" in got["image"] and "dbscan" not in got["text"]
    assert got["text"]["kmeans"]["purity"] == pytest.approx(1.0)
    assert any(n.startswith("text: every point has 4 exact duplicates") for n in report.notes)
    assert "<td>skipped</td>" in report.render()


def test_zero_accuracy_classes_get_a_labelled_stub():
    acc = np.array([0.0, 0.0, 0.25, 1.0])
    fig = per_class_figure(["a", "b", "c", "d"], acc)
    ax = fig.axes[0]
    bars = ax.patches
    widths = [b.get_width() for b in bars]
    assert widths == pytest.approx([ZERO_STUB, ZERO_STUB, 0.25, 1.0])
    assert to_hex(bars[0].get_facecolor()) != to_hex(bars[2].get_facecolor())
    assert [t.get_text() for t in ax.texts] == ["0.00", "0.00", "0.25", "1.00"]
    # first class at the top
    height = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks(), strict=True)}
    assert height["a"] > height["b"] > height["c"] > height["d"]


def test_thumbnail_captions_are_at_least_11_px(tmp_path):
    store = image_store(tmp_path)
    tiles = [[Tile("", "QUERY: a circle", "blue"), Tile("nope.png", "0.99 [shape_0] a caption")]]
    fig, missing = tile_grid(tiles, store)
    texts = [t for ax in fig.axes for t in [ax.title, *ax.texts] if t.get_text()]
    assert len(texts) == 2 and missing == 1
    assert min(t.get_fontsize() * DPI / 72 for t in texts) >= 11


def _metrics(run, vals):
    run.mkdir(parents=True, exist_ok=True)
    lines = ["epoch,step,train/loss,val/acc_top1"]
    for e, v in enumerate(vals):
        lines += [f"{e},{4 * e + 3},1.0,", f"{e},{4 * e + 3},,{v}"]
    (run / "metrics.csv").write_text("\n".join(lines) + "\n")


def _probe_json(runs_root, store, accs):
    path = runs_root / "probe" / "20260101-000000" / PROBE_FILE
    path.parent.mkdir(parents=True)
    results = {v: {"C": 1.0, "val_acc_top1": a} for v, a in accs.items()}
    best = max(accs, key=accs.get)
    path.write_text(json.dumps({"store": store_key(store), "best": best, "results": results}))


def _run_table(page: str) -> list[list[str]]:
    """Header and first row of the first table after the Training run heading."""
    table = page.split(">Training run</h2>", 1)[1].split("</table>", 1)[0]
    cells = re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", table)
    n = table.count("<th>")
    return [cells[:n], cells[n : 2 * n]]


def test_run_summary_heads_the_run_section(tmp_path):
    store = tmp_path / "store"
    make_synthetic_store(store, num_classes=4, per_class={"train": 10, "val": 5})
    run = tmp_path / "runs" / "dual" / "20260101-000001"
    write_fit_config(run, penalty_lambda=0.3)
    _metrics(run, [0.2, 0.5, 0.5, 0.4])  # best first reached at epoch 1
    write_predictions(run, store)
    res = build_report(ReportOptions(store=store, out=tmp_path / "o", run=run))
    header, row = _run_table(res.page.read_text())
    assert header == ["head", "lambda", "best epoch (from 0)", "best val top-1",
                      "linear probe val top-1"]  # fmt: skip
    assert row[:4] == ["dual_logit", "0.3000", "1 of 4", "0.5000"]
    assert row[4].startswith("none on this store")
    # with a probe on this store beside the run, its best feature set
    _probe_json(tmp_path / "runs", store, {"image": 0.45, "text": 0.3, "concat": 0.6})
    res = build_report(ReportOptions(store=store, out=tmp_path / "o", run=run))
    assert _run_table(res.page.read_text())[1][4] == "0.6000 (concat)"
    assert res.numbers["run"]["summary"]["best"]["epoch"] == 1


@pytest.mark.parametrize(
    ("options", "expect"),
    [({"penalty_lambda": 0.3, "flat": True}, "0.3000"),  # a run from before issue 21
     ({"penalty_lambda": None, "weighting": None}, "0.1000")],  # unset: the head's default
)  # fmt: skip
def test_run_summary_reads_old_flat_and_unset_options(tmp_path, options, expect):
    store = tmp_path / "store"
    make_synthetic_store(store, num_classes=3, per_class={"train": 8, "val": 4})
    run = tmp_path / "run"
    write_fit_config(run, **options)
    _metrics(run, [0.7, 0.6])
    res = build_report(ReportOptions(store=store, out=tmp_path / "o", run=run))
    header, row = _run_table(res.page.read_text())
    assert row[header.index("lambda")] == expect


def test_run_summary_lambda_only_for_dual_logit(tmp_path):
    store = tmp_path / "store"
    make_synthetic_store(store, num_classes=3, per_class={"train": 8, "val": 4})
    for head, weighting, expect in [("concat", "penalty", None),
                                    ("dual_logit", "softmax", "n/a (softmax weighting)")]:  # fmt: skip
        run = tmp_path / head
        write_fit_config(run, head=head, weighting=weighting)
        _metrics(run, [0.7, 0.6])
        res = build_report(ReportOptions(store=store, out=tmp_path / "o", run=run))
        header, row = _run_table(res.page.read_text())
        assert row[0] == head
        if expect is None:
            assert "lambda" not in header
        else:
            assert row[header.index("lambda")] == expect
        assert row[header.index("best epoch (from 0)")] == "0 of 2"


def test_classes_limit_retrieval_queries(tmp_path, capsys):
    store = image_store(tmp_path, num_classes=4, per_class=4)
    res = build_report(
        ReportOptions(store=store, out=tmp_path / "o", classes="shape_2", n_query_images=3)
    )
    assert res.numbers["retrieval"] == [2, 2, 2]
    assert "from the --classes chosen (shape_2" in res.page.read_text()
    res = build_report(ReportOptions(store=store, out=tmp_path / "o2", n_query_images=4))
    assert sorted(res.numbers["retrieval"]) == [0, 1, 2, 3]  # default: spread over classes
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "retrieval" in " ".join(capsys.readouterr().out.split())


def test_class_mentions_on_distinctive_words(tmp_path):
    views = load_views(digit_store(tmp_path / "s"))
    captions = views.train.captions + views.val.captions
    labels = np.concatenate([views.train.labels, views.val.labels])
    st = caption_stats(captions, labels, views.class_names)
    # independent count: the caption holds the digit's word
    expect = np.mean([DIGITS[y] in c.split() for c, y in zip(captions, labels, strict=True)])
    assert expect == 0.5 and st["mention_rate"] == pytest.approx(expect)
    assert st["mentions"] == len(captions) // 2 and st["shared_words"] == ["digit"]
    assert class_keywords(views.class_names)[4] == ["four"]
    assert not mentions_class("a sketch of a four", ["five"])
    assert mentions_class("two cats", class_keywords(["cat", "dog"])[0])  # plural
    assert not mentions_class("a catalogue", ["cat"])
    # shared by 2 of 3 names: "retriever" is not required, "golden" is
    keys = class_keywords(["golden_retriever", "labrador_retriever", "cat"])
    assert keys[0] == ["golden"] and mentions_class("a golden dog", keys[0])
    res = build_report(ReportOptions(store=tmp_path / "s", out=tmp_path / "o"))
    page = res.page.read_text()
    row = page.split("train and val captions</caption>", 1)[1].split("</table>", 1)[0]
    assert re.findall(r"<td class='num'>([^<]*)</td>", row)[3:5] == ["60", "0.5000"]
    assert "a caption mentions digit_zero when it says &#x27;zero&#x27;" in page


def test_degenerate_is_the_manifests_definition_and_a_stale_count_is_flagged(tmp_path):
    import analysis.captions
    import data_prep.caption_quality

    assert analysis.captions.caption_quality is data_prep.caption_quality.caption_quality
    store = digit_store(tmp_path / "s")
    manifest = json.loads((store / "manifest.json").read_text())
    for split, degenerate in (("train", 0), ("val", 0)):
        manifest["splits"][split] |= {"captions_empty": 0, "captions_degenerate": degenerate}
    (store / "manifest.json").write_text(json.dumps(manifest))
    views = load_views(store)
    st = caption_stats(views.train.captions + views.val.captions,
                       np.r_[views.train.labels, views.val.labels], views.class_names)  # fmt: skip
    assert st["degenerate"] == 0 and manifest_mismatch(views, st) == ""
    manifest["splits"]["train"]["captions_degenerate"] = 5  # an older definition's count
    (store / "manifest.json").write_text(json.dumps(manifest))
    note = manifest_mismatch(load_views(store), st)
    assert "counts 0 empty and 5 degenerate" in note and "rebuild" in note


def test_display_names_replace_wordnet_ids(tmp_path, capsys):
    from feature_store.writer import write_store

    wnids, shown = (
        ["n01440764", "n01443537", "n01484850"],
        ["tench", "goldfish", "great white shark"],
    )
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 6)
    captions = [f"a photo of a {shown[y]}" if i % 2 else "a fish" for i, y in enumerate(labels)]
    split = {
        "id": [f"r{i}" for i in range(18)],
        "label": labels,
        "caption": captions,
        "image_emb": rng.standard_normal((3, 8))[labels] + 0.1 * rng.standard_normal((18, 8)),
        "text_emb": rng.standard_normal((18, 4)),
    }
    store = tmp_path / "s"
    write_store(store, splits={"train": split, "val": split}, class_names=wnids)
    names = tmp_path / "names.csv"
    rows = [f"{w},{n}" for w, n in zip(wnids, shown, strict=True)] + ["n99999999,extra"]
    names.write_text("class,name\n" + "\n".join(rows) + "\n")
    plain = build_report(ReportOptions(store=store, out=tmp_path / "o1", patch_images=0))
    assert plain.numbers["captions"]["mention_rate"] == 0
    assert any("--display_names" in n for n in plain.report.notes)  # the WordNet-id note
    opts = ReportOptions(store=store, out=tmp_path / "o2", display_names=names, patch_images=0,
                         classes="goldfish,n01484850", n_query_images=2)  # fmt: skip
    named = build_report(opts)
    assert named.numbers["captions"]["mention_rate"] == pytest.approx(0.5)
    assert not any("WordNet" in n for n in named.report.notes)
    assert sorted(named.numbers["retrieval"]) == [1, 2]  # a display name and a store name
    assert "great white shark" in named.page.read_text()
    # a file without the header: one line naming the option, exit 2
    names.write_text("n01440764,tench\n")
    argv = ["--store", str(store), "--out", str(tmp_path / "o3"), "--display_names", str(names)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--display_names" in err and "class,name" in err
