"""Tiny, randomly initialised DINOv2 / BLIP-2 / BERT models of the real classes.

$ python -m data_prep.tiny_models demo/models     # writes dinov2/ blip2/ bert/ under it
$ python -c "from data_prep.tiny_models import *; build_tiny_blip2('t5', language_model='t5')"

They exist so the demo and the tests run offline in seconds through exactly the code path
a real model takes (``from_pretrained(local_dir)``). They are UNTRAINED: their captions
are gibberish and their embeddings carry no meaning beyond what random projections keep.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# A small corpus for the in-process tokenizers: words a sketch caption would use.
_CORPUS = [
    "a sketch of a dog",
    "a drawing of a cat sitting on a chair",
    "a black and white pencil sketch of a bird",
    "a line drawing of a house with a tree",
    "a cartoon of a car on the road",
    "an illustration of a fish in the water",
    "a simple doodle of a flower and the sun",
    "a hand drawn picture of a boat, a plane and a train",
    "the quick brown fox jumps over the lazy dog 0123456789",
]
_IMAGE_TOKEN = "<image>"


def _bpe_tokenizer(vocab_size: int = 300):
    """A byte-level BPE tokenizer (OPT's kind) trained in-process, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "</s>", "<unk>", _IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        # Only the corpus's own characters: an untrained model then babbles sub-words
        # ("a sketch of housefish") rather than stray bytes that decode to nothing.
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _unigram_tokenizer(vocab_size: int = 300):
    """A SentencePiece-style Unigram tokenizer (T5's kind) trained in-process, with <image>."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AddedToken, T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "</s>", "<unk>"],  # T5's ids 0, 1, 2
        unk_token="<unk>",
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    vocab = [tuple(v) for v in json.loads(tok.to_str())["model"]["vocab"]]
    # T5TokenizerFast rebuilds the real T5 pipeline (Metaspace, "</s>" appended) on this vocab.
    out = T5TokenizerFast(vocab=vocab, extra_ids=0)
    out.add_tokens([AddedToken(_IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return out


def _wordpiece_tokenizer(vocab_size: int = 200):
    """A BERT WordPiece tokenizer trained in-process on the same corpus."""
    from tokenizers import BertWordPieceTokenizer, Tokenizer
    from transformers import BertTokenizerFast

    tok = BertWordPieceTokenizer(lowercase=True)
    tok.train_from_iterator(
        _CORPUS * 4, vocab_size=vocab_size, min_frequency=1, show_progress=False
    )
    # tokenizers' own Tokenizer of the trained wrapper, through its public JSON form.
    return BertTokenizerFast(tokenizer_object=Tokenizer.from_str(tok.to_str()))


def build_tiny_dinov2(out: str | os.PathLike, *, hidden: int = 64, image_size: int = 64) -> Path:
    """Dinov2Model + its image processor (shortest-edge resize, centre crop) in ``out``."""
    import torch
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_ratio=2,
        image_size=image_size,
        patch_size=8,
        # Wider than the real init (0.02): a random ViT with the real init maps every sketch
        # to nearly the same vector (a linear probe on the demo is at chance); at 0.2 its
        # random features keep enough of the image for the demo's heads to learn something.
        initializer_range=0.2,
    )
    model = Dinov2Model(config).eval()
    # The real facebook/dinov2-* processor scaled down: resize to 256/224 of the crop, crop.
    processor = BitImageProcessor(
        size={"shortest_edge": image_size * 8 // 7},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        resample=3,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)


def build_tiny_blip2(
    out: str | os.PathLike,
    *,
    hidden: int = 32,
    image_size: int = 32,
    num_query_tokens: int = 4,
    language_model: str = "opt",
) -> Path:
    """Blip2ForConditionalGeneration (tiny ViT + Q-Former + LM) and its processor in ``out``.

    ``language_model`` is ``opt`` (decoder-only, byte-level BPE: blip2-opt-*) or ``t5``
    (encoder-decoder, Unigram: blip2-flan-t5-*), the two kinds of released BLIP-2.
    """
    import torch
    from transformers import (
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        Blip2QFormerConfig,
        Blip2VisionConfig,
        BlipImageProcessor,
    )

    torch.manual_seed(1)
    tokenizer = _bpe_tokenizer() if language_model == "opt" else _unigram_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN)
    # A wide init (0.5, not 0.02) so different images lead to different (random) captions.
    init = 0.5
    small = dict(
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        initializer_range=init,
    )
    config = Blip2Config(
        vision_config=Blip2VisionConfig(
            hidden_size=hidden, image_size=image_size, patch_size=8, **small
        ).to_dict(),
        qformer_config=Blip2QFormerConfig(
            hidden_size=hidden, encoder_hidden_size=hidden, vocab_size=len(tokenizer), **small
        ).to_dict(),
        text_config=_tiny_text_config(language_model, tokenizer, hidden=hidden, init=init),
        num_query_tokens=num_query_tokens,
        image_token_index=image_token_id,
        initializer_range=init,
    )
    model = Blip2ForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    if language_model == "opt":
        model.generation_config.bos_token_id = tokenizer.bos_token_id
    else:  # T5 starts decoding from <pad> and has no BOS (as google/flan-t5-*)
        model.generation_config.decoder_start_token_id = tokenizer.pad_token_id
    image_processor = BlipImageProcessor(
        size={"height": image_size, "width": image_size},
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    processor = Blip2Processor(
        image_processor=image_processor, tokenizer=tokenizer, num_query_tokens=num_query_tokens
    )
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)


def _tiny_text_config(kind: str, tokenizer, *, hidden: int, init: float) -> dict:
    """A one-layer OPT or T5 config sized to ``tokenizer``, with its special token ids."""
    from transformers import OPTConfig, T5Config

    if kind == "opt":
        return OPTConfig(
            vocab_size=len(tokenizer),
            hidden_size=hidden,
            word_embed_proj_dim=hidden,
            ffn_dim=2 * hidden,
            num_hidden_layers=1,
            num_attention_heads=2,
            max_position_embeddings=128,
            init_std=init,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ).to_dict()
    if kind == "t5":
        # flan-t5's shape in small: gated-GELU feed-forward, untied output embedding.
        return T5Config(
            vocab_size=len(tokenizer),
            d_model=hidden,
            d_kv=hidden // 2,
            d_ff=2 * hidden,
            # Two layers, not one: a one-layer random T5 decoder loops on one token for
            # almost every image; two give image-dependent (random) captions.
            num_layers=2,
            num_decoder_layers=2,
            num_heads=2,
            feed_forward_proj="gated-gelu",
            tie_word_embeddings=False,
            initializer_factor=3.0,  # T5 scales its own init by this
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            decoder_start_token_id=tokenizer.pad_token_id,
        ).to_dict()
    raise ValueError(f"language_model {kind!r} is not one of ['opt', 't5']")


def build_tiny_bert(out: str | os.PathLike, *, hidden: int = 32) -> Path:
    """BertModel + a WordPiece tokenizer in ``out``."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(2)
    tokenizer = _wordpiece_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    BertModel(config).eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    return Path(out)


def _eos_bpe_tokenizer():
    """The byte-level BPE with ``</s>`` appended to every text (CLIP / SigLIP text towers
    pool at their end-of-text token)."""
    from tokenizers import processors

    tok = _bpe_tokenizer()
    eos = tok.eos_token_id
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", eos)]
    )
    return tok


