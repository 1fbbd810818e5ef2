"""The Kaggle workflow's costs: a search trial beyond its fit, and ensembling saved files.

$ python bench/bench_kaggle.py                          # both parts
$ python bench/bench_kaggle.py --part ensemble --members 10 --rows 10000 --classes 500

``trial``: the same fit (configs/demo.yaml, fixed values, ``--epochs`` epochs on a
synthetic store of ``--train_rows`` rows) run as a plain ``train.py fit`` and as a trial of
``train.py tune`` (in ABBA order; SQLite study, TPE sampler, median pruner reporting after every
validation, W&B offline in both). Reports each trial's own wall time (Optuna's start to
complete) and the study's whole wall time per trial (one ``train.py tune`` call that adds
one trial: study open, trial, best.yaml, trials.csv and plots included), each as a ratio to the plain fit's median. Goal: <= 1.10x.

``ensemble``: ``--members`` ``.probs.npz`` files of ``--rows`` x ``--classes`` float32
probabilities (as predict.py writes them) are averaged into a submission by
``predict.py ensemble`` (load, id/class checks, mean, CSV + npz + json), timed end to end;
then pooling weights are fitted (``--fit_on``) on ``--fit_rows`` out-of-fold rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's code, not another installed copy
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


def bench_trial(tmp: Path, *, train_rows: int, epochs: int, rounds: int) -> None:
    import optuna

    from feature_store.synthetic import make_synthetic_store
    from fusion.cli import main as cli_main
    from fusion.commands.tune import run_tune

    classes = 20
    per = {"train": train_rows // classes, "val": train_rows // (4 * classes), "test": 5}
    store = tmp / "store"
    make_synthetic_store(store, num_classes=classes, per_class=per, image_dim=256,
                         text_dim=128, noise=3.0)  # fmt: skip
    base = ["--config", str(REPO / "configs/demo.yaml"), "--data.store", str(store),
            "--trainer.max_epochs", str(epochs), "--trainer.enable_progress_bar", "false",
            "--data.batch_size", "64"]  # fmt: skip
    space = tmp / "space.yaml"  # one value each: every trial is the plain fit's config
    space.write_text("model.optimizer.lr: {choices: [0.003]}\nmodel.head_options.dropout: {choices: [0.2]}\n")
    cli_main(["fit", *base, "--run_dir", str(tmp / "warmup")])  # caches warm, untimed
    plain, calls = [], []

    def plain_fit(r: int) -> None:
        t0 = time.perf_counter()
        cli_main(["fit", *base, "--model.optimizer.lr", "0.003", "--run_dir", str(tmp / f"plain{r}")])
        plain.append(time.perf_counter() - t0)

    def one_more_trial(r: int) -> None:  # open the study, run a trial, report, plots
        t0 = time.perf_counter()
        run_tune([*base, "--search", str(space), "--n_trials", str(r + 1),
                  "--study_dir", str(tmp / "study"), "--study_name", "demo"])  # fmt: skip
        calls.append(time.perf_counter() - t0)

    for r in range(rounds):  # ABBA order: which one runs first changes every round
        for step in (plain_fit, one_more_trial)[:: 1 if r % 2 == 0 else -1]:
            step(r)
    print("plain fits s:", [round(t, 1) for t in plain], "tune calls s:",
          [round(t, 1) for t in calls])  # fmt: skip
    study_wall = statistics.median(calls)
    study = optuna.load_study(study_name="demo", storage=f"sqlite:///{tmp / 'study/study.db'}")
    trial = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.trials]
    fit = statistics.median(plain)
    print(f"plain fit: median {fit:.2f} s over {rounds} ({train_rows} rows, {epochs} epochs)")
    print(f"tune trial: median {statistics.median(trial):.2f} s = "
          f"{statistics.median(trial) / fit:.3f}x the plain fit")  # fmt: skip
    print(f"tune study wall per trial (open, plots, best.yaml included): {study_wall:.2f} s = "
          f"{study_wall / fit:.3f}x")  # fmt: skip


def bench_ensemble(tmp: Path, *, members: int, rows: int, classes: int, fit_rows: int) -> None:
    from fusion.commands.ensemble import main as ensemble_main
    from fusion.submission import save_probs

    rng = np.random.default_rng(0)
    names = [f"class_{c:03d}" for c in range(classes)]
    ids = [f"test_{i:06d}" for i in range(rows)]
    oof_ids = [f"train_{i:06d}" for i in range(fit_rows)]
    y = rng.integers(0, classes, fit_rows)
    files, oofs = [], []
    for m in range(members):
        p = rng.dirichlet(np.full(classes, 0.1), size=rows).astype(np.float32)
        files.append(save_probs(tmp / f"m{m}.probs.npz", ids, p, class_names=names))
        q = rng.dirichlet(np.full(classes, 0.1), size=fit_rows)
        q[np.arange(fit_rows), y] += 0.5 * (m + 1) / members  # later members a bit better
        q /= q.sum(1, keepdims=True)
        oofs.append(save_probs(tmp / f"m{m}.oof.probs.npz", oof_ids, q, class_names=names,
                               labels=y))  # fmt: skip
    size = sum(f.stat().st_size for f in files) / 2**20
    args = [a for f in files for a in ("--probs", str(f))]
    t0 = time.perf_counter()
    ensemble_main([*args, "--out", str(tmp / "mean.csv")])
    mean_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = [a for f in oofs for a in ("--fit_on", str(f))]
    ensemble_main([*args, *fit, "--out", str(tmp / "weights.csv")])
    weights_s = time.perf_counter() - t0
    print(f"ensemble of {members} x {rows} x {classes} from .probs.npz ({size:.0f} MiB on "
          f"disk): mean {mean_s:.2f} s; weights fitted on {fit_rows} OOF rows (5-fold "
          f"cross-fitted score + final fit) and applied: {weights_s:.2f} s")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--part", choices=("all", "trial", "ensemble"), default="all")
    p.add_argument("--train_rows", type=int, default=4000)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--members", type=int, default=10)
    p.add_argument("--rows", type=int, default=10000)
    p.add_argument("--classes", type=int, default=500)
    p.add_argument("--fit_rows", type=int, default=2000)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("all", "ensemble"):
            bench_ensemble(Path(tmp), members=args.members, rows=args.rows,
                           classes=args.classes, fit_rows=args.fit_rows)  # fmt: skip
        if args.part in ("all", "trial"):
            bench_trial(Path(tmp), train_rows=args.train_rows, epochs=args.epochs,
                        rounds=args.rounds)  # fmt: skip


if __name__ == "__main__":
    main()
