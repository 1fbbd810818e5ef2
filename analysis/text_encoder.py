"""Re-load the store's caption encoder (manifest ``models["text"]``) to embed free text.

$ python -m analysis --store STORE --out report --query "a sketch of a violin"

Queries must land in the same space as the store's ``text_emb``, so they go through the
very encoder data_prep used (:class:`data_prep.text_encoder.TextEncoder`), rebuilt from
the model, revision, pooling and max_length the manifest records; never remote code.
"""

from __future__ import annotations

from typing import Any

import numpy as np

REF_KEYS = ("path", "local_path", "name_or_path", "name", "id")


def model_ref(entry: Any) -> str | None:
    """The name or path in a manifest ``models`` entry (a string, or a dict of fields)."""
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return next((str(entry[k]) for k in REF_KEYS if entry.get(k)), None)
    return None


class TextEncoder:
    """Embeds strings the way the store embedded captions."""

    def __init__(self, entry: Any):
        import torch

        from data_prep.config import TextConfig
        from data_prep.loading import hf_progress_bars_off
        from data_prep.text_encoder import TextEncoder as StoreTextEncoder

        ref = model_ref(entry)
        if ref is None:
            raise ValueError("the manifest's models['text'] names no model")
        fields = entry if isinstance(entry, dict) else {}
        cfg = TextConfig(
            model=ref,
            # the hub revision data_prep resolved, so a moved branch cannot change the space
            revision=None if fields.get("local_path") else fields.get("revision"),
            pooling=fields.get("pooling", "mean"),
            max_length=int(fields.get("max_length") or TextConfig.max_length),
        )
        self.ref, self.pooling = ref, cfg.pooling
        with hf_progress_bars_off():  # no "Loading weights" bar in the report's output
            self._encoder = StoreTextEncoder(cfg, dtype=torch.float32)
        self._torch = torch

    def encode(self, texts: list[str]) -> np.ndarray:
        with self._torch.inference_mode():
            return self._encoder.encode(texts).numpy()


def load_text_encoder(manifest: dict) -> tuple[TextEncoder | None, str | None]:
    """(encoder, None) or (None, a note saying why free-text search is skipped)."""
    entry = manifest.get("models", {}).get("text")
    if entry is None:
        return None, "the manifest records no text encoder (models['text'])"
    try:
        return TextEncoder(entry), None
    except Exception as err:  # any load failure (offline, no local copy) means: skip, say why
        return None, f"text encoder {model_ref(entry)!r} could not be loaded ({err})"