def build_tiny_dual_tower(out: str | os.PathLike, *, family: str = "clip", hidden: int = 32,
                          image_size: int = 32) -> Path:  # fmt: skip
    """A tiny CLIPModel or SiglipModel (``family``) + its image processor and a tokenizer."""
    import torch
    import transformers as tf

    torch.manual_seed(3)
    tokenizer = _eos_bpe_tokenizer()
    small = dict(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                 num_attention_heads=2)  # fmt: skip
    text = dict(vocab_size=len(tokenizer), max_position_embeddings=32,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id, **small)  # fmt: skip
    vision = dict(image_size=image_size, patch_size=8, **small)
    if family == "clip":
        config = tf.CLIPConfig(text_config=text, vision_config=vision, projection_dim=hidden)
        model = tf.CLIPModel(config)
        processor = tf.CLIPImageProcessor(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        )
    elif family == "siglip":
        model = tf.SiglipModel(tf.SiglipConfig(text_config=text, vision_config=vision))
        processor = tf.SiglipImageProcessor(size={"height": image_size, "width": image_size})
    else:
        raise ValueError(f"family {family!r} is not one of ['clip', 'siglip']")
    tokenizer.model_max_length = 32
    if family == "siglip":  # as google/siglip-*: the text tower is fed ids only, no mask
        tokenizer.model_input_names = ["input_ids"]
        tokenizer.init_kwargs["model_input_names"] = ["input_ids"]  # saved with it
    model.eval().save_pretrained(out)
    tokenizer.save_pretrained(out)
    processor.save_pretrained(out)
    return Path(out)


