"""Clustering per modality: k-means (k = number of classes) and DBSCAN, scored by the labels.

$ python -m analysis --store STORE --out report --cluster_points 5000

Rows are L2-normalised first, so Euclidean distances rank like cosine ones. DBSCAN's eps is
the knee of the sorted k-distance curve (distance of every point to its
``min_samples - 1``-th neighbour; the knee is the point farthest below the chord joining the
curve's ends), drawn dotted on the figure. Exact duplicates (many identical captions) make
the curve 0 over most of its length: the knee is then read on its non-zero part, or DBSCAN
is skipped when every point is a copy, and a note says which. Purity and NMI for DBSCAN are
over the points it did not call noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
from sklearn.cluster import DBSCAN, KMeans, kmeans_plusplus
from sklearn.decomposition import PCA
from sklearn.metrics import normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.neighbors import NearestNeighbors
from sklearn.preprocessing import normalize

from analysis.data import balanced_sample


def purity(labels: np.ndarray, clusters: np.ndarray) -> float:
    """Share of points whose class is the majority class of their cluster."""
    table = contingency_matrix(labels, clusters)  # classes x clusters
    return float(table.max(axis=0).sum() / table.sum())


ZERO = 1e-6  # k-distances below this are exact duplicates (float16 rounding included)


@dataclass
class KDistance:
    """DBSCAN's eps for one modality and the sorted k-distance curve it was read from."""

    curve: np.ndarray
    eps: float | None  # None: every point has min_samples - 1 exact duplicates; no DBSCAN
    zero_share: float  # share of points whose k-distance is 0 (duplicates of each other)
    note: str = ""  # why eps is not the plain knee, when it is not


def knee(curve: np.ndarray) -> float:
    """The point of a sorted curve farthest below the chord joining its ends."""
    n = len(curve)
    if n < 3 or curve[-1] == curve[0]:
        return float(curve[-1])
    t = np.linspace(0.0, 1.0, n)
    chord = curve[0] + t * (curve[-1] - curve[0])
    return float(curve[int(np.argmax(chord - curve))])


def k_distance(x: np.ndarray, min_samples: int) -> KDistance:
    """eps for DBSCAN with ``min_samples``: the knee of the sorted k-distance curve.

    Many identical rows (the same caption embedded many times) give a curve that is 0 over
    most of its length, whose knee is 0: DBSCAN would then only group identical rows. The
    knee is then taken on the curve's non-zero part, and ``note`` says so.
    """
    # min_samples counts the point itself, as DBSCAN does: its (min_samples-1)-th neighbour.
    nn = NearestNeighbors(n_neighbors=min_samples, algorithm="brute").fit(x)
    curve = np.sort(nn.kneighbors(x)[0][:, -1])
    zero = curve <= ZERO
    share = float(zero.mean())
    if zero.all():
        note = (
            f"every point has {min_samples - 1} exact duplicates (k-distance 0): the rows are "
            "copies of a few vectors (identical captions?), so no density threshold separates "
            "anything; DBSCAN skipped"
        )
        return KDistance(curve, None, share, note)
    eps = knee(curve)
    if eps > ZERO:
        return KDistance(curve, eps, share)
    eps = knee(curve[~zero])
    note = (
        f"{share:.0%} of the points have {min_samples - 1} exact duplicates (identical "
        "captions embed to identical vectors), so their k-distance is 0 and the knee of the "
        f"whole curve is eps=0, which would only group copies; eps={eps:.3f} is the knee of "
        "the curve's non-zero part"
    )
    return KDistance(curve, eps, share, note)


def seeds(x: np.ndarray, k: int, *, seed: int = 0, dim: int = 50) -> np.ndarray:
    """k-means++ seeds chosen on a PCA projection, returned as rows of ``x``.

    scikit-learn's k-means++ costs k * log(k) distance passes over all dims: minutes for
    k = 500 on 1,536-d rows, against seconds for Lloyd itself. Seeding on 50 PCA dims keeps
    the spread-out choice of k-means++ at a 30th of the cost.
    """
    z = PCA(n_components=dim, random_state=seed).fit_transform(x) if min(x.shape) > dim else x
    return x[kmeans_plusplus(z, k, random_state=seed)[1]]


