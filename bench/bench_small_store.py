"""Each shipped config's fit against the linear probe on a small store, side by side.

$ python bench/bench_small_store.py                          # ~1,000 x 64 rows, every config
$ python bench/bench_small_store.py --configs linear,visual_only --repeat 2
$ python bench/bench_small_store.py --baseline "--recipe.full_rows 0 --data.batch_size 16"

A competitor's first afternoon (issue 22): a store of about 1,000 train rows, then
``python train.py probe`` and ``python train.py fit --config configs/X.yaml`` for each
shipped config, each as its own command, one after another on the same machine, in the
environment the user has (W&B offline). Reported per command: wall seconds, CPU seconds
(user + system of the command and its children), the fit's steps and its best val top-1
next to the probe's; the ratio is the fit's wall time over the probe command's from the
same round (``--repeat`` rounds, the median ratio kept). ``--baseline ARGS`` fits each
config a second time with ARGS added (the length rule before it scaled with the store:
``--recipe.full_rows 0 --data.batch_size 16``) in the same round.

The store: ``feature_store.synthetic.make_caption_mix_store``, 40 classes x 25 train rows
(1,000) of 64-d image embeddings (class means in a 16-d subspace, noise 3) and 32-d text
embeddings, half the captions naming the class, 8 val rows per class.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = (
    "linear",
    "visual_only",
    "text_only",
    "concat",
    "gated",
    "dual_logit_l0.1",
    "dual_logit_l0.3",
    "dual_logit_softmax",
)
BEST = re.compile(r"^best checkpoint: .* \(val/acc_top1 ([0-9.]+)\)", re.M)
STEP = re.compile(r"^epoch \d+(?:/\d+)?  step (\d+)", re.M)


def build_store(root: Path, *, classes: int, per_class: int) -> Path:
    from feature_store.synthetic import make_caption_mix_store

    store = root / f"small-{classes}x{per_class}"
    if not (store / "manifest.json").is_file():
        make_caption_mix_store(
            store,
            num_classes=classes,
            per_class={"train": per_class, "val": 8, "test": 5},
            image_dim=64,
            text_dim=32,
            image_rank=16,
            image_noise=3.0,
            caption_mix={"informative": 0.5, "neutral": 0.5},
            seed=0,
        )
    return store


def timed(cmd: list[str], cwd: Path) -> tuple[float, float, str]:
    """Wall seconds, CPU seconds (user + system of the children) and the output of ``cmd``."""
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall, cpu, proc.stdout


def probe(store: Path, work: Path) -> dict:
    run = work / "runs" / "probe" / f"p{time.time_ns()}"
    cmd = [sys.executable, str(REPO / "train.py"), "probe", "--data.store", str(store),
           "--run_dir", str(run)]  # fmt: skip
    wall, cpu, _ = timed(cmd, work)
    results = json.loads((run / "probe.json").read_text())["results"]
    return {
        "wall": wall,
        "cpu": cpu,
        "val": {v: r["val_acc_top1"] for v, r in results.items()},
    }


def fit(store: Path, work: Path, config: str, extra: list[str]) -> dict:
    cmd = [sys.executable, str(REPO / "train.py"), "fit", "--config",
           str(REPO / "configs" / f"{config}.yaml"), "--data.store", str(store), *extra]  # fmt: skip
    wall, cpu, out = timed(cmd, work)
    steps = STEP.findall(out)
    return {
        "wall": wall,
        "cpu": cpu,
        "val": float(BEST.findall(out)[-1]),
        "steps": int(steps[-1]) if steps else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--classes", type=int, default=40)
    p.add_argument("--per_class", type=int, default=25, help="train rows per class")
    p.add_argument("--repeat", type=int, default=1, help="rounds (the median ratio is kept)")
    p.add_argument("--baseline", default=None, help="fit arguments of a second fit per config")
    p.add_argument("--work", default="bench/.cache/small_store", help="store and runs")
    p.add_argument("--json", default=None, help="write the figures to this JSON file")
    a = p.parse_args()
    work = Path(a.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    store = build_store(work, classes=a.classes, per_class=a.per_class)
    variants = {"": []}
    if a.baseline:
        variants["baseline"] = shlex.split(a.baseline)
    rounds = []
    for _ in range(a.repeat):
        row = {"probe": probe(store, work)}
        for config in a.configs.split(","):
            for name, extra in variants.items():
                row[f"{config} {name}".strip()] = fit(store, work, config, extra)
        rounds.append(row)
        print(f"round {len(rounds)}: " + json.dumps(row), flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rounds, indent=2))
    first = rounds[0]["probe"]["val"]
    probe_val = ", ".join(f"{v} {acc:.3f}" for v, acc in first.items())
    rows = a.classes * a.per_class
    print(f"\n{rows} train rows x 64 (image) + 32 (text), {a.classes} classes; "
          f"probe val/acc_top1: {probe_val}\n")  # fmt: skip
    print("| command | wall s | CPU s | steps | val top-1 | fit / probe (wall) |")
    print("|---|---:|---:|---:|---:|---:|")
    probe_wall = statistics.median(r["probe"]["wall"] for r in rounds)
    probe_cpu = statistics.median(r["probe"]["cpu"] for r in rounds)
    print(f"| `train.py probe` | {probe_wall:.0f} | {probe_cpu:.0f} |  | "
          f"{max(first.values()):.3f} (best view) | 1 |")  # fmt: skip
    for key in rounds[0]:
        if key == "probe":
            continue
        ratio = statistics.median(r[key]["wall"] / r["probe"]["wall"] for r in rounds)
        wall = statistics.median(r[key]["wall"] for r in rounds)
        cpu = statistics.median(r[key]["cpu"] for r in rounds)
        last = rounds[-1][key]
        print(f"| `fit {key}` | {wall:.0f} | {cpu:.0f} | {last['steps']} | "
              f"{last['val']:.3f} | {ratio:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
