"""Accuracy benchmark: every head's default config against the tuned linear probe.

$ python bench/bench_accuracy.py                           # all stores and configs, ~1 h (5-fold cv)
$ python bench/bench_accuracy.py --stores gauss-mix --configs visual_only,concat

For each store of bench/accuracy_stores.py (built on first use), fits the linear probe on
image, text and concatenated embeddings (C swept on val), then every config through the
real entry point (``python train.py fit --config configs/X.yaml``), predicts the test split
from its best checkpoint and prints test top-1 overall and split by caption kind
(informative / neutral / misleading / noise rows), side by side in one run; then the
stacks of ``python train.py stack`` fitted on val, and ``python train.py cv`` of linear,
visual_only and text_only with their out-of-fold stack (``--cv_folds 0`` skips those).
``--json`` writes every figure for bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from accuracy_stores import STORES, build_store  # noqa: E402

from feature_store import load_arrays, open_store  # noqa: E402
from fusion.probe import fit_probe  # noqa: E402

CONFIGS = ("linear", "visual_only", "text_only", "concat", "gated", "dual_logit_l0.1", "sets_weighted")
# the report's Table 1 heads not in CONFIGS: --configs dual_logit_l0.3,dual_logit_softmax
KIND_ORDER = ("informative", "neutral", "misleading", "noise")
# What every fit and CV fold of this bench passes besides its config.
QUIET = [
    "--trainer.logger", "false",
    "--trainer.enable_progress_bar", "false",
    "--trainer.enable_model_summary", "false",
]  # fmt: skip


def load(store: Path):
    """train/val/test arrays, test labels and the caption kind of every test row."""
    meta = json.loads((store / "bench.json").read_text())
    splits = {s: load_arrays(store, s) for s in ("train", "val", "test")}
    test = splits["test"]
    labels = np.array([meta["test_labels"][i] for i in test.ids])
    kinds = np.array([meta["kinds"][i] for i in test.ids])
    return splits, labels, kinds


def scores(probs: np.ndarray, labels: np.ndarray, kinds: np.ndarray) -> dict[str, float]:
    hit = probs.argmax(1) == labels
    out = {"all": float(hit.mean())}
    for kind in KIND_ORDER:
        if (kinds == kind).any():
            out[kind] = float(hit[kinds == kind].mean())
    return out


def probe_scores(splits, labels, kinds) -> dict[str, dict[str, float]]:
    tr, va, te = splits["train"], splits["val"], splits["test"]
    views = {
        "image": lambda a: a.image_emb,
        "text": lambda a: a.text_emb,
        "concat": lambda a: np.concatenate([a.image_emb, a.text_emb], 1),
    }
    out = {}
    for name, view in views.items():
        t0 = time.perf_counter()
        probe = fit_probe(view(tr), tr.labels, view(va), va.labels, max_iter=300)
        out[f"probe:{name}"] = {
            **scores(probe.predict_proba(view(te)), labels, kinds),
            "val": probe.val_acc,
            "seconds": time.perf_counter() - t0,
        }
    return out


def settled(series: np.ndarray, band: float = 0.2) -> float:
    """The share of the points after which ``series`` stays within ``band`` of its total
    move from its final value."""
    move = abs(series[-1] - series[0])
    outside = np.nonzero(np.abs(series - series[-1]) > band * max(move, 1e-3))[0]
    return float((outside[-1] + 1) / len(series)) if len(outside) else 0.0


def gate_settled(gates: Path, band: float = 0.2) -> float:
    """The share of the steps after which the gate of every val row (``GateRecorder``)
    stays within ``band`` of its total move: mean |g_t - g_final| over the rows against its
    value before the first step."""
    with np.load(gates) as z:
        steps, g = z["steps"], z["gates"]
    distance = np.abs(g - g[-1]).mean(axis=1)
    outside = np.nonzero(distance > band * max(distance[0], 1e-3))[0]
    return float(steps[outside[-1] + 1] / steps[-1]) if len(outside) else 0.0


def settle_fractions(run: Path, band: float = 0.2) -> dict[str, float]:
    """When the fusion weights reach their final regime, as a share of the steps (see
    :func:`settled`). ``settled``: alpha of a dual-logit head; for a gated head the gate of
    every val row (:func:`gate_settled`; its batch mean moves with each batch's mix of
    captions and says little). ``settled_share``, dual-logit heads: ``alpha / (alpha +
    beta)`` over a moving average of 2% of the steps; the penalty form's alpha + beta is
    also a temperature on the logits (it overshoots to 1.5-2.4 early, then sinks as the
    branch logits grow), and the share is the weighting itself. Empty for a run without
    fusion weights.
    """
    import torch

    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return {}
    from fusion.module import answering_history

    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    if not checkpoint.get("alpha_beta_history"):
        return {}
    selected = checkpoint["state_dict"].get("head.selected")  # a sweep's answering member
    history = answering_history(
        checkpoint["alpha_beta_history"],
        checkpoint.get("member_weights_history", []),
        int(selected) if selected is not None else 0,
    )
    rows = np.array([row[1:3] for row in history], dtype=float)
    share = rows[:, 0] / np.where(np.abs(rows.sum(1)) > 1e-6, rows.sum(1), 1.0)
    window = max(1, len(share) // 50)
    share = np.convolve(share, np.ones(window) / window, mode="valid")
    gates = run / "gates.npz"
    if gates.is_file():  # a gate: its rows, not its batch mean
        return {"settled": gate_settled(gates, band)}
    return {"settled": settled(rows[:, 0], band), "settled_share": settled(share, band)}


def head_scores(store: Path, config: str, runs: Path, labels, kinds, extra: list[str]):
    from fusion.cli import main as cli_main
    from fusion.predict import predict_probs

    t0 = time.perf_counter()
    cli = cli_main(
        [
            "fit",
            "--config", str(HERE.parent / "configs" / f"{config}.yaml"),
            "--data.store", str(store),
            "--run_dir", str(runs / store.name / config / time.strftime("%Y%m%d-%H%M%S")),
            *QUIET,
            # the per-row gate of a gated head after every validation (a no-op otherwise)
            "--trainer.callbacks+=gate_recorder.GateRecorder",
            *extra,
        ]
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    ckpt = cli.trainer.checkpoint_callback
    _, probs = predict_probs([ckpt.best_model_path], store, "test")
    return {
        **scores(probs, labels, kinds),
        "checkpoint": ckpt.best_model_path,
        "val": float(ckpt.best_model_score),
        "steps": int(cli.trainer.global_step),
        **settle_fractions(Path(cli.trainer.default_root_dir)),
        "seconds": seconds,
    }


STACKS = {
    "stack": ("visual_only", "text_only"),
    # With the linear head as a third member the stacker can pick, per store, whichever
    # image head generalises (the linear one where rows per class are few).
    "stack3": ("linear", "visual_only", "text_only"),
}


def fitted_stacks(prefix: str, fit_lp, fit_labels, test_lp, labels, kinds) -> dict:
    """Both stacking methods fitted on labelled rows the members did not train on (val, or
    out of fold): test scores, and top-1 on the fitted rows cross-fitted as ``val``."""
    from fusion.stacker import Stacker, cross_fit

    out = {}
    for method in ("weights", "logistic"):
        t0 = time.perf_counter()
        crossed = cross_fit(fit_lp, fit_labels, method=method)
        stacker = Stacker(len(fit_lp), method).fit(fit_lp, fit_labels)
        out[f"{prefix}:{method}"] = {
            **scores(stacker.predict_proba(test_lp), labels, kinds),
            "val": float((crossed.argmax(1) == fit_labels).mean()),
            "seconds": time.perf_counter() - t0,
        }
    return out


def stack_scores(store: Path, results: dict, labels, kinds) -> dict[str, dict[str, float]]:
    """Late fusion of separately trained heads (``python train.py stack``)."""
    from fusion.combine import member_rows
    from fusion.ensemble import log_probs

    out = {}
    for name, configs in STACKS.items():
        if not all(c in results for c in configs):
            continue
        members = [results[c]["checkpoint"] for c in configs]
        # What `train.py stack --checkpoint` fits (val) and predicts (the stored test rows).
        rows = member_rows(members, store=str(store), complete=False)
        val_lp, test_lp = log_probs(rows.fit), log_probs(rows.predicted)
        out.update(fitted_stacks(name, val_lp, rows.fit[0].labels, test_lp, labels, kinds))
    return out


def cv_scores(store: Path, runs: Path, labels, kinds, extra: list[str], folds: int) -> dict:
    """``python train.py cv`` of each member of ``cvstack3`` (rows ``cv<K>:X``: the folds'
    test probabilities averaged), then ``python train.py stack --cv`` over them: the stacker
    fitted on every train+val row's out-of-fold probabilities. The ``val`` column of these
    rows is out-of-fold top-1 (cross-fitted for the stacks)."""
    from fusion.combine import member_rows
    from fusion.commands.cv import run_cv
    from fusion.ensemble import log_probs

    configs = STACKS["stack3"]
    dirs = [runs / store.name / f"cv{folds}" / config for config in configs]
    seconds = []
    for config, cv_dir in zip(configs, dirs, strict=True):
        t0 = time.perf_counter()
        run_cv(
            ["--config", str(HERE.parent / "configs" / f"{config}.yaml"),
             "--data.store", str(store), "--data.folds", str(folds), "--cv_dir", str(cv_dir),
             *QUIET, *extra]
        )  # fmt: skip
        seconds.append(time.perf_counter() - t0)
    rows = member_rows(dirs)  # what `train.py stack --cv` fits and scores
    position = {i: n for n, i in enumerate(rows.predicted[0].ids)}
    test_lp = log_probs(rows.predicted)[:, [position[i] for i in load_arrays(store, "test").ids]]
    out = {}
    for config, cv_dir, lp, took in zip(configs, dirs, test_lp, seconds, strict=True):
        out[f"cv{folds}:{config}"] = {
            **scores(np.exp(lp), labels, kinds),
            "val": json.loads((cv_dir / "cv.json").read_text())["oof_acc_top1"],
            "seconds": took,
        }
    fit_lp, fit_labels = log_probs(rows.fit), rows.fit[0].labels
    out.update(fitted_stacks("cvstack3", fit_lp, fit_labels, test_lp, labels, kinds))
    return out


def table(name: str, results: dict[str, dict[str, float]]) -> str:
    kinds = [k for k in KIND_ORDER if any(k in r for r in results.values())]
    cols = ["val", "all", *kinds]
    lines = [f"\n### {name}\n", "| model | " + " | ".join(cols) + " | steps | settled | s |"]
    lines.append("|---" * (len(cols) + 4) + "|")
    for model, r in results.items():
        cells = [f"{r[c]:.3f}" if c in r else "" for c in cols]
        settled = f"{r['settled']:.0%}" if "settled" in r else ""
        if r.get("settled_share") is not None:
            settled += f" / {r['settled_share']:.0%}"
        lines.append(
            f"| {model} | "
            + " | ".join(cells)
            + f" | {r.get('steps', '')} | {settled} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


SINGLE = {"linear": "probe:image", "visual_only": "probe:image", "text_only": "probe:text"}
# The fusion we recommend (`python train.py stack --cv` with its default method over
# `train.py cv` runs of linear + visual_only + text_only), judged against the goals; the
# val-fitted stack of single fits (`stack3:logistic`, no extra fits) is judged beside it.
BEST_FUSION = "cvstack3:logistic"
FUSIONS = (BEST_FUSION, "stack3:logistic")
CV_FOLDS = 5
WEIGHTED = ("dual_logit_l0.1", "dual_logit_softmax", "gated")


def _points(a: float, b: float) -> str:
    return f"{100 * (a - b):+.1f}"


def goals(everything: dict) -> str:
    """The goals of bench/README.md, computed from a ``--json`` file (points of test top-1)."""
    lines = ["| goal | per store (" + ", ".join(everything) + ") | worst |", "|---|---|---|"]

    def row(goal: str, deltas: list[float | None]) -> None:
        have = [d for d in deltas if d is not None]
        cells = ", ".join("n/a" if d is None else f"{100 * d:+.1f}" for d in deltas)
        worst = f"**{100 * min(have):+.1f}**" if have else ""
        lines.append(f"| {goal} | {cells} | {worst} |")

    def delta(store: dict, a: str, b: str, kind: str = "all") -> float | None:
        if a in store and b in store and kind in store[a] and kind in store[b]:
            return store[a][kind] - store[b][kind]
        return None

    for head, probe in SINGLE.items():
        row(f"`{head}` - `{probe}`", [delta(r, head, probe) for r in everything.values()])
    for fusion in FUSIONS:
        row(
            f"`{fusion}` - `probe:concat`",
            [delta(r, fusion, "probe:concat") for r in everything.values()],
        )
    pairs = [(f, "visual_only") for f in FUSIONS] + [(BEST_FUSION, f"cv{CV_FOLDS}:visual_only")]
    for fusion, base in pairs:
        row(
            f"neutral rows: `{fusion}` - `{base}`",
            [delta(r, fusion, base, "neutral") for r in everything.values()],
        )
    row(
        f"noise captions: `{BEST_FUSION}` - `visual_only`",
        [delta(r, BEST_FUSION, "visual_only", "noise") for r in everything.values()],
    )
    informative = []
    for r in everything.values():
        singles = [r[h]["informative"] for h in ("visual_only", "text_only")
                   if h in r and "informative" in r[h]]  # fmt: skip
        has = BEST_FUSION in r and "informative" in r[BEST_FUSION] and singles
        informative.append(r[BEST_FUSION]["informative"] - max(singles) if has else None)
    row(f"informative rows: `{BEST_FUSION}` - the better single modality", informative)
    for head in WEIGHTED:
        first = "gate of every val row" if head == "gated" else "alpha"
        for key, what in (("settled", first), ("settled_share", "alpha share")):
            cells = [
                f"{r[head][key]:.0%}" if head in r and key in r[head] else "n/a"
                for r in everything.values()
            ]
            if any(c != "n/a" for c in cells):
                lines.append(f"| `{head}` {what} settled after | {', '.join(cells)} | |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default=",".join(STORES))
    p.add_argument("--configs", default=None, help=f"comma-separated (default {','.join(CONFIGS)})")
    p.add_argument("--root", default="bench/stores", help="where stores are built and kept")
    p.add_argument("--runs", default="bench/runs", help="run directories of the fits")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    p.add_argument(
        "--reuse",
        default=None,
        help="a --json file of an earlier run: keep its figures, refit only --configs (if "
        "given) and the stacks",
    )
    p.add_argument(
        "--goals", default=None, help="a --json file: print its tables and goals, fit nothing"
    )
    p.add_argument(
        "--cv_folds",
        type=int,
        default=CV_FOLDS,
        help="folds of the `train.py cv` runs behind the cvstack3 rows (0: skip them)",
    )
    p.add_argument("extra", nargs="*", help="overrides for every fit, after --")
    a = p.parse_args()
    if a.goals:
        # The tables and the goals of bench/README.md again, from the figures alone.
        everything = json.loads(Path(a.goals).read_text())
        for name, results in everything.items():
            store = Path(a.root) / name
            if (store / "manifest.json").is_file():
                info, rows = open_store(store), len(load_arrays(store, "train").labels)
                name = f"{name}: {info.num_classes} classes, {rows} train rows"
            print(table(name, results))
        print("\n" + goals(everything))
        return
    import lightning as L

    L.seed_everything(0, verbose=False)
    everything = {}
    for name in a.stores.split(","):
        store = build_store(name, Path(a.root))
        splits, labels, kinds = load(store)
        info = open_store(store)
        if a.reuse:
            previous = json.loads(Path(a.reuse).read_text())[name]
            results = {k: v for k, v in previous.items() if not k.startswith(("stack", "cv"))}
            refit = a.configs.split(",") if a.configs else []
        else:
            results = probe_scores(splits, labels, kinds)
            if (store / "image_means.npy").is_file():
                from feature_store.synthetic import bayes_accuracy

                results["bayes:image"] = {"all": bayes_accuracy(store), "seconds": 0.0}
            refit = (a.configs or ",".join(CONFIGS)).split(",")
        for config in refit:
            results[config] = head_scores(store, config, Path(a.runs), labels, kinds, a.extra)
        results.update(stack_scores(store, results, labels, kinds))
        if a.cv_folds:
            results.update(cv_scores(store, Path(a.runs), labels, kinds, a.extra, a.cv_folds))
        everything[name] = results
        print(
            table(f"{name}: {info.num_classes} classes, {len(splits['train'])} train rows", results)
        )
        if a.json:
            Path(a.json).write_text(json.dumps(everything, indent=2))
    print("\n" + goals(everything))


if __name__ == "__main__":
    main()
