"""BLIP-2 captioning at the real sizes: peak memory and seconds per image.

$ HF_HUB_OFFLINE=1 python bench/bench_caption.py --lm opt --dtype bf16        # CPU, 8 images
$ HF_HUB_OFFLINE=1 python bench/bench_caption.py --lm t5 --dtype bf16 --prompt ""
$ python bench/bench_caption.py --lm t5 --device cuda --dtype bf16 --images 256 --batch-size 32
$ python bench/bench_caption.py --model Salesforce/blip2-flan-t5-xl --device cuda   # real weights
$ python bench/bench_caption.py --lm t5 --device cuda --dtype fp16 --load-in-8bit   # the report's

Without ``--model`` it builds (once, in a child process, into ``--cache``) a BLIP-2 with
random weights from the real configs: ``opt`` is Salesforce/blip2-opt-2.7b (EVA ViT-g,
Q-Former, OPT-2.7b), ``t5`` is Salesforce/blip2-flan-t5-xl (the same ViT and Q-Former,
Flan-T5-xl), saved in bf16 (about 7.5 GB on disk each; ``--dtype fp32`` upcasts at load).
The tokenizer is the tiny in-process one (a tokenizer costs nothing next to generate).

It then captions ``--images`` generated sketches through data_prep's own code path
(CaptionPreprocessor, Captioner, its start-up check) and prints one JSON line: load time,
seconds per image (all batches, and after the first), peak RSS of this process, peak GPU
memory on CUDA, and hours for 50,000 images. Random weights rarely emit EOS, and every
caption is forced to ``--max-new-tokens`` tokens (min_new_tokens), so this is the upper
bound for that setting: real captions stop earlier.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

# Salesforce/blip2-*'s vision and Q-Former configs (shared by both) and the two LMs.
VISION = dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
              num_attention_heads=16, image_size=224, patch_size=14, qkv_bias=True,
              layer_norm_eps=1e-5)  # fmt: skip
QFORMER = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
               num_attention_heads=12, cross_attention_frequency=2, encoder_hidden_size=1408,
               vocab_size=30523)  # fmt: skip
TEXT = {
    "opt": dict(
        model_type="opt",
        vocab_size=50304,
        hidden_size=2560,
        word_embed_proj_dim=2560,
        ffn_dim=10240,
        num_hidden_layers=32,
        num_attention_heads=32,
        max_position_embeddings=2048,
        do_layer_norm_before=True,
        activation_function="relu",
        eos_token_id=50118,
    ),  # fmt: skip
    "t5": dict(
        model_type="t5",
        vocab_size=32128,
        d_model=2048,
        d_kv=64,
        d_ff=5120,
        num_layers=24,
        num_decoder_layers=24,
        num_heads=32,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        layer_norm_epsilon=1e-6,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    ),  # fmt: skip
}
REAL = {"opt": "Salesforce/blip2-opt-2.7b", "t5": "Salesforce/blip2-flan-t5-xl"}


def build(lm: str, out: Path) -> Path:
    """A random-weight BLIP-2 of ``REAL[lm]``'s shape in ``out`` (bf16 on disk)."""
    import torch
    from transformers import (
        CONFIG_MAPPING,
        Blip2Config,
        Blip2ForConditionalGeneration,
        Blip2Processor,
        BlipImageProcessor,
    )

    from data_prep.tiny_models import _IMAGE_TOKEN, _bpe_tokenizer, _unigram_tokenizer

    tokenizer = _bpe_tokenizer() if lm == "opt" else _unigram_tokenizer()
    text = dict(TEXT[lm])
    text_config = CONFIG_MAPPING[text.pop("model_type")](**text)
    config = Blip2Config(
        vision_config=VISION,
        qformer_config=QFORMER,
        text_config=text_config.to_dict(),
        num_query_tokens=32,
        image_token_index=tokenizer.convert_tokens_to_ids(_IMAGE_TOKEN),
    )
    torch.manual_seed(0)
    torch.set_default_dtype(torch.bfloat16)  # build in bf16: half the memory of fp32
    model = Blip2ForConditionalGeneration(config).eval()
    torch.set_default_dtype(torch.float32)
    gen = model.generation_config
    gen.pad_token_id, gen.eos_token_id = tokenizer.pad_token_id, text_config.eos_token_id
    processor = Blip2Processor(
        image_processor=BlipImageProcessor(
            size={"height": 224, "width": 224},
            image_mean=[0.48145466, 0.4578275, 0.40821073],
            image_std=[0.26862954, 0.26130258, 0.27577711],
        ),
        tokenizer=tokenizer,
        num_query_tokens=32,
    )
    tmp = out.with_name(out.name + ".tmp")
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    tmp.rename(out)  # a half-written model is never reused
    return out


