"""Fault probes of ``python -m analysis`` (issue 24): a stack or probe run as ``--run``,
things that are not a run, NaN rows in the store, ``--classes 0``, class names with commas.

$ python -m pytest -q tests/test_faults_report.py

Each either answers right (the report's numbers checked against the run's own files or an
independent computation) or stops with one stderr line, exit 2 and no report directory.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import train
from analysis.__main__ import main, parse_args
from analysis.report import build_report
from feature_store import load_arrays, open_store, write_store
from tests.fixtures_training import fit_cli, small_store
from tests.test_analysis_report import embedded_figures, failed_sections

# Small caps: these tests check what is selected and skipped, not the numbers' precision.
QUICK = ["--tsne_points", "0", "--patch_images", "0", "--map_points", "60", "--probe_cs", "[1]",
         "--probe_max_iter", "20", "--cluster_points", "60"]  # fmt: skip
pytestmark = pytest.mark.slow


def _report(store: Path, out: Path, *extra: str) -> list[str]:
    return ["--store", str(store), "--out", str(out), *QUICK, *extra]


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A store, two fits on it, a ``train.py stack`` of them and a ``train.py probe``."""
    tmp = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    store = small_store(tmp / "store")
    members = []
    for head in ("visual_only", "text_only"):
        cli = fit_cli(store, tmp / head, "--model.head", head, "--trainer.logger", "false")
        members += ["--checkpoint", cli.trainer.checkpoint_callback.best_model_path]
    train.main(["stack", "--data.store", str(store), "--run_dir", str(tmp / "stack"), *members])
    train.main(["probe", "--data.store", str(store), "--run_dir", str(tmp / "probe")])
    mp.undo()
    return tmp


def _table(page: str, caption: str) -> list[list[str]]:
    """The cells of the table with ``caption``, header row first."""
    import re

    body = page.split(f"<caption>{caption}</caption>")[1].split("</table>")[0]
    return [re.findall(r"<t[hd][^>]*>([^<]*)</t[hd]>", row) for row in body.split("</tr>")[:-1]]


def _val_accuracy(predictions: Path) -> float:
    with predictions.open(newline="") as f:
        rows = list(csv.DictReader(f))
    return float(np.mean([r["label"] == r["pred"] for r in rows]))


def test_stack_run_reports_its_members_and_predictions(runs, capsys):
    out = runs / "report_stack"
    assert main(_report(runs / "store", out, "--run", str(runs / "stack"))) == 0
    assert "Traceback" not in capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert not failed_sections(page)
    summary = json.loads((runs / "stack" / "stack.json").read_text())
    table = _table(page, "train.py stack: the stack and each member alone")
    assert table[0][1] == f"top-1 on {summary['rows_fitted']} val rows"
    assert float(table[1][1]) == pytest.approx(summary["acc_top1_cross_fitted"], abs=1e-4)
    for row, acc, weight in zip(table[2:], summary["member_acc_top1"], summary["mean_weights"],
                                strict=True):  # fmt: skip
        assert float(row[1]) == pytest.approx(acc, abs=1e-4)
        assert float(row[2]) == pytest.approx(weight, abs=1e-4)
    assert [r[0].split()[0] for r in table[2:]] == ["visual_only", "text_only"]
    val_acc = _val_accuracy(runs / "stack" / "val_predictions.csv")
    assert f"Val top-1 from val_predictions.csv: {val_acc:.4f}" in page
    assert {"per_class_worst", "confusion_pairs"} <= set(embedded_figures(page))


def test_probe_run_reports_its_sweep(runs):
    res = build_report(
        parse_args(_report(runs / "store", runs / "rp", "--run", str(runs / "probe")))
    )
    page = res.page.read_text()
    assert not failed_sections(page)
    probe = json.loads((runs / "probe" / "probe.json").read_text())
    table = _table(page, "train.py probe: logistic regression per feature set, C on val")
    assert [r[0] for r in table[1:]] == [
        f"{v} (best)" if v == probe["best"] else v for v in probe["results"]
    ]
    for row, result in zip(table[1:], probe["results"].values(), strict=True):
        assert float(row[2]) == pytest.approx(result["val_acc_top1"], abs=1e-4)
    assert res.numbers["run"]["val_acc"] == _val_accuracy(runs / "probe" / "val_predictions.csv")


@pytest.mark.parametrize(
    "what, expected",
    [
        ("runs root", r"holds \d run directories .*give one of them"),
        ("checkpoint", r"is a file; .*its run is probably --run .*visual_only"),
        ("cv directory", r"is a train\.py cv directory.*fold_0"),
        ("empty directory", r"is not a run directory .*stack\.json"),
        ("missing", r"does not exist; give a run directory"),
    ],
)
def test_a_run_that_is_not_a_run_is_one_line(runs, tmp_path, capsys, what, expected):
    import re

    run = {
        "runs root": runs,
        "checkpoint": runs / "visual_only" / "checkpoints" / "best.ckpt",
        "cv directory": tmp_path / "cv5",
        "empty directory": tmp_path / "empty",
        "missing": tmp_path / "nope",
    }[what]
    if what == "cv directory":
        (run / "fold_0").mkdir(parents=True)
        (run / "cv.json").write_text("{}")
    if what == "empty directory":
        run.mkdir()
    capsys.readouterr()
    assert main(_report(runs / "store", tmp_path / "out", "--run", str(run))) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"analysis: error: --run {run} ") and re.search(expected, line), line
    assert not (tmp_path / "out").exists()


