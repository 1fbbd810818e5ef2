"""Training-epoch and prediction speed of the fusion stage, three data paths side by side.

$ python bench/bench_train.py                       # 50,000 x (768+768), 500 classes
$ python bench/bench_train.py --rows 5000 --rounds 1  # quick look

Training (one epoch of the dual-logit head, hidden 512, AdamW, CPU or the default device):
- ``trainer``: our path: FeatureDataModule (tensors, index batches) + FusionModule + a
  Lightning Trainer with the CSV logger writing alpha/beta every step (W&B off: it logs from
  its own process);
- ``plain``: a hand-written PyTorch loop over the same in-memory tensors, same head, same
  batch size, same loss (cross-entropy + alpha/beta penalty);
- ``original``: the original code's data path: HF dataset rows as Python lists, a
  per-item ``torch.tensor`` collate, batch 64, the same plain loop.

Prediction on ``--predict_rows`` test rows, from the store: ``predict_probs`` (arrays,
batched) vs the original per-sample loop (one HF row, one forward at a time).

Each training figure is the median over ``--rounds`` of the epoch time (an untimed warm-up
epoch first); the paths alternate within a round so load from other processes hits all.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from feature_store import load_arrays, load_split, open_store
from feature_store.synthetic import make_synthetic_store
from fusion.datamodule import FeatureDataModule
from fusion.loggers import RunCSVLogger
from fusion.module import FusionModule
from fusion.predict import load_head, predict_probs

HEAD = {"head": "dual_logit", "hidden_dims": [512], "dropout": 0.3, "penalty_lambda": 0.1}


class EpochTimer(L.Callback):
    """Wall time of each training epoch (no validation: limit_val_batches=0)."""

    def __init__(self) -> None:
        self.times: list[tuple[float, float]] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._t0 = clocks()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.times.append(since(self._t0))


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(t0: tuple[float, float]) -> tuple[float, float]:
    """(wall, CPU) seconds since ``t0``: CPU time is what other processes' load barely moves."""
    wall, cpu = clocks()
    return wall - t0[0], cpu - t0[1]


def trainer_epoch(store: Path, batch_size: int, run_dir: Path) -> tuple[float, float]:
    L.seed_everything(0)
    dm = FeatureDataModule(str(store), batch_size=batch_size)
    model = FusionModule(
        image_dim=dm.image_dim, text_dim=dm.text_dim, class_names=dm.class_names, **HEAD
    )
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="auto",
        devices=1,
        logger=RunCSVLogger(run_dir),
        log_every_n_steps=1,
        callbacks=[timer],
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    return timer.times[-1]


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
        image_dim=image_dim, text_dim=text_dim, class_names=class_names, **HEAD
    ).to(device)
    return model.train(), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)


def plain_epoch(store: Path, batch_size: int, device) -> tuple[float, float]:
    info, arrays = open_store(store), load_arrays(store, "train")
    image = torch.from_numpy(arrays.image_emb.copy())
    text = torch.from_numpy(arrays.text_emb.copy())
    label = torch.from_numpy(arrays.labels.copy())
    model, opt = _plain_model(info.image_dim, info.text_dim, info.class_names, device)
    times = []
    for _ in range(2):
        t0 = clocks()
        order = torch.randperm(len(label))
        for i in range(0, len(order), batch_size):
            idx = order[i : i + batch_size]
            _step(
                model,
                opt,
                image[idx].to(device),
                text[idx].to(device),
                label[idx].to(device),
            )
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


def save_checkpoint(store: Path, out: Path) -> Path:
    """A checkpoint of an untrained head in train.py's format (weights do not affect speed)."""
    dm = FeatureDataModule(str(store))
    model = FusionModule(
        image_dim=dm.image_dim, text_dim=dm.text_dim, class_names=dm.class_names, **HEAD
    )
    trainer = L.Trainer(logger=False, enable_progress_bar=False, max_epochs=0)
    trainer.strategy.connect(model)
    trainer.save_checkpoint(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=500)
    parser.add_argument("--dim", type=int, default=768, help="image and text dims")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[256, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--original_rows", type=int, default=None, help="cap (then scaled)")
    parser.add_argument("--predict_rows", type=int, default=10_000)
    parser.add_argument("--skip_original", action="store_true", help="no original-path epoch")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    ours_64: dict[str, float] = {}
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    per_class = {
        "train": args.rows // args.classes,
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
        for bs in args.batch_sizes:
            trainer_t, plain_t = [], []
            for r in range(args.rounds):
                plain_t.append(plain_epoch(store, bs, device))
                trainer_t.append(trainer_epoch(store, bs, Path(tmp) / f"run{bs}-{r}"))
            for k, clock in enumerate(("wall", "CPU")):
                tr = [t[k] for t in trainer_t]
                pl = [t[k] for t in plain_t]
                # Each round ran the two paths back to back: the per-round ratio compares
                # runs that saw similar load from other processes.
                ratio = statistics.median(a / b for a, b in zip(tr, pl, strict=True))
                print(
                    f"batch {bs:>4} {clock:>4}: trainer {statistics.median(tr):6.2f}s/epoch  "
                    f"plain loop {statistics.median(pl):6.2f}s/epoch  ratio {ratio:.3f}  "
                    f"(rounds: trainer {_r(tr)}, plain {_r(pl)})"
                )
                if bs == 64:
                    ours_64[clock] = statistics.median(tr)
        if 64 in args.batch_sizes and not args.skip_original:
            orig, n = original_epoch(store, device, args.original_rows)
            for k, clock in enumerate(("wall", "CPU")):
                full = orig[k] * n_train / n
                scaled = f" (measured {orig[k]:.1f}s on {n} rows, scaled)" if n < n_train else ""
                print(
                    f"batch   64 {clock:>4}: original HF-rows path {full:6.2f}s/epoch{scaled} "
                    f"= {full / ours_64[clock]:.1f}x our trainer path"
                )
        ckpt = save_checkpoint(store, Path(tmp) / "head.ckpt")
        n_test = open_store(store).rows("test")
        t0 = clocks()
        predict_probs([ckpt], store, "test")
        batched = since(t0)
        per_sample = original_predict(store, ckpt, "test")
        for k, clock in enumerate(("wall", "CPU")):
            print(
                f"predict {n_test} rows {clock:>4}: batched {batched[k]:.2f}s  per-sample loop "
                f"{per_sample[k]:.2f}s  = {per_sample[k] / batched[k]:.1f}x"
            )


def _r(values: list[float]) -> list[float]:
    return [round(v, 2) for v in values]


if __name__ == "__main__":
    main()
