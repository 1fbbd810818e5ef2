"""The captioner: BLIP-2 through transformers, batched ``generate`` with a prompt.

$ python -c "from data_prep.captioner import *; help(Captioner)"

The processor (image transform + prompt tokens with BLIP-2's image placeholder tokens)
runs in the DataLoader workers via :class:`CaptionPreprocessor`; the model process only
calls ``generate``. Both kinds of released BLIP-2 work, with or without a prompt:
decoder-only (OPT) and encoder-decoder (Flan-T5) language models.

Before any image, :class:`CaptionPreprocessor` checks that a prompt holds exactly
``num_query_tokens`` image tokens (else the image never reaches the language model), and
:meth:`Captioner.check` runs one blank image through ``generate`` (the whole model +
processor + prompt combination). Caption quality (empty / degenerate) is defined in
:mod:`data_prep.caption_quality`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from data_prep.config import CaptionConfig
from data_prep.loading import load_pretrained, model_source


class CaptionSetupError(ValueError):
    """The captioner's model, processor and prompt do not work together; says the fix."""


class CaptionPreprocessor:
    """PIL images -> the BLIP-2 inputs (pixel values, prompt ids with image tokens)."""

    def __init__(self, cfg: CaptionConfig):
        from transformers import AutoConfig, Blip2Processor

        self.prompt = cfg.prompt
        self.processor = load_pretrained(
            "captioner processor",
            "caption.model",
            Blip2Processor.from_pretrained,
            cfg.model,
            revision=cfg.revision,
        )
        config = load_pretrained(
            "captioner config", "caption.model", AutoConfig.from_pretrained, cfg.model,
            revision=cfg.revision,
        )  # fmt: skip
        self.num_query_tokens = config.num_query_tokens
        self.image_token_id = config.image_token_index
        _ensure_query_tokens(self.processor, config, cfg.model)
        self.description = {"prompt": cfg.prompt, **_image_processor_dict(self.processor)}
        self.check_image_tokens(self(_blank_images(1))["input_ids"], where=cfg.model)

    def __call__(self, images: list) -> dict[str, torch.Tensor]:
        # Always a text, "" included: the processor then puts the image tokens (and the
        # tokenizer its BOS or EOS) in front, for OPT and T5 alike. With text=None,
        # Blip2ForConditionalGeneration.generate builds the ids itself from
        # text_config.bos_token_id, which T5 configs do not have (an AttributeError). For
        # Flan-T5 and "" the ids are the image tokens + "</s>" (id 1), the same as that
        # default built from the hub config's bos_token_id=1 in older transformers.
        enc = self.processor(images=images, text=[self.prompt] * len(images), return_tensors="pt")
        return {k: enc[k] for k in ("pixel_values", "input_ids", "attention_mask")}

    def check_image_tokens(self, input_ids: torch.Tensor, *, where: str) -> None:
        """Every row holds exactly num_query_tokens image tokens, else raise (say why)."""
        counts = (input_ids == self.image_token_id).sum(dim=1)
        if not bool((counts == self.num_query_tokens).all()):
            raise CaptionSetupError(
                f"{where}: the BLIP-2 prompt holds {counts.tolist()} image tokens (id "
                f"{self.image_token_id}) where the model needs {self.num_query_tokens}, so the "
                "image would not reach the language model. Fix: re-save the processor with a "
                "current transformers (Blip2Processor.from_pretrained(...).save_pretrained)."
            )


