"""Ranks, agreement with fine-tuned results, and OSBORN-style greedy ensemble selection.

OSBORN (Building a Winning Team: Selecting Source Model Ensembles using a Submodular
Transferability Estimation Approach, ICCV 2023) scores an ensemble of source models by how well
each transfers to the target and how coherent the members are, and picks the ensemble greedily
(submodular maximisation).  Our version (:func:`greedy_select`) maximises::

    f(S) = sum_{i in S} t_i  -  lam * sum_{i in S} max_{j in S, j before i} sim(i, j)

where ``t_i`` is a per-source transferability (LogME of the source's frozen embedding of the
target's TRAINING patients, min-max scaled to [0, 1] over the candidates) and ``sim`` the linear
CKA between two sources' embeddings of the same patients (redundant experts add little: the
model-coherence term).  Each greedy step adds the source with the largest marginal gain
``t_i - lam * max_{j in S} sim(i, j)``; the gains only shrink as S grows (diminishing returns),
the property the greedy guarantee rests on.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["combined_rank", "greedy_select", "kendall_tau", "linear_cka", "rank_scores"]


def rank_scores(scores: Sequence[float], higher_is_better: bool = True) -> np.ndarray:
    """Rank per score (1 = best; ties share the average rank; NaN ranks last).

    Args:
        scores: one value per candidate.
        higher_is_better: orientation of the score.

    Returns:
        float ranks, one per candidate.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    key = -s if higher_is_better else s
    key = np.where(np.isnan(key), np.inf, key)
    return rankdata(key, method="average")


def combined_rank(rank_columns: Sequence[Sequence[float]]) -> np.ndarray:
    """The combined rank: candidates ordered by their mean rank over scores (1 = best)."""
    r = np.asarray(rank_columns, dtype=np.float64)
    return rank_scores(r.mean(0), higher_is_better=False)


def kendall_tau(scores: Sequence[float], results: Sequence[float]) -> float:
    """Kendall's tau-b (scipy) between a score and the fine-tuned results (NaN with fewer than 2 pairs)."""
    from scipy.stats import kendalltau

    s, r = np.asarray(scores, float), np.asarray(results, float)
    ok = ~(np.isnan(s) | np.isnan(r))
    if ok.sum() < 2 or np.ptp(s[ok]) == 0 or np.ptp(r[ok]) == 0:
        return float("nan")
    return float(kendalltau(s[ok], r[ok]).statistic)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA between two representations of the same samples (1 = same up to rotation and scale)."""
    a = np.asarray(x, np.float64) - np.asarray(x, np.float64).mean(0)
    b = np.asarray(y, np.float64) - np.asarray(y, np.float64).mean(0)
    cross = np.linalg.norm(a.T @ b) ** 2
    den = np.linalg.norm(a.T @ a) * np.linalg.norm(b.T @ b)
    return float(cross / den) if den > 0 else 0.0


def greedy_select(
    transfer: Mapping[str, float],
    similarity: Mapping[tuple[str, str], float] | None,
    k: int,
    lam: float = 0.5,
) -> list[str]:
    """Pick ``k`` sources greedily: largest ``t_i - lam * max_{j in S} sim(i, j)`` first.

    Args:
        transfer: source -> transferability (any scale; min-max scaled here).
        similarity: (a, b) -> similarity in [0, 1] (either order; missing pairs count 0).
        k: sources to pick (capped by the number of candidates).
        lam: weight of the redundancy term (0 = top-k by transferability).

    Returns:
        The picked sources, in pick order.
    """
    names = list(transfer)
    v = np.array([transfer[n] for n in names], np.float64)
    v = np.where(np.isnan(v), np.nanmin(v) if np.isfinite(v).any() else 0.0, v)
    t = (v - v.min()) / (np.ptp(v) or 1.0)
    sim = dict(similarity or {})

    def s(a: str, b: str) -> float:
        return float(sim.get((a, b), sim.get((b, a), 0.0)))

    picked: list[str] = []
    for _ in range(min(k, len(names))):
        best, gain = None, -np.inf
        for i, n in enumerate(names):
            if n in picked:
                continue
            g = t[i] - lam * max((s(n, p) for p in picked), default=0.0)
            if g > gain + 1e-12:
                best, gain = n, g
        picked.append(str(best))
    return picked
