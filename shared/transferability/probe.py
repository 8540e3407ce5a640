"""Few-shot probes on frozen features (scikit-learn), cross-validated on the TRAINING split only.

* classification: k-nearest-neighbour and logistic-regression (linear probe) balanced accuracy,
  stratified k-fold;
* regression / ranking (cardiac grade, wsi survival risk): k-NN and ridge regression, scored by
  the Spearman correlation between the out-of-fold predictions and the target (a ranking score:
  what a grade or a risk is used for).

Features are standardised inside each fold (a pipeline), so nothing of the held-out fold leaks.
Higher is better for every score.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["probe_scores"]


def _folds(y: np.ndarray, regression: bool, n_splits: int, seed: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    if regression:
        return KFold(n_splits=max(2, min(n_splits, len(y))), shuffle=True, random_state=seed)
    smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
    return StratifiedKFold(n_splits=max(2, min(n_splits, smallest)), shuffle=True, random_state=seed)


def probe_scores(
    features: np.ndarray,
    target: np.ndarray,
    regression: bool = False,
    k: int = 5,
    n_splits: int = 5,
    seed: int = 0,
) -> dict[str, float]:
    """Cross-validated k-NN and linear-probe scores.

    Args:
        features: (n, D) frozen features of the target's training split.
        target: (n,) labels, or continuous values with ``regression``.
        regression: regression / ranking variant (Spearman of out-of-fold predictions).
        k: neighbours of the k-NN probe (capped by the training-fold size).
        n_splits: folds (capped by the smallest class for classification).
        seed: fold shuffling seed.

    Returns:
        ``{"knn": score, "linear": score}``; NaN where a class has a single sample.
    """
    from scipy.stats import spearmanr
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(target)
    y = y.astype(np.float64) if regression else y
    if not regression and (len(np.unique(y)) < 2 or np.bincount(np.unique(y, return_inverse=True)[1]).min() < 2):
        return {"knn": float("nan"), "linear": float("nan")}
    cv = _folds(y, regression, n_splits, seed)
    n_fit = len(y) - int(np.ceil(len(y) / cv.get_n_splits()))
    kk = max(1, min(k, n_fit))
    if regression:
        models = {"knn": KNeighborsRegressor(kk), "linear": Ridge(alpha=1.0)}
    else:
        models = {"knn": KNeighborsClassifier(kk), "linear": LogisticRegression(max_iter=2000, C=1.0)}
    out: dict[str, float] = {}
    for name, est in models.items():
        pred = cross_val_predict(make_pipeline(StandardScaler(), est), x, y, cv=cv)
        if regression:
            rho = spearmanr(pred, y).statistic if np.std(pred) > 0 else 0.0
            out[name] = float(np.nan_to_num(rho))
        else:
            out[name] = _balanced_accuracy(y, pred)
    return out


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import balanced_accuracy_score

    return float(balanced_accuracy_score(y, pred))
