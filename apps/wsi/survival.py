"""Discrete-time survival: time bins, the hazard NLL, padded bag batches, metrics and plots.

Conventions (SurvPath / Path-PKT): ``censorship`` 1 = censored, 0 = event; times in months.
Bin ``j`` covers ``[edges[j], edges[j+1])``; a model gives one hazard logit per bin; survival
``S_j = prod_{i<=j}(1 - h_i)`` and risk ``= -sum_j S_j`` (higher = worse prognosis).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from medtransfer.shared.metrics import c_index as c_index  # the app's survival metrics stay importable here


# ---------------------------------------------------------------------------- time bins
def make_bins(
    times: np.ndarray, events: np.ndarray, n_bins: int = 4, scheme: str = "quantile", max_time: Optional[float] = None
) -> np.ndarray:
    """Bin edges (n_bins + 1) in months.

    Args:
        times: observed times (training set only).
        events: 1 = event observed.
        n_bins: number of bins (``quantile``) or of years (``yearly``).
        scheme: ``quantile`` (cut points at quantiles of uncensored times, as SurvPath) or
            ``yearly`` (12-month bins, as Path-PKT; the last bin is open).
        max_time: optional right edge (default: max time + 1).

    Returns:
        Increasing edges, first 0, last +inf-like (max + 1e6 guard not needed: last bin is open).
    """
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events).astype(bool)
    top = float(max_time if max_time is not None else times.max() + 1.0)
    if scheme == "yearly":
        edges = np.arange(n_bins + 1, dtype=np.float64) * 12.0
        edges[-1] = max(edges[-1], top)
        return edges
    if scheme != "quantile":
        raise ValueError(f"unknown bin scheme '{scheme}' (quantile or yearly)")
    src = times[events] if events.sum() >= n_bins else times
    qs = np.quantile(src, np.linspace(0, 1, n_bins + 1))
    qs[0], qs[-1] = 0.0, max(top, qs[-1] + 1e-6)
    return np.maximum.accumulate(qs + np.arange(len(qs)) * 1e-9)


def to_bins(times: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin index of each time (clipped to the last bin)."""
    idx = np.searchsorted(edges[1:-1], np.asarray(times, dtype=np.float64), side="right")
    return np.clip(idx, 0, len(edges) - 2).astype(np.int64)


# ---------------------------------------------------------------------------- loss
def nll_loss(logits: Any, y_bin: Any, censored: Any, alpha: float = 0.5, eps: float = 1e-7) -> Any:
    """Discrete-time hazard negative log-likelihood (Zadeh & Schmauch 2020; SurvPath's NLLSurvLoss).

    Args:
        logits: (B, T) hazard logits.
        y_bin: (B,) bin of the observed time.
        censored: (B,) 1 = censored.
        alpha: weight of the uncensored-only term (Path-PKT uses 0.5).

    Returns:
        Scalar loss (mean over the batch).
    """
    import torch

    hazards = torch.sigmoid(logits)
    surv = torch.cumprod(1 - hazards, dim=1)
    s_pad = torch.cat([torch.ones_like(surv[:, :1]), surv], dim=1)
    y = y_bin.long().view(-1, 1)
    c = censored.float().view(-1, 1)
    s_prev = torch.gather(s_pad, 1, y).clamp_min(eps)
    h_this = torch.gather(hazards, 1, y).clamp_min(eps)
    s_this = torch.gather(s_pad, 1, y + 1).clamp_min(eps)
    uncensored = -(1 - c) * (torch.log(s_prev) + torch.log(h_this))
    censored_l = -c * torch.log(s_this)
    loss = (1 - alpha) * (censored_l + uncensored) + alpha * uncensored
    return loss.mean()


