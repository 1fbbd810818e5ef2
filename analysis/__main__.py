"""Embedding and run report as one self-contained HTML page (CPU only).

$ python -m analysis --store STORE [--run RUN_DIR] --out REPORT_DIR [--query "a violin"]
$ python -m analysis -c report.yaml --probe_train 0        # a YAML of these options, then more

Writes REPORT_DIR/report.html (figures embedded, opens offline) and REPORT_DIR/figures/*.png.
The caps keep a 50,000-row, 500-class store under a few minutes on 2 cores; raise them for
more faithful numbers on a bigger machine (0 lifts a cap; ``--tsne_points 0`` skips t-SNE).
``--run`` is a ``train.py fit``, ``probe`` or ``stack`` run directory. Exit codes: 0
written, 2 bad input (one line naming it, nothing written), 1 an internal error (a section
that failed: the rest is written).
"""

from __future__ import annotations

import logging
import sys
from dataclasses import fields
from pathlib import Path

from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt

from analysis.probes import DEFAULT_CS
from analysis.report import ReportOptions, build_report
from feature_store.cli import cli_parser, error_name, renamed_options
from feature_store.layout import StoreError

PROG = "python -m analysis"
# The dashed spellings from before the CLI took LightningCLI's underscored ones.
OLD_NAMES = ("--map-points", "--tsne-points", "--probe-train", "--probe-val", "--probe-dim",
             "--probe-cs", "--probe-max-iter", "--knn-k", "--cluster-points", "--query-images",
             "--patch-images", "--display-names")  # fmt: skip
RENAMES = {old: "--" + old[2:].replace("-", "_") for old in OLD_NAMES}

_DEFAULT = {f.name: f.default for f in fields(ReportOptions)}  # the CLI's defaults are the API's
FIELD = {"query_images": "n_query_images"}  # option -> ReportOptions field, where they differ
CAPS = ("probe_train", "probe_val", "probe_dim", "cluster_points")  # 0 on the command line: none
# The sizes and caps: (option, type, help).
SIZES = [
    ("map_points", PositiveInt, "rows on the PCA/LDA maps"),
    ("tsne_points", NonNegativeInt, "rows on the t-SNE map (0: no t-SNE)"),
    ("probe_train", NonNegativeInt, "train rows for the probes (0: all)"),
    ("probe_val", NonNegativeInt, "val rows for the probes (0: all)"),
    ("probe_dim", NonNegativeInt, "PCA-project wider probe inputs to this (0: never)"),
    ("probe_max_iter", PositiveInt, "L-BFGS iterations per probe fit"),
    ("knn_k", PositiveInt, "neighbours of the k-NN probe"),
    ("cluster_points", NonNegativeInt, "rows for k-means and DBSCAN (0: all)"),
    ("query_images", NonNegativeInt, "val images shown with their neighbours"),
    ("patch_images", NonNegativeInt, "images in the DINOv2 patch view (0: none)"),
]


def parser():
    """``python -m analysis``'s options: LightningCLI's style (``-c`` YAML, underscores)."""
    p = cli_parser(PROG, __doc__.splitlines()[0])
    p.add_argument("--store", type=str, required=True, help="feature-store directory")
    run_help = "a train.py run directory (metrics.csv, val_predictions.csv)"
    p.add_argument("--run", type=str | None, default=None, help=run_help)
    p.add_argument("--out", type=str, required=True, help="report directory to write")
    query_help = "a free-text caption query; repeat for more (YAML: a list)"
    p.add_argument("--query", action="append", default=[], help=query_help)
    classes_help = (
        "the classes on the 2-D maps (null: the 10 most frequent) and, when given, the only "
        "classes image-retrieval queries come from: a count (>= 1), comma-separated names "
        "(cat,dog), or a list for names with commas or of digits only: --classes "
        '\'["a,b", "001"]\', or the option repeated (--classes a,b --classes 001)'
    )
    p.add_argument("--classes", type=int | list[str] | str | None, default=None, help=classes_help)
    names_help = "CSV class,name: names to show and find in captions instead of the store's"
    p.add_argument("--display_names", type=str | None, default=None, help=names_help)
    cs_help = "C values of the logistic-regression sweep, e.g. [0.01,0.1,1]"
    p.add_argument("--probe_cs", type=list[PositiveFloat], default=list(DEFAULT_CS), help=cs_help)
    for name, kind, text in SIZES:
        p.add_argument(f"--{name}", type=kind, default=_DEFAULT[FIELD.get(name, name)], help=text)
    return p


def _compat(argv: list[str]) -> list[str]:
    """Old dashed names still work (with a note); ``--probe_cs 0.01,0.1`` as a list;
    ``--classes`` given more than once collects its values as a list of names (jsonargparse
    would keep the last one), each taken whole."""
    argv = renamed_options(argv, RENAMES, PROG)
    if sum(a == "--classes" or a.startswith("--classes=") for a in argv) > 1:
        argv = [("--classes+" + a[len("--classes") :]) if a.split("=")[0] == "--classes" else a
                for a in argv]  # fmt: skip
    for i, arg in enumerate(argv[:-1]):
        if arg == "--probe_cs" and not argv[i + 1].lstrip().startswith("["):
            argv[i + 1] = f"[{argv[i + 1]}]"
    return argv


def parse_args(argv: list[str]) -> ReportOptions:
    p = parser()
    a = p.parse_args(_compat(list(argv)))
    for name in ("store", "out"):  # Path("") would be the current directory
        if not a[name].strip():
            p.error(f"--{name} is empty; give a directory")
    sizes = {FIELD.get(name, name): a[name] for name, _, _ in SIZES}
    sizes.update({k: sizes[k] or None for k in CAPS})  # ReportOptions: None = no cap
    return ReportOptions(
        store=Path(a.store),
        out=Path(a.out),
        run=Path(a.run) if a.run else None,
        classes=a.classes,
        display_names=Path(a.display_names) if a.display_names else None,
        probe_cs=tuple(a.probe_cs),
        queries=a.query,
        **sizes,
    )


def _bad_input(message: str) -> int:
    print(f"{error_name(PROG)}: error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    if opts.out.exists() and not opts.out.is_dir():
        return _bad_input(f"--out {opts.out} is a file; give a directory for the report "
                          "(report.html and figures/ go into it)")  # fmt: skip
    store = opts.store.resolve()
    in_store = opts.out.resolve() == store or store in opts.out.resolve().parents
    if in_store and (store / "manifest.json").is_file():
        return _bad_input(f"--out {opts.out} is inside the store {opts.store}, which data_prep "
                          "writes and nothing else may; give a directory outside it, e.g. "
                          "--out report/")  # fmt: skip
    try:
        result = build_report(opts)
    except (StoreError, ValueError) as err:  # bad store or --classes: the message names the fix
        return _bad_input(str(err))
    except OSError as err:  # an unwritable --out
        return _bad_input(f"cannot write the report to {opts.out} ({err}); choose a writable "
                          "--out directory")  # fmt: skip
    notes = result.report.notes
    print(f"wrote {result.page} ({len(result.report.figures)} figures, {len(notes)} notes)")
    if result.failed:  # a bug, not the input: its traceback is logged above
        print(f"{error_name(PROG)}: error: sections {', '.join(result.failed)} failed (an "
              f"internal error, traceback above); the rest of the report is in {result.page}",
              file=sys.stderr)  # fmt: skip
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
