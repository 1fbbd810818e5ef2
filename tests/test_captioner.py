"""The captioner contract over both kinds of BLIP-2 (OPT and Flan-T5), and caption quality."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import data_prep
from data_prep.caption_quality import caption_quality
from data_prep.captioner import Captioner, CaptionPreprocessor, CaptionSetupError
from data_prep.config import CaptionConfig
from feature_store import load_arrays, open_store
from tests.fixtures_extraction import (  # noqa: F401 - tiny_blip2s, tiny_models: fixtures
    draw_kaggle_tree,
    prep_argv,
    tiny_blip2s,
    tiny_models,
)

# Random noise: images far apart, so even an untrained BLIP-2 captions them differently.
IMAGES = [
    Image.fromarray((np.random.default_rng(i).random((40, 30, 3)) * 255).astype("uint8"))
    for i in range(4)
]


def _captioner(path, **kw) -> tuple[Captioner, CaptionPreprocessor]:
    cfg = CaptionConfig(model=str(path), max_new_tokens=6, **kw)
    return Captioner(cfg, dtype=torch.float32), CaptionPreprocessor(cfg)


@pytest.mark.parametrize("keep_prompt", [True, False])
@pytest.mark.parametrize("prompt", ["a sketch of", ""])
@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_captioner_contract(tiny_blip2s, lm, prompt, keep_prompt):  # noqa: F811
    cap, pre = _captioner(tiny_blip2s[lm], prompt=prompt, keep_prompt=keep_prompt)
    assert cap.is_encoder_decoder == (lm == "t5")
    cap.check(pre)  # the start-up dry run passes for every combination
    with torch.inference_mode():
        four = cap(**pre(IMAGES))
        ones = [cap(**pre([im]))[0] for im in IMAGES]
    assert len(four) == 4 and all(isinstance(t, str) for t in four)
    assert four == ones  # batch 4 == batch 1: deterministic, batch-independent
    if prompt and keep_prompt:
        assert all(t.startswith(prompt + " ") or t == prompt for t in four)
        continuations = [t[len(prompt) :].strip() for t in four]
    else:
        assert not any(t.startswith("a sketch of") for t in four)  # prompt never leaks in
        continuations = four
    # The image reaches the language model: different images, different captions.
    assert len(set(continuations)) > 1, continuations


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_every_prompt_holds_num_query_tokens_image_tokens(tiny_blip2s, lm):  # noqa: F811
    config = json.loads((tiny_blip2s[lm] / "config.json").read_text())
    for prompt in ("", "a sketch of"):
        pre = CaptionPreprocessor(CaptionConfig(model=str(tiny_blip2s[lm]), prompt=prompt))
        ids = pre(IMAGES[:2])["input_ids"]
        counts = (ids == config["image_token_index"]).sum(dim=1)
        assert counts.tolist() == [config["num_query_tokens"]] * 2
        if lm == "t5" and not prompt:  # what the report's captioner fed the T5 encoder
            eos = pre.processor.tokenizer.eos_token_id
            assert ids[0].tolist() == [config["image_token_index"]] * config["num_query_tokens"] + [
                eos
            ]
        with pytest.raises(CaptionSetupError, match="image tokens"):
            pre.check_image_tokens(ids[:, 1:], where="x")  # one image token short


def _copy_without_query_tokens(src, dst):
    shutil.copytree(src, dst)
    conf = dst / "processor_config.json"
    data = json.loads(conf.read_text())
    del data["num_query_tokens"]  # as in processors saved by older transformers
    conf.write_text(json.dumps(data))
    return dst


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_processor_without_num_query_tokens_is_repaired(tiny_blip2s, tmp_path, lm):  # noqa: F811
    old = _copy_without_query_tokens(tiny_blip2s[lm], tmp_path / "old")
    with pytest.warns(UserWarning, match="processor_config.json has no num_query_tokens"):
        cap, pre = _captioner(old, prompt="")
    ref_cap, ref_pre = _captioner(tiny_blip2s[lm], prompt="")
    assert pre.processor.num_query_tokens == ref_pre.processor.num_query_tokens
    with torch.inference_mode():
        assert cap(**pre(IMAGES)) == ref_cap(**ref_pre(IMAGES))


def test_processor_that_cannot_be_repaired_is_refused(tiny_blip2s, tmp_path):  # noqa: F811
    old = _copy_without_query_tokens(tiny_blip2s["opt"], tmp_path / "old")
    config = json.loads((old / "config.json").read_text())
    config["image_token_index"] += 1  # the tokenizer's <image> is not the model's image token
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionSetupError, match=re.escape(str(old / "processor_config.json"))):
        CaptionPreprocessor(CaptionConfig(model=str(old)))
    config["image_token_index"] = None  # a model saved before BLIP-2 had image tokens
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(CaptionSetupError, match="no image_token_index"):
        CaptionPreprocessor(CaptionConfig(model=str(old)))
    # A processor that disagrees with the model is refused too, naming the value to set.
    mismatch = _copy_without_query_tokens(tiny_blip2s["opt"], tmp_path / "mismatch")
    conf = mismatch / "processor_config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "num_query_tokens": 3}))
    with pytest.raises(CaptionSetupError, match='"num_query_tokens": 4'):
        CaptionPreprocessor(CaptionConfig(model=str(mismatch)))


def test_failing_generate_is_caught_before_the_first_image(tiny_models, tmp_path, monkeypatch):  # noqa: F811
    from transformers import Blip2ForConditionalGeneration

    import data_prep.text_encoder

    def boom(*args, **kwargs):
        raise AttributeError("'T5Config' object has no attribute 'bos_token_id'")

    def text_encoder_loaded(*args, **kwargs):
        raise AssertionError("the text encoder was loaded before the captioner was checked")

    monkeypatch.setattr(Blip2ForConditionalGeneration, "generate", boom)
    monkeypatch.setattr(data_prep.text_encoder.TextEncoder, "__init__", text_encoder_loaded)
    root = draw_kaggle_tree(tmp_path / "data", train=1, val=1, test=1, bad_images=False)
    with pytest.raises(CaptionSetupError, match="one-image test run.*bos_token_id"):
        data_prep.main(prep_argv(root, tiny_models, tmp_path / "store"))
    assert not list((tmp_path / "store").rglob("*.parquet"))


@pytest.mark.slow
def test_flan_t5_blip2_without_prompt_end_to_end(tiny_blip2s, tiny_models, tmp_path):  # noqa: F811
    """The report's captioner setting (blip2-flan-t5-xl, no prompt) through data_prep."""
    root = draw_kaggle_tree(tmp_path / "data", train=2, val=1, test=2, bad_images=False)
    argv = prep_argv(root, tiny_models, tmp_path / "store", "--caption.model",
                     str(tiny_blip2s["t5"]), "--caption.prompt", "")  # fmt: skip
    out = data_prep.main(argv)
    info = open_store(out)
    assert info.manifest["models"]["caption"]["prompt"] == ""
    train = load_arrays(out, "train")
    assert len(train) == 6 and all(isinstance(c, str) for c in train.captions)
    assert len(set(train.captions)) > 1
    n_degenerate = sum(caption_quality(c) == "degenerate" for c in train.captions)
    assert info.manifest["splits"]["train"]["captions_degenerate"] == n_degenerate


def test_caption_quality():
    assert caption_quality("") == "empty" and caption_quality("   ") == "empty"
    assert caption_quality("of of of of") == "degenerate"
    assert caption_quality("a sketch of a a a a a a") == "degenerate"
    assert caption_quality("123 456") == "degenerate"
    assert caption_quality("a sketch of a dog") == "ok"
    # Sub-word and character loops, which have no spaces for a word count to see.
    assert caption_quality("a sketch of uxbuxbuxbuxbuxb") == "degenerate"
    assert caption_quality("owowowowowow") == "degenerate"  # a tiny T5's actual output
    assert caption_quality("a drawing of a cat zzzzzzzz") == "degenerate"
    assert caption_quality("a dog a dog a dog a dog") == "degenerate"
    # Real words with a repeated piece, short runs, and digits are not loops.
    for fine in ("a drawing of a banana", "a sketch of a bonbon in mississippi",
                 "a cat says zzz", "a sketch of 1000000 people", "two words", "dog"):  # fmt: skip
        assert caption_quality(fine) == "ok", fine