def cluster_modality(x: np.ndarray, labels: np.ndarray, *, min_samples: int = 5, seed: int = 0):
    """Scores of k-means and DBSCAN on one modality; also returns the k-distance result."""
    x = normalize(x)
    k = len(np.unique(labels))
    km = KMeans(n_clusters=k, init=seeds(x, k, seed=seed), n_init=1, max_iter=100).fit_predict(x)
    kd = k_distance(x, min_samples)
    out = {
        "kmeans": {
            "clusters": k,
            "purity": purity(labels, km),
            "nmi": float(normalized_mutual_info_score(labels, km)),
            "noise": 0,
        },
    }
    if kd.eps is None:
        return out, kd
    db = DBSCAN(eps=kd.eps, min_samples=min_samples, algorithm="brute").fit_predict(x)
    kept = db >= 0
    out["dbscan"] = {
        "clusters": int(db.max() + 1),
        "purity": purity(labels[kept], db[kept]) if kept.any() else float("nan"),
        "nmi": (
            float(normalized_mutual_info_score(labels[kept], db[kept]))
            if kept.any()
            else float("nan")
        ),
        "noise": int((~kept).sum()),
        "eps": kd.eps,
    }
    return out, kd


def k_distance_figure(curves: dict[str, KDistance], min_samples: int):
    """The sorted k-distance curve of each modality, its chosen eps a dotted line of the
    same colour (none where DBSCAN was skipped)."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for modality, kd in curves.items():
        eps = "skipped" if kd.eps is None else f"{kd.eps:.3f}"
        (line,) = ax.plot(kd.curve, label=f"{modality} (eps={eps})")
        if kd.eps is not None:
            ax.axhline(kd.eps, color=line.get_color(), linestyle=":", linewidth=1.5)
    ax.set_xlabel("points, sorted")
    ax.set_ylabel(f"distance to neighbour {min_samples - 1}")
    ax.legend()
    return fig


def add_clustering(report, views, *, cap: int | None, min_samples: int = 5) -> dict:
    """Clustering table and k-distance curves on a capped sample of the train split."""
    sec = report.section("Clustering")
    train = views.train
    if train is None or len(train) < max(min_samples, 3):
        sec.note("Clustering needs a labelled train split with a few rows; skipped.")
        return {}
    idx = balanced_sample(train.labels, cap)
    labels = train.labels[idx]
    n_cls = len(np.unique(labels))
    sec.text(f"{len(idx)} train rows, {n_cls} classes; DBSCAN min_samples={min_samples}.")
    if n_cls < 2:
        sec.note("A single class: purity is 1 and NMI undefined for any clustering; shown anyway.")
    results, rows, curves = {}, [], {}
    for modality, emb in (("image", train.image_emb), ("text", train.text_emb)):
        res, kd = cluster_modality(emb[idx], labels, min_samples=min_samples)
        results[modality], curves[modality] = res, kd
        for method, r in res.items():
            rows.append(
                [modality, method, r["clusters"], r["purity"], r["nmi"], r["noise"]]
                + [r.get("eps", "")]
            )
        if kd.note:
            sec.note(f"{modality}: {kd.note}.")
            if kd.eps is None:
                rows.append([modality, "dbscan", "skipped", "", "", "", ""])
        db = res.get("dbscan")
        spread = kd.curve[-1] / max(kd.curve[0], 1e-12)
        if db is not None and spread < 1.2:
            sec.note(
                f"{modality}: the k-distance curve is nearly flat (largest/smallest = "
                f"{spread:.2f}): distances concentrate, so no eps separates dense groups. "
                "k-means and the probes are the informative numbers here."
            )
        elif db is not None and db["clusters"] <= 1:
            sec.note(
                f"{modality}: DBSCAN found {db['clusters']} cluster(s) at the knee "
                f"eps={db['eps']:.3f}: the classes are not separated by density gaps."
            )
    sec.table(["modality", "method", "clusters", "purity", "NMI", "noise", "eps"], rows)
    sec.figure(
        "k_distance",
        k_distance_figure(curves, min_samples),
        f"Sorted k-distance curves (each point's distance to its neighbour {min_samples - 1}, "
        "after L2-normalising); the dotted line of each colour is that modality's chosen eps",
    )
    return results
