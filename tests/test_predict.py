"""predict.py: fit -> predict -> CSV back, ensembling, refusing mismatched stores."""

import json

import numpy as np
import pytest
import torch

import predict
from feature_store import load_arrays
from fusion.predict import check_compatible, head_probs, load_head, predict_probs
from fusion.submission import probs_path
from tests.fixtures_training import fit_cli, read_csv, small_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two short runs (different seeds, heads) on one store: (store, [ckpt_a, ckpt_b])."""
    root = tmp_path_factory.mktemp("predict")
    store = small_store(root / "store")
    mp = pytest.MonkeyPatch()
    mp.setenv("WANDB_MODE", "disabled")
    fit_cli(store, root / "a", epochs=2)
    fit_cli(store, root / "b", "--model.head", "concat", "--seed_everything", "3", epochs=2)
    mp.undo()
    return store, [
        root / "a" / "checkpoints" / "best.ckpt",
        root / "b" / "checkpoints" / "best.ckpt",
    ]


def test_fit_predict_and_read_the_submission_back(trained, tmp_path):
    store, (ckpt, _) = trained
    out = tmp_path / "sub" / "submission.csv"
    assert predict.main.__module__ == "fusion.commands.predict"
    predict.main(["--checkpoint", str(ckpt), "--store", str(store), "--out", str(out)])
    rows = read_csv(out)
    assert list(rows[0]) == ["Id", "Category"]
    test = load_arrays(store, "test")
    assert [r["Id"] for r in rows] == test.ids  # every test id, once, in store order
    assert all(0 <= int(r["Category"]) < 5 for r in rows)
    saved = np.load(probs_path(out))
    assert list(saved["ids"]) == test.ids
    assert saved["probs"].shape == (len(test), 5)
    np.testing.assert_allclose(saved["probs"].sum(axis=1), 1.0, rtol=1e-5)
    assert [int(r["Category"]) for r in rows] == saved["probs"].argmax(axis=1).tolist()
    # Atomic writes leave no temporary files behind.
    names = {p.name for p in out.parent.iterdir()}
    assert names == {"submission.csv", "submission.probs.npz", "submission.json"}


def test_probabilities_match_an_independent_forward_pass(trained):
    store, (ckpt, _) = trained
    ids, probs = predict_probs([ckpt], store, "val")
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    head, _ = load_head(ckpt)
    for name, value in head.state_dict().items():
        assert torch.equal(value, state[f"head.{name}"])
    val = load_arrays(store, "val")
    with torch.no_grad():
        expected = head(torch.from_numpy(val.image_emb), torch.from_numpy(val.text_emb))
    np.testing.assert_allclose(probs, expected.softmax(1).numpy(), rtol=1e-5, atol=1e-6)
    assert ids == val.ids


def test_several_checkpoints_average_their_probabilities(trained, tmp_path):
    store, ckpts = trained
    _, single = zip(*(predict_probs([c], store) for c in ckpts), strict=True)
    ids, mean = predict_probs(ckpts, store)
    np.testing.assert_allclose(mean, (single[0] + single[1]) / 2, rtol=1e-5, atol=1e-7)
    out = tmp_path / "ens.csv"
    predict.main(
        ["--checkpoint", str(ckpts[0]), "--checkpoint", str(ckpts[1]), "--store", str(store)]
        + ["--out", str(out)]
    )
    assert [int(r["Category"]) for r in read_csv(out)] == mean.argmax(1).tolist()


def test_a_store_with_other_dims_or_classes_is_refused(trained, tmp_path):
    _, (ckpt, _) = trained
    other = small_store(tmp_path / "dims", image_dim=20)
    with pytest.raises(SystemExit, match="set 'image' dim: checkpoint 16, store 20"):
        predict.main(
            ["--checkpoint", str(ckpt), "--store", str(other), "--out", str(tmp_path / "x.csv")]
        )
    renamed = small_store(tmp_path / "names")
    manifest = json.loads((renamed / "manifest.json").read_text())
    manifest["class_names"][2] = "zebra"
    (renamed / "manifest.json").write_text(json.dumps(manifest))
    _, hp = load_head(ckpt)
    from feature_store import StoreError, open_store

    with pytest.raises(StoreError, match=r"label 2 \(checkpoint 'class_002', store 'zebra'\)"):
        check_compatible(hp, open_store(renamed), ckpt)
    fewer = small_store(tmp_path / "fewer", num_classes=4)
    with pytest.raises(StoreError, match="class count: checkpoint 5, store 4"):
        predict_probs([ckpt], fewer)
    assert not (tmp_path / "x.csv").exists()


def test_missing_checkpoint_and_non_training_checkpoint(trained, tmp_path):
    store, _ = trained
    with pytest.raises(SystemExit, match="checkpoint not found"):
        predict.main(["--checkpoint", str(tmp_path / "nope.ckpt"), "--store", str(store)])
    bogus = tmp_path / "bogus.ckpt"
    torch.save({"state_dict": {}}, bogus)
    with pytest.raises(ValueError, match="train.py fit"):
        load_head(bogus)


def test_head_probs_batches_agree_with_one_batch(trained):
    store, (ckpt, _) = trained
    head, _ = load_head(ckpt)
    val = load_arrays(store, "val")
    one = head_probs(head, [val.image_emb, val.text_emb], batch_size=10_000)
    many = head_probs(head, [val.image_emb, val.text_emb], batch_size=7)
    np.testing.assert_allclose(one, many, rtol=1e-5, atol=1e-7)
