"""Run sections: accuracy and alpha/beta curves, per-class accuracy, confusions, worst images.

$ python -m analysis --store STORE --run runs/dual_logit/RUN --out report

Reads only the run directory's files (:mod:`analysis.run_kind` tells a ``train.py fit``,
``probe`` and ``stack`` run apart): ``metrics.csv`` of a fit (Lightning's CSVLogger: one
row per log call, columns empty where that call did not log them; torn rows left out and
counted), ``probe.json`` or ``stack.json`` for the summary of the other two, and the
per-row predictions (``val_predictions.csv``, or a ``--cv`` stack's
``oof_predictions.csv``: id,label,pred,confidence), joined to the store's rows on ``id``
for captions and thumbnails.
"""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from analysis.run_kind import RunDir
from analysis.run_summary import probe_table, run_store, run_summary, stack_table, summary_table
from analysis.style import MIN_TEXT_PT
from analysis.thumbs import Tile, tile_grid
from fusion.plots import weight_labels


def read_metrics(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", errors="replace") as f:
        return list(csv.DictReader(f))


def _whole(row: dict) -> bool:
    """A row CSVLogger wrote whole: every field present (no extra ones) and a number or empty."""
    if None in row or None in row.values():
        return False
    try:
        [float(v) for v in row.values() if v != ""]
    except ValueError:
        return False
    return True


def whole_rows(rows: list[dict[str, str]]) -> tuple[list[dict[str, str]], list[int]]:
    """(the rows written whole, the file line numbers of torn ones: a disk that filled up
    mid-row leaves fields missing or shifted, e.g. an lr value under val/acc_top1)."""
    torn = [i + 2 for i, r in enumerate(rows) if not _whole(r)]  # line 1 is the header
    return [r for r in rows if _whole(r)], torn


def series(rows: list[dict[str, str]], name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(step, value) where the column ``name`` (or its ``_epoch`` variant) was logged."""
    cols = rows[0].keys() if rows else []
    col = next((c for c in (name, f"{name}_epoch") if c in cols), None)
    if col is None:
        return None
    xs, ys = [], []
    for i, r in enumerate(rows):
        if r.get(col, "") not in ("", None):
            step = r.get("step") or ""
            xs.append(float(step) if step else float(i))
            ys.append(float(r[col]))
    return (np.array(xs), np.array(ys)) if ys else None


def _plot_curves(sec, rows, head: str | None = None) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
    drawn = 0
    for ax, metric in zip(axes, ("acc_top1", "loss"), strict=True):
        for stage in ("train", "val"):
            s = series(rows, f"{stage}/{metric}")
            if s is not None:
                ax.plot(*s, marker="o" if len(s[0]) < 30 else None, label=f"{stage}/{metric}")
                drawn += 1
        ax.set_xlabel("step")
        ax.set_title(metric)
        if ax.lines:
            ax.legend()
    if drawn:
        sec.figure("curves", fig, "Training and val accuracy (top-1) and loss")
    else:
        plt.close(fig)
        sec.note("metrics.csv has no train/val accuracy or loss columns.")
    alpha, beta = series(rows, "fusion/alpha"), series(rows, "fusion/beta")
    if alpha is None and beta is None:
        sec.note("No alpha/beta history in metrics.csv (not a dual-logit run): no alpha/beta plot.")
        return
    first, second, what = weight_labels(head)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    for name, s in ((first, alpha), (second, beta)):
        if s is not None:
            ax.plot(*s, label=name)
    ax.set_xlabel("step")
    ax.axhline(0, color="#999", lw=0.5)
    ax.legend()
    sec.figure("alpha_beta", fig, what[0].upper() + what[1:])


def confusion_pairs(labels: np.ndarray, preds: np.ndarray, top: int) -> list[tuple[int, int, int]]:
    """The ``top`` most frequent (true, predicted, count) mistakes, largest first."""
    wrong = labels != preds
    pairs, counts = np.unique(
        np.stack([labels[wrong], preds[wrong]], 1), axis=0, return_counts=True
    )
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -counts))[:top] if len(counts) else []
    return [(int(pairs[i, 0]), int(pairs[i, 1]), int(counts[i])) for i in order]


def per_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Accuracy per class (NaN for classes absent from val)."""
    total = np.bincount(labels, minlength=num_classes).astype(float)
    right = np.bincount(labels[labels == preds], minlength=num_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, right / total, np.nan)


ZERO_STUB = 0.012  # bar length drawn for a class at 0, so it shows as a dark stub


def per_class_figure(class_names: list[str], acc: np.ndarray):
    """Horizontal accuracy bars, first class at the top, each labelled with its value; a
    class at 0 gets a short dark stub, since its bar has no length to see."""
    acc = np.asarray(acc, dtype=float)
    zero = acc == 0
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(acc) + 1))
    y = np.arange(len(acc))[::-1]
    bars = ax.barh(
        y, np.where(zero, ZERO_STUB, acc), color=np.where(zero, "#5c1210", "#c0504d").tolist()
    )
    ax.set_yticks(y, class_names)
    ax.bar_label(bars, labels=[f"{v:.2f}" for v in acc], padding=4, fontsize=MIN_TEXT_PT)
    ax.set_xlim(0, 1.1)  # room for the label of a bar at 1.0
    ax.set_xticks(np.linspace(0, 1, 6))
    ax.set_xlabel("val accuracy")
    return fig