def _rewrite(store: Path, dst: Path, fn) -> Path:
    """A copy of ``store`` with each split's columns passed through ``fn(split, cols)``."""
    info = open_store(store)
    splits = {}
    for name in info.splits:
        a = load_arrays(store, name)
        cols = {"id": a.ids, "label": a.labels, "path": a.paths, "caption": a.captions,
                "image_emb": a.image_emb.copy(), "text_emb": a.text_emb.copy()}  # fmt: skip
        splits[name] = fn(name, cols)
    write_store(dst, splits=splits, class_names=info.class_names)
    return dst


BAD = {"train": [3, 17], "val": [5]}  # rows given a NaN (train 3, val 5) or an inf (train 17)


def test_nan_rows_are_left_out_counted_and_the_rest_is_right(runs, tmp_path, capsys):
    def poison(split, cols):
        if split in BAD:
            cols["image_emb"][BAD[split][0], 2] = np.nan
            if len(BAD[split]) > 1:
                cols["text_emb"][BAD[split][1], 0] = np.inf
        return cols

    def drop(split, cols):
        keep = [i for i in range(len(cols["id"])) if i not in BAD.get(split, [])]
        return {
            k: [v[i] for i in keep] if isinstance(v, list) else v[keep] for k, v in cols.items()
        }

    nan_store = _rewrite(runs / "store", tmp_path / "nan", poison)
    clean = _rewrite(runs / "store", tmp_path / "clean", drop)
    argv = _report(nan_store, tmp_path / "o", "--run", str(runs / "visual_only"))
    assert main(argv) == 0
    assert "Traceback" not in capsys.readouterr().err
    res = build_report(parse_args(argv))
    assert not failed_sections(res.page.read_text()) and not res.failed
    notes = " ".join(res.report.notes)
    assert "train: 2 of 120 rows have NaN or infinite embeddings" in notes
    assert "val: 1 of 40 rows have NaN or infinite embeddings" in notes
    assert f"This run was made on the store {runs / 'store'}, not on --store {nan_store}" in notes
    assert res.numbers["probes"]  # the probes ran, on the finite rows only
    ref = build_report(parse_args(_report(clean, tmp_path / "o2")))
    assert res.numbers["probes"] == ref.numbers["probes"]
    assert res.numbers["clustering"].keys() == ref.numbers["clustering"].keys()


@pytest.mark.parametrize(
    "value, expected",
    [("0", "count of at least 1"), ("-3", "count of at least 1"), ("[]", "names no class"),
     ("", "names no class"), ("[001, 2]", "not a list of names; quote each name")],
)  # fmt: skip
def test_classes_that_select_nothing_are_refused(runs, tmp_path, capsys, value, expected):
    assert main(_report(runs / "store", tmp_path / "o", f"--classes={value}")) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("analysis: error: --classes ") and expected in line
    assert value.strip("[]") in line
    assert not (tmp_path / "o").exists()


def test_class_names_with_commas_or_digits_can_be_selected(runs, tmp_path, capsys):
    names = ["a,b", "a", "b", "001", "class 4"]
    store = tmp_path / "s"
    shutil.copytree(runs / "store", store)
    manifest = json.loads((store / "manifest.json").read_text())
    info = open_store(runs / "store")
    splits = {n: load_arrays(runs / "store", n) for n in info.splits}
    shutil.rmtree(store)
    write_store(store, class_names=names, extra_manifest={"models": manifest.get("models", {})},
                splits={n: {"id": a.ids, "label": a.labels, "caption": a.captions,
                            "image_emb": a.image_emb, "text_emb": a.text_emb}
                        for n, a in splits.items()})  # fmt: skip

    def queried(*classes: str) -> list[int]:
        opts = parse_args(_report(store, tmp_path / "o", "--query_images", "5", *classes))
        return sorted(set(build_report(opts).numbers["retrieval"]))

    assert queried("--classes", '["a,b", "001"]') == [0, 3]  # a list: each name whole
    assert queried("--classes", "a,b", "--classes", "001") == [0, 3]  # repeated: the same
    assert queried("--classes", "a,b") == [0]  # a string that is a class name is that class
    assert queried("--classes", "a, b") == [1, 2]  # otherwise: comma-separated names
    assert queried("--classes", "class 4,a") == [1, 4]
    config = tmp_path / "report.yaml"
    config.write_text('classes: ["a,b", "001"]\n')  # the list in a -c YAML
    assert parse_args(["-c", str(config), "--store", "s", "--out", "o"]).classes == ["a,b", "001"]
    assert main(_report(store, tmp_path / "x", "--classes", "001")) == 0  # a count: 1 class
    assert main(_report(store, tmp_path / "x", "--classes", "[a, zebra]")) == 2
    assert "['zebra']" in _one_line(capsys.readouterr().err)


