"""Every extractor kind on a tiny random model of the real class, against the model's own
computation; bad input to the add command: one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import data_prep
from data_prep.__main__ import _cli
from data_prep.class_names import readable_names, synset_indices
from data_prep.class_scores import Classes
from data_prep.config import FeatureSetConfig, parse_config
from data_prep.set_kinds import KINDS
from feature_store import COLUMNS, load_features, open_store, write_store
from tests.fixtures_extraction import draw_kaggle_tree, prep_argv, tiny_models  # noqa: F401
from tests.fixtures_sets import add_argv, set_models, timm_set, tree_digest  # noqa: F401

F32 = torch.float32
SYNSETS = ["n01440764", "n01443537", "n02085620"]  # tench, goldfish, Chihuahua


def _images() -> list[Image.Image]:
    out = []
    for i in range(3):
        im = Image.new("RGB", (40 + 9 * i, 48), "white")
        ImageDraw.Draw(im).line([(3, 5), (30, 40 - 5 * i), (10 + i, 20)], fill="black", width=2)
        out.append(im)
    return out


def _run(extractor, inputs):
    with torch.inference_mode():
        return extractor(inputs)


def _build(fs: dict, classes=None):
    cfg = FeatureSetConfig(**fs)
    return KINDS[cfg.kind].load()(cfg, dtype=F32, classes=classes)


def test_every_kind_is_registered_with_its_class():
    from data_prep.set_kinds import TTA
    from data_prep.set_predict import TRANSFORMS

    assert set(TRANSFORMS) == set(TTA)  # every transform the config accepts is implemented
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert TRANSFORMS["hflip"](x)[0, 0, 0].tolist() == [2.0, 1.0, 0.0]
    assert TRANSFORMS["vflip"](x)[0, 0, :, 0].tolist() == [3.0, 0.0]
    for name, kind in KINDS.items():
        assert kind.set_kind in ("image", "text", "scores") and kind.reads in ("image", "caption")
        assert callable(kind.load()), name


@pytest.mark.parametrize("pooling", ["cls", "mean", "cls+mean", "pooler", "embed"])
def test_hf_image_clip_tower(set_models, pooling):  # noqa: F811
    from transformers import CLIPModel

    ex = _build({"name": "c", "kind": "hf_image", "model": str(set_models["clip"]),
                 "pooling": pooling})  # fmt: skip
    x = ex.preprocess(_images())
    got = _run(ex, x)
    model = CLIPModel.from_pretrained(set_models["clip"]).eval()
    with torch.no_grad():
        out = model.vision_model(pixel_values=x)
        tokens = out.last_hidden_state
        expected = {
            "cls": tokens[:, 0], "mean": tokens[:, 1:].mean(1),
            "cls+mean": torch.cat([tokens[:, 0], tokens[:, 1:].mean(1)], 1),
            "pooler": out.pooler_output,
            "embed": model.get_image_features(pixel_values=x).pooler_output,
        }[pooling]  # fmt: skip
    assert ex.dim == expected.shape[1] and ex.describe()["prefix_tokens"] == 1
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_hf_image_siglip_has_no_cls_and_pools_every_patch(set_models):  # noqa: F811
    from transformers import SiglipModel

    with pytest.raises(ValueError, match="no CLS token; use pooling mean or pooler"):
        _build({"name": "s", "kind": "hf_image", "model": str(set_models["siglip"]),
                "pooling": "cls"})  # fmt: skip
    ex = _build({"name": "s", "kind": "hf_image", "model": str(set_models["siglip"]),
                 "pooling": "mean"})  # fmt: skip
    x = ex.preprocess(_images())
    model = SiglipModel.from_pretrained(set_models["siglip"]).eval()
    with torch.no_grad():
        expected = model.vision_model(pixel_values=x).last_hidden_state.mean(1)
    np.testing.assert_allclose(_run(ex, x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", ["cls+mean", "head"])
def test_timm_image(set_models, pooling):  # noqa: F811
    import timm

    from data_prep.tiny_models import TINY_TIMM

    ex = _build(timm_set("t", set_models["timm"], pooling=pooling))
    x = ex.preprocess(_images())
    assert x.shape[-1] == 32  # the tiny model's own data config
    kwargs = {k: v for k, v in TINY_TIMM["model_kwargs"].items() if k != "pretrained_cfg_overlay"}
    model = timm.create_model(TINY_TIMM["model"], num_classes=1000, **kwargs).eval()
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(set_models["timm"])))
    with torch.no_grad():
        feats = model.forward_features(x)
        expected = (model.forward_head(feats, pre_logits=True) if pooling == "head"
                    else torch.cat([feats[:, 0], feats[:, 1:].mean(1)], 1))  # fmt: skip
    np.testing.assert_allclose(_run(ex, x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("library", ["timm", "transformers"])
def test_imagenet_logits_are_the_store_synsets_in_store_order(set_models, library):  # noqa: F811
    from timm.data import ImageNetInfo

    classes = Classes(folders=SYNSETS, names=["tench", "goldfish", "Chihuahua"], source="test")
    if library == "timm":
        ex = _build(timm_set("l", set_models["timm"], kind="imagenet_logits"), classes)
    else:
        ex = _build({"name": "l", "kind": "imagenet_logits", "model": str(set_models["classifier"])},
                    classes)  # fmt: skip
    x = ex.preprocess(_images())
    got = _run(ex, x)
    with torch.no_grad():
        full = ex.model(x) if library == "timm" else ex.model(pixel_values=x).logits
    order = ImageNetInfo().label_names()  # an independent look-up of each synset's index
    expected = full[:, [order.index(s) for s in SYNSETS]]
    assert got.shape == (3, 3) and ex.describe()["imagenet_subset"] == "imagenet-1k"
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_zero_shot_clip_averages_its_templates(set_models):  # noqa: F811
    from transformers import AutoTokenizer, CLIPModel

    names = ["cat", "house", "boat"]
    templates = ["a sketch of a {}.", "a drawing of the {}."]
    ex = _build({"name": "z", "kind": "zero_shot", "model": str(set_models["clip"]),
                 "templates": templates}, Classes(names, names, "test"))  # fmt: skip
    x = ex.preprocess(_images())
    model = CLIPModel.from_pretrained(set_models["clip"]).eval()
    tok = AutoTokenizer.from_pretrained(set_models["clip"])
    with torch.no_grad():
        text = model.get_text_features(
            **tok(
                [t.format(n) for n in names for t in templates], padding=True, return_tensors="pt"
            )
        ).pooler_output
        text = torch.nn.functional.normalize(text, dim=-1).view(3, 2, -1).mean(1)
        text = torch.nn.functional.normalize(text, dim=-1)
        image = torch.nn.functional.normalize(
            model.get_image_features(pixel_values=x).pooler_output, dim=-1
        )
        expected = model.logit_scale.exp() * image @ text.T
    np.testing.assert_allclose(_run(ex, x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_class_names_from_a_csv_wordnet_or_folders(tmp_path):
    names, source = readable_names(SYNSETS)
    assert names == ["tench", "goldfish", "Chihuahua"] and "wordnet" in source
    assert readable_names(["ice_cream", "dog"])[0] == ["ice cream", "dog"]
    csv = tmp_path / "names.csv"
    csv.write_text("folder,name\nn01440764,a tench fish\nn01443537,a goldfish\n")
    with pytest.raises(ValueError, match="has no name for 1 of the store's 3 classes"):
        readable_names(SYNSETS, str(csv))
    csv.write_text(csv.read_text() + "n02085620,a small dog\n")
    assert readable_names(SYNSETS, str(csv))[0][2] == "a small dog"
    assert synset_indices(SYNSETS) == [0, 1, 151]
    with pytest.raises(ValueError, match=r"1 are not \(e.g. \['n99999999'\]\)"):
        synset_indices(["n01440764", "n99999999"])


def test_every_add_config_parses_with_registered_sets():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "prep").glob("add_*.yaml"))
    kinds = set()
    for path in configs:
        cfg, _ = parse_config(["--config", str(path)])
        assert cfg.run.mode == "add" and cfg.features
        kinds |= {fs.kind for fs in cfg.features}
    # The competition's sets: a big image tower, SigLIP + its zero-shot scores, ImageNet
    # logits for the synsets, caption-to-class-name scores.
    assert {"hf_image", "zero_shot", "imagenet_logits", "caption_scores"} <= kinds


# -- bad input: one line, exit 2, nothing written ------------------------------------------


@pytest.fixture(scope="module")
def synset_store(tmp_path_factory, tiny_models):  # noqa: F811
    """A data_prep store whose class folders are synsets (one not in ImageNet-1k)."""
    tmp = tmp_path_factory.mktemp("synsets")
    root = draw_kaggle_tree(tmp / "data", classes=("n01440764", "n01443537"), train=2, val=1,
                            test=1, bad_images=False)  # fmt: skip
    return root, data_prep.main(prep_argv(root, tiny_models, tmp / "store"))


def _refused(argv, store, capsys, match: str) -> None:
    before = tree_digest(store)
    assert _cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("data_prep: error:"), err
    assert match in err, err
    assert tree_digest(store) == before


def test_bad_sets_are_refused_before_anything_is_written(synset_store, set_models, tmp_path,  # noqa: F811
                                                         capsys):  # fmt: skip
    root, store = synset_store
    minilm = str(set_models["minilm"])
    cases = [
        ([{"name": "x", "kind": "nope", "model": "m"}], "unknown feature kind 'nope'"),
        ([{"name": "x", "kind": "hf_image", "model": "m", "pooling": "max"}], "pooling 'max'"),
        ([{"name": "image", "kind": "hf_text", "model": minilm}], "collides"),
        ([{"name": "a", "kind": "hf_text", "model": minilm}] * 2, "given twice"),
        ([{"name": "a", "kind": "hf_text", "model": minilm, "tta": ["hflip"]}], "tta"),
    ]
    for sets, match in cases:
        _refused(add_argv(store, sets), store, capsys, match)
    csv = tmp_path / "names.csv"
    csv.write_text("n01440764,tench\n")
    caption = [{"name": "c", "kind": "caption_scores", "model": minilm}]
    _refused(add_argv(store, caption, "--input.class_names", str(csv)), store, capsys,
             "has no name for 1 of the store's 2 classes")  # fmt: skip
    other = draw_kaggle_tree(tmp_path / "other", classes=("n01440764", "n01443537"), train=3,
                             val=1, test=1, bad_images=False, seed=3)  # fmt: skip
    image = [timm_set("t", set_models["timm"], pooling="head")]
    _refused(add_argv(store, image, "--input.root", str(other)), store, capsys,
             "are not the images the store")  # fmt: skip
    _refused(add_argv(tmp_path / "nowhere", caption), tmp_path, capsys,
             "is not a finished feature store")  # fmt: skip
    assert not (tmp_path / "nowhere").exists()


def test_logits_for_classes_outside_imagenet_1k_are_refused(set_models, tmp_path, capsys):  # noqa: F811
    n = 2
    write_store(tmp_path / "s", class_names=["n01440764", "n09999999"], splits={"train": {
        "id": ["a", "b"], "label": [0, 1], "image_emb": np.zeros((n, 4)),
        "text_emb": np.zeros((n, 3))}})  # fmt: skip
    sets = [timm_set("l", set_models["timm"], kind="imagenet_logits")]
    _refused(add_argv(tmp_path / "s", sets), tmp_path / "s", capsys, "['n09999999']")
    write_store(tmp_path / "t", class_names=["cat", "dog"], splits={"train": {
        "id": ["a", "b"], "label": [0, 1], "image_emb": np.zeros((n, 4)),
        "text_emb": np.zeros((n, 3))}})  # fmt: skip
    _refused(add_argv(tmp_path / "t", sets), tmp_path / "t", capsys, "ImageNet synsets")


def test_synset_store_gets_wordnet_prompts_and_logits(synset_store, set_models, tmp_path):  # noqa: F811
    import shutil

    _, store = synset_store
    store = shutil.copytree(store, tmp_path / "store")
    sets = [timm_set("logits", set_models["timm"], kind="imagenet_logits"),
            {"name": "cap", "kind": "caption_scores", "model": str(set_models["minilm"])}]  # fmt: skip
    data_prep.main(add_argv(store, sets))
    entries = {e["name"]: e for e in open_store(store).features}
    assert entries["cap"]["class_names"] == ["tench", "goldfish"]
    assert entries["logits"]["dim"] == 2 and entries["cap"]["dim"] == 2
    arrays = load_features(store, "train", ["logits", "cap"])
    assert np.isfinite(arrays["logits"]).all() and (np.abs(arrays["cap"]) <= 1 + 1e-5).all()
    assert json.loads((store / "manifest.json").read_text())["format_version"] == 3


@pytest.mark.parametrize("name", COLUMNS)
def test_a_set_named_after_a_row_column_is_refused(name, tmp_path, capsys):
    # A set's shards hold `id` and a column named after the set, and load_features returns
    # the rows' columns beside the sets: a set called `caption` or `id` would shadow them.
    write_store(tmp_path / "s", class_names=["cat", "dog"], splits={"train": {
        "id": ["a", "b"], "label": [0, 1], "image_emb": np.zeros((2, 4)),
        "text_emb": np.zeros((2, 3))}})  # fmt: skip
    sets = [{"name": name, "kind": "hf_text", "model": "m"}]
    _refused(add_argv(tmp_path / "s", sets), tmp_path / "s", capsys,
             f"features[0].name {name!r} collides with a column of the store's rows")  # fmt: skip
