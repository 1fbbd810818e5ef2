"""Sizes every figure of the report shares (no matplotlib import: thumbs, used by training's
W&B logging, reads them without switching the process's plotting backend).

$ python -c "from analysis.style import DPI, MIN_TEXT_PT; print(MIN_TEXT_PT * DPI / 72, 'px')"
"""

DPI = 90  # PNGs are shown at their pixel size: a font of F points is F * DPI / 72 px high
MIN_TEXT_PT = 9.5  # 9.5 pt at 90 dpi is 12 px, the smallest caption that reads comfortably
