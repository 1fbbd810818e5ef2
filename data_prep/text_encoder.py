"""The caption encoder: BERT (any transformers text encoder) with cls or masked-mean pooling.

$ python -c "from data_prep.text_encoder import masked_mean; help(masked_mean)"

The code this project grew from (the reference report's) averaged BERT's output over
padding tokens too, so a caption's embedding depended on the longest caption in its batch.
Here ``mean`` averages only the positions the attention mask marks as real tokens. That
reference behaviour survives only as ``mean_unmasked_reference``, for exact reproduction of
the report's embeddings; it matches them only where the batches match too (the reference
batched 64 images of one class folder at a time, in sorted file order).
"""

from __future__ import annotations

import torch
from torch import nn

from data_prep.config import POOLINGS_TEXT, TextConfig
from data_prep.loading import load_pretrained, model_source


def masked_mean(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``hidden`` [B, T, D] over the positions where ``attention_mask`` [B, T] is 1."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    # clamp: an all-padding row (cannot come from a tokenizer, which adds [CLS]) gives 0s.
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)


class TextEncoder(nn.Module):
    """Captions -> float32 embeddings [B, dim]; tokenises, runs the model, pools."""

    def __init__(self, cfg: TextConfig, *, dtype: torch.dtype):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        if cfg.pooling not in POOLINGS_TEXT:
            raise ValueError(f"--text.pooling {cfg.pooling!r}: use one of {list(POOLINGS_TEXT)}")
        self.cfg = cfg
        self.tokenizer = load_pretrained(
            "text encoder tokenizer",
            "text.model",
            AutoTokenizer.from_pretrained,
            cfg.model,
            revision=cfg.revision,
        )
        self.model = load_pretrained(
            "text encoder",
            "text.model",
            AutoModel.from_pretrained,
            cfg.model,
            revision=cfg.revision,
            dtype=dtype,
        ).eval()
        self.dim = int(self.model.config.hidden_size)
        self.source = model_source(cfg.model, self.model)

    def tokenize(self, captions: list[str]) -> dict[str, torch.Tensor]:
        return self.tokenizer(
            captions,
            padding=True,
            truncation=True,
            max_length=self.cfg.max_length,
            return_tensors="pt",
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra):
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, **extra)
        hidden = out.last_hidden_state
        if self.cfg.pooling == "cls":
            return hidden[:, 0].float()
        if self.cfg.pooling == "mean_unmasked_reference":
            # The reference's outputs.last_hidden_state.mean(dim=1): padding averaged in.
            return hidden.float().mean(dim=1)
        return masked_mean(hidden.float(), attention_mask)

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Tokenise on the model's device and embed; call under torch.inference_mode()."""
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in self.tokenize(captions).items()}
        return self(**batch)
