"""Training-epoch and prediction speed of the fusion stage, side by side in one run.

$ python bench/bench_train.py --threads 2 --batch_sizes 256 1024 --rounds 2 --skip_original
$ python bench/bench_train.py --rows 2000 --dim 32 --classes 20 --hidden 64 --rounds 1 \\
      --batch_sizes 64 --predict_rows 200 --original_rows 300    # smoke run (tests/)

Training (the dual-logit head, hidden 512 (``--hidden``), dropout 0.3, AdamW, on CPU or
the default device), each path timed on its second epoch (the first warms up), training
batches only:
- ``plain``: a hand-written PyTorch loop over in-memory tensors (the fp32 floor): same
  head, batch size and loss (cross-entropy + alpha/beta penalty), nothing else;
- ``trainer``: ``python train.py fit`` as a user runs it (``FusionCLI``: our callbacks,
  the CSV logger, per-step alpha/beta, the learning-rate monitor, checkpoints), with the
  default data path, ``--data.loader tensors`` (the split on the device, index batches);
- ``trainer, DataLoader``: the same fit with ``--data.loader dataloader`` (a shuffling
  DataLoader over the same tensors, batches copied to the device per step);
- ``original`` (batch 64 only): the original code's data path: HF dataset rows as Python
  lists, a per-item ``torch.tensor`` collate, batch 64, the plain loop.

W&B is off (``WANDB_MODE=disabled``; it logs from its own process, ``--wandb offline``
keeps it). Prediction on ``--predict_rows`` test rows with the best checkpoint of the last
fit: ``predict_probs`` (arrays, batched) vs the original per-sample loop.

Each figure is the median over ``--rounds``; the paths alternate within a round so load
from other processes hits all, and each ratio is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from feature_store import load_arrays, load_split, open_store
from feature_store.synthetic import make_synthetic_store
from fusion.cli import FusionCLI
from fusion.module import FusionModule
from fusion.predict import load_head, predict_probs

HEAD = {"hidden_dims": [512], "dropout": 0.3, "penalty_lambda": 0.1}  # dual_logit's options
PATHS = ("plain", "trainer", "trainer, DataLoader")


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``t0``: CPU time is what other processes' load barely moves."""
    wall, cpu = clocks()
    return wall - t0[0], cpu - t0[1]


class EpochTimer(L.Callback):
    """(wall, CPU) time of each epoch's training batches: from the epoch's start to the end
    of its last batch, so validation and the end-of-epoch checkpoint are not counted."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = clocks()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if batch_idx + 1 == trainer.num_training_batches:
            self.times.append(since(self._t0))


def trainer_epoch(
    store: Path, batch_size: int, run_dir: Path, *, loader: str, log_every: int
) -> tuple[tuple[float, float], Path]:
    """``train.py fit`` for 2 epochs; the second epoch's time and the run's best checkpoint."""
    timer = EpochTimer()
    # fmt: off
    args = [
        "fit", "--config", str(Path(__file__).resolve().parents[1] / "configs" / "base.yaml"),
        "--data.store", str(store), "--data.batch_size", str(batch_size),
        "--data.loader", loader, "--run_dir", str(run_dir), "--seed_everything", "0",
        "--model.head", "dual_logit",
        *[a for k, v in HEAD.items() for a in (f"--model.head_options.{k}", json.dumps(v))],
        "--model.optimizer.weight_decay", "0.01",
        "--trainer.max_epochs", "2", "--trainer.log_every_n_steps", str(log_every),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    ]
    # fmt: on
    with mock.patch.object(sys, "argv", sys.argv[:1]):  # the CLI reads args, not ours
        FusionCLI(args=args, extra_callbacks=[timer])
    return timer.times[-1], run_dir / "checkpoints" / "best.ckpt"


def _step(model: FusionModule, opt, image, text, label) -> None:
    loss = F.cross_entropy(model.head(image, text), label)
    penalty = model.head.aux_loss()
    if penalty is not None:
        loss = loss + penalty
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _plain_model(image_dim: int, text_dim: int, class_names: list[str], device):
    torch.manual_seed(0)
    model = FusionModule(
        "dual_logit", set_dims={"image": image_dim, "text": text_dim}, class_names=class_names,
        head_options=HEAD,
    ).to(device)  # fmt: skip
    return model.train(), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def plain_epoch(store: Path, batch_size: int, device) -> tuple[float, float]:
    info, arrays = open_store(store), load_arrays(store, "train")
    image = torch.from_numpy(arrays.image_emb).to(device)
    text = torch.from_numpy(arrays.text_emb).to(device)
    label = torch.from_numpy(arrays.labels).to(device)
    model, opt = _plain_model(info.image_dim, info.text_dim, info.class_names, device)
    times = []
    for _ in range(2):
        t0 = clocks()
        order = torch.randperm(len(label), device=device)
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            _step(model, opt, image[idx], text[idx], label[idx])
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(since(t0))
    return times[-1]


class OriginalRows(Dataset):
    """The original code's dataset: one HF row (a dict of Python lists) per item."""

    def __init__(self, hf) -> None:
        self.hf = hf

    def __len__(self) -> int:
        return len(self.hf)

    def __getitem__(self, i: int) -> dict:
        return self.hf[i]