def risk_from_logits(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy: logits (B,T) -> (risk (B,), hazards, survival)."""
    h = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    s = np.cumprod(1 - h, axis=1)
    return -s.sum(1), h, s


# ---------------------------------------------------------------------------- batches
def pad_bags(
    bags: Sequence[np.ndarray], max_patches: Optional[int] = None, rng: Optional[np.random.Generator] = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pad variable-length bags into (B, N, D) with a (B, N) bool mask.

    Args:
        bags: (n_i, D) arrays.
        max_patches: cap per bag (random subset when ``rng`` is given, else the first ones).
        rng: random generator for subsampling.
    """
    sel = []
    for b in bags:
        if max_patches and len(b) > max_patches:
            idx = np.sort(rng.choice(len(b), max_patches, replace=False)) if rng is not None else np.arange(max_patches)
            b = b[idx]
        sel.append(b)
    n = max(len(b) for b in sel)
    d = sel[0].shape[1]
    x = np.zeros((len(sel), n, d), np.float32)
    m = np.zeros((len(sel), n), bool)
    for i, b in enumerate(sel):
        x[i, : len(b)] = b
        m[i, : len(b)] = True
    return x, m


# ---------------------------------------------------------------------------- metrics
def td_auc(
    train_times: np.ndarray,
    train_events: np.ndarray,
    times: np.ndarray,
    events: np.ndarray,
    risk: np.ndarray,
    n_points: int = 5,
) -> tuple[float, list[float], list[float]]:
    """Cumulative/dynamic time-dependent AUC (scikit-survival) at quantiles of the test event times.

    Returns:
        ``(mean AUC, evaluation times, AUC at each time)``; NaN when not computable.
    """
    from sksurv.metrics import cumulative_dynamic_auc
    from sksurv.util import Surv

    tr = Surv.from_arrays(np.asarray(train_events).astype(bool), np.asarray(train_times, float))
    te = Surv.from_arrays(np.asarray(events).astype(bool), np.asarray(times, float))
    ev_t = np.asarray(times, float)[np.asarray(events).astype(bool)]
    if len(ev_t) < 2:
        return float("nan"), [], []
    lo = max(ev_t.min(), np.asarray(times).min())
    hi = min(np.asarray(train_times, float).max(), np.asarray(times, float).max())
    grid = np.quantile(ev_t, np.linspace(0.2, 0.8, n_points))
    grid = np.unique(grid[(grid > lo) & (grid < hi)])
    if len(grid) == 0:
        return float("nan"), [], []
    try:
        aucs, mean = cumulative_dynamic_auc(tr, te, np.asarray(risk, float), grid)
    except ValueError:
        return float("nan"), [], []
    return float(mean), [float(t) for t in grid], [float(a) for a in aucs]


def km_plot(
    times: np.ndarray,
    events: np.ndarray,
    risk: np.ndarray,
    out_png: str | Path,
    title: str = "",
    n_groups: int = 2,
    groups: Optional[np.ndarray] = None,
) -> dict[str, Any]:
    """Kaplan-Meier curves by predicted risk group plus a log-rank test.

    Groups are cut at quantiles of ``risk`` unless ``groups`` (ints 0..n_groups-1, e.g. from a
    threshold fixed on training data) is given.

    Returns:
        ``{"png", "logrank_p", "groups": [{"name", "n", "events", "median_months"}]}``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator
    from sksurv.util import Surv

    times = np.asarray(times, float)
    events = np.asarray(events).astype(bool)
    risk = np.asarray(risk, float)
    if groups is not None:
        group = np.asarray(groups).astype(int)
    else:
        cuts = np.quantile(risk, np.linspace(0, 1, n_groups + 1)[1:-1])
        group = np.searchsorted(cuts, risk, side="right")
    names = ["low risk", "high risk"] if n_groups == 2 else [f"risk group {g + 1}" for g in range(n_groups)]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    info = []
    for g in range(n_groups):
        sel = group == g
        if sel.sum() == 0:
            continue
        t, s = kaplan_meier_estimator(events[sel], times[sel])
        ax.step(t, s, where="post", label=f"{names[g]} (n={int(sel.sum())})")
        med = float(t[np.argmax(s <= 0.5)]) if (s <= 0.5).any() else None
        info.append({"name": names[g], "n": int(sel.sum()), "events": int(events[sel].sum()), "median_months": med})
    p = float("nan")
    if len(np.unique(group)) > 1 and events.any():
        try:
            _, p = compare_survival(Surv.from_arrays(events, times), group)
            p = float(p)
        except Exception:
            p = float("nan")
    ax.set_xlabel("months")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"{title} log-rank p={p:.2g}" if title else f"log-rank p={p:.2g}")
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return {"png": str(out_png), "logrank_p": p, "groups": info}


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation, ignoring NaN."""
    v = np.asarray([x for x in values if x == x], dtype=float)
    if len(v) == 0:
        return float("nan"), float("nan")
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
