"""A LightningDataModule over a feature store: embeddings loaded once, batched by index.

$ python train.py fit --config configs/concat.yaml --data.store stores/kaggle --data.batch_size 512
$ python train.py fit --config configs/concat.yaml --data.folds 5 --data.fold 2   # CV fold 2
$ python train.py fit --config configs/sets_weighted.yaml --data.features '[dinov2_giant, siglip]'
$ python train.py fit --config RUN/config.yaml --data.train_splits '[train, val]' --recipe.from_run RUN

The store's sets, their dims and the class names are read from its manifest when the module
is built, so ``train.py`` links them into the model (``link_arguments``) before any weight
exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from feature_store import FeatureArrays, StoreError, load_features, open_store
from feature_store.console import usable_workers
from feature_store.integrity import check_finite
from feature_store.sets import entry
from fusion.batches import TensorBatches
from fusion.folds import assign_folds, group_keys
from fusion.recipe import auto_batch_size


def _take(arrays: FeatureArrays, idx: np.ndarray) -> FeatureArrays:
    return FeatureArrays(
        ids=[arrays.ids[i] for i in idx],
        labels=arrays.labels[idx],
        captions=[arrays.captions[i] for i in idx],
        paths=[arrays.paths[i] for i in idx],
        features={k: v[idx] for k, v in arrays.features.items()},
    )


def _concat(parts: list[FeatureArrays]) -> FeatureArrays:
    return FeatureArrays(
        ids=[i for a in parts for i in a.ids],
        labels=np.concatenate([a.labels for a in parts]),
        captions=[c for a in parts for c in a.captions],
        paths=[p for a in parts for p in a.paths],
        features={k: np.concatenate([a[k] for a in parts]) for k in parts[0].features},
    )


def _passthrough(batch: dict) -> dict:
    # __getitems__ already returns a batch of tensors; nothing left to collate.
    return batch


class EmbeddingRows(Dataset):
    """A split's feature sets as tensors; ``__getitems__`` slices a whole batch at once.

    ``DataLoader`` calls ``__getitems__(indices)`` when a dataset defines it, so a batch is
    one tensor index per set instead of ``batch_size`` Python rows plus a collate. A batch
    is ``{"x": [one tensor per set, in --data.features order], "label", "index"}``.
    """

    def __init__(self, arrays: FeatureArrays, names: list[str]) -> None:
        self.names = list(names)
        self.x = [torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in self.names]
        self.label = torch.from_numpy(arrays.labels)

    def __len__(self) -> int:
        return len(self.label)

    def __getitems__(self, indices: list[int]) -> dict:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return {"x": [x[idx] for x in self.x], "label": self.label[idx], "index": idx}

    def __getitem__(self, index: int) -> dict:
        batch = self.__getitems__([index])
        return {"x": [x[0] for x in batch["x"]], "label": batch["label"][0], "index": index}


def index_loader(
    rows: EmbeddingRows, *, batch_size: int, shuffle: bool, num_workers: int = 0
) -> DataLoader:
    """A plain ``DataLoader`` (so Lightning can shard it) that batches by index."""
    workers = usable_workers(num_workers, option="--data.num_workers")
    return DataLoader(
        rows,
        batch_size=batch_size,
        shuffle=shuffle,
        collate_fn=_passthrough,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


class FeatureDataModule(L.LightningDataModule):
    """Train/val/test/predict splits of one feature store.

    Args:
        store: the feature-store directory (``python -m data_prep`` writes one).
        features: the store's feature sets the head reads, in order (``image`` and
            ``text`` are every store's; others are added with ``data_prep --run.mode add``,
            ``python -m feature_store info STORE`` lists them). Their dims come from the
            manifest.
        batch_size: training batch size, or ``auto`` (``fusion.recipe.auto_batch_size``:
            about 1/64 of the train rows, a power of two in [16, 512]).
        eval_batch_size: batch size for validation, test and prediction (no gradients:
            larger).
        train_split: the store split trained on.
        train_splits: several store splits trained on, their rows pooled in this order
            (default: ``[train_split]``). With the val split among them this is the final
            refit on every labelled row: it does not validate, and takes its length from a
            validated run (``--recipe.from_run``, fusion/refit.py).
        val_split: the store split validated on (checkpoints and early stopping).
        predict_split: the store split ``predict`` writes a submission for.
        test_split: the labelled store split ``train.py test`` scores (e.g. ``val``).
        num_workers: DataLoader workers (val, test, predict, and training with
            ``loader: dataloader``); at most the CPU cores;
            0 is fastest for in-memory tensors.
        loader: how training batches are drawn: ``tensors`` (the train split kept as
            tensors on the training device, a seeded permutation per epoch sliced into
            batches, no DataLoader: fusion/batches.py) or ``dataloader`` (a shuffling
            DataLoader over CPU tensors, batches copied to the device each step).
        folds: 0 for the store's own train/val split; K >= 2 pools train+val and cuts it
            into K stratified folds (``fusion/folds.py``): fold ``fold`` is validated on,
            the other K-1 are trained on (``python train.py cv`` runs every fold).
        fold: which fold is held out, in [0, folds).
        fold_seed: the folds' shuffle seed (folds are a pure function of ids, labels,
            groups, K and this seed).
        group_regex: a regex over each row's id (or path, ``group_on: path``) whose first
            capture group names its group; rows of one group never straddle two folds.
        group_on: ``id`` or ``path``: what ``group_regex`` is searched in.
    """

    def __init__(
        self,
        store: str = "stores/demo",
        *,
        features: list[str] | None = None,
        batch_size: int | Literal["auto"] = "auto",
        eval_batch_size: int = 1024,
        train_split: str = "train",
        train_splits: list[str] | None = None,
        val_split: str = "val",
        predict_split: str = "test",
        test_split: str = "test",
        num_workers: int = 0,
        loader: Literal["tensors", "dataloader"] = "tensors",
        folds: int = 0,
        fold: int = 0,
        fold_seed: int = 0,
        group_regex: str | None = None,
        group_on: Literal["id", "path"] = "id",
    ) -> None:
        super().__init__()
        self.store = Path(store)
        info = open_store(self.store)
        self.features = list(features) if features else ["image", "text"]
        if len(set(self.features)) != len(self.features):
            raise StoreError(f"--data.features {self.features} names a set twice")
        # Read by train.py's link_arguments before the model is built.
        self.set_dims = {n: int(entry(info, n)["dim"]) for n in self.features}
        self.class_names = info.class_names
        self.train_splits = self._checked_splits(info, train_split, train_splits, folds)
        # The pooled train rows' key in _rows and _ids ("train", or "train+val").
        self.train_key = "+".join(self.train_splits)
        # False in a refit (val among the train splits): there is nothing left to validate on.
        self.validates = val_split not in self.train_splits
        known = info.manifest["splits"]
        self.train_rows = sum(info.rows(s) for s in self.train_splits if s in known)
        self.folds, self.fold, self.fold_seed = folds, fold, fold_seed
        self.group_regex, self.group_on = group_regex, group_on
        self._rows: dict[str, EmbeddingRows] = {}
        self._ids: dict[str, list[str]] = {}
        self.train_split = train_split
        self.val_split = val_split
        if folds:
            self._split_folds()
            self.train_rows = len(self._rows[train_split])
        self.batch_size = auto_batch_size(self.train_rows) if batch_size == "auto" else batch_size
        self.eval_batch_size = eval_batch_size
        self.predict_split = predict_split
        self.test_split = test_split
        self.num_workers = num_workers
        if loader not in ("tensors", "dataloader"):
            raise ValueError(f"--data.loader must be tensors or dataloader, got {loader!r}")
        self.loader = loader
        # The shuffle seed of loader=tensors: drawn from torch's generator at setup (so
        # seed_everything fixes it), kept in checkpoints (state_dict) so a resume goes on
        # with the same orders.
        self.shuffle_seed: int | None = None
        self._train_batches: TensorBatches | None = None
        self._train_batches_state: dict | None = None  # restored, for the next loader

    def _checked_splits(
        self, info, train_split: str, train_splits: list[str] | None, folds: int
    ) -> list[str]:
        """``train_splits`` checked against the store (``[train_split]`` when not given)."""
        if not train_splits:
            return [train_split]
        splits = list(train_splits)
        where = f"--data.train_splits {splits}"
        unknown = [s for s in splits if s not in info.manifest["splits"]]
        if unknown:
            raise StoreError(
                f"{where}: {self.store} has no split {unknown[0]!r}; its splits are "
                f"{list(info.manifest['splits'])}"
            )
        if len(set(splits)) != len(splits):
            raise StoreError(f"{where} names a split twice")
        if folds:
            raise StoreError(
                f"{where} with --data.folds {folds}: the folds pool train and val "
                "themselves; give one of the two"
            )
        return splits

    def _split_folds(self) -> None:
        """Pool train+val, then hold out fold ``fold`` as the val rows (fusion/folds.py)."""
        if not 0 <= self.fold < self.folds:
            raise StoreError(
                f"--data.fold {self.fold} is outside [0, {self.folds}); pass a fold index "
                f"below --data.folds {self.folds}."
            )
        parts = [self._checked(s, labelled=True) for s in (self.train_split, self.val_split)]
        pooled = _concat(parts)
        keys = pooled.ids if self.group_on == "id" else pooled.paths
        try:
            groups = group_keys(keys, self.group_regex) if self.group_regex else None
            folds = assign_folds(
                pooled.ids, pooled.labels, k=self.folds, seed=self.fold_seed, groups=groups
            )
        except ValueError as err:
            raise StoreError(f"{self.store}: {err}") from err
        self.fold_of_row = folds  # aligned with the pooled train+val rows
        for split, rows in (
            (self.train_split, folds != self.fold),
            (self.val_split, folds == self.fold),
        ):
            idx = np.flatnonzero(rows)
            self._rows[split] = EmbeddingRows(_take(pooled, idx), self.features)
            self._ids[split] = [pooled.ids[i] for i in idx]

    def _checked(self, split: str, *, labelled: bool) -> FeatureArrays:
        arrays = load_features(self.store, split, self.features)
        # A NaN row makes the loss, alpha and beta NaN and every prediction class 0.
        check_finite(arrays, f"{self.store}/{split}")
        if labelled:
            bad = (arrays.labels < 0) | (arrays.labels >= len(self.class_names))
            if bad.any():
                first = arrays.ids[int(bad.nonzero()[0][0])]
                raise StoreError(
                    f"{self.store}/{split}: {int(bad.sum())} rows have labels outside "
                    f"[0, {len(self.class_names)}) (first id {first!r}); a split used "
                    "for training, validation or testing needs every label "
                    + (
                        "(`train.py test` scores a labelled split: --data.test_split val)."
                        if split == getattr(self, "test_split", None)
                        else "(is it the test split?)."
                    )
                )
        return arrays

    def _load(self, split: str, *, labelled: bool) -> EmbeddingRows:
        if split not in self._rows:
            arrays = self._checked(split, labelled=labelled)
            self._rows[split] = EmbeddingRows(arrays, self.features)
            self._ids[split] = arrays.ids
        return self._rows[split]

    def ids(self, split: str) -> list[str]:
        """The ids of a loaded split, in row order (batches carry row indices)."""
        return self._ids[split]

    def val_rows(self) -> tuple[list[str], EmbeddingRows]:
        """The ids and rows validated on: the val split, or the held-out fold."""
        rows = self._load(self.val_split, labelled=True)
        return self._ids[self.val_split], rows

    def _load_train(self) -> EmbeddingRows:
        """The rows trained on: ``train_splits`` pooled (the folds' own, with folds)."""
        if self.train_key not in self._rows:
            parts = [self._checked(s, labelled=True) for s in self.train_splits]
            arrays = parts[0] if len(parts) == 1 else _concat(parts)
            self._rows[self.train_key] = EmbeddingRows(arrays, self.features)
            self._ids[self.train_key] = arrays.ids
        return self._rows[self.train_key]

    def train_tensors(self) -> list[torch.Tensor]:
        """The train rows' feature sets, in input order (for input standardisation)."""
        return list(self._load_train().x)

    def setup(self, stage: str) -> None:
        if stage == "fit":
            train = self._load_train()
            classes = len(set(train.label.tolist()))
            if len(self.class_names) < 2 or classes < 2:
                raise StoreError(
                    f"{self.store}/{self.train_key} has {classes} class(es) among its rows "
                    f"({len(self.class_names)} in the manifest); a classifier needs at least "
                    "two. Rebuild the store with images of two or more classes."
                )
            self.shuffle_seed = int(torch.randint(0, 2**31 - 1, ()))
        if stage == "validate" or (stage == "fit" and self.validates):
            self._load(self.val_split, labelled=True)
        if stage == "test":
            self._load(self.test_split, labelled=True)
        if stage == "predict":
            self._load(self.predict_split, labelled=False)

    def state_dict(self) -> dict:
        """The shuffle seed and where the train batches stand (loader ``tensors``).

        Lightning restores a loader's own state only when the loader is built after the
        training loops are restored; ``configure_optimizers`` builds it earlier (for
        ``estimated_stepping_batches``), so a mid-epoch resume takes the position from
        here, restored before any loader exists.
        """
        state: dict = {}
        if self.shuffle_seed is not None:
            state["shuffle_seed"] = self.shuffle_seed
        if self._train_batches is not None:
            state["train_batches"] = self._train_batches.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        if "shuffle_seed" in state_dict:
            self.shuffle_seed = int(state_dict["shuffle_seed"])
        self._train_batches_state = state_dict.get("train_batches")

    def train_dataloader(self) -> TensorBatches | DataLoader:
        if self.loader == "tensors":
            return self.train_batches()
        return index_loader(
            self._rows[self.train_key],
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
        )

    def train_batches(self) -> TensorBatches:
        """The train split on the training device, drawn by index (``loader: tensors``)."""
        rows = self._rows[self.train_key]
        trainer = self.trainer
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        seed = self.shuffle_seed if self.shuffle_seed is not None else 0
        if trainer is not None:  # every rank shuffles alike (seeds differ without seed_everything)
            seed = int(trainer.strategy.broadcast(seed, src=0))
        self._train_batches = TensorBatches(
            {
                "x": [x.to(device) for x in rows.x],
                "label": rows.label.to(device),
            },
            batch_size=self.batch_size,
            seed=seed,
            epoch=(lambda: trainer.current_epoch) if trainer is not None else None,
            rank=trainer.global_rank if trainer is not None else 0,
            world_size=trainer.world_size if trainer is not None else 1,
        )
        if self._train_batches_state is not None:  # a resume (used mid-epoch only)
            self._train_batches.load_state_dict(self._train_batches_state)
            self._train_batches_state = None
        return self._train_batches

    def val_dataloader(self) -> DataLoader:
        return index_loader(
            self._rows[self.val_split],
            batch_size=self.eval_batch_size,
            shuffle=False,
            num_workers=self.num_workers,
        )

    def test_dataloader(self) -> DataLoader:
        return index_loader(
            self._rows[self.test_split],
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