def original_collate(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # One torch.tensor per item and field, then a stack: what the original collate did.
    image = torch.stack([torch.tensor(r["image_emb"], dtype=torch.float32) for r in rows])
    text = torch.stack([torch.tensor(r["text_emb"], dtype=torch.float32) for r in rows])
    label = torch.tensor([r["label"] for r in rows])
    return image, text, label


def original_epoch(store: Path, device, max_rows: int | None) -> tuple[tuple[float, float], int]:
    info, hf = open_store(store), load_split(store, "train")
    if max_rows and max_rows < len(hf):
        hf = hf.select(range(max_rows))
    loader = DataLoader(OriginalRows(hf), batch_size=64, shuffle=True, collate_fn=original_collate)
    model, opt = _plain_model(info.image_dim, info.text_dim, info.class_names, device)
    t0 = clocks()
    for image, text, label in loader:
        _step(model, opt, image.to(device), text.to(device), label.to(device))
    return since(t0), len(hf)


def original_predict(store: Path, checkpoint: Path, split: str) -> tuple[float, float]:
    t0 = clocks()
    head, _ = load_head(checkpoint)
    hf = load_split(store, split)
    preds = []
    with torch.inference_mode():
        for i in range(len(hf)):
            row = hf[i]
            image = torch.tensor(row["image_emb"], dtype=torch.float32).unsqueeze(0)
            text = torch.tensor(row["text_emb"], dtype=torch.float32).unsqueeze(0)
            preds.append(int(head(image, text).softmax(1).argmax(1)))
    return since(t0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000, help="train rows")
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--dim", type=int, default=768, help="image and text dims")
    parser.add_argument("--hidden", type=int, default=512, help="the head's hidden width")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--log_every_n_steps", type=int, default=50, help="as configs/base.yaml")
    parser.add_argument("--original_rows", type=int, default=None, help="cap (then scaled)")
    parser.add_argument("--predict_rows", type=int, default=10_000)
    parser.add_argument("--skip_original", action="store_true", help="no original-path epoch")
    parser.add_argument("--wandb", choices=["disabled", "offline"], default="disabled")
    args = parser.parse_args(argv)
    HEAD["hidden_dims"] = [args.hidden]
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ["WANDB_MODE"] = args.wandb
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    per_class = {
        "train": max(1, args.rows // args.classes),
        "val": 1,
        "test": max(1, args.predict_rows // args.classes),
    }
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store"
        t0 = time.perf_counter()
        make_synthetic_store(
            store,
            num_classes=args.classes,
            per_class=per_class,
            image_dim=args.dim,
            text_dim=args.dim,
            seed=0,
        )
        n_train = open_store(store).rows("train")
        print(
            f"store: {n_train} train rows x ({args.dim}+{args.dim}), {args.classes} classes, "
            f"device {device}, {torch.get_num_threads()} threads "
            f"(built in {time.perf_counter() - t0:.0f}s)"
        )
        table: dict[int, dict[str, list[tuple[float, float]]]] = {}
        checkpoint = None
        for bs in args.batch_sizes:
            runs: dict[str, list[tuple[float, float]]] = {p: [] for p in PATHS}
            for r in range(args.rounds):
                runs["plain"].append(plain_epoch(store, bs, device))
                for path, loader in (("trainer", "tensors"), ("trainer, DataLoader", "dataloader")):
                    t, checkpoint = trainer_epoch(
                        store, bs, Path(tmp) / f"run{bs}-{r}-{loader}",
                        loader=loader, log_every=args.log_every_n_steps,
                    )  # fmt: skip
                    runs[path].append(t)
            table[bs] = runs
        print_training(table, args)
        if 64 in args.batch_sizes and not args.skip_original:
            ours = statistics.median(t[1] for t in table[64]["trainer"])
            orig, n = original_epoch(store, device, args.original_rows)
            full = orig[1] * n_train / n
            scaled = f" (measured on {n} rows, scaled)" if n < n_train else ""
            print(
                f"\nbatch 64, CPU: original HF-rows path {full:.2f} s/epoch{scaled} "
                f"= {full / ours:.1f}x our trainer path"
            )
        n_test = open_store(store).rows("test")
        t0 = clocks()
        predict_probs([checkpoint], store, "test")
        batched = since(t0)
        per_sample = original_predict(store, checkpoint, "test")
        print(f"\n| predict {n_test} rows | wall | CPU |\n|---|---:|---:|")
        for name, t in (("batched `predict_probs`", batched), ("per-sample loop", per_sample)):
            print(f"| {name} | {t[0]:.2f} s | {t[1]:.2f} s |")
        print(
            f"| **speed-up** | **{per_sample[0] / batched[0]:.1f}x** "
            f"| **{per_sample[1] / batched[1]:.1f}x** |"
        )


def print_training(table: dict, args) -> None:
    """One markdown table: s/epoch per path (wall / CPU), then ratios to the plain loop
    (median of the per-round ratios: each round ran the paths back to back)."""
    sizes = list(table)
    print(f"\n| {args.rounds} round(s), median | " + " | ".join(f"batch {b}" for b in sizes) + " |")
    print("|---|" + "---|" * len(sizes))

    def cell(values: list[tuple[float, float]]) -> str:
        return " / ".join(f"{statistics.median(t[k] for t in values):.2f}" for k in (0, 1))

    for path in PATHS:
        label = "plain loop (fp32 floor)" if path == "plain" else path
        print(
            f"| {label}, s/epoch (wall / CPU) | "
            + " | ".join(cell(table[b][path]) for b in sizes)
            + " |"
        )
    for path in PATHS[1:]:
        cells = []
        for b in sizes:
            runs, base = table[b][path], table[b]["plain"]
            ratio = [
                statistics.median(t[k] / p[k] for t, p in zip(runs, base, strict=True))
                for k in (0, 1)
            ]
            cells.append(f"**{ratio[0]:.2f} / {ratio[1]:.2f}**")
        print(f"| **{path} / plain** (wall / CPU) | " + " | ".join(cells) + " |")
    for b in sizes:  # every round, to judge the noise
        rounds = {path: [round(t[1], 2) for t in table[b][path]] for path in PATHS}
        print(f"batch {b}, CPU s/epoch per round: {rounds}")


if __name__ == "__main__":
    main()
