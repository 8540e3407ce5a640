"""Accuracy at a new site without labels, plus drift: ``medtransfer estimate``.

A bundle exported by this medtransfer carries ``reference.json`` (written by
:mod:`medtransfer.shared.export.reference` from the run's VALIDATION split, never test): per
validation case the predicted class, the true class and two confidence scores, the fitted ATC
thresholds, validation accuracy / balanced accuracy, and reference samples of the modality's input
statistics (EEG band powers, image intensity histograms, feature statistics...).

:func:`estimate` streams a site's unlabelled cases through the bundle's torch-free predictor (one
resumable row per case in a side CSV, bad cases as error rows, the same case listing, de-duplication,
lock and resume rules as ``score``) and compares them with the reference:

- **ATC** (average thresholded confidence, Garg et al., ICLR 2022): on validation, a threshold ``t``
  on a score is fitted so that the share of cases scoring above ``t`` equals validation accuracy; the
  estimated site accuracy is the share of site cases above ``t``.  Two score functions: negative
  entropy (``neg_entropy``, ``sum p log p``; the primary estimate, ATC-NE, the paper's best variant)
  and max-softmax (``max_softmax``, ATC-MC).
- **DoC** (difference of confidences, Guillory et al., ICCV 2021): validation accuracy minus the drop
  of mean max-softmax from validation to the site.
- **Balanced accuracy**: ATC's per-case "correct" indicator inside each predicted class, with the
  validation confusion matrix distributing the estimated errors over the true classes.
- **Transfer Score** (Yang et al., ICLR 2024, "Can We Evaluate Domain Adaptation Models Without
  Target-Domain Labels?") needs the model's features and classifier weights; no bundle exposes them
  yet, so the JSON says so (``transfer_score.available: false``).
- **Interval**: percentile bootstrap (site cases and validation cases resampled together, the ATC
  threshold refitted each time).
- **Drift**: per input statistic, numeric output and confidence score, the two-sample
  Kolmogorov-Smirnov test of the site against the reference sample, with the p-values of ALL the
  bundle's statistics adjusted together (Holm, family-wise alpha 0.01: dozens of uncorrected tests
  flagged unshifted data).  A statistic drifts when its adjusted p < 0.01 and its KS distance is at
  least 0.2 (an effect floor: a large site must not flag a trivial difference); with fewer than 10
  values on either side it is not tested (``insufficient data``, never "drift").  PSI is reported for
  information only (biased upwards on small samples).  See :func:`drift_report`.

When any input statistic drifts, ``estimate_reliable`` is false with a ``caution``: on our shifted
checks (gain, strong noise) models became confidently wrong there, which no confidence-based
estimator can see; when too few cases could be tested, the ``caution`` says the check was not made.
Segmentation and survival bundles get drift only (``kind`` and ``estimated_accuracy: null`` with the
reason in the JSON).  Torch-free.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.utils.errors import BundleError, MedTransferError

REFERENCE_FILE = "reference.json"
#: score function used for the primary estimate
PRIMARY_SCORE = "neg_entropy"
SCORE_FUNCTIONS = ("max_softmax", "neg_entropy")
#: largest per-statistic reference sample stored (bigger samples are reduced to this many quantiles)
MAX_SAMPLE = 1000
#: largest number of validation cases kept per case in the reference
MAX_VAL_CASES = 5000
#: the drift test (see :func:`drift_report`): family-wise level, p-value correction over all statistics
DRIFT_ALPHA = 0.01
DRIFT_CORRECTION = "holm"
#: fewest values on EACH side (reference and site) for a statistic to be tested
MIN_DRIFT_CASES = 10
#: smallest KS distance (largest gap between the two empirical CDFs) that counts as drift
DRIFT_EFFECT_FLOOR = 0.2
#: drift status of a statistic (or a whole report) with too few values to test: never "no drift"
INSUFFICIENT_DATA = "insufficient data"
#: fewest reference values PSI is computed on (two bins of five)
MIN_PSI_REFERENCE = 10


# ------------------------------------------------------------------------------ per-case scores
def answer_probs(answer: Mapping[str, Any], labels: Sequence[str]) -> tuple[np.ndarray, int] | None:
    """Class probabilities and predicted class index from one predictor answer.

    Understood shapes: a ``probabilities`` or ``probs`` mapping label -> p (image, cardiac), or a
    binary ``probability`` of the LAST label with ``label`` (eeg: P(abnormal)).  The predicted class is
    ``label`` when it names a class (a tuned threshold may differ from argmax), else the argmax.

    Returns:
        (probabilities in ``labels`` order, predicted index), or None for answers without class
        probabilities (segmentation, survival).
    """
    labels = list(labels)
    if not labels:
        return None
    p: np.ndarray | None = None
    for key in ("probabilities", "probs"):
        d = answer.get(key)
        if isinstance(d, Mapping) and all(lab in d for lab in labels):
            p = np.array([float(d[lab]) for lab in labels], dtype=np.float64)
            break
    if p is None and len(labels) == 2 and isinstance(answer.get("probability"), (int, float)):
        q = float(answer["probability"])
        p = np.array([1.0 - q, q])
    if p is None or not np.all(np.isfinite(p)):
        return None
    p = np.clip(p, 0.0, None)
    p = p / p.sum() if p.sum() > 0 else np.full(len(labels), 1.0 / len(labels))
    lab = answer.get("label")
    pred = labels.index(lab) if isinstance(lab, str) and lab in labels else int(np.argmax(p))
    return p, pred


def confidence_scores(p: np.ndarray) -> dict[str, float]:
    """The two ATC score functions of one probability vector: ``max_softmax`` and ``neg_entropy``."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0)
    return {"max_softmax": float(p.max()), "neg_entropy": float(np.sum(p * np.log(p)))}


