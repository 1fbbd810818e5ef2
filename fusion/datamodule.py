"""A LightningDataModule over a feature store: embeddings loaded once, batched by index.

$ python train.py fit --config configs/concat.yaml --data.store stores/kaggle --data.batch_size 512

The store's dims and class names are read from its manifest when the module is built, so
``train.py`` links them into the model (``link_arguments``) before any weight exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from feature_store import SplitArrays, StoreError, load_arrays, open_store
from feature_store.integrity import check_finite
from fusion.recipe import auto_batch_size


def _passthrough(batch: dict) -> dict:
    # __getitems__ already returns a batch of tensors; nothing left to collate.
    return batch


class EmbeddingRows(Dataset):
    """A split's embeddings as tensors; ``__getitems__`` slices a whole batch at once.

    ``DataLoader`` calls ``__getitems__(indices)`` when a dataset defines it, so a batch is
    one tensor index per column instead of ``batch_size`` Python rows plus a collate.
    """

    def __init__(self, arrays: SplitArrays) -> None:
        self.image = torch.from_numpy(arrays.image_emb)
        self.text = torch.from_numpy(arrays.text_emb)
        self.label = torch.from_numpy(arrays.labels)

    def __len__(self) -> int:
        return len(self.label)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {
            "image": self.image[idx],
            "text": self.text[idx],
            "label": self.label[idx],
            "index": idx,
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[0] for k, v in self.__getitems__([index]).items()}


def index_loader(
    rows: EmbeddingRows, *, batch_size: int, shuffle: bool, num_workers: int = 0
) -> DataLoader:
    """A plain ``DataLoader`` (so Lightning can shard it) that batches by index."""
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=_passthrough,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


class FeatureDataModule(L.LightningDataModule):
    """Train/val/predict splits of one feature store.

    Args:
        store: the feature-store directory (``python -m data_prep`` writes one).
        batch_size: training batch size, or ``auto`` (``fusion.recipe.auto_batch_size``:
            about 1/64 of the train rows, a power of two in [16, 512]).
        eval_batch_size: batch size for validation and prediction (no gradients: larger).
        train_split, val_split, predict_split: split names in the store.
        num_workers: DataLoader workers; 0 is fastest for in-memory tensors.
    """

    def __init__(
        self,
        store: str = "stores/demo",
        *,
        batch_size: int | Literal["auto"] = "auto",
        eval_batch_size: int = 1024,
        train_split: str = "train",
        val_split: str = "val",
        predict_split: str = "test",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        self.store = Path(store)
        info = open_store(self.store)
        # Read by train.py's link_arguments before the model is built.
        self.image_dim = info.image_dim
        self.text_dim = info.text_dim
        self.class_names = info.class_names
        self.train_rows = info.rows(train_split) if train_split in info.manifest["splits"] else 0
        self.batch_size = auto_batch_size(self.train_rows) if batch_size == "auto" else batch_size
        self.eval_batch_size = eval_batch_size
        self.train_split = train_split
        self.val_split = val_split
        self.predict_split = predict_split
        self.num_workers = num_workers
        self._rows: dict[str, EmbeddingRows] = {}
        self._ids: dict[str, list[str]] = {}

    def _load(self, split: str, *, labelled: bool) -> EmbeddingRows:
        if split not in self._rows:
            arrays = load_arrays(self.store, split)
            # A NaN row makes the loss, alpha and beta NaN and every prediction class 0.
            check_finite(arrays, f"{self.store}/{split}")
            if labelled:
                bad = (arrays.labels < 0) | (arrays.labels >= len(self.class_names))
                if bad.any():
                    first = arrays.ids[int(bad.nonzero()[0][0])]
                    raise StoreError(
                        f"{self.store}/{split}: {int(bad.sum())} rows have labels outside "
                        f"[0, {len(self.class_names)}) (first id {first!r}); a split used "
                        "for training or validation needs every label (is it the test split?)."
                    )
            self._rows[split] = EmbeddingRows(arrays)
            self._ids[split] = arrays.ids
        return self._rows[split]

    def ids(self, split: str) -> list[str]:
        """The ids of a loaded split, in row order (batches carry row indices)."""
        return self._ids[split]

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The train split's image and text embeddings (for input standardisation)."""
        rows = self._load(self.train_split, labelled=True)
        return rows.image, rows.text

    def setup(self, stage: str) -> None:
        if stage == "fit":
            train = self._load(self.train_split, labelled=True)
            classes = len(set(train.label.tolist()))
            if len(self.class_names) < 2 or classes < 2:
                raise StoreError(
                    f"{self.store}/{self.train_split} has {classes} class(es) among its rows "
                    f"({len(self.class_names)} in the manifest); a classifier needs at least "
                    "two. Rebuild the store with images of two or more classes."
                )
        if stage in ("fit", "validate"):
            self._load(self.val_split, labelled=True)
        if stage == "predict":
            self._load(self.predict_split, labelled=False)

    def train_dataloader(self) -> DataLoader:
        return index_loader(
            self._rows[self.train_split],
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return index_loader(
            self._rows[self.val_split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def predict_dataloader(self) -> DataLoader:
        return index_loader(
            self._rows[self.predict_split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )
