"""Accuracy benchmark: every head's default config against the tuned linear probe.

$ python bench/bench_accuracy.py                           # all stores, all configs (~15 min)
$ python bench/bench_accuracy.py --stores gauss-mix --configs visual_only,concat

For each store of bench/accuracy_stores.py (built on first use), fits the linear probe on
image, text and concatenated embeddings (C swept on val), then every config through the
real entry point (``python train.py fit --config configs/X.yaml``), predicts the test split
from its best checkpoint and prints test top-1 overall and split by caption kind
(informative / neutral / misleading / noise rows), side by side in one run. ``--json``
writes every figure for bench/README.md.
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

CONFIGS = ("linear", "visual_only", "text_only", "concat", "gated", "dual_logit_l0.1")
# the report's Table 1 heads not in CONFIGS: --configs dual_logit_l0.3,dual_logit_softmax
KIND_ORDER = ("informative", "neutral", "misleading", "noise")


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


def settle_fraction(run: Path, band: float = 0.2) -> float | None:
    """Share of the steps after which alpha (or the mean gate) stays within ``band`` of its
    total move from the start: when the fusion weights have reached their final regime."""
    import torch

    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    history = torch.load(last, map_location="cpu", weights_only=True).get("alpha_beta_history")
    if not history:
        return None
    alpha = np.array([row[1] for row in history])
    move = abs(alpha[-1] - alpha[0])
    outside = np.nonzero(np.abs(alpha - alpha[-1]) > band * max(move, 1e-3))[0]
    return float((outside[-1] + 1) / len(alpha)) if len(outside) else 0.0


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
            "--trainer.logger", "false",
            "--trainer.enable_progress_bar", "false",
            "--trainer.enable_model_summary", "false",
            *extra,
        ]
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    ckpt = cli.trainer.checkpoint_callback
    settle = settle_fraction(Path(cli.trainer.default_root_dir))
    _, probs = predict_probs([ckpt.best_model_path], store, "test")
    return {
        **scores(probs, labels, kinds),
        "checkpoint": ckpt.best_model_path,
        "val": float(ckpt.best_model_score),
        "steps": int(cli.trainer.global_step),
        **({"settled": settle} if settle is not None else {}),
        "seconds": seconds,
    }


STACKS = {
    "stack": ("visual_only", "text_only"),
    # With the linear head as a third member the stacker can pick, per store, whichever
    # image head generalises (the linear one where rows per class are few).
    "stack3": ("linear", "visual_only", "text_only"),
}


def stack_scores(store: Path, results: dict, labels, kinds) -> dict[str, dict[str, float]]:
    """Late fusion of separately trained heads (``python train.py stack``)."""
    from fusion.stacking import Stacker, cross_fit, member_log_probs

    out = {}
    val_labels = load_arrays(store, "val").labels
    for name, configs in STACKS.items():
        if not all(c in results for c in configs):
            continue
        members = [results[c]["checkpoint"] for c in configs]
        _, val_lp = member_log_probs(members, str(store), "val")
        _, test_lp = member_log_probs(members, str(store), "test")
        for method in ("weights", "logistic"):
            t0 = time.perf_counter()
            crossed = cross_fit(val_lp, val_labels, method=method)
            stacker = Stacker(len(members), method).fit(val_lp, val_labels)
            out[f"{name}:{method}"] = {
                **scores(stacker.predict_proba(test_lp), labels, kinds),
                "val": float((crossed.argmax(1) == val_labels).mean()),
                "seconds": time.perf_counter() - t0,
            }
    return out


def table(name: str, results: dict[str, dict[str, float]]) -> str:
    kinds = [k for k in KIND_ORDER if any(k in r for r in results.values())]
    cols = ["val", "all", *kinds]
    lines = [f"\n### {name}\n", "| model | " + " | ".join(cols) + " | steps | settled | s |"]
    lines.append("|---" * (len(cols) + 4) + "|")
    for model, r in results.items():
        cells = [f"{r[c]:.3f}" if c in r else "" for c in cols]
        settled = f"{r['settled']:.0%}" if "settled" in r else ""
        lines.append(
            f"| {model} | "
            + " | ".join(cells)
            + f" | {r.get('steps', '')} | {settled} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--stores", default=",".join(STORES))
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--root", default="bench/stores", help="where stores are built and kept")
    p.add_argument("--runs", default="bench/runs", help="run directories of the fits")
    p.add_argument("--json", default=None, help="write all figures to this JSON file")
    p.add_argument(
        "--reuse", default=None, help="a --json file of an earlier run: refit only the stacks"
    )
    p.add_argument("extra", nargs="*", help="overrides for every fit, after --")
    a = p.parse_args()
    import lightning as L

    L.seed_everything(0, verbose=False)
    everything = {}
    for name in a.stores.split(","):
        store = build_store(name, Path(a.root))
        splits, labels, kinds = load(store)
        info = open_store(store)
        if a.reuse:
            previous = json.loads(Path(a.reuse).read_text())[name]
            results = {k: v for k, v in previous.items() if not k.startswith("stack")}
            results.update(stack_scores(store, results, labels, kinds))
            everything[name] = results
            print(
                table(f"{name}: {info.num_classes} classes, {len(splits['train'])} rows", results)
            )
            continue
        results = probe_scores(splits, labels, kinds)
        if (store / "image_means.npy").is_file():
            from feature_store.synthetic import bayes_accuracy

            results["bayes:image"] = {"all": bayes_accuracy(store), "seconds": 0.0}
        for config in a.configs.split(","):
            results[config] = head_scores(store, config, Path(a.runs), labels, kinds, a.extra)
        results.update(stack_scores(store, results, labels, kinds))
        everything[name] = results
        print(
            table(f"{name}: {info.num_classes} classes, {len(splits['train'])} train rows", results)
        )
        if a.json:
            Path(a.json).write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
