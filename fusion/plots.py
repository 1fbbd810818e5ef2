"""The alpha/beta plot of a dual-logit run (the report's Figures 3-4), or a gated run's gate.

$ python -c "from fusion.plots import plot_alpha_beta; plot_alpha_beta([[0,.5,.5],[1,.6,.4]], 'ab.png')"
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

from feature_store.atomic import atomic_write_bytes


def weight_labels(head: str | None) -> tuple[str, str, str]:
    """(first, second, title) for the two weights a run logs as fusion/alpha, fusion/beta:
    a gated head logs its gate's batch mean g and 1 - g, not a learned alpha and beta."""
    if head == "gated":
        return ("gate g, batch mean (image)", "1 - g (text)",
                "gated head's gate: z = g f(image) + (1 - g) h(text), g per row")  # fmt: skip
    return "alpha (image)", "beta (text)", "dual-logit weights: z = alpha f(image) + beta g(text)"


def plot_alpha_beta(
    history: Sequence[Sequence[float]],
    out: str | os.PathLike,
    *,
    title: str = "",
    head: str | None = None,
    names: Sequence[str] | None = None,
) -> Path:
    """Plot ``(step, alpha, beta)`` rows and their sum to ``out`` (PNG), written atomically;
    ``head="gated"``: labelled as the gate (whose two weights sum to 1 by construction).
    Over other sets than image and text (``names``: the set of each weight, rows
    ``(step, w_1, ..., w_K)``) one line per set, labelled with its name."""
    import matplotlib

    matplotlib.use("Agg")  # no display on servers and CI
    import matplotlib.pyplot as plt

    steps = [row[0] for row in history]
    names = list(names) if names else ["image", "text"]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if names == ["image", "text"]:
        alpha = [row[1] for row in history]
        beta = [row[2] for row in history]
        first, second, what = weight_labels(head)
        ax.plot(steps, alpha, label=first)
        ax.plot(steps, beta, label=second)
        if head != "gated":
            sums = [a + b for a, b in zip(alpha, beta, strict=True)]
            ax.plot(steps, sums, "k:", label="alpha + beta")
    else:
        for k, name in enumerate(names):
            ax.plot(steps, [row[1 + k] for row in history], label=name)
        if head != "gated":
            ax.plot(steps, [sum(row[1:]) for row in history], "k:", label="sum")
        what = (
            "gated head's gate, batch mean per set"
            if head == "gated"
            else "weighted-logits head: one weight per feature set"
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("weight")
    ax.set_title(f"{title}: {what}" if title else what)
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    out = Path(out)
    atomic_write_bytes(out, buf.getvalue())
    return out
