"""The captioner: BLIP-2 through transformers, batched ``generate`` with a prompt.

$ python -c "from data_prep.captioner import *; help(Captioner)"

The processor (image transform + prompt tokens with BLIP-2's image placeholder tokens)
runs in the DataLoader workers via :class:`CaptionPreprocessor`; the model process only
calls ``generate``. Captions are checked for being empty or degenerate (a model stuck
repeating one word, or no letters at all), and those are counted in the manifest.
"""

from __future__ import annotations

from collections import Counter

import torch
from torch import nn

from data_prep.config import CaptionConfig
from data_prep.loading import load_pretrained, model_source


def caption_quality(caption: str) -> str:
    """``"empty"``, ``"degenerate"`` or ``"ok"`` for one caption (prompt included or not)."""
    words = caption.lower().split()
    if not words:
        return "empty"
    if not any(ch.isalpha() for ch in caption):
        return "degenerate"
    # A loop on one word ("of of of of") or one word most of a longer caption.
    top = Counter(words).most_common(1)[0][1]
    if (len(words) >= 2 and len(set(words)) == 1) or (len(words) >= 4 and top > len(words) / 2):
        return "degenerate"
    return "ok"


class CaptionPreprocessor:
    """PIL images -> the BLIP-2 inputs (pixel values, prompt ids with image tokens)."""

    def __init__(self, cfg: CaptionConfig):
        from transformers import Blip2Processor

        self.prompt = cfg.prompt
        self.processor = load_pretrained(
            "captioner processor",
            "caption.model",
            Blip2Processor.from_pretrained,
            cfg.model,
            revision=cfg.revision,
        )
        self.description = {"prompt": cfg.prompt, **_image_processor_dict(self.processor)}

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        text = [self.prompt] * len(images) if self.prompt else None
        enc = self.processor(images=images, text=text, return_tensors="pt")
        return {k: enc[k] for k in ("pixel_values", "input_ids", "attention_mask") if k in enc}


class Captioner(nn.Module):
    """BLIP-2 inputs -> caption strings, greedy or beam search, under the configured dtype."""

    def __init__(self, cfg: CaptionConfig, *, dtype: torch.dtype):
        super().__init__()
        from transformers import AutoTokenizer, Blip2ForConditionalGeneration

        self.cfg = cfg
        kwargs = {"revision": cfg.revision, "dtype": dtype}
        if cfg.load_in_8bit:
            kwargs.update(_eight_bit_kwargs())
        self.model = load_pretrained(
            "captioner",
            "caption.model",
            Blip2ForConditionalGeneration.from_pretrained,
            cfg.model,
            **kwargs,
        ).eval()
        self.tokenizer = load_pretrained(
            "captioner tokenizer",
            "caption.model",
            AutoTokenizer.from_pretrained,
            cfg.model,
            revision=cfg.revision,
        )
        self.dtype = dtype
        self.source = model_source(cfg.model, self.model)

    def forward(self, pixel_values, input_ids=None, attention_mask=None) -> list[str]:
        device = self.model.device
        inputs = {"pixel_values": pixel_values.to(device, self.dtype)}
        if input_ids is not None:
            inputs.update(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
        out = self.model.generate(
            **inputs,
            max_new_tokens=self.cfg.max_new_tokens,
            num_beams=self.cfg.num_beams,
            do_sample=False,
        )
        # Decoder-only LMs (OPT) return prompt + continuation; encoder-decoders (Flan-T5)
        # return the continuation only. Strip the prompt, then put it back if asked, so
        # both kinds give the same form of caption.
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        prompt = self.cfg.prompt.strip()
        if prompt:
            texts = [t[len(prompt) :].strip() if t.startswith(prompt) else t for t in texts]
            if self.cfg.keep_prompt:
                texts = [f"{prompt} {t}".strip() for t in texts]
        return texts


def _eight_bit_kwargs() -> dict:
    """from_pretrained arguments for 8-bit weights; a clear error without bitsandbytes/GPU."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError(
            "--caption.load_in_8bit true needs bitsandbytes: pip install -e '.[int8]' "
            "(or set caption.load_in_8bit: false)"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("--caption.load_in_8bit true needs a CUDA GPU; none is visible")
    from transformers import BitsAndBytesConfig

    # bitsandbytes places the weights itself; Lightning's later .to(device) is then a no-op.
    return {
        "quantization_config": BitsAndBytesConfig(load_in_8bit=True),
        "device_map": {"": torch.cuda.current_device()},
    }


def _image_processor_dict(processor) -> dict:
    from data_prep.encoders import _plain

    return {"image_processor": _plain(processor.image_processor.to_dict())}
