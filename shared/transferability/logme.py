"""LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on frozen features.

For features ``F`` (n x D) and one target column ``y`` (n,), the model is ``y = F w + noise`` with
prior ``w ~ N(0, alpha^-1 I)`` and noise ``N(0, beta^-1)``.  The evidence ``p(y | F, alpha, beta)``
is maximised over ``(alpha, beta)`` by the paper's fixed-point iteration::

    A      = alpha I + beta F^T F
    m      = beta A^-1 F^T y
    gamma  = sum_i beta s_i / (alpha + beta s_i)          (s_i: eigenvalues of F^T F)
    alpha <- gamma / (m^T m)
    beta  <- (n - gamma) / ||F m - y||^2

and LogME is the maximised log evidence divided by ``n``::

    L = n/2 log beta + D/2 log alpha - n/2 log 2 pi - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log|A|

Everything runs in the basis of one thin SVD of ``F`` (all target columns at once, vectorised).
Classification uses one-hot targets and averages LogME over the classes; regression uses the
scalar target (standardised, so scores of different targets are comparable).  Higher is better.
:func:`logme` centres features and targets and rescales the features by one global factor first
(:func:`prepare_features`), so the hyperparameter clamp never decides the score.
"""

from __future__ import annotations

import numpy as np

__all__ = ["logme", "logme_evidence", "one_hot", "prepare_features"]

CLAMP = 1e10  # alpha and beta stay in [1 / CLAMP, CLAMP]


def one_hot(y: np.ndarray) -> np.ndarray:
    """One-hot columns of integer labels (classes in sorted order of the values present)."""
    y = np.asarray(y)
    classes, idx = np.unique(y, return_inverse=True)
    out = np.zeros((len(y), len(classes)), dtype=np.float64)
    out[np.arange(len(y)), idx] = 1.0
    return out


def logme_evidence(
    features: np.ndarray, targets: np.ndarray, max_iter: int = 100, tol: float = 1e-5
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximised log evidence per sample of each target column (the fixed point, vectorised).

    Args:
        features: (n, D) float features.
        targets: (n,) or (n, K) float targets (one column per independent linear model).
        max_iter: fixed-point iterations at most.
        tol: stop when alpha/beta ratio changes less than this (relative).

    Returns:
        ``(evidence (K,), alpha (K,), beta (K,))``: log evidence divided by n, and the hyperparameters.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    if y.ndim == 1:
        y = y[:, None]
    n, d = f.shape
    if n < 2:
        raise ValueError("LogME needs at least 2 samples")
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    sig = s**2  # eigenvalues of F^T F (the non-zero part, k = min(n, D))
    z = u.T @ y  # (k, K): targets in the left singular basis
    z2 = z**2
    y2 = (y**2).sum(0)
    resid_out = np.maximum(y2 - z2.sum(0), 0.0)  # part of y outside the column space of F
    k_ = len(sig)
    alpha = np.ones(y.shape[1])
    beta = np.ones(y.shape[1])
    for _ in range(max_iter):
        denom = alpha[None, :] + beta[None, :] * sig[:, None]  # (k, K)
        gamma = (beta[None, :] * sig[:, None] / denom).sum(0)
        m2 = (beta[None, :] ** 2 * sig[:, None] * z2 / denom**2).sum(0)  # m^T m
        res2 = (z2 * (alpha[None, :] / denom) ** 2).sum(0) + resid_out  # ||F m - y||^2
        # clamped: with n <= D a target in the span of F sends beta to infinity (the evidence tends
        # to a finite limit there; the clamp evaluates it at beta = CLAMP)
        new_alpha = np.clip(gamma / np.maximum(m2, 1e-300), 1.0 / CLAMP, CLAMP)
        new_beta = np.clip((n - gamma) / np.maximum(res2, 1e-300), 1.0 / CLAMP, CLAMP)
        ratio_old, ratio_new = alpha / beta, new_alpha / new_beta
        alpha, beta = new_alpha, new_beta
        if np.all(np.abs(ratio_new - ratio_old) <= tol * np.abs(ratio_old)):
            break
    denom = alpha[None, :] + beta[None, :] * sig[:, None]
    m2 = (beta[None, :] ** 2 * sig[:, None] * z2 / denom**2).sum(0)
    res2 = (z2 * (alpha[None, :] / denom) ** 2).sum(0) + resid_out
    logdet = np.log(denom).sum(0) + (d - k_) * np.log(alpha)  # log|alpha I + beta F^T F| over all D dims
    ev = (
        n / 2 * np.log(beta)
        + d / 2 * np.log(alpha)
        - n / 2 * np.log(2 * np.pi)
        - beta / 2 * res2
        - alpha / 2 * m2
        - logdet / 2
    )
    return ev / n, alpha, beta


def prepare_features(features: np.ndarray) -> np.ndarray:
    """Features centred per dimension and scaled by ONE global factor to unit mean variance.

    Centring removes the intercept (a constant offset shared by every sample, common in pooled
    post-ReLU features, is no signal and must not be paid for through the weight prior); the single
    global scale keeps the isotropic prior's geometry (LogME is invariant to it in exact arithmetic)
    but puts the optimum well inside the ``[1 / CLAMP, CLAMP]`` box whatever the backbone's feature
    scale.  Without it, features whose sample-to-sample variation is small next to their magnitude
    need ``alpha`` below the clamp and score the no-signal value ``-1/2 log(2 pi e)``.

    Args:
        features: (n, D) features.

    Returns:
        (n, D) float64 prepared features (all zeros when the features are constant).
    """
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    scale = float(np.sqrt((f**2).mean()))
    return f / scale if scale > 0 else f


def logme(features: np.ndarray, target: np.ndarray, regression: bool = False) -> float:
    """LogME of features for a target (higher = more transferable).

    Features are centred and globally rescaled (:func:`prepare_features`); target columns are
    centred too (the intercept is not part of the evidence).  Features that do not vary across the
    samples carry no signal and score the no-signal value ``-1/2 log(2 pi e)`` (about -1.419) for a
    standardised regression target.

    Args:
        features: (n, D) frozen features of the target's training split.
        target: (n,) class labels (classification) or continuous values (regression).
        regression: True: the scalar target, standardised; False: one-hot targets (centred) averaged over classes.

    Returns:
        The mean (over target columns) maximised log evidence per sample.
    """
    t = np.asarray(target)
    if regression:
        t = t.astype(np.float64)
        sd = float(t.std())
        cols = ((t - t.mean()) / (sd if sd > 0 else 1.0))[:, None]
    else:
        cols = one_hot(t)
        cols = cols - cols.mean(0, keepdims=True)
    ev, _, _ = logme_evidence(prepare_features(features), cols)
    return float(ev.mean())