def test_a_failed_section_keeps_the_report_and_exits_1(runs, tmp_path, monkeypatch, capsys):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a section")

    monkeypatch.setattr("analysis.report.add_captions", broken)
    assert main(_report(runs / "store", tmp_path / "o")) == 1
    err = capsys.readouterr().err
    assert "analysis: error: sections captions failed" in err
    page = (tmp_path / "o" / "report.html").read_text()
    assert failed_sections(page) == ["captions (failed)"] and "map_image" in embedded_figures(page)


def test_torn_rows_of_a_run_are_left_out_and_counted(runs, tmp_path, capsys):
    from tests.fixtures_analysis import write_fit_config, write_metrics, write_predictions

    run = tmp_path / "run"
    write_metrics(run, steps=8)
    write_fit_config(run)
    _, labels, preds = write_predictions(run, runs / "store")
    whole = (run / "metrics.csv").read_text()
    with (run / "metrics.csv").open("a") as f:  # a full disk: an lr under val/acc_top1, cut
        f.write("2,,,0.001,8,garbage\n2,,,9")
    with (run / "val_predictions.csv").open("a") as f:
        f.write("val_x,3,not-a-class,0.5\nval_y,1")
    res = build_report(parse_args(_report(runs / "store", tmp_path / "o", "--run", str(run))))
    assert not res.failed and not failed_sections(res.page.read_text())
    notes = " ".join(res.report.notes)
    lines = len(whole.splitlines())
    assert f"2 torn rows left out (lines [{lines + 1}, {lines + 2}])" in notes
    assert "2 rows are not id,label,pred,confidence numbers" in notes
    assert res.numbers["run"]["val_acc"] == pytest.approx(float((labels == preds).mean()))
    best = res.numbers["run"]["summary"]["best"]
    assert best["epoch"] == 1 and best["epochs"] == 2  # the torn epoch-2 rows are not counted


def test_out_inside_the_store_or_empty_is_refused(runs, tmp_path, capsys, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(runs / "store", store)
    before = sorted(p.name for p in store.iterdir())
    for out in (store, store / "report", tmp_path / "." / "store" / ".." / "store" / "r"):
        assert main(_report(store, out)) == 2
        assert "is inside the store" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in store.iterdir()) == before
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["--store", str(store), "--out", ""])
    assert stop.value.code == 2 and "--out is empty" in _one_line(capsys.readouterr().err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store"]


def test_display_names_that_are_latin1_or_a_directory(runs, tmp_path, capsys):
    names = tmp_path / "names.csv"
    names.write_bytes("class,name\nclass_000,café\n".encode("latin-1"))
    for given, expected in ((names, "is not UTF-8 text: byte 0xe9 at line 2"),
                            (tmp_path, "is a directory; give a class,name CSV")):  # fmt: skip
        assert main(_report(runs / "store", tmp_path / "o", "--display_names", str(given))) == 2
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"analysis: error: --display_names {given} ") and expected in line
    assert not (tmp_path / "o").exists()


def test_a_map_of_too_few_points_is_a_note(runs, tmp_path):
    res = build_report(parse_args(_report(runs / "store", tmp_path / "o", "--map_points", "2")))
    assert not res.failed
    assert any("--map_points 2): no maps" in n for n in res.report.notes)


def test_a_cv_stack_reports_its_out_of_fold_rows(runs, tmp_path):
    """A ``stack --cv`` run writes oof_predictions.csv over train+val instead of val's."""
    run = tmp_path / "stack_cv"
    shutil.copytree(runs / "stack", run)
    (run / "val_predictions.csv").unlink()
    rng = np.random.default_rng(0)
    rows = []
    for split in ("train", "val"):
        a = load_arrays(runs / "store", split)
        preds = np.where(rng.random(len(a)) < 0.3, (a.labels + 1) % 5, a.labels)
        rows += [(i, y, p, 0.5) for i, y, p in zip(a.ids, a.labels, preds, strict=True)]
    with (run / "oof_predictions.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("id", "label", "pred", "confidence"), *rows])
    res = build_report(parse_args(_report(runs / "store", tmp_path / "o", "--run", str(run))))
    assert not res.failed
    acc = np.mean([y == p for _, y, p, _ in rows])
    page = res.page.read_text()
    assert f"Out-of-fold top-1 from oof_predictions.csv: {acc:.4f} over {len(rows)} rows" in page
    assert not any("not found in the store" in n for n in res.report.notes)
    assert "worst_val" in embedded_figures(page)
