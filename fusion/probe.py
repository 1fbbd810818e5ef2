"""The tuned linear probe: the baseline every trained head is measured against.

$ python train.py probe --data.store stores/kaggle          # writes a run directory

Standardise on train (scikit-learn's ``StandardScaler``), optionally PCA-project wide
inputs, then fit a multinomial ``LogisticRegression`` for each C of a log-spaced sweep,
smallest C first, each fit warm-started from the last (as scikit-learn's regularisation
paths do: several times fewer iterations), and keep the C with the best val top-1
(CLIP_benchmark's recipe). The analysis report's probe table calls the same
:func:`fit_probe` with the same defaults (:data:`DEFAULT_CS`, :data:`DEFAULT_MAX_ITER`), so
the two agree wherever the report's row and PCA caps do not apply.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

# Eight decades: a 500-row store wants C near 0.01, a 500,000-row one near 10. The one
# grid of `train.py probe` and the analysis report: with warm starts, the best C's accuracy
# depends on the Cs before it, so two grids would give two numbers for one store.
DEFAULT_CS = (1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)
DEFAULT_MAX_ITER = 300  # L-BFGS iterations per C (warm-started fits mostly need far fewer)


@dataclass
class LinearProbe:
    """A fitted probe: scaler (+ PCA), the classifier of the best C, and the sweep."""

    scaler: StandardScaler
    pca: PCA | None
    clf: LogisticRegression
    num_classes: int
    best_c: float
    val_acc: float
    sweep: dict[float, float] = field(default_factory=dict)  # C -> val top-1
    unconverged: int = 0  # fits that hit max_iter (their accuracy is still reported)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return project(x, self.scaler, self.pca)

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities ``[N, num_classes]`` (classes absent from train get 0)."""
        probs = np.zeros((len(x), self.num_classes), dtype=np.float32)
        probs[:, self.clf.classes_] = self.clf.predict_proba(self.transform(x))
        return probs


def standardise(x_train: np.ndarray, *, max_dim: int | None = None):
    """The scaler fitted on train, and a PCA (fitted on the scaled train) past ``max_dim``."""
    scaler = StandardScaler().fit(x_train)
    pca = None
    if max_dim is not None and x_train.shape[1] > max_dim:
        pca = PCA(n_components=max_dim, random_state=0).fit(scaler.transform(x_train))
    return scaler, pca


def project(x: np.ndarray, scaler: StandardScaler, pca: PCA | None) -> np.ndarray:
    """``x`` standardised, then PCA-projected when a PCA was fitted."""
    x = scaler.transform(x)
    return pca.transform(x) if pca is not None else x


def fit_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    cs: tuple[float, ...] = DEFAULT_CS,
    max_iter: int = DEFAULT_MAX_ITER,
    max_dim: int | None = None,
    num_classes: int | None = None,
) -> LinearProbe:
    """Sweep C on val (smallest first, warm-started) and keep the best classifier.

    Ties go to the stronger regularisation (the smaller C).
    """
    if len(np.unique(y_train)) < 2:
        raise ValueError("a linear probe needs at least 2 classes in the train split")
    scaler, pca = standardise(x_train, max_dim=max_dim)
    xt, xv = project(x_train, scaler, pca), project(x_val, scaler, pca)
    sweep: dict[float, float] = {}
    unconverged = 0
    best_c, best = None, None
    clf = LogisticRegression(max_iter=max_iter, warm_start=True)
    for c in sorted(float(c) for c in cs):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            clf.set_params(C=c).fit(xt, y_train)
        unconverged += any(issubclass(w.category, ConvergenceWarning) for w in caught)
        sweep[c] = float((clf.predict(xv) == y_val).mean())
        if best_c is None or sweep[c] > sweep[best_c]:  # ties keep the smaller C
            best_c, best = c, copy.deepcopy(clf)
    n_cls = num_classes if num_classes is not None else int(max(y_train.max(), y_val.max())) + 1
    return LinearProbe(scaler, pca, best, n_cls, best_c, sweep[best_c], sweep, unconverged)
