"""Cross-validation folds: disjoint, covering, stratified, group-aware, the same everywhere."""

import json
import subprocess
import sys

import numpy as np
import pytest
from fixtures_training import REPO, small_store

from feature_store import StoreError, load_arrays
from fusion.datamodule import FeatureDataModule
from fusion.folds import assign_folds, group_keys


def _data(n_per_class=(13, 7, 20, 5), seed=1):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    rng.shuffle(labels)
    ids = [f"img{i:04d}" for i in rng.permutation(len(labels))]
    return ids, labels


def test_folds_disjoint_covering_and_stratified():
    ids, labels = _data()
    k = 4
    folds = assign_folds(ids, labels, k=k, seed=0)
    # One fold per row: disjoint by construction; covering means no row is left out.
    assert folds.shape == (len(ids),) and set(folds.tolist()) == set(range(k))
    for c in np.unique(labels):
        per_fold = np.bincount(folds[labels == c], minlength=k)
        # Stratified within one sample per class: each fold holds floor or ceil of n_c / k.
        assert per_fold.max() - per_fold.min() <= 1, (c, per_fold)


def test_folds_depend_on_ids_not_row_order():
    ids, labels = _data()
    folds = assign_folds(ids, labels, k=3, seed=5)
    perm = np.random.default_rng(0).permutation(len(ids))
    shuffled = assign_folds([ids[i] for i in perm], labels[perm], k=3, seed=5)
    assert (shuffled == folds[perm]).all()
    assert not (assign_folds(ids, labels, k=3, seed=6) == folds).all()  # the seed matters


def test_groups_never_split():
    rng = np.random.default_rng(0)
    ids, labels = [], []
    for g in range(40):  # 40 source images, 1-4 augmented copies each, one class per source
        for a in range(int(rng.integers(1, 5))):
            ids.append(f"src{g:03d}_aug{a}")
            labels.append(g % 4)
    groups = group_keys(ids, r"^(src\d+)_aug")
    assert groups[0] == "src000"
    folds = assign_folds(ids, np.array(labels), k=4, seed=0, groups=groups)
    by_group: dict[str, set[int]] = {}
    for g, f in zip(groups, folds.tolist(), strict=True):
        by_group.setdefault(g, set()).add(f)
    assert all(len(f) == 1 for f in by_group.values())
    assert set(folds.tolist()) == {0, 1, 2, 3}


def test_group_regex_without_capture_group_and_unmatched_rows():
    assert group_keys(["a_1", "b_2", "zzz"], r"^[ab]") == ["a", "b", "zzz"]
    with pytest.raises(ValueError, match="not a valid regex"):
        group_keys(["a"], "(")


def test_bad_k_is_refused():
    ids, labels = _data()
    with pytest.raises(ValueError, match=">= 2"):
        assign_folds(ids, labels, k=1)
    with pytest.raises(ValueError, match="more than"):
        assign_folds(ids[:3], labels[:3], k=4)


def test_folds_identical_in_another_process():
    ids, labels = _data()
    here = assign_folds(ids, labels, k=5, seed=3).tolist()
    code = (
        "import json, sys; import numpy as np; from fusion.folds import assign_folds; "
        "d = json.load(sys.stdin); "
        "print(json.dumps(assign_folds(d['ids'], np.array(d['labels']), k=5, seed=3).tolist()))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps({"ids": ids, "labels": labels.tolist()}),
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert json.loads(out.stdout) == here


def test_datamodule_fold_holds_out_exactly_that_fold(tmp_path):
    store = small_store(tmp_path / "store")
    pooled = [load_arrays(store, s) for s in ("train", "val")]
    ids = pooled[0].ids + pooled[1].ids
    labels = np.concatenate([p.labels for p in pooled])
    expected = assign_folds(ids, labels, k=3, seed=0)
    seen = []
    for fold in range(3):
        dm = FeatureDataModule(str(store), batch_size=16, folds=3, fold=fold)
        dm.setup("fit")
        val_ids, val_rows = dm.val_rows()
        assert sorted(val_ids) == sorted(i for i, f in zip(ids, expected, strict=True) if f == fold)
        train_ids = dm.ids(dm.train_split)
        assert not set(train_ids) & set(val_ids)
        assert sorted(train_ids + val_ids) == sorted(ids)
        assert dm.train_rows == len(train_ids)
        # Rows keep their own labels and embeddings through the pooling.
        first = ids.index(val_ids[0])
        assert int(val_rows.label[0]) == int(labels[first])
        seen += val_ids
    assert sorted(seen) == sorted(ids)  # the held-out folds cover train+val once


def test_fold_out_of_range_is_a_one_line_error(tmp_path, capsys):
    import train

    store = small_store(tmp_path / "store")
    with pytest.raises(StoreError, match="outside"):
        FeatureDataModule(str(store), folds=3, fold=3)
    with pytest.raises(SystemExit) as exc:
        train.main(["fit", "--config", str(REPO / "configs/demo.yaml"), "--data.store",
                    str(store), "--data.folds", "3", "--data.fold", "7",
                    "--run_dir", str(tmp_path / "run")])  # fmt: skip
    assert exc.value.code == 2
    assert "--data.fold 7" in capsys.readouterr().err