def sketches(n: int) -> list:
    import numpy as np

    from data_prep.demo_images import draw_sketch

    rng = np.random.default_rng(0)
    shapes = ["circle", "square", "star", "house", "heart", "moon", "spiral", "arrow"]
    return [draw_sketch(shapes[i % len(shapes)], rng, size=256) for i in range(n)]


def measure(args) -> dict:
    import torch

    from data_prep.captioner import Captioner, CaptionPreprocessor
    from data_prep.config import CaptionConfig
    from data_prep.loading import TORCH_DTYPES

    dtype = getattr(torch, TORCH_DTYPES[args.dtype])
    cfg = CaptionConfig(model=args.model, prompt=args.prompt, keep_prompt=True,
                        max_new_tokens=args.max_new_tokens, num_beams=1,
                        load_in_8bit=args.load_in_8bit)  # fmt: skip
    start = time.perf_counter()
    pre = CaptionPreprocessor(cfg)
    cap = Captioner(cfg, dtype=dtype)
    if not args.load_in_8bit:  # bitsandbytes has already put the 8-bit model on the GPU
        cap = cap.to(args.device)
    cap.model.generation_config.min_new_tokens = args.max_new_tokens  # see the docstring
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    cap.check(pre)
    sync()
    load_s = time.perf_counter() - start
    images = sketches(args.images)
    per_batch, captions = [], []
    with torch.inference_mode():
        for i in range(0, len(images), args.batch_size):
            batch = pre(images[i : i + args.batch_size])
            sync()
            t = time.perf_counter()
            captions += cap(**batch)
            sync()
            per_batch.append((time.perf_counter() - t, len(batch["input_ids"])))
    total_s = sum(s for s, _ in per_batch)
    rest = per_batch[1:] or per_batch
    s_img = sum(s for s, _ in rest) / sum(n for _, n in rest)
    out = {
        "model": args.model,
        "random_weights_shaped_as": REAL[args.lm] if args.built else None,
        "dtype": args.dtype,
        "load_in_8bit": args.load_in_8bit,
        "device": args.device,
        "prompt": args.prompt,
        "images": len(images),
        "batch_size": args.batch_size,
        "new_tokens_per_image": args.max_new_tokens,
        "torch_threads": torch.get_num_threads(),
        "load_and_check_s": round(load_s, 1),
        "s_per_image_all": round(total_s / len(images), 3),
        "s_per_image_after_first_batch": round(s_img, 3),
        "hours_for_50k_images": round(s_img * 50_000 / 3600, 2),
        # ru_maxrss is in KiB on Linux: the peak of the whole process, loading included.
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "caption_example": captions[0][:80],
        # Other jobs on a shared machine slow every figure: read them with this.
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
    }
    if args.device.startswith("cuda"):
        out["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["gpu"] = torch.cuda.get_device_name()
    return out


def main(argv: list[str] | None = None) -> dict | None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lm", choices=sorted(TEXT), default="opt", help="which real BLIP-2 shape")
    p.add_argument("--model", help="a real BLIP-2 (hub id or directory) instead of a built one")
    p.add_argument("--dtype", choices=["bf16", "fp32", "fp16"], default="bf16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    p.add_argument("--load-in-8bit", action="store_true", help="the report's setting (CUDA)")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=20)
    p.add_argument("--prompt", default=None, help='default: "a sketch of" (opt), "" (t5)')
    p.add_argument("--cache", default="bench/.cache", help="where built models are kept")
    p.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.prompt is None:  # the report's settings: Flan-T5 with no prompt
        args.prompt = "a sketch of" if args.lm == "opt" else ""
    built = Path(args.cache) / f"blip2-{args.lm}-random"
    args.built = args.model is None
    if args.build_only:
        build(args.lm, built)
        return None
    if args.model is None:
        if not (built / "config.json").is_file():
            # In a child process, so the build's memory peak is not counted below.
            built.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, __file__, "--lm", args.lm, "--cache", args.cache,
                   "--build-only"]  # fmt: skip
            subprocess.run(cmd, check=True)
        args.model = str(built)
    res = measure(args)
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # data_prep from this repo
    main()
