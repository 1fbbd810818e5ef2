"""Thumbnails from the store's ``path`` column, and grids of them with captions underneath.

$ python -c "from analysis.thumbs import tile_grid, Tile; print(tile_grid([[Tile('a.png', 'a')]], None))"

A path that does not open (a store built elsewhere, a Hugging Face dataset row) gives a grey
tile: the caption and class are still shown.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from analysis.style import MIN_TEXT_PT
from feature_store.thumbs import THUMB, load_thumb

TILE_INCHES = 2.2  # 6 tiles of 2.2 in at 90 dpi fill the page's width without being shrunk


@dataclass
class Tile:
    path: str
    text: str
    highlight: str | None = None  # frame colour, e.g. green for a correct neighbour


def tile_grid(rows: list[list[Tile]], root: Path | None, *, wrap: int = 22):
    """A figure with one row of tiles per list, each tile an image and wrapped text.

    Returns (figure, number of tiles whose image did not open). When none opens (a store
    built on another machine), the tiles are short text cards instead of grey squares.
    """
    images = [[load_thumb(t.path, root) if t.path else None for t in row] for row in rows]
    missing = sum(img is None for row, imgs in zip(rows, images, strict=True)
                  for t, img in zip(row, imgs, strict=True) if t.path)  # fmt: skip
    text_only = all(img is None for imgs in images for img in imgs)
    ncols = max(len(r) for r in rows)
    height = 1.4 if text_only else 3.3  # room for 5 caption lines above the thumbnail
    fig, axes = plt.subplots(
        len(rows), ncols, figsize=(TILE_INCHES * ncols, height * len(rows)), squeeze=False
    )
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            ax, img = axes[r, c], images[r][c]
            text = "\n".join(textwrap.wrap(tile.text, wrap)[:5])
            if text_only or not tile.path:  # a text query has no image: a text card
                ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=MIN_TEXT_PT)
            else:
                ax.imshow(img if img is not None else np.full((THUMB, THUMB, 3), 220, np.uint8))
                ax.set_title(text, fontsize=MIN_TEXT_PT)
            ax.set_axis_on()
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(tile.highlight or "#bbbbbb")
                spine.set_linewidth(3 if tile.highlight else 1)
    fig.tight_layout()
    return fig, missing