def numeric_outputs(answer: Mapping[str, Any]) -> dict[str, float]:
    """Top-level numeric values of an answer (risk, areas...): the output statistics of non-classifiers."""
    out = {}
    for k, v in answer.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or k in ("seconds",):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


# ------------------------------------------------------------------------------ estimators
def atc_threshold(scores: np.ndarray, accuracy: float) -> float:
    """The ATC threshold: the share of ``scores`` strictly above it equals ``accuracy`` (rounded to cases)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))
    n = len(s)
    if n == 0:
        return float("nan")
    above = int(round(float(accuracy) * n))
    k = n - above  # cases at or below the threshold
    if k <= 0:
        return float(s[0] - 1e-9)
    if k >= n:
        return float(s[-1])
    return float((s[k - 1] + s[k]) / 2.0)


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, n_classes: int) -> float:
    """Mean recall over the classes present in ``y``."""
    rec = [float(np.mean(pred[y == k] == k)) for k in range(n_classes) if np.any(y == k)]
    return float(np.mean(rec)) if rec else float("nan")


def _error_mix(val_y: np.ndarray, val_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """P(true = k | predicted c, wrong) from validation (uniform over other classes where unseen)."""
    m = np.zeros((n_classes, n_classes))
    for c in range(n_classes):
        wrong = (val_pred == c) & (val_y != c)
        if wrong.any():
            m[c] = np.bincount(val_y[wrong], minlength=n_classes) / wrong.sum()
        elif n_classes > 1:
            m[c] = 1.0 / (n_classes - 1)
            m[c, c] = 0.0
    return m


def _estimates(val: Mapping[str, np.ndarray], site: Mapping[str, np.ndarray], n_classes: int) -> dict[str, float]:
    """Every estimator on one (validation, site) pair of case arrays."""
    correct = (val["pred"] == val["label"]).astype(np.float64)
    acc = float(correct.mean())
    out: dict[str, float] = {}
    thr = {}
    for sf in SCORE_FUNCTIONS:
        thr[sf] = atc_threshold(val[sf], acc)
        out[f"atc_{sf}"] = float(np.mean(site[sf] > thr[sf]))
    out["doc"] = float(np.clip(acc - (np.mean(val["max_softmax"]) - np.mean(site["max_softmax"])), 0.0, 1.0))
    ok = (site[PRIMARY_SCORE] > thr[PRIMARY_SCORE]).astype(np.float64)
    mix = _error_mix(val["label"], val["pred"], n_classes)
    est_true = np.zeros(n_classes)
    est_correct = np.zeros(n_classes)
    for c in range(n_classes):
        sel = site["pred"] == c
        if not sel.any():
            continue
        good = float(ok[sel].sum())
        est_correct[c] += good
        est_true[c] += good
        est_true += (float(sel.sum()) - good) * mix[c]
    present = est_true > 1e-9
    out["balanced_accuracy"] = float(np.mean(est_correct[present] / est_true[present])) if present.any() else 0.0
    return out


def _arrays(cases: Mapping[str, Sequence[Any]]) -> dict[str, np.ndarray]:
    out = {k: np.asarray(cases[k], dtype=np.float64) for k in SCORE_FUNCTIONS}
    out["pred"] = np.asarray(cases["pred"], dtype=np.int64)
    if "label" in cases:
        out["label"] = np.asarray(cases["label"], dtype=np.int64)
    return out


def estimate_accuracy(
    reference: Mapping[str, Any], site: Mapping[str, Sequence[Any]], n_boot: int = 300, seed: int = 0
) -> dict[str, Any]:
    """Label-free accuracy estimates for a classifier.

    Args:
        reference: the bundle's reference statistics (``val_cases``: pred, label, max_softmax, neg_entropy).
        site: the site's cases: ``pred``, ``max_softmax``, ``neg_entropy`` (equal-length sequences).
        n_boot: bootstrap resamples for the interval.
        seed: bootstrap seed.

    Returns:
        ``estimated_accuracy`` (ATC-NE), ``estimated_balanced_accuracy``, ``interval`` (95 %, both),
        ``methods`` (every estimator), ``reference_accuracy``.
    """
    val = _arrays(reference["val_cases"])
    s = _arrays(site)
    k = len(reference["labels"])
    point = _estimates(val, s, k)
    rng = np.random.default_rng(seed)
    boots: list[dict[str, float]] = []
    nv, ns = len(val["pred"]), len(s["pred"])
    for _ in range(n_boot if ns and nv else 0):
        iv, is_ = rng.integers(0, nv, nv), rng.integers(0, ns, ns)
        boots.append(_estimates({a: b[iv] for a, b in val.items()}, {a: b[is_] for a, b in s.items()}, k))

    def ci(key: str) -> list[float] | None:
        if not boots:
            return None
        v = np.array([b[key] for b in boots])
        return [round(float(np.quantile(v, 0.025)), 4), round(float(np.quantile(v, 0.975)), 4)]

    return {
        "estimated_accuracy": round(point[f"atc_{PRIMARY_SCORE}"], 4),
        "estimated_balanced_accuracy": round(point["balanced_accuracy"], 4),
        "interval": {
            "level": 0.95,
            "method": f"percentile bootstrap ({n_boot} resamples of site and validation cases)",
            "accuracy": ci(f"atc_{PRIMARY_SCORE}"),
            "balanced_accuracy": ci("balanced_accuracy"),
        },
        "methods": {
            "atc_neg_entropy": round(point["atc_neg_entropy"], 4),
            "atc_max_softmax": round(point["atc_max_softmax"], 4),
            "doc": round(point["doc"], 4),
            "primary": f"atc_{PRIMARY_SCORE}",
        },
        "transfer_score": {
            "available": False,
            "reason": "the bundle exposes no features or classifier weights (Transfer Score needs both)",
        },
        "reference_accuracy": reference.get("accuracy"),
        "reference_balanced_accuracy": reference.get("balanced_accuracy"),
    }


# ------------------------------------------------------------------------------ distributions
def reference_sample(values: Iterable[float]) -> list[float]:
    """A sorted reference sample (finite values; reduced to :data:`MAX_SAMPLE` quantiles when larger)."""
    v = np.sort(np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64))
    if len(v) > MAX_SAMPLE:
        v = np.quantile(v, np.linspace(0, 1, MAX_SAMPLE))
    return [float(f"{x:.6g}") for x in v]


def psi(ref: Sequence[float], new: Sequence[float], bins: int = 10) -> float:
    """Population stability index of ``new`` against ``ref`` over reference-quantile bins.

    Reported beside the drift test, never deciding it: on small samples PSI is biased upwards by about
    ``(bins - 1) * (1/n_ref + 1/n_site)`` (0.29 for 10 bins, 144 reference and 40 site cases drawn from
    the SAME distribution), so a fixed PSI threshold flags unshifted data.

    Returns:
        PSI, or NaN when the reference has fewer than :data:`MIN_PSI_REFERENCE` values (too few to bin).
    """
    r, n = np.asarray(ref, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if len(r) < MIN_PSI_REFERENCE or len(n) < 1:
        return float("nan")
    bins = max(2, min(bins, len(r) // 5))
    edges = np.unique(np.quantile(r, np.linspace(0, 1, bins + 1)[1:-1]))
    rc = np.bincount(np.searchsorted(edges, r, side="right"), minlength=len(edges) + 1) / len(r)
    nc = np.bincount(np.searchsorted(edges, n, side="right"), minlength=len(edges) + 1) / len(n)
    eps = 1e-4
    rc, nc = np.clip(rc, eps, None), np.clip(nc, eps, None)
    return float(np.sum((nc - rc) * np.log(nc / rc)))


def adjust_pvalues(p: Sequence[float], method: str = DRIFT_CORRECTION) -> np.ndarray:
    """Multiplicity-adjusted p-values of one family of tests.

    Args:
        p: raw p-values.
        method: ``holm`` (Holm-Bonferroni step-down: family-wise error control under any dependence
            between the tests, which ours have: histogram bins sum to one, band powers move together)
            or ``bh`` (Benjamini-Hochberg false discovery rate, :func:`scipy.stats.false_discovery_control`).

    Returns:
        Adjusted p-values in the order given (compare each with the family's alpha).
    """
    q = np.asarray(p, dtype=np.float64)
    if q.size == 0:
        return q
    if method == "bh":
        from scipy.stats import false_discovery_control

        return np.asarray(false_discovery_control(q, method="bh"), dtype=np.float64)
    if method != "holm":
        raise ValueError(f"unknown p-value correction '{method}' (holm or bh)")
    order = np.argsort(q, kind="stable")
    m = q.size
    stepped = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * q[order]))
    out = np.empty(m)
    out[order] = stepped
    return out


def compare(ref: Sequence[float], new: Sequence[float], min_cases: int = MIN_DRIFT_CASES) -> dict[str, Any]:
    """The two-sample KS test (and PSI, for information) of one statistic; no drift decision.

    :func:`drift_report` decides over all statistics of a bundle at once (multiplicity-adjusted p,
    effect floor); an entry returned here has ``status`` ``tested`` or ``insufficient data`` (fewer
    than ``min_cases`` finite values on either side) and ``drift`` false.
    """
    r = [float(x) for x in ref if x is not None and math.isfinite(x)]
    n = [float(x) for x in new if x is not None and math.isfinite(x)]
    out: dict[str, Any] = {"n": len(n), "n_reference": len(r)}
    if r and n:
        out.update(reference_median=round(float(np.median(r)), 6), site_median=round(float(np.median(n)), 6))
    if len(r) < min_cases or len(n) < min_cases:
        return {**out, "psi": None, "ks": None, "ks_p": None, "status": INSUFFICIENT_DATA, "drift": False}
    from scipy.stats import ks_2samp

    ks = ks_2samp(np.asarray(r), np.asarray(n))
    p = psi(r, n)
    return {
        **out,
        "psi": round(p, 4) if math.isfinite(p) else None,
        "ks": round(float(ks.statistic), 4),
        "ks_p": float(f"{float(ks.pvalue):.3g}"),
        "status": "tested",
        "drift": False,
    }


def drift_rule(alpha: float = DRIFT_ALPHA, method: str = DRIFT_CORRECTION) -> str:
    """The drift test in one line (written into the JSON)."""
    name = "Holm" if method == "holm" else "Benjamini-Hochberg"
    return (
        f"two-sample KS per statistic, p-values {name}-adjusted over every statistic tested (alpha {alpha:g}); a "
        f"statistic drifts when its adjusted p < {alpha:g} AND its KS distance >= {DRIFT_EFFECT_FLOOR:g}; fewer "
        f"than {MIN_DRIFT_CASES} values on either side: insufficient data (not tested); PSI is reported, not used"
    )


def drift_report(
    reference: Mapping[str, Any],
    site: Mapping[str, Sequence[float]],
    alpha: float = DRIFT_ALPHA,
    method: str = DRIFT_CORRECTION,
) -> dict[str, Any]:
    """Compare the site's statistics with the reference samples of the same names.

    The test: each statistic (input statistics, numeric outputs, confidences) gets a two-sample KS test
    of the site's values against the bundle's reference sample; its p-values are adjusted together
    (``method``, Holm by default: the chance that an unshifted site flags ANY statistic stays below
    ``alpha`` however many statistics the app defines and however they correlate).  A statistic drifts
    when its adjusted p < ``alpha`` and its KS distance (largest gap between the two empirical CDFs, 0-1)
    is at least :data:`DRIFT_EFFECT_FLOOR`, so a large site does not flag a trivially small, significant
    difference.  Statistics with fewer than :data:`MIN_DRIFT_CASES` values on either side are not
    tested (``insufficient data``), and when none can be tested the report says so instead of "drift"
    or "no drift".  KS assumes independent cases: many cases from few patients or sessions overstate
    the evidence, which the effect floor limits.

    Args:
        reference: the bundle's reference (``stats``, ``outputs`` and, for classifiers, ``confidence``
            reference samples).
        site: statistic name -> the site's values (input statistics, ``confidence.max_softmax`` ...).
        alpha: family-wise (Holm) or false-discovery (BH) level.
        method: ``holm`` or ``bh`` (:func:`adjust_pvalues`).

    Returns:
        ``flag``, ``status`` (``drift``, ``no drift`` or ``insufficient data``), ``summary`` (one line),
        ``rule``, ``correction``, ``alpha``, ``effect_floor``, ``min_cases``, ``n_tested``,
        ``drifted``, ``insufficient``, ``statistics`` and ``confidence`` (name -> n, medians, KS, KS p,
        ``p_adjusted``, PSI, ``status``, ``drift``).
    """
    groups = {"input": reference.get("stats") or {}, "output": reference.get("outputs") or {}}
    conf = reference.get("confidence") or {}
    stats: dict[str, Any] = {}
    for group, ref in groups.items():
        for name, sample in sorted(ref.items()):
            key = f"{group}.{name}"
            if key in site:
                stats[key] = compare(sample, site[key])
    confidence = {
        name: compare(sample, site[f"confidence.{name}"])
        for name, sample in sorted(conf.items())
        if f"confidence.{name}" in site
    }
    family = [v for v in [*stats.values(), *confidence.values()] if v["status"] == "tested"]
    for v, pa in zip(family, adjust_pvalues([v["ks_p"] for v in family], method)):
        v["p_adjusted"] = float(f"{pa:.3g}")
        significant = bool(pa < alpha)
        v["drift"] = significant and v["ks"] >= DRIFT_EFFECT_FLOOR
        v["status"] = "drift" if v["drift"] else ("below effect floor" if significant else "no drift")
    drifted = sorted((k for k, v in stats.items() if v["drift"]), key=lambda k: -(stats[k]["ks"] or 0))
    conf_drift = [k for k, v in confidence.items() if v["drift"]]
    insufficient = [k for k, v in stats.items() if v["status"] == INSUFFICIENT_DATA] + [
        f"confidence.{k}" for k, v in confidence.items() if v["status"] == INSUFFICIENT_DATA
    ]
    n_stats = len(stats)
    name = "Holm" if method == "holm" else "BH"
    if drifted or conf_drift:
        parts = []
        if drifted:
            top = stats[drifted[0]]
            parts.append(
                f"{len(drifted)} of {n_stats} input/output statistics drifted (largest: {drifted[0]}, KS "
                f"{top['ks']:.2f}, median {top['reference_median']:.4g} -> {top['site_median']:.4g})"
            )
        if conf_drift:
            c = confidence[conf_drift[0]]
            parts.append(
                f"confidence drifted ({conf_drift[0]} median {c['reference_median']:.3g} -> {c['site_median']:.3g})"
            )
        status = "drift"
        summary = "DRIFT: " + "; ".join(parts) + f" ({name}-adjusted over {len(family)} tests, alpha {alpha:g})"
    elif not family:
        status = INSUFFICIENT_DATA
        ns = max((v["n"] for v in [*stats.values(), *confidence.values()]), default=0)
        nr = max((v["n_reference"] for v in [*stats.values(), *confidence.values()]), default=0)
        summary = (
            f"insufficient data for a drift test: {ns} site and {nr} reference values per statistic "
            f"(at least {MIN_DRIFT_CASES} on each side needed)"
        )
    else:
        status = "no drift"
        summary = (
            f"no drift detected in {n_stats} statistics"
            + (" and the confidences" if confidence else "")
            + f" ({name}-adjusted over {len(family)} tests, alpha {alpha:g}"
            + (f"; {len(insufficient)} not tested: too few values" if insufficient else "")
            + ")"
        )
    return {
        "flag": bool(drifted or conf_drift),
        "status": status,
        "summary": summary,
        "rule": drift_rule(alpha, method),
        "correction": method,
        "alpha": alpha,
        "effect_floor": DRIFT_EFFECT_FLOOR,
        "effect": "KS distance (largest gap between the empirical CDFs)",
        "min_cases": MIN_DRIFT_CASES,
        "n_tested": len(family),
        "drifted": drifted + [f"confidence.{k}" for k in conf_drift],
        "insufficient": insufficient,
        "statistics": stats,
        "confidence": confidence,
    }


# ------------------------------------------------------------------------------ modality statistics
def intensity_stats(frames: Any, bins: int = 8) -> dict[str, float]:
    """Intensity statistics of images / frames (the image, echo and video ``input_stats`` hooks).

    Args:
        frames: one image or a sequence / stack of frames (H x W or H x W x C; uint8 0-255, or float
            0-1 / 0-255).
        bins: histogram bins over the 0-1 range.

    Returns:
        ``intensity_mean``, ``intensity_std``, ``intensity_p05/p50/p95``, ``dark_fraction`` (< 0.05),
        ``hist_<i>`` (share of pixels in bin i) and ``contrast`` (mean local gradient magnitude), all on
        grey levels scaled to 0-1.
    """
    arrs = [np.asarray(f) for f in (frames if isinstance(frames, (list, tuple)) else [frames])]
    if len(arrs) == 1 and arrs[0].ndim == 4:
        arrs = list(arrs[0])
    greys = []
    for a in arrs:
        scale = 255.0 if a.dtype == np.uint8 or (a.size and float(np.nanmax(a)) > 1.0) else 1.0
        g = a.astype(np.float64) / scale
        greys.append(g.mean(axis=-1) if g.ndim == 3 else g)
    flat = np.concatenate([g.ravel() for g in greys]) if greys else np.zeros(1)
    flat = np.clip(flat[np.isfinite(flat)], 0.0, 1.0)
    hist = np.histogram(flat, bins=bins, range=(0.0, 1.0))[0] / max(flat.size, 1)
    grad = [np.mean(np.abs(np.diff(g, axis=0))) + np.mean(np.abs(np.diff(g, axis=1))) for g in greys if g.ndim == 2]
    q = np.quantile(flat, [0.05, 0.5, 0.95]) if flat.size else np.zeros(3)
    out = {
        "intensity_mean": float(flat.mean()),
        "intensity_std": float(flat.std()),
        "intensity_p05": float(q[0]),
        "intensity_p50": float(q[1]),
        "intensity_p95": float(q[2]),
        "dark_fraction": float(np.mean(flat < 0.05)),
        "contrast": float(np.mean(grad)) if grad else 0.0,
    }
    out.update({f"hist_{i}": float(h) for i, h in enumerate(hist)})
    return out


def feature_stats(feats: Any) -> dict[str, float]:
    """Statistics of a feature bag (patches x dims): the wsi ``input_stats`` hook's summary.

    Returns:
        ``n_patches`` (log10), ``feature_mean``, ``feature_std`` (over all values), ``feature_norm``
        (mean L2 norm of a patch), ``feature_dim_spread`` (std over dims of the per-dim means).
    """
    x = np.asarray(feats, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 1 else x.reshape(-1, 1)
    return {
        "n_patches_log10": float(np.log10(max(len(x), 1))),
        "feature_mean": float(x.mean()),
        "feature_std": float(x.std()),
        "feature_norm": float(np.linalg.norm(x, axis=1).mean()),
        "feature_dim_spread": float(x.mean(axis=0).std()),
    }


# ------------------------------------------------------------------------------ observing cases
def stats_hook(app: str) -> Callable[..., dict[str, float]] | None:
    """The app's ``input_stats(path, bundle) -> {name: value}`` hook, or None when it has none."""
    from medtransfer.shared.plugins import get_app, load_object

    ref = getattr(get_app(app), "input_stats", None)
    return load_object(ref) if ref else None


