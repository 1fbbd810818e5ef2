"""Builders for the analysis tests: fake run directories, stores with real image files,
a tiny random DINOv2 on disk, and a caption store embedded by the real MiniLM."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageDraw

from feature_store.layout import load_arrays
from feature_store.writer import write_store

METRIC_COLS = ["epoch", "fusion/alpha", "fusion/beta", "step", "train/acc_top1", "train/loss"]
METRIC_COLS += ["train/acc_top5", "val/acc_top1", "val/acc_top5", "val/loss"]


def write_metrics(run: Path, *, steps: int = 12, alpha_beta: bool = True) -> None:
    """metrics.csv as CSVLogger writes it: train rows and val rows, each sparse."""
    run.mkdir(parents=True, exist_ok=True)
    cols = METRIC_COLS if alpha_beta else [c for c in METRIC_COLS if not c.startswith("fusion")]
    with (run / "metrics.csv").open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for s in range(steps):
            row = {
                "epoch": s // 4,
                "step": s,
                "train/acc_top1": s / steps,
                "train/loss": 2 / (1 + s),
            }
            if alpha_beta:
                row |= {"fusion/alpha": 0.5 + s / 40, "fusion/beta": 0.5 - s / 40}
            w.writerow(row)
            if s % 4 == 3:
                row = {"epoch": s // 4, "step": s, "val/acc_top1": s / (steps + 8), "val/loss": 1.0}
                w.writerow(row)


def write_predictions(run: Path, store: Path, *, error_rate: float = 0.3, seed: int = 0):
    """val_predictions.csv for the store's val split; returns (ids, labels, preds)."""
    run.mkdir(parents=True, exist_ok=True)
    val = load_arrays(store, "val")
    rng = np.random.default_rng(seed)
    k = int(val.labels.max()) + 1
    preds = np.where(rng.random(len(val)) < error_rate, rng.integers(0, k, len(val)), val.labels)
    with (run / "val_predictions.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "label", "pred", "confidence"])
        for row in zip(val.ids, val.labels, preds, rng.random(len(val)), strict=True):
            w.writerow(row)
    return val.ids, val.labels, preds


def draw_sketch(path: Path, label: int, variant: int) -> None:
    """A 64x64 line drawing whose shape depends on the class: distinguishable thumbnails."""
    im = Image.new("RGB", (64, 64), "white")
    d = ImageDraw.Draw(im)
    o = variant % 5
    if label % 3 == 0:
        d.ellipse([10 + o, 10, 54 - o, 54], outline="black", width=3)
    elif label % 3 == 1:
        d.rectangle([12, 12 + o, 52, 52 - o], outline="black", width=3)
    else:
        d.polygon([(32, 8 + o), (56, 56), (8, 56)], outline="black", width=3)
    im.save(path)


def image_store(root: Path, *, num_classes: int = 3, per_class: int = 4, extra=None) -> Path:
    """A small store whose ``path`` column points at real PNG files under ``root/images``."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    means = 3 * rng.standard_normal((num_classes, 8)).astype(np.float32)
    splits = {}
    for split in ("train", "val"):
        labels = np.repeat(np.arange(num_classes), per_class)
        ids = [f"{split}_{i}" for i in range(len(labels))]
        paths = []
        for i, (id_, y) in enumerate(zip(ids, labels, strict=True)):
            paths.append(str(root / "images" / f"{id_}.png"))
            draw_sketch(Path(paths[-1]), int(y), i)
        splits[split] = {
            "id": ids,
            "label": labels,
            "path": paths,
            "caption": [f"a drawing of shape {y}" for y in labels],
            "image_emb": means[labels] + 0.3 * rng.standard_normal((len(labels), 8)),
            "text_emb": means[labels][:, :6] + 0.3 * rng.standard_normal((len(labels), 6)),
        }
    write_store(
        root / "store",
        splits=splits,
        class_names=[f"shape_{i}" for i in range(num_classes)],
        extra_manifest=extra,
    )
    return root / "store"


def tiny_dinov2(path: Path) -> Path:
    """A randomly initialised 2-layer DINOv2 and its image processor, saved like a hub copy."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    cfg = Dinov2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        image_size=56,
        patch_size=14,
    )
    Dinov2Model(cfg).save_pretrained(path)
    BitImageProcessor(
        size={"shortest_edge": 56},
        crop_size={"height": 56, "width": 56},
        do_center_crop=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    ).save_pretrained(path)
    return path


def minilm_embed(model_dir: str, texts: list[str]) -> np.ndarray:
    """Sentence embeddings as sentence-transformers computes them for all-MiniLM-L6-v2."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(emb, dim=1).numpy()


CAPTIONS = [
    "a cat sleeping on a sofa",
    "a red bicycle leaning against a wall",
    "a plate of spaghetti with tomato sauce",
    "a sailing boat on a calm sea",
    "a snowy mountain peak under a blue sky",
    "an old steam locomotive on the tracks",
]


def caption_store(root: Path, model_dir: str) -> Path:
    """A store whose text_emb are MiniLM's embeddings of CAPTIONS; models.text names it."""
    text = minilm_embed(model_dir, CAPTIONS)
    n = len(CAPTIONS)
    rng = np.random.default_rng(0)
    split = {
        "id": [f"r{i}" for i in range(n)],
        "label": np.arange(n) % 3,
        "caption": CAPTIONS,
        "image_emb": rng.standard_normal((n, 8)),
        "text_emb": text,
    }
    write_store(
        root,
        splits={"train": split},
        class_names=["a", "b", "c"],
        # the fields data_prep's manifest records for a local model
        extra_manifest={
            "models": {
                "text": {
                    "name": model_dir,
                    "local_path": model_dir,
                    "pooling": "mean",
                    "max_length": 64,
                    "dim": 384,
                }
            }
        },
    )
    return root


DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digit_store(root: Path, *, per_class: int = 6) -> Path:
    """Classes ``digit_zero`` .. ``digit_nine``; in each class the even rows' captions name
    the digit ("a sketch of a four") and the odd rows' say only "a sketch". text_emb is a
    fixed random vector per distinct caption, as a caption encoder gives identical
    captions identical embeddings."""
    rng = np.random.default_rng(0)
    vocab: dict[str, np.ndarray] = {}
    means = 3 * rng.standard_normal((10, 8))
    splits = {}
    for split in ("train", "val"):
        labels = np.repeat(np.arange(10), per_class)
        captions = [
            f"a sketch of a {DIGITS[y]}" if i % 2 == 0 else "a sketch"
            for y in range(10)
            for i in range(per_class)
        ]
        text = [vocab.setdefault(c, rng.standard_normal(6)) for c in captions]
        splits[split] = {
            "id": [f"{split}_{i}" for i in range(len(labels))],
            "label": labels,
            "caption": captions,
            "image_emb": means[labels] + rng.standard_normal((len(labels), 8)),
            "text_emb": np.stack(text),
        }
    write_store(root, splits=splits, class_names=[f"digit_{d}" for d in DIGITS])
    return root


def write_fit_config(run: Path, *, head: str = "dual_logit", weighting: str | None = "penalty",
                     penalty_lambda: float | None = 0.3, flat: bool = False) -> None:  # fmt: skip
    """The parts of a fit's config.yaml the report's run summary reads: the head's options
    grouped, or ``flat`` as runs wrote them before issue 21."""
    run.mkdir(parents=True, exist_ok=True)
    options = {"weighting": weighting, "penalty_lambda": penalty_lambda}
    model = {"head": head, **options} if flat else {"head": head, "head_options": options}
    config = {"model": model, "checkpoint": {"monitor": "val/acc_top1", "filename": "best"}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
