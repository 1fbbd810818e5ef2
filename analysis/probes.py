"""Linear probes and cosine k-NN: the no-GPU baseline every fusion head must beat.

$ python -m analysis --store STORE --out report --probe_cs "[0.01,0.1,1,10]"

For image, text and concatenated embeddings, raw and LDA-reduced: ``train.py probe``'s
probe (:func:`fusion.probe.fit_probe`, with its C grid and iterations by default):
standardise on train, fit LogisticRegression for each C, keep the C with the best val
top-1. Where no cap below applies the raw rows equal ``train.py probe``'s on the same store.
k-NN: majority vote of the k nearest train rows by cosine.

Caps, so 500 classes x 1,536 dims stay within minutes on 2 cores: train and val are
class-balanced samples (``train_cap``/``val_cap``); inputs wider than ``max_dim`` are
PCA-projected (on train) to ``max_dim`` dims after standardising, and the table says so;
the sweep runs from the smallest C up, each fit warm-started from the previous one (as
scikit-learn's own regularisation paths do), which cuts the iterations several-fold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.neighbors import KNeighborsClassifier

from analysis.data import balanced_sample
from fusion.probe import DEFAULT_CS, DEFAULT_MAX_ITER, fit_probe, project
from fusion.probe import standardise as probe_standardise

__all__ = ["DEFAULT_CS", "DEFAULT_MAX_ITER", "add_probes", "probe_sweep"]


@dataclass
class ProbeResult:
    best_c: float
    val_acc: float
    sweep: dict[float, float]  # C -> val top-1
    unconverged: int  # fits that hit max_iter (their accuracy is still reported)


def standardise(x_train, x_val, *, max_dim: int | None = None):
    """Both splits scaled by train's mean/std, then PCA-projected if wider than max_dim."""
    scaler, pca = probe_standardise(x_train, max_dim=max_dim)
    return project(x_train, scaler, pca), project(x_val, scaler, pca)


def probe_sweep(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    max_dim: int | None = None,
) -> ProbeResult:
    """Pick C on val with :func:`fusion.probe.fit_probe` (the one probe implementation,
    shared with ``python train.py probe``)."""
    probe = fit_probe(x_train, y_train, x_val, y_val, cs=cs, max_iter=max_iter, max_dim=max_dim)
    return ProbeResult(probe.best_c, probe.val_acc, probe.sweep, probe.unconverged)


def lda_reduce(x_train, y_train, x_val, *, max_dim: int | None = None):
    """Both splits on train's discriminant axes (at most classes - 1 of them), fitted on the
    standardised (and, past ``max_dim``, PCA-projected) inputs: LDA's cost grows with the
    cube of the width, and 1,536-d inputs with 500 classes take minutes."""
    x_train, x_val = standardise(x_train, x_val, max_dim=max_dim)
    n_axes = min(len(np.unique(y_train)) - 1, x_train.shape[1])
    lda = LinearDiscriminantAnalysis(n_components=n_axes).fit(x_train, y_train)
    return lda.transform(x_train), lda.transform(x_val)


def knn_accuracy(x_train, y_train, x_val, y_val, *, k: int = 10) -> float:
    """Top-1 of a k-nearest-neighbour majority vote under cosine distance."""
    knn = KNeighborsClassifier(n_neighbors=min(k, len(y_train)), metric="cosine", algorithm="brute")
    return float((knn.fit(x_train, y_train).predict(x_val) == y_val).mean())


def add_probes(
    report,
    views,
    *,
    train_cap: int | None,
    val_cap: int | None,
    cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    max_dim: int | None = 256,
    k: int = 10,
) -> dict[str, dict[str, float]]:
    """The probe table; returns {feature set: {"C", "val_acc", ...}} for tests and logs."""
    sec = report.section("Linear probes and k-NN")
    train, val = views.train, views.val
    if train is None or val is None or len(val) == 0:
        sec.note("Probes need a labelled train and val split; skipped.")
        return {}
    n_cls = len(np.unique(train.labels))
    if n_cls < 2:
        sec.note(f"The train split has {n_cls} class: a classifier needs at least 2; skipped.")
        return {}
    tr = balanced_sample(train.labels, train_cap)
    va = balanced_sample(val.labels, val_cap)
    y_tr, y_va = train.labels[tr], val.labels[va]
    x_tr_all, x_va_all = views.modalities(train), views.modalities(val)
    widest = max(x.shape[1] for x in x_tr_all.values())
    as_train_py = (
        len(tr) == len(train) and len(va) == len(val)
        and (max_dim is None or widest <= max_dim)
        and tuple(cs) == DEFAULT_CS and max_iter == DEFAULT_MAX_ITER
    )  # fmt: skip
    sec.text(
        f"Train sample {len(tr)} of {len(train)} rows, val sample {len(va)} of {len(val)}; "
        f"C swept over {list(cs)} (chosen on val), k-NN with k={min(k, len(tr))}. "
        f"Chance is {1 / len(views.class_names):.4f}. "
        + ("The LR column is `python train.py probe`'s result on this store (same probe, rows, "
           "C grid and iterations)." if as_train_py else
           "A row sample, the PCA cap or --probe_cs/--probe_max_iter differ from `python "
           "train.py probe`, whose LR figures may differ (0 lifts the caps).")
    )  # fmt: skip
    results: dict[str, dict[str, float]] = {}
    rows = []
    for name in x_tr_all:
        x_tr, x_va = x_tr_all[name][tr], x_va_all[name][va]
        raw = probe_sweep(x_tr, y_tr, x_va, y_va, cs=cs, max_iter=max_iter, max_dim=max_dim)
        l_tr, l_va = lda_reduce(x_tr, y_tr, x_va, max_dim=max_dim)
        lda = probe_sweep(l_tr, y_tr, l_va, y_va, cs=cs, max_iter=max_iter)
        acc_knn = knn_accuracy(x_tr, y_tr, x_va, y_va, k=k)
        results[name] = {
            "C": raw.best_c,
            "val_acc": raw.val_acc,
            "lda_C": lda.best_c,
            "lda_val_acc": lda.val_acc,
            "knn_val_acc": acc_knn,
        }
        dim = x_tr.shape[1]
        shown = f"{dim} -> PCA {max_dim}" if max_dim is not None and dim > max_dim else dim
        rows.append([name, shown, raw.best_c, raw.val_acc, lda.best_c, lda.val_acc])
        rows[-1].append(acc_knn)
        if raw.unconverged or lda.unconverged:
            sec.note(
                f"{name}: {raw.unconverged + lda.unconverged} of {2 * len(cs)} fits stopped at "
                f"max_iter={max_iter} before converging (raise --probe_max_iter for more)."
            )
    header = ["features", "dim", "C", "LR top-1", "LDA C", "LDA+LR top-1", f"{k}-NN top-1"]
    sec.table(header, rows, "val top-1 (logistic regression, C chosen on val)")
    return results
