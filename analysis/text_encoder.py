"""Re-load the store's caption encoder (manifest ``models["text"]``) to embed free text.

$ python -m analysis --store STORE --out report --query "a sketch of a violin"

Queries must land in the same space as the store's ``text_emb``: same model, same pooling.
The model is loaded with transformers' AutoModel/AutoTokenizer from the name or local path
the manifest records; never with remote code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REF_KEYS = ("path", "local_path", "name_or_path", "name", "id")
POOLINGS = ("mean", "cls", "pooler", "max")


def model_ref(entry: Any) -> str | None:
    """The name or path in a manifest ``models`` entry (a string, or a dict of fields)."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return next((str(entry[k]) for k in REF_KEYS if entry.get(k)), None)
    return None


def pooling_of(entry: Any) -> str:
    """The pooling recorded beside the model; mean pooling (sentence-transformers') if none."""
    pooling = entry.get("pooling", "mean") if isinstance(entry, dict) else "mean"
    pooling = str(pooling).lower()
    return next((p for p in POOLINGS if p in pooling), pooling)


class TextEncoder:
    """Embeds strings the way the store embedded captions."""

    def __init__(self, entry: Any):
        import torch
        from transformers import AutoModel, AutoTokenizer

        ref = model_ref(entry)
        if ref is None:
            raise ValueError("the manifest's models['text'] names no model")
        self.pooling = pooling_of(entry)
        if self.pooling not in POOLINGS:
            raise ValueError(f"unknown text pooling {self.pooling!r} (known: {POOLINGS})")
        self.ref = ref
        fields = entry if isinstance(entry, dict) else {}
        # the hub revision data_prep resolved, so a moved branch cannot change the space
        revision = None if fields.get("local_path") else fields.get("revision")
        self.tokenizer = AutoTokenizer.from_pretrained(ref, revision=revision)
        self.model = AutoModel.from_pretrained(ref, revision=revision).eval()
        self.max_length = int(fields.get("max_length") or 128)
        self._torch = torch

    def encode(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        with torch.inference_mode():
            out = self.model(**batch)
        hidden = out.last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "pooler":
            pooled = out.pooler_output
        elif self.pooling == "max":
            pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
        else:  # masked mean, as sentence-transformers pools
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return pooled.float().numpy()


def load_text_encoder(manifest: dict) -> tuple[TextEncoder | None, str | None]:
    """(encoder, None) or (None, a note saying why free-text search is skipped)."""
    entry = manifest.get("models", {}).get("text")
    if entry is None:
        return None, "the manifest records no text encoder (models['text'])"
    try:
        return TextEncoder(entry), None
    except Exception as err:  # any load failure (offline, no local copy) means: skip, say why
        return None, f"text encoder {model_ref(entry)!r} could not be loaded ({err})"