def observe(
    predictor: Any, stats_fn: Callable[..., dict[str, float]] | None, path: Path, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """One case through the predictor (and the app's input statistics).

    Returns:
        ``{"kind", "pred", "probs", "max_softmax", "neg_entropy"}`` for classifiers (``kind`` =
        ``classifier``), ``{"kind": "other", "outputs": {...}}`` otherwise, plus ``stats`` and
        ``unreliable``.  Holds no path, no identifier.
    """
    bundle = predictor.bundle
    ans = predictor.answer(Path(path), **dict(extra))
    obs: dict[str, Any] = {"unreliable": bool(ans.get("unreliable"))}
    pp = answer_probs(ans, bundle.labels)
    if pp is not None:
        p, pred = pp
        sc = {k: round(v, 6) for k, v in confidence_scores(p).items()}
        obs.update(kind="classifier", pred=pred, probs=[round(float(x), 6) for x in p], **sc)
    else:
        obs.update(kind="other", outputs=numeric_outputs(ans))
    if stats_fn is not None:
        raw = stats_fn(Path(path), bundle).items()
        obs["stats"] = {k: float(f"{float(v):.6g}") for k, v in raw if math.isfinite(float(v))}
    return obs


# ------------------------------------------------------------------------------ the bundle's reference
def read_reference(bundle: Any) -> dict[str, Any]:
    """The bundle's reference statistics, validated.

    Raises:
        BundleError: the bundle has none (exported before ``estimate`` existed, or its app gives no
            validation cases): one line telling the user to re-export.
    """
    from medtransfer.shared.runtime.schema import validate_reference

    path = Path(bundle.path) / REFERENCE_FILE
    if REFERENCE_FILE not in bundle.description.files or not path.is_file():
        summary = bundle.meta.get("reference")
        if isinstance(summary, dict) and summary.get("reason"):
            raise BundleError(
                f"{bundle.path}: no reference statistics in this bundle ({summary['reason']}); `estimate` needs "
                "them: export it again once its app / run gives validation cases"
            )
        raise BundleError(
            f"{bundle.path}: no reference statistics in this bundle (exported before `estimate` existed); "
            "re-export it with this medtransfer: medtransfer export RUN_DIR --out BUNDLE --overwrite"
        )
    return validate_reference(json.loads(path.read_text(encoding="utf-8")), str(path)).model_dump()


# ------------------------------------------------------------------------------ the command
def _rows_path(out_json: Path) -> Path:
    return out_json.with_name(out_json.stem + ".cases.csv")


def _labels_of(manifest: str | Path | None) -> dict[str, str]:
    """case id -> label from a manifest (used only to report true accuracy beside the estimate)."""
    if manifest is None:
        return {}
    from medtransfer.shared.manifest import read_manifest

    return {r.case_id: str(r.label) for r in read_manifest(manifest) if str(r.label)}


def estimate(
    bundle_dir: str | Path,
    out_json: str | Path,
    manifest: str | Path | None = None,
    input_dir: str | Path | None = None,
    rows_csv: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    n_boot: int = 300,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Estimate accuracy and drift at a site from unlabelled cases; writes ``out_json``.

    Args:
        bundle_dir: a bundle with reference statistics.
        out_json: the estimate (JSON).
        manifest: cases from a manifest (its labels, if any, are NOT used for the estimate; they only
            fill ``true_accuracy`` for validation).
        input_dir: cases from a folder (the predictor's suffixes).
        rows_csv: per-case rows (default ``<out stem>.cases.csv`` beside ``out_json``).
        resume: continue an existing rows file (same bundle only).
        overwrite: replace existing rows.
        progress: show a progress bar.
        n_boot: bootstrap resamples.
        options: predictor options.

    Returns:
        The estimate: ``kind``, ``n_cases``, ``n_errors``, ``estimated_accuracy``,
        ``estimated_balanced_accuracy``, ``interval``, ``methods``, ``drift``, provenance.

    Raises:
        MedTransferError: bad bundle, bundle without reference, busy / colliding output, no cases.
    """
    from medtransfer.shared.runtime import score as sc
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    if (manifest is None) == (input_dir is None):
        raise MedTransferError("give exactly one of --manifest or --input-dir")
    out_json = Path(out_json)
    rows = Path(rows_csv) if rows_csv else _rows_path(out_json)
    if out_json.suffix.lower() == ".csv" or rows.resolve() == out_json.resolve():
        raise MedTransferError(f"{out_json}: --out is the estimate JSON; give a .json path")
    sc.check_out_path(rows, manifest=manifest, input_dir=input_dir, bundle_dir=bundle_dir)
    sc.check_out_path(out_json, manifest=manifest, input_dir=input_dir, bundle_dir=bundle_dir)
    bundle = load_bundle(bundle_dir)
    reference = read_reference(bundle)
    cases = sc.cases_from_manifest(manifest, bundle) if manifest else sc.cases_from_dir(input_dir, bundle)
    sc.check_out_path(rows, cases=cases)
    sc.check_out_path(out_json, cases=cases)
    t0 = time.perf_counter()
    with sc.lock_output(rows), sc.lock_output(out_json):  # two jobs on one --out: the second is refused
        unique, aliases = sc.unique_cases(cases)
        ids = {a: sc.input_id(c) for c in unique for a in aliases[c.case_id]}
        from medtransfer.shared.runtime.predictor import check_bundle_options

        opt_sha = sc.options_sha256(check_bundle_options(bundle, options or {}))
        done, fresh = sc.plan_resume(rows, bundle.sha256, resume, overwrite, ids, opt_sha)
        todo = [c for c in unique if not any(a in done for a in aliases[c.case_id])]
        predictor = build_predictor(bundle, **(options or {}))
        stats_fn = stats_hook(bundle.app)
        folders_ok = bool(getattr(predictor, "accepts_folders", False))
        prov = bundle.provenance()
        from rich.progress import Progress

        writer = sc.RowWriter(rows, fresh=fresh)
        try:
            with Progress(disable=not progress, transient=True) as bar:
                task = bar.add_task("estimating", total=len(todo))
                for c in todo:
                    t1 = time.perf_counter()
                    row: dict[str, Any] = {
                        "case": c.case_id,
                        **prov,
                        "input_id": ids.get(c.case_id, ""),
                        "options_sha256": opt_sha,
                    }
                    try:
                        problem = sc.path_problem(c.path, folders_ok)
                        if problem:
                            from medtransfer.shared.utils.errors import InputError

                            raise InputError(c.path, problem)
                        obs = observe(predictor, stats_fn, Path(c.path), c.extra)
                        row.update(status="ok", error="", result=json.dumps(obs, sort_keys=True))
                    except Exception as e:  # noqa: BLE001 - every failure is a row, never a crash
                        msg = str(e) if isinstance(e, MedTransferError) else f"{type(e).__name__}: {e}"
                        row.update(status="error", error=" ".join(msg.split())[:500], result="")
                    row["seconds"] = round(time.perf_counter() - t1, 4)
                    writer.write(row)
                    bar.update(task, advance=1)
        finally:
            writer.close()
        all_rows = sc.read_rows(rows)
        keep = {c.case_id for c in unique}
        all_rows = [r for r in all_rows if r.get("case") in keep]
        res = summarise(reference, all_rows, bundle.labels, _labels_of(manifest), n_boot=n_boot)
        if not res["n_cases"]:  # an estimate of nothing is not an estimate (the error rows stay)
            raise MedTransferError(
                f"{manifest or input_dir}: no case could be answered ({res['n_errors']} error rows in {rows}); "
                "no estimate written"
            )
        res.update(
            bundle=prov,
            rows=str(rows),
            total_listed=len(cases),
            duplicates=len(cases) - len(unique),
            seconds=round(time.perf_counter() - t0, 3),
        )
        tmp = out_json.with_name(f".{out_json.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(res, indent=2, default=str) + "\n", encoding="utf-8")
        tmp.replace(out_json)
    return res


def site_values(observations: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Statistic name -> values over cases (``input.*``, ``output.*``, ``confidence.*``), as
    :func:`drift_report` takes them, from :func:`observe` results."""
    site: dict[str, list[float]] = {}
    for o in observations:
        for k, v in (o.get("stats") or {}).items():
            site.setdefault(f"input.{k}", []).append(float(v))
        for k, v in (o.get("outputs") or {}).items():
            site.setdefault(f"output.{k}", []).append(float(v))
        for sf in SCORE_FUNCTIONS:
            if sf in o:
                site.setdefault(f"confidence.{sf}", []).append(float(o[sf]))
    return site


def summarise(
    reference: Mapping[str, Any],
    rows: Sequence[Mapping[str, str]],
    labels: Sequence[str],
    true_labels: Mapping[str, str] | None = None,
    n_boot: int = 300,
) -> dict[str, Any]:
    """The estimate JSON from per-case rows (``status``, ``result`` = :func:`observe` JSON).

    Args:
        reference: the bundle's reference statistics.
        rows: per-case rows.
        labels: the bundle's class names.
        true_labels: case id -> true label, when known (validation only; never used to estimate).
        n_boot: bootstrap resamples.
    """
    ok = [(r["case"], json.loads(r["result"])) for r in rows if r.get("status") == "ok" and r.get("result")]
    errors = [r for r in rows if r.get("status") != "ok"]
    kind = reference.get("kind", "other")
    res: dict[str, Any] = {
        "kind": kind,
        "n_cases": len(ok),
        "n_errors": len(errors),
        "n_unreliable": sum(1 for _, o in ok if o.get("unreliable")),
        "estimated_accuracy": None,
        "estimated_balanced_accuracy": None,
        "interval": None,
    }
    site = site_values(o for _, o in ok)
    cls = [(cid, o) for cid, o in ok if o.get("kind") == "classifier"]
    if kind == "classifier" and cls:
        est = estimate_accuracy(
            reference,
            {
                "pred": [o["pred"] for _, o in cls],
                "max_softmax": [o["max_softmax"] for _, o in cls],
                "neg_entropy": [o["neg_entropy"] for _, o in cls],
            },
            n_boot=n_boot,
        )
        res.update(est)
        truth = [
            (labels.index(true_labels[cid]), o["pred"])
            for cid, o in cls
            if true_labels and true_labels.get(cid) in labels
        ]
        if truth:
            y, pr = np.array([t for t, _ in truth]), np.array([p for _, p in truth])
            res["true_accuracy"] = round(float(np.mean(y == pr)), 4)
            res["true_balanced_accuracy"] = round(balanced_accuracy(y, pr, len(labels)), 4)
            res["n_labelled"] = len(truth)
            res["note"] = "true_* come from the manifest's labels and are reported for validation only"
    elif kind == "classifier":
        res["reason"] = "no case could be scored"
    else:
        res["reason"] = f"{kind} bundle: no label-free accuracy estimator is defined for it here; drift only"
    res["drift"] = drift_report(reference, site)
    if res["estimated_accuracy"] is not None:
        inputs_drifted = any(k.startswith("input.") for k in res["drift"]["drifted"])
        res["estimate_reliable"] = not inputs_drifted
        if inputs_drifted:
            res["caution"] = (
                "the inputs drifted from the validation data: ATC and DoC assume the model's confidence still "
                "tracks its accuracy, which shifts such as amplifier gain or added noise can break (a model can "
                "become confidently wrong); check a labelled sample from this site"
            )
        elif res["drift"]["status"] == INSUFFICIENT_DATA:
            res["caution"] = (
                "too few cases to test the inputs for drift, so whether the estimate's assumptions hold here is "
                "unchecked; check a labelled sample from this site"
            )
    if errors:
        res["errors"] = [{"case": r.get("case"), "error": r.get("error")} for r in errors[:20]]
    return res
