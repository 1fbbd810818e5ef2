"""The alpha/beta plot of a dual-logit run (the report's Figures 3-4).

$ python -c "from fusion.plots import plot_alpha_beta; plot_alpha_beta([[0,.5,.5],[1,.6,.4]], 'ab.png')"
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path


def plot_alpha_beta(
    history: Sequence[Sequence[float]], out: str | os.PathLike, *, title: str = ""
) -> Path:
    """Plot ``(step, alpha, beta)`` rows and their sum to ``out`` (PNG), written atomically."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    from fusion.predict import atomic_write_bytes

    steps = [row[0] for row in history]
    alpha = [row[1] for row in history]
    beta = [row[2] for row in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, alpha, label="alpha (image)")
    ax.plot(steps, beta, label="beta (text)")
    ax.plot(steps, [a + b for a, b in zip(alpha, beta, strict=True)], "k:", label="alpha + beta")
    ax.set_xlabel("training step")
    ax.set_ylabel("weight")
    ax.set_title(title or "dual-logit fusion weights")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
