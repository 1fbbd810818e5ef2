"""Thumbnails of a store's images, from its ``path`` column: the analysis report's tiles and
the W&B val table's (fusion/wandb_report.py) both load them here.

$ python -c "from feature_store.thumbs import load_thumb; print(load_thumb('img.png', None))"

A path that does not open (a store built on another machine keeps its embeddings, not its
images; a Hugging Face dataset row) gives None, and the caller shows something else.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

THUMB = 160  # pixels on the longer side


def resolve(path: str, root: Path | None) -> Path | None:
    """The file behind a store ``path``: as written, else relative to the store root."""
    if not path:
        return None
    for cand in (Path(path), (root / path) if root else None):
        if cand is not None and cand.is_file():
            return cand
    return None


def load_thumb(path: str, root: Path | None, size: int = THUMB) -> np.ndarray | None:
    """An RGB uint8 thumbnail, or None when the file is missing or not an image."""
    file = resolve(path, root)
    if file is None:
        return None
    try:
        with Image.open(file) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            return np.asarray(im)
    except OSError:
        return None