def _prediction_row(r: dict) -> tuple[str, int, int, float] | None:
    """(id, label, pred, confidence) of a row, None for a torn one."""
    try:
        return r["id"], int(r["label"]), int(r["pred"]), float(r.get("confidence") or "nan")
    except (TypeError, ValueError):
        return None


def _predictions(sec, path: Path, names: list[str]):
    with path.open(newline="", errors="replace") as f:
        rows = list(csv.DictReader(f))
    need = {"id", "label", "pred"}
    if not rows or not need <= rows[0].keys():
        sec.note(f"{path} is empty or lacks columns {sorted(need)}; skipped.")
        return None
    parsed = [_prediction_row(r) for r in rows]
    torn = [i + 2 for i, p in enumerate(parsed) if p is None]  # line 1 is the header
    if torn:
        sec.note(f"{path}: {len(torn)} rows are not id,label,pred,confidence numbers (lines "
                 f"{torn[:5]}); left out.")  # fmt: skip
    parsed = [p for p in parsed if p is not None]
    labels = np.array([p[1] for p in parsed], dtype=np.int64)
    preds = np.array([p[2] for p in parsed], dtype=np.int64)
    conf = np.array([p[3] for p in parsed], dtype=float)
    bad = (labels < 0) | (labels >= len(names)) | (preds < 0) | (preds >= len(names))
    if bad.any():
        sec.note(f"{int(bad.sum())} rows of {path.name} have labels outside the store's classes.")
    keep = ~bad
    ids = [p[0] for p, k in zip(parsed, keep, strict=True) if k]
    return ids, labels[keep], preds[keep], conf[keep]


def _summary(sec, views, run: RunDir, rows) -> dict:
    """The section's first table, for the kind of run; {"summary": ...} for a fit."""
    if run.kind == "stack":
        table = stack_table(run.path)
        if table is None:
            sec.note(f"{run.path / 'stack.json'} is unreadable or incomplete: no stack summary.")
        else:
            sec.table(*table, "train.py stack: the stack and each member alone")
        return {"stack": table}
    if run.kind == "probe":
        table = probe_table(run.path)
        if table is None:
            sec.note(f"{run.path / 'probe.json'} is unreadable or incomplete: no probe summary.")
        else:
            sec.table(*table, "train.py probe: logistic regression per feature set, C on val")
        return {"probe": table}
    summary = run_summary(run.path, views.info.root, rows)
    header, row = summary_table(summary, views.info.root)
    sec.table(header, [row], "summary (the best checkpoint's epoch and val accuracy)")
    return {"summary": summary}


def _store_note(sec, views, run: RunDir) -> None:
    made_on = run_store(run.path, run.kind)
    if made_on and Path(made_on).resolve() != Path(views.info.root).resolve():
        sec.note(
            f"This run was made on the store {made_on}, not on --store {views.info.root}: "
            "predictions are matched to this store's rows by id."
        )


