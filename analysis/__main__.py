"""Embedding and run report as one self-contained HTML page (CPU only).

$ python -m analysis --store STORE [--run RUN_DIR] --out REPORT_DIR [--query "a violin"]

Writes REPORT_DIR/report.html (figures embedded, opens offline) and REPORT_DIR/figures/*.png.
The caps keep a 50,000-row, 500-class store under a few minutes on 2 cores; raise them for
more faithful numbers on a bigger machine.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from analysis.probes import DEFAULT_CS
from analysis.report import ReportOptions, build_report
from feature_store.layout import StoreError


def _cap(text: str) -> int | None:
    """A row cap; 0 or 'all' means no cap."""
    return None if text in ("0", "all", "none") else int(text)


def parse_args(argv: list[str]) -> ReportOptions:
    p = argparse.ArgumentParser(prog="python -m analysis", description=__doc__.splitlines()[0])
    p.add_argument("--store", type=Path, required=True, help="feature store directory")
    p.add_argument("--run", type=Path, help="training run directory (metrics.csv, ...)")
    p.add_argument("--out", type=Path, required=True, help="report directory to write")
    p.add_argument("--query", action="append", default=[], help="free-text caption query")
    p.add_argument(
        "--classes",
        help="a count or comma-separated names: the classes on the 2-D maps (default: the 10 "
        "most frequent) and, when given, the only classes image-retrieval queries come from "
        "(their neighbours are searched in all classes)",
    )
    p.add_argument(
        "--display-names",
        type=Path,
        help="CSV class,name: names to show and to find in captions instead of the store's "
        "class names (e.g. n01440764,tench)",
    )
    p.add_argument("--map-points", type=int, default=2000, help="rows on the PCA/LDA maps")
    p.add_argument("--tsne-points", type=int, default=1000, help="rows on the t-SNE map")
    p.add_argument("--probe-train", type=_cap, default=5000, help="train rows for probes")
    p.add_argument("--probe-val", type=_cap, default=2500, help="val rows for probes")
    p.add_argument("--probe-dim", type=_cap, default=256, help="PCA past this many dims")
    p.add_argument(
        "--probe-cs",
        type=lambda s: tuple(float(x) for x in s.split(",")),
        default=DEFAULT_CS,
        help="comma-separated C values of the logistic-regression sweep",
    )
    p.add_argument("--probe-max-iter", type=int, default=100)
    p.add_argument("--knn-k", type=int, default=10)
    p.add_argument("--cluster-points", type=_cap, default=5000, help="rows for clustering")
    p.add_argument("--query-images", type=int, default=4, help="image retrieval queries")
    p.add_argument("--patch-images", type=int, default=4, help="images in the patch view")
    a = p.parse_args(argv)
    return ReportOptions(
        store=a.store,
        out=a.out,
        run=a.run,
        classes=a.classes,
        display_names=a.display_names,
        map_points=a.map_points,
        tsne_points=a.tsne_points,
        probe_train=a.probe_train,
        probe_val=a.probe_val,
        probe_cs=a.probe_cs,
        probe_max_iter=a.probe_max_iter,
        probe_dim=a.probe_dim,
        knn_k=a.knn_k,
        cluster_points=a.cluster_points,
        queries=a.query,
        n_query_images=a.query_images,
        patch_images=a.patch_images,
    )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.out.exists() and not opts.out.is_dir():
        print(f"error: --out {opts.out} is a file; give a directory for the report "
              "(report.html and figures/ go into it)", file=sys.stderr)  # fmt: skip
        return 2
    try:
        result = build_report(opts)
    except (StoreError, ValueError) as err:  # bad store or --classes: the message names the fix
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # an unwritable --out
        print(f"error: cannot write the report to {opts.out} ({err}); choose a writable "
              "--out directory", file=sys.stderr)  # fmt: skip
        return 2
    notes = result.report.notes
    print(f"wrote {result.page} ({len(result.report.figures)} figures, {len(notes)} notes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