def build_tiny_dinov2_registers(out: str | os.PathLike, *, hidden: int = 32) -> Path:
    """A tiny Dinov2WithRegistersModel (4 register tokens) + the DINOv2 image processor."""
    import torch
    from transformers import BitImageProcessor, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    torch.manual_seed(4)
    config = Dinov2WithRegistersConfig(hidden_size=hidden, num_hidden_layers=1,
                                       num_attention_heads=2, mlp_ratio=2, image_size=32,
                                       patch_size=8, num_register_tokens=4)  # fmt: skip
    Dinov2WithRegistersModel(config).eval().save_pretrained(out)
    BitImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32},
                      do_center_crop=True).save_pretrained(out)  # fmt: skip
    return Path(out)


def build_tiny_imagenet_classifier(out: str | os.PathLike, *, hidden: int = 32) -> Path:
    """A tiny transformers ViTForImageClassification with ImageNet-1k's 1000 outputs."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(5)
    config = ViTConfig(hidden_size=hidden, num_hidden_layers=1, num_attention_heads=2,
                       intermediate_size=2 * hidden, image_size=32, patch_size=8,
                       num_labels=1000)  # fmt: skip
    ViTForImageClassification(config).eval().save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return Path(out)


# A timm ViT small enough for a test, at 32 px (its data config says so too).
TINY_TIMM = {
    "model": "vit_tiny_patch16_224",
    "model_kwargs": {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32,
                     "num_heads": 2, "pretrained_cfg_overlay": {"input_size": [3, 32, 32]}},
}  # fmt: skip


def build_tiny_timm(out: str | os.PathLike, *, num_classes: int = 1000) -> Path:
    """Random weights of :data:`TINY_TIMM` with ``num_classes`` outputs, as ``out``
    (a .safetensors file: load it with weights_file and the same model_kwargs)."""
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(6)
    kwargs = {k: v for k, v in TINY_TIMM["model_kwargs"].items() if k != "pretrained_cfg_overlay"}
    model = timm.create_model(TINY_TIMM["model"], pretrained=False, num_classes=num_classes,
                              **kwargs)  # fmt: skip
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out))
    return out


BUILDERS = {"dinov2": build_tiny_dinov2, "blip2": build_tiny_blip2, "bert": build_tiny_bert}


def ensure_tiny_models(root: str | os.PathLike) -> dict[str, Path]:
    """Build ``root/{dinov2,blip2,bert}`` where missing (a config.json marks a finished one)."""
    from data_prep.loading import hf_progress_bars_off

    root = Path(root)
    paths = {}
    for name, build in BUILDERS.items():
        path = root / name
        if not (path / "config.json").is_file():
            # Build next to the target and rename, so an interrupted build is never reused.
            tmp = root / f".{name}.tmp{os.getpid()}"
            with hf_progress_bars_off():
                build(tmp)
            if path.exists():
                import shutil

                shutil.rmtree(path)
            tmp.rename(path)
        paths[name] = path
    return paths


if __name__ == "__main__":
    for name, path in ensure_tiny_models(
        sys.argv[1] if len(sys.argv) > 1 else "demo/models"
    ).items():
        print(f"{name}: {path}")
