"""Build the whole report: store sections, then run sections, into one HTML page.

$ python -m analysis --store STORE [--run RUN_DIR] --out REPORT_DIR

``build_report(ReportOptions(...))`` is what the CLI calls; tests call it directly.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.captions import add_captions
from analysis.clustering import add_clustering
from analysis.data import class_subset, load_views
from analysis.html import Report
from analysis.patches import add_patch_view
from analysis.probes import DEFAULT_CS, DEFAULT_MAX_ITER, add_probes
from analysis.projections import add_projections
from analysis.retrieval import add_image_retrieval, add_text_search
from analysis.run_kind import identify_run
from analysis.run_report import add_run
from analysis.text_encoder import model_ref

log = logging.getLogger("analysis")


@dataclass
class ReportOptions:
    store: Path
    out: Path
    run: Path | None = None
    # A count (10), comma-separated names or a list of names (analysis.data.class_subset):
    # the classes on the 2-D maps (default: the 10 most frequent) and, when given, the only
    # classes retrieval queries are drawn from.
    classes: int | str | list[str] | None = None
    display_names: Path | None = None  # class,name CSV: names to show instead of the store's
    map_points: int = 2000
    tsne_points: int = 1000
    probe_train: int | None = 5000
    probe_val: int | None = 2500
    probe_cs: tuple[float, ...] = DEFAULT_CS
    probe_max_iter: int = DEFAULT_MAX_ITER
    probe_dim: int | None = 256
    knn_k: int = 10
    cluster_points: int | None = 5000
    queries: list[str] = field(default_factory=list)
    n_query_images: int = 4
    patch_images: int = 4


@dataclass
class ReportResult:
    page: Path
    report: Report
    numbers: dict  # the values shown, keyed by section, for tests and benchmarks
    timings: dict[str, float]
    failed: list[str] = field(default_factory=list)  # sections that raised (a bug: exit 1)


def model_label(entry) -> str:
    """A manifest ``models`` entry as one readable cell: its model name or path, else where
    its output came from (``captions from /data/captions.csv`` for ``input.captions_csv``),
    else its plain fields, never a Python dict."""
    ref = model_ref(entry)
    if ref:
        return ref
    if not isinstance(entry, dict):
        return str(entry)
    if entry.get("captions_csv"):
        return f"captions from {entry['captions_csv']}"
    if entry.get("source"):
        return str(entry["source"])
    plain = {k: v for k, v in entry.items() if isinstance(v, str | int | float) and v != ""}
    return ", ".join(f"{k} {v}" for k, v in plain.items() if "sha" not in k) or "?"


def _overview(report: Report, views) -> None:
    info = views.info
    sec = report.section("Store")
    sec.table(
        ["store", "classes", "image dim", "text dim", "emb dtype"],
        [[str(info.root), info.num_classes, info.image_dim, info.text_dim,
          info.manifest.get("emb_dtype", "?")]],
    )  # fmt: skip
    sec.table(["split", "rows"], [[s, info.rows(s)] for s in info.splits])
    models = info.manifest.get("models") or {}
    if models:
        rows = [
            [role, model_label(v)]
            + ([v.get("pooling", ""), v.get("dim", "")] if isinstance(v, dict) else ["", ""])
            for role, v in models.items()
        ]
        sec.table(["role", "model", "pooling", "dim"], rows)
    for note in views.notes:
        sec.note(note)
    if info.num_classes < 2:
        sec.note("The store has a single class: probes and maps that need two are skipped.")


def build_report(opts: ReportOptions) -> ReportResult:
    """Every section in order; one that fails becomes a note, the others still run.

    Raises StoreError for a missing or broken store, RunError (a ValueError) for a ``--run``
    that is not a run directory, and ValueError for ``--classes`` the store does not have
    or a bad ``--display_names`` file: those are the caller's to fix, not a section's to
    skip, and are raised before anything is written.
    """
    t0 = time.perf_counter()
    run = identify_run(opts.run) if opts.run is not None else None  # before the slow load
    views = load_views(opts.store, opts.display_names)  # a bad CSV: ValueError
    timings: dict[str, float] = {"load": time.perf_counter() - t0}
    report = Report(f"Feature-store report: {Path(opts.store).name}")
    _overview(report, views)
    numbers: dict = {}
    labels = views.train.labels if views.train is not None else np.zeros(0, dtype=np.int64)
    classes = class_subset(labels, views.class_names, opts.classes, also=views.info.class_names)
    steps = [
        ("maps", lambda: add_projections(
            report, views, classes=classes, points=opts.map_points,
            tsne_points=opts.tsne_points)),
        ("probes", lambda: add_probes(
            report, views, train_cap=opts.probe_train, val_cap=opts.probe_val,
            cs=opts.probe_cs, max_iter=opts.probe_max_iter, max_dim=opts.probe_dim,
            k=opts.knn_k)),
        ("clustering", lambda: add_clustering(report, views, cap=opts.cluster_points)),
        ("retrieval", lambda: add_image_retrieval(
            report, views, n_queries=opts.n_query_images,
            classes=classes if opts.classes is not None else None)),
        ("text_search", lambda: add_text_search(report, views, queries=opts.queries)),
        ("captions", lambda: add_captions(report, views)),
        ("patches", lambda: add_patch_view(report, views, n_images=opts.patch_images)),
    ]  # fmt: skip
    if run is not None:
        steps.append(("run", lambda: add_run(report, views, run)))
    failed = []
    for name, step in steps:
        t0 = time.perf_counter()
        try:
            numbers[name] = step()
        except Exception as err:  # one broken section must not cost the whole report
            log.error("section %s failed:\n%s", name, traceback.format_exc())
            failed.append(name)
            report.section(f"{name} (failed)").note(f"This section failed: {err!r}")
        timings[name] = time.perf_counter() - t0
        log.info("%s: %.1fs", name, timings[name])
    report.section("Timings").table(
        ["section", "seconds"], [[k, f"{v:.1f}"] for k, v in timings.items()]
    )
    page = report.write(opts.out)
    return ReportResult(page=page, report=report, numbers=numbers, timings=timings, failed=failed)
