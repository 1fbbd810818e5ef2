"""2-D maps of image and text embeddings coloured by class: PCA, LDA and t-SNE.

$ python -m analysis --store STORE --out report --classes 10 --map_points 2000

Drawn on a subset of classes and a capped, class-balanced sample of the train split, so a
50,000-row, 500-class store stays readable (500 colours are not) and fast (t-SNE is
quadratic-ish in the sample size and runs on at most ``tsne_points`` rows).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.manifold import TSNE

from analysis.data import balanced_sample


def _scatter(ax, xy: np.ndarray, labels: np.ndarray, names: list[str], title: str) -> None:
    cmap = plt.get_cmap("tab20" if len(names) > 10 else "tab10")
    for k, lab in enumerate(np.unique(labels)):
        m = labels == lab
        ax.scatter(xy[m, 0], xy[m, 1], s=6, color=cmap(k % cmap.N), label=names[lab])
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])


def embed_2d(x: np.ndarray, labels: np.ndarray, *, tsne_points: int, seed: int = 0):
    """{method: (xy, labels_of_xy) or a note string} for PCA, LDA and t-SNE."""
    out: dict[str, tuple[np.ndarray, np.ndarray] | str] = {}
    if x.shape[1] < 2:  # PCA and LDA cannot give two components of one
        out["PCA"] = out["LDA"] = f"a {x.shape[1]}-dim embedding has no 2-D projection."
    else:
        out["PCA"] = (PCA(n_components=2, random_state=seed).fit_transform(x), labels)
    n_cls = len(np.unique(labels))
    if n_cls < 3:
        out["LDA"] = f"LDA needs at least 3 classes for a 2-D map; the sample has {n_cls}."
    elif "LDA" not in out:
        lda = LinearDiscriminantAnalysis(n_components=2)
        out["LDA"] = (lda.fit_transform(x, labels), labels)
    idx = balanced_sample(labels, tsne_points, seed=seed)
    if tsne_points == 0:  # --tsne_points 0 turns t-SNE off; it is not a cap to lift
        out["t-SNE"] = "t-SNE skipped (--tsne_points 0)."
    elif len(idx) < 5:
        out["t-SNE"] = f"t-SNE needs at least 5 points; the sample has {len(idx)}."
    else:
        xs = x[idx]
        if min(xs.shape) > 50:  # the usual PCA-50 first: same picture, much faster neighbours
            xs = PCA(n_components=50, random_state=seed).fit_transform(xs)
        tsne = TSNE(
            n_components=2,
            perplexity=min(30.0, (len(idx) - 1) / 3),
            init="pca",
            max_iter=500,  # PCA-initialised maps settle well before the default 1000
            # Barnes-Hut's tree and thread start-up cost more than the exact O(n^2) below ~500.
            method="exact" if len(idx) <= 500 else "barnes_hut",
            random_state=seed,
        )
        out["t-SNE"] = (tsne.fit_transform(xs), labels[idx])
    return out


def add_projections(report, views, *, classes: np.ndarray, points: int, tsne_points: int) -> None:
    """One figure per modality (PCA | LDA | t-SNE) on the train split's chosen classes."""
    sec = report.section("Embedding maps")
    train = views.train
    if train is None:
        sec.note("No labelled train split: no maps.")
        return
    rows = np.flatnonzero(np.isin(train.labels, classes))
    rows = rows[balanced_sample(train.labels[rows], points)]
    if len(rows) < 3:
        sec.note(f"Only {len(rows)} train rows in the chosen classes (--map_points {points}): "
                 "no maps; a map needs at least 3.")  # fmt: skip
        return
    labels = train.labels[rows]
    names = views.class_names
    sec.text(
        f"{len(rows)} train rows from {len(np.unique(labels))} classes (of "
        f"{len(names)}); t-SNE on at most {tsne_points} of them."
    )
    for modality, emb in (("image", train.image_emb), ("text", train.text_emb)):
        maps = embed_2d(emb[rows], labels, tsne_points=tsne_points)
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
        for ax, (method, res) in zip(axes, maps.items(), strict=True):
            if isinstance(res, str):
                ax.text(0.5, 0.5, res, ha="center", va="center", wrap=True, fontsize=9)
                ax.set_axis_off()
                sec.note(f"{modality}: {res}")
            else:
                _scatter(ax, res[0], res[1], names, f"{modality} - {method}")
        handles, labs = axes[0].get_legend_handles_labels()
        if len(labs) <= 20:
            fig.legend(handles, labs, loc="center right", fontsize=8, markerscale=2)
            fig.subplots_adjust(right=0.87)
        sec.figure(
            f"map_{modality}",
            fig,
            f"{modality} embeddings: PCA, LDA and t-SNE (LDA is fitted on the points it shows,"
            " so its separation is optimistic)",
        )
