"""Transferability scores against hand computations and planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.shared.transferability.logme import logme, logme_evidence, one_hot
from medtransfer.shared.transferability.probe import probe_scores
from medtransfer.shared.transferability.select import (
    combined_rank,
    greedy_select,
    kendall_tau,
    linear_cka,
    rank_scores,
)
from medtransfer.shared.transferability.tmi import bin_targets, coding_rate, tmi


def _direct_evidence(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """log N(y | 0, F F^T / alpha + I / beta) / n: the marginal likelihood written out directly."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    _, logdet = np.linalg.slogdet(cov)
    return float(-0.5 * (n * np.log(2 * np.pi) + logdet + y @ np.linalg.solve(cov, y)) / n)


@pytest.mark.parametrize("n,d", [(40, 5), (25, 15), (12, 30)])  # more samples than dims, and fewer
def test_logme_equals_the_directly_computed_marginal_likelihood_at_its_maximum(n, d):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(n, d))
    y = f @ rng.normal(size=d) + 0.5 * rng.normal(size=n)
    ev, alpha, beta = logme_evidence(f, y, max_iter=1000, tol=1e-10)
    a, b = float(alpha[0]), float(beta[0])
    assert ev[0] == pytest.approx(_direct_evidence(f, y, a, b), abs=1e-8)
    if n <= d:  # y lies in the span of F: the noise precision beta runs off to infinity (no interior maximum)
        return
    for fa, fb in [(1.3, 1), (0.7, 1), (1, 1.3), (1, 0.7)]:  # the fixed point is a maximum
        assert _direct_evidence(f, y, a * fa, b * fb) < ev[0]


def test_logme_vectorised_columns_equal_separate_calls():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(30, 6))
    ys = rng.normal(size=(30, 3))
    ev, _, _ = logme_evidence(f, ys)
    for k in range(3):
        assert ev[k] == pytest.approx(logme_evidence(f, ys[:, k])[0][0], rel=1e-9)


def test_logme_prefers_informative_features():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 90)
    good = one_hot(y) @ rng.normal(size=(3, 8)) * 3 + rng.normal(size=(90, 8))
    bad = rng.normal(size=(90, 8))
    assert logme(good, y) > logme(bad, y)
    t = rng.normal(size=90)
    assert logme(np.c_[t, rng.normal(size=(90, 4))], t, regression=True) > logme(bad, t, regression=True)


def test_coding_rate_and_bins_by_hand():
    a, eps = 2.0, 0.5
    # Z = [[a], [-a]]: Z^T Z = 2 a^2, d/(n eps^2) = 1/(2 eps^2) -> 1/2 log(1 + a^2 / eps^2)
    assert coding_rate(np.array([[a], [-a]]), eps) == pytest.approx(0.5 * np.log(1 + a**2 / eps**2))
    assert bin_targets(np.arange(10.0), 5).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]


def test_tmi_orders_planted_clusters_by_intra_class_spread():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(3), 40)
    centres = rng.normal(size=(3, 16)) * 4
    scores = [tmi(centres[y] + s * rng.normal(size=(120, 16)), y) for s in (0.1, 0.5, 2.0)]
    assert scores[0] < scores[1] < scores[2]
    # regression variant: binned target
    t = rng.normal(size=120)
    assert tmi(np.c_[t, 0.1 * rng.normal(size=(120, 3))], t, regression=True) < tmi(
        np.c_[t, 2.0 * rng.normal(size=(120, 3))], t, regression=True
    )


def test_probes_on_separable_and_random_labels():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1], 30)
    sep = np.c_[y * 6.0, np.zeros(60)] + rng.normal(size=(60, 2))
    s = probe_scores(sep, y)
    assert s["knn"] == 1.0 and s["linear"] == 1.0
    rnd = probe_scores(rng.normal(size=(60, 2)), y)
    assert rnd["knn"] < 0.8 and rnd["linear"] < 0.8
    t = rng.normal(size=60)
    r = probe_scores(np.c_[t, 0.1 * rng.normal(size=60)], t, regression=True)
    assert r["knn"] > 0.8 and r["linear"] > 0.9


def test_ranks_tau_cka_and_greedy_selection():
    assert rank_scores([3.0, 1.0, 2.0]).tolist() == [1, 3, 2]
    assert rank_scores([np.nan, 1.0, 2.0]).tolist() == [3, 2, 1]
    assert combined_rank([[1, 2, 3], [2, 1, 3]]).tolist() == [1.5, 1.5, 3]
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    rng = np.random.default_rng(5)
    x = rng.normal(size=(50, 4))
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    assert linear_cka(x, 3 * x @ q) == pytest.approx(1.0)
    assert linear_cka(x, rng.normal(size=(50, 4))) < 0.5
    t = {"A": 1.0, "B": 0.95, "C": 0.9, "D": 0.0}
    sim = {("A", "B"): 0.99, ("A", "C"): 0.0, ("B", "C"): 0.0}  # missing pairs count 0
    assert greedy_select(t, sim, 2, lam=0.5) == ["A", "C"]  # B is redundant with A: gain .95 - .5*.99 < .9
    assert greedy_select(t, sim, 2, lam=0.0) == ["A", "B"]
    assert greedy_select(t, sim, 9) == ["A", "C", "B", "D"]


@pytest.mark.parametrize("n,d", [(60, 8), (40, 512)])  # more samples than dims, and far fewer
@pytest.mark.parametrize("scale,offset", [(1.0, 0.0), (1e-6, 0.0), (1e-3, 50.0), (1e4, 0.0)])
def test_logme_linear_features_beat_random_ones_at_any_feature_scale(n, d, scale, offset):
    """Features that linearly determine the target score above random ones, whatever their scale or
    common offset (small variation on a large pooled mean used to pin alpha at the clamp: no-signal value)."""
    rng = np.random.default_rng(6)
    no_signal = -0.5 * np.log(2 * np.pi * np.e)
    t = rng.normal(size=n)
    good = np.c_[t, rng.normal(size=(n, d - 1)) * 0.1] * scale + offset
    bad = rng.normal(size=(n, d)) * scale + offset
    assert logme(good, t, regression=True) > logme(bad, t, regression=True)
    assert logme(good, t, regression=True) > no_signal + 0.05
    y = rng.integers(0, 3, n)
    good_c = (one_hot(y) @ rng.normal(size=(3, d)) + 0.1 * rng.normal(size=(n, d))) * scale + offset
    assert logme(good_c, y) > logme(bad, y)
    # one global feature scale does not change the score (in exact arithmetic it cannot)
    assert logme(good * 7.0, t, regression=True) == pytest.approx(logme(good, t, regression=True), rel=1e-4)


def test_logme_constant_features_score_the_no_signal_value():
    t = np.random.default_rng(7).normal(size=30)
    const = np.tile(np.linspace(0.1, 2.0, 16), (30, 1))
    assert logme(const, t, regression=True) == pytest.approx(-0.5 * np.log(2 * np.pi * np.e), abs=1e-6)