def add_run(report, views, run: RunDir, *, worst: int = 20, pairs: int = 15) -> dict:
    """The run section of a ``train.py fit``, ``probe`` or ``stack`` run (:mod:`run_kind`)."""
    titles = {"fit": "Training run", "probe": "Linear-probe run", "stack": "Stack run"}
    sec = report.section(titles[run.kind])
    metrics = run.path / "metrics.csv"
    rows = read_metrics(metrics) if run.kind == "fit" and metrics.is_file() else []
    rows, torn = whole_rows(rows)
    out = _summary(sec, views, run, rows)
    if torn:
        sec.note(f"{metrics}: {len(torn)} torn rows left out (lines {torn[:5]}): fields missing "
                 "or not numbers, as a full disk or a killed run leaves them.")  # fmt: skip
    _store_note(sec, views, run)
    if run.kind == "fit" and rows:
        _plot_curves(sec, rows, out["summary"]["head"])
    elif run.kind == "fit":
        sec.note(f"{metrics} is missing or empty: no curves.")
    preds_file = run.predictions
    if not preds_file.is_file():
        sec.note(f"{preds_file} is missing: no per-class accuracy, confusions or worst images.")
        return out
    names = views.class_names
    got = _predictions(sec, preds_file, names)
    if got is None or len(got[0]) == 0:
        return out
    ids, labels, preds, conf = got
    acc = per_class_accuracy(labels, preds, len(names))
    out["val_acc"] = float((labels == preds).mean())
    out["per_class"] = acc
    present = np.flatnonzero(~np.isnan(acc))
    worst_cls = present[np.lexsort((present, acc[present]))][:worst]
    which = "Out-of-fold" if preds_file.name.startswith("oof") else "Val"
    sec.text(f"{which} top-1 from {preds_file.name}: {out['val_acc']:.4f} over {len(ids)} rows.")
    fig = per_class_figure([names[c] for c in worst_cls], acc[worst_cls])
    sec.figure(
        "per_class_worst",
        fig,
        f"The {len(worst_cls)} classes with the lowest accuracy in {preds_file.name}, worst at "
        "the top (a class at 0 shows as a short dark stub)",
    )
    top_pairs = confusion_pairs(labels, preds, pairs)
    out["pairs"] = top_pairs
    if top_pairs:
        _confusion_figure(sec, top_pairs, labels, preds, names)
        _worst_images(sec, views, ids, labels, preds, conf)
    else:
        sec.note(f"No mistakes in {preds_file.name}: no confusion pairs or worst images.")
    return out


def _confusion_figure(sec, top_pairs, labels, preds, names) -> None:
    classes = list(dict.fromkeys(c for t, p, _ in top_pairs for c in (t, p)))[:24]
    pos = {c: i for i, c in enumerate(classes)}
    mat = np.zeros((len(classes), len(classes)), dtype=int)
    for t, p in zip(labels, preds, strict=True):
        if t in pos and p in pos:
            mat[pos[t], pos[p]] += 1
    np.fill_diagonal(mat, 0)  # the diagonal (correct) would drown the mistakes' colour scale
    size = max(4.0, 0.38 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(mat, cmap="Reds")
    ticks = [names[c] for c in classes]
    ax.set_xticks(range(len(classes)), ticks, rotation=90, fontsize=MIN_TEXT_PT)
    ax.set_yticks(range(len(classes)), ticks, fontsize=MIN_TEXT_PT)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.colorbar(im, ax=ax, shrink=0.7)
    sec.figure("confusion_pairs", fig, "Most confused class pairs (counts; diagonal blanked)")
    sec.table(
        ["true", "predicted", "count"],
        [[names[t], names[p], n] for t, p, n in top_pairs],
        "most frequent mistakes",
    )


def _worst_images(sec, views, ids, labels, preds, conf, n: int = 8) -> None:
    wrong = np.flatnonzero(labels != preds)
    order = wrong[np.argsort(-np.nan_to_num(conf[wrong], nan=0.0), kind="stable")][:n]
    # val first; train too, for a --cv stack's out-of-fold rows
    splits = [s for s in (views.val, views.train) if s is not None]
    lookup = {i: (s, k) for s in reversed(splits) for k, i in enumerate(s.ids)}
    names, tiles, unmatched = views.class_names, [], 0
    for i in order:
        split, k = lookup.get(ids[i], (None, None))
        unmatched += k is None
        path = split.paths[k] if split is not None else ""
        caption = split.captions[k] if split is not None else "(id not in the store)"
        text = f"true {names[labels[i]]} / pred {names[preds[i]]} ({conf[i]:.2f}): {caption}"
        tiles.append(Tile(path, text, "red"))
    rows = [tiles[j : j + 4] for j in range(0, len(tiles), 4)]
    fig, _ = tile_grid(rows, views.info.root)
    sec.figure("worst_val", fig, "Most confident mistakes on val, with their captions")
    if unmatched:
        sec.note(f"{unmatched} worst-image ids were not found in the store's val or train split.")
