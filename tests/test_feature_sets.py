# ruff: noqa: F811 - pytest fixtures imported from tests/fixtures_*.py are parameters here
"""Named feature sets: a store with several backbones and class-name scores, sets added to a
finished store (byte-identical rows, resume after kill -9, refusals), the MiniLM prior."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

import data_prep
from data_prep.__main__ import _cli
from feature_store import load_arrays, load_dataset_dict, load_features, open_store
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv, tiny_models  # noqa: F401
from tests.fixtures_sets import add_argv, set_models, timm_set, tree_digest  # noqa: F401

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
ZS_TEMPLATE = "a sketch of a {}."


def _sets(models) -> list[dict]:
    """Two image sets (DINOv2 with registers + TTA, a timm ViT's pre-logits), SigLIP
    zero-shot scores (one template, to compare with the model's own logits), MiniLM
    caption-to-class-name scores."""
    return [
        {"name": "regs", "kind": "hf_image", "model": str(models["registers"]),
         "pooling": "cls+mean", "tta": ["hflip"]},
        timm_set("vit", models["timm"], pooling="head"),
        {"name": "zs", "kind": "zero_shot", "model": str(models["siglip"]),
         "templates": [ZS_TEMPLATE]},
        {"name": "capcls", "kind": "caption_scores", "model": str(models["minilm"])},
    ]  # fmt: skip


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_models, set_models):  # noqa: F811
    """A store built in one run with the rows and four more sets: (data root, store)."""
    tmp = tmp_path_factory.mktemp("sets")
    root = draw_kaggle_tree(tmp / "data", train=3, val=1, test=2, bad_images=False)
    argv = prep_argv(root, tiny_models, tmp / "store", "--run.emb_dtype", "float32",
                     "--features", json.dumps(_sets(set_models)))  # fmt: skip
    return root, data_prep.main(argv)


def _copy(store: Path, dest: Path) -> Path:
    shutil.copytree(store, dest)
    return dest


def test_a_store_with_several_sets_reads_each_with_its_dim(built, set_models):  # noqa: F811
    _, store = built
    info = open_store(store)
    entries = {e["name"]: e for e in info.features}
    assert list(entries) == ["image", "text", "regs", "vit", "zs", "capcls"]
    # dims from the models' own configs: cls+mean doubles the width; scores = classes.
    from transformers import AutoConfig

    width = AutoConfig.from_pretrained(set_models["registers"]).hidden_size
    expected = {"regs": 2 * width, "vit": 32, "zs": 3, "capcls": 3}
    assert {k: entries[k]["dim"] for k in expected} == expected
    assert {k: entries[k]["kind"] for k in expected} == {
        "regs": "image",
        "vit": "image",
        "zs": "scores",
        "capcls": "scores",
    }
    assert entries["regs"]["tta"] == ["hflip"] and entries["regs"]["prefix_tokens"] == 5
    assert entries["zs"]["class_names"] == ["cat", "dog", "fish"]
    assert len({e["fingerprint"] for e in entries.values()}) == 6
    dd = load_dataset_dict(store)
    for split in info.splits:
        arrays = load_features(store, split)
        base = load_arrays(store, split)
        assert arrays.ids == base.ids and len(arrays) == info.rows(split)
        np.testing.assert_array_equal(arrays["image"], base.image_emb)
        np.testing.assert_array_equal(arrays["text"], base.text_emb)
        for name, dim in expected.items():
            assert arrays[name].shape == (len(base), dim) and arrays[name].dtype == np.float32
            assert not arrays.missing(name).any()
            np.testing.assert_array_equal(np.asarray(dd[split][name], np.float32), arrays[name])
        # Each added set is a DatasetDict of its own: id + its column.
        own = datasets.load_from_disk(str(store / "features" / "zs"))[split]
        assert own.column_names == ["id", "zs"] and own["id"] == base.ids
    only = load_features(store, "train", ["zs"])
    assert list(only.features) == ["zs"]


def test_tta_hflip_is_the_mean_of_the_image_and_its_mirror(built, set_models):  # noqa: F811
    from transformers import AutoImageProcessor, AutoModel

    from data_prep.images import load_image

    _, store = built
    arrays = load_features(store, "train", ["regs"])
    proc = AutoImageProcessor.from_pretrained(set_models["registers"])
    model = AutoModel.from_pretrained(set_models["registers"]).eval()
    pixels = proc(images=[load_image(p) for p in arrays.paths], return_tensors="pt")
    pixels = pixels["pixel_values"]

    def cls_mean(x):
        tokens = model(pixel_values=x).last_hidden_state
        return torch.cat([tokens[:, 0], tokens[:, 1 + 4 :].mean(1)], dim=1)  # 4 registers

    with torch.no_grad():
        expected = (cls_mean(pixels) + cls_mean(pixels.flip(-1))) / 2
    np.testing.assert_allclose(arrays["regs"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_zero_shot_scores_are_the_models_own_logits(built, set_models):  # noqa: F811
    from transformers import AutoImageProcessor, AutoModel, AutoTokenizer

    from data_prep.images import load_image

    _, store = built
    arrays = load_features(store, "val", ["zs"])
    path = set_models["siglip"]
    model = AutoModel.from_pretrained(path).eval()
    tok = AutoTokenizer.from_pretrained(path)
    text = tok([ZS_TEMPLATE.format(c) for c in ("cat", "dog", "fish")], padding="max_length",
               max_length=32, return_tensors="pt")  # fmt: skip
    pixels = AutoImageProcessor.from_pretrained(path)(
        images=[load_image(p) for p in arrays.paths], return_tensors="pt"
    )["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels, input_ids=text["input_ids"]).logits_per_image
    np.testing.assert_allclose(arrays["zs"], logits.numpy(), rtol=1e-4, atol=1e-4)


def test_minilm_caption_scores_put_the_named_class_first(tmp_path, set_models):  # noqa: F811
    from feature_store import write_store
    from tests.fixtures_analysis import minilm_embed

    classes = ["airplane", "banana", "guitar", "umbrella", "lighthouse"]
    captions = ["a pencil drawing of an airplane in the sky", "a sketch of a banana on a table",
                "a man playing the guitar", "an open umbrella in the rain",
                "a lighthouse on a rocky coast", "a child holding a banana",
                "a wooden guitar leaning on a chair", "a small airplane on the runway"]  # fmt: skip
    labels = [0, 1, 2, 3, 4, 1, 2, 0]
    n = len(captions)
    write_store(tmp_path / "s", class_names=classes, splits={"train": {
        "id": [f"r{i}" for i in range(n)], "label": labels, "caption": captions,
        "image_emb": np.zeros((n, 4)), "text_emb": np.zeros((n, 3))}})  # fmt: skip
    templates = ["a sketch of a {}.", "a drawing of a {}."]
    sets = [{"name": "capcls", "kind": "caption_scores", "model": str(set_models["minilm"]),
             "templates": templates}]  # fmt: skip
    data_prep.main(add_argv(tmp_path / "s", sets))
    scores = load_features(tmp_path / "s", "train", ["capcls"])["capcls"]
    assert scores.argmax(axis=1).tolist() == labels
    # The same numbers from sentence-transformers' recipe, computed here independently.
    prompts = minilm_embed(str(set_models["minilm"]), [t.format(c) for c in classes
                                                        for t in templates])  # fmt: skip
    per_class = prompts.reshape(len(classes), len(templates), -1).mean(axis=1)
    per_class /= np.linalg.norm(per_class, axis=1, keepdims=True)
    expected = minilm_embed(str(set_models["minilm"]), captions) @ per_class.T
    np.testing.assert_allclose(scores, expected, rtol=0, atol=1e-4)


def test_adding_a_set_leaves_every_existing_file_byte_identical(built, set_models, tmp_path):  # noqa: F811
    _, store = built
    store = _copy(store, tmp_path / "store")
    before = tree_digest(store)
    old = json.loads((store / "manifest.json").read_text())
    sets = [{"name": "cliptext", "kind": "hf_text", "model": str(set_models["clip"]),
             "pooling": "embed"}]  # fmt: skip
    data_prep.main(add_argv(store, sets))
    after = tree_digest(store)
    changed = {k for k in before if before[k] != after.get(k)}
    assert changed == {"manifest.json"}  # failures.csv rewritten byte for byte the same
    new_files = set(after) - set(before)
    assert all(f.startswith(("features/cliptext/", "_prep/features/cliptext/"))
               for f in new_files)  # fmt: skip
    new = json.loads((store / "manifest.json").read_text())
    assert new["features"][: len(old["features"])] == old["features"]
    drop = lambda m: {k: v for k, v in m.items() if k != "features"}  # noqa: E731
    assert drop(new) == drop(old)  # the rows' record (shards, counts, models) untouched
    # The new set: the caption embedded by the CLIP text tower, row for row.
    from transformers import AutoModel, AutoTokenizer

    arrays = load_features(store, "test", ["cliptext"])
    tok = AutoTokenizer.from_pretrained(set_models["clip"])
    model = AutoModel.from_pretrained(set_models["clip"]).eval()
    with torch.no_grad():
        batch = tok(arrays.captions, padding=True, return_tensors="pt")
        expected = model.get_text_features(**batch).pooler_output
    np.testing.assert_allclose(arrays["cliptext"], expected.numpy(), rtol=1e-4, atol=1e-5)


def test_rerun_is_a_no_op_another_config_refused_then_replaced(
    built,
    set_models,
    tmp_path,  # noqa: F811
    tiny_models,
    capsys,
):  # noqa: F811
    root, store = built
    store = _copy(store, tmp_path / "store")
    manifest = (store / "manifest.json").read_text()
    data_prep.main(prep_argv(root, tiny_models, store, "--run.emb_dtype", "float32",
                             "--features", json.dumps(_sets(set_models))))  # fmt: skip
    data_prep.main(add_argv(store, _sets(set_models)))
    assert (store / "manifest.json").read_text() == manifest  # rows and every set there
    before = tree_digest(store)
    other = [timm_set("vit", set_models["timm"], pooling="cls")]
    assert _cli(add_argv(store, other)) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--run.replace_feature vit" in err and "pooling" in err
    assert tree_digest(store) == before  # nothing written
    data_prep.main(add_argv(store, other, "--run.replace_feature", "vit"))
    entries = {e["name"]: e for e in open_store(store).features}
    assert entries["vit"]["pooling"] == "cls" and list(entries)[-1] == "vit"
    after = tree_digest(store, exclude=("features/vit", "_prep/features/vit", "manifest.json"))
    assert after == tree_digest_of(before, exclude=("features/vit", "_prep/features/vit",
                                                    "manifest.json"))  # fmt: skip


def tree_digest_of(digest: dict[str, bytes], exclude: tuple[str, ...]) -> dict[str, bytes]:
    return {k: v for k, v in digest.items() if not k.startswith(exclude)}


def test_a_row_whose_image_no_longer_decodes_is_nan_and_listed_with_the_set(
    built,
    set_models,
    tmp_path,  # noqa: F811
):
    root, store = built
    data = shutil.copytree(root, tmp_path / "data")
    store = _copy(store, tmp_path / "store")
    victim = sorted((data / "train_images" / "dog").iterdir())[0]
    victim.write_bytes(b"not an image any more")
    sets = [timm_set("vit2", set_models["timm"], pooling="cls+mean")]
    data_prep.main(add_argv(store, sets, "--input.root", str(data)))
    arrays = load_features(store, "train", ["vit2"])
    row = arrays.ids.index(victim.stem)
    assert arrays.missing("vit2").tolist() == [i == row for i in range(len(arrays))]
    rows = [r for r in (store / "failures.csv").read_text().splitlines() if r.endswith(",vit2")]
    assert len(rows) == 1 and victim.name in rows[0] and "not an image" in rows[0]
    assert open_store(store).manifest["splits"]["train"]["rows"] == len(arrays)  # row kept


def _env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def test_kill_9_while_adding_a_set_then_rerun_equals_uninterrupted(built, set_models, tmp_path):  # noqa: F811
    _, store = built
    ref = _copy(store, tmp_path / "ref")
    out = _copy(store, tmp_path / "out")
    sets = [{"name": "clipimg", "kind": "hf_image", "model": str(set_models["clip"]),
             "pooling": "embed", "tta": ["hflip"]}]  # fmt: skip
    data_prep.main(add_argv(ref, sets))
    cmd = [sys.executable, "-m", "tests.prep_runner", "--pause-after", "2", "--",
           *add_argv(out, sets)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    markers = out / "_prep" / "features" / "clipimg"
    deadline = time.monotonic() + 180
    while len(list(markers.glob("*/shard-*.json"))) < 2:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the run never finished two shards"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert "clipimg" not in open_store(out).feature_names  # not listed until finished
    with pytest.raises(Exception, match="no feature set 'clipimg'"):
        load_features(out, "train", ["clipimg"])
    shard = sorted((out / "features" / "clipimg").glob("*/shard-*.arrow"))[0]
    (shard.parent / "shard-00009.arrow.tmp4242").write_bytes(b"partial")  # a kill mid-write
    data_prep.main(add_argv(out, sets))
    assert not list(out.rglob("*.tmp*"))
    for split in open_store(ref).splits:
        a, b = load_features(ref, split, ["clipimg"]), load_features(out, split, ["clipimg"])
        assert a.ids == b.ids
        np.testing.assert_array_equal(a["clipimg"], b["clipimg"])
    ea = {e["name"]: e for e in open_store(ref).features}["clipimg"]
    eb = {e["name"]: e for e in open_store(out).features}["clipimg"]
    assert ea["fingerprint"] == eb["fingerprint"] and ea["shards"] == eb["shards"]
    assert eb["timing"]["model_seconds"] > 0


def test_two_ddp_processes_add_the_same_set(built, set_models, tmp_path):
    _, store = built
    ref = _copy(store, tmp_path / "ref")
    out = _copy(store, tmp_path / "out")
    sets = [timm_set("vitddp", set_models["timm"], pooling="cls+mean", tta=["hflip"])]
    data_prep.main(add_argv(ref, sets))
    argv = add_argv(out, sets, "--run.devices", "2", "--run.strategy", "ddp")
    res = subprocess.run([sys.executable, "-m", "data_prep", *argv], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    for split in open_store(ref).splits:
        a, b = load_features(ref, split, ["vitddp"]), load_features(out, split, ["vitddp"])
        assert a.ids == b.ids
        np.testing.assert_allclose(a["vitddp"], b["vitddp"], rtol=0, atol=1e-5)
    markers = sorted((out / "_prep" / "features" / "vitddp").glob("*/shard-*.json"))
    ranks = [json.loads(p.read_text())["rank"] for p in markers]
    assert set(ranks) == {0, 1}  # both ranks wrote shards of the set


def test_rerunning_the_rows_keeps_the_added_sets(built, tiny_models, set_models, tmp_path):
    root, store = built
    store = _copy(store, tmp_path / "store")
    before = open_store(store).features
    failures = (store / "failures.csv").read_text()
    shard = store / "train" / "shard-00001.arrow"
    shard.write_bytes(shard.read_bytes()[:-16])  # a damaged row shard: the rerun redoes it
    argv = prep_argv(root, tiny_models, store, "--run.emb_dtype", "float32")
    data_prep.main([*argv, "--features", json.dumps(_sets(set_models))])
    assert open_store(store).features == before
    assert (store / "failures.csv").read_text() == failures
    data_prep.main(argv)  # the same without features: the sets stay listed too
    assert [e["name"] for e in open_store(store).features] == [e["name"] for e in before]
    arrays = load_features(store, "train")
    assert set(arrays.features) == {e["name"] for e in before}