def _ensure_query_tokens(processor, config, model: str) -> None:
    """Give an old processor (no num_query_tokens) the model's value, when that is safe.

    Without it Blip2Processor adds no image tokens to the prompt, and generate then scatters
    the image features nowhere: every caption is the same text. The repair is safe only if
    the tokenizer already maps the image token to the id the model expects.
    """
    want = config.num_query_tokens
    have = processor.num_query_tokens
    file = _processor_file(model)
    if config.image_token_index is None:
        raise CaptionSetupError(
            f"{model}: config.json has no image_token_index (a BLIP-2 saved by an old "
            "transformers), so the image features have no place in the prompt. Fix: use the "
            "current Salesforce/blip2-* files from the hub, or re-save the model and "
            "processor with the current transformers."
        )
    if have == want:
        return
    if have is not None:
        raise CaptionSetupError(
            f"{file}: num_query_tokens is {have} but the model ({model}/config.json) has "
            f'{want}. Fix: set "num_query_tokens": {want} in {file}.'
        )
    token = getattr(processor.image_token, "content", str(processor.image_token))
    token_id = processor.tokenizer.convert_tokens_to_ids(token)
    if token_id != config.image_token_index:
        raise CaptionSetupError(
            f"{file}: no num_query_tokens, and it cannot be repaired safely: the tokenizer's "
            f"{token} is id {token_id}, the model's image_token_index is "
            f"{config.image_token_index}. Fix: use the current Salesforce/blip2-* "
            f'files from the hub, or add "num_query_tokens": {want} to '
            f"{file} and {token} to the tokenizer at id {config.image_token_index}."
        )
    processor.num_query_tokens = want
    warnings.warn(
        f"{file} has no num_query_tokens (a processor saved by an older transformers); using "
        f'{want} from the model\'s config.json. To silence this, add "num_query_tokens": '
        f"{want} to {file}.",
        stacklevel=3,
    )


def _processor_file(model: str) -> str:
    if Path(model).is_dir():
        return str(Path(model) / "processor_config.json")
    return f"processor_config.json of {model} (in the Hugging Face cache)"


def _blank_images(n: int) -> list:
    from PIL import Image

    return [Image.new("RGB", (64, 64), "white") for _ in range(n)]


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
        self.is_encoder_decoder = bool(self.model.config.text_config.is_encoder_decoder)
        self.source = model_source(cfg.model, self.model)

    def forward(self, pixel_values, input_ids, attention_mask, *, max_new_tokens=None) -> list[str]:
        device = self.model.device
        out = self.model.generate(
            pixel_values=pixel_values.to(device, self.dtype),
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens or self.cfg.max_new_tokens,
            num_beams=self.cfg.num_beams,
            do_sample=False,
        )
        # Decoder-only LMs (OPT) return the prompt ids + continuation; encoder-decoders
        # (Flan-T5) the continuation only. Keep the continuation, by ids rather than by
        # matching text (a tokenizer need not decode the prompt back to the same string).
        n = input_ids.shape[1]
        if (
            not self.is_encoder_decoder
            and out.shape[1] >= n
            and torch.equal(out[:, :n].cpu(), input_ids.cpu())
        ):
            out = out[:, n:]
        texts = [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]
        prompt = self.cfg.prompt.strip()
        if prompt and self.cfg.keep_prompt:
            texts = [f"{prompt} {t}".strip() for t in texts]
        return texts

    def check(self, preprocessor: CaptionPreprocessor) -> None:
        """One blank image through the processor and ``generate``: fail now, not at image 1.

        It runs where the model is now (the CPU before Lightning moves it), two new tokens.
        """
        inputs = preprocessor(_blank_images(1))
        try:
            with torch.inference_mode():
                texts = self(**inputs, max_new_tokens=2)  # 2: one step past the prompt
        except Exception as err:  # noqa: BLE001 - any failure here is the combination's
            raise CaptionSetupError(
                f"the captioner {self.cfg.model} failed a one-image test run with prompt "
                f"{self.cfg.prompt!r} ({type(err).__name__}: {err}). Fix: check caption.model "
                "and caption.prompt, or use input.captions_csv to skip BLIP-2."
            ) from err
        if len(texts) != 1 or not isinstance(texts[0], str):
            raise CaptionSetupError(f"the captioner {self.cfg.model} returned {texts!r}")


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
