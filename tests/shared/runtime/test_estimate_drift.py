"""The drift test of `medtransfer estimate` (issue 13): corrected for many statistics, a minimum-sample
rule and an effect floor, so that unshifted data does not flag and clear shifts still do."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medtransfer.shared.runtime import estimate as est


def _holm_rejections(p: np.ndarray, alpha: float) -> set[int]:
    """Holm's step-down procedure as written in the textbook: reject in order until one fails."""
    out: set[int] = set()
    for rank, i in enumerate(np.argsort(p)):
        if p[i] >= alpha / (len(p) - rank):
            break
        out.add(int(i))
    return out


def test_holm_adjusted_p_values_reject_what_the_step_down_procedure_rejects():
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = np.concatenate([rng.uniform(size=20), rng.uniform(0, 1e-3, size=rng.integers(0, 6))])
        adj = est.adjust_pvalues(p, "holm")
        assert np.all(adj >= p - 1e-15) and np.all(adj <= 1.0)
        for alpha in (0.01, 0.05):
            assert {int(i) for i in np.flatnonzero(adj < alpha)} == _holm_rejections(p, alpha)
    bh = est.adjust_pvalues(np.array([0.001, 0.02, 0.04, 0.5]), "bh")
    assert np.all(bh >= np.array([0.001, 0.02, 0.04, 0.5]) - 1e-15)
    with pytest.raises(ValueError, match="holm or bh"):
        est.adjust_pvalues([0.1], "bonferoni")


def _null_case(rng: np.random.Generator, n_ref: int, n_site: int, n_stats: int = 30, shift: float = 0.0):
    """Correlated statistics (a shared case factor, like band powers that move together); ``shift`` in SDs."""

    def cases(n: int, d: float) -> np.ndarray:
        common = rng.normal(size=(n, 1))
        return 0.6 * common + 0.8 * rng.normal(size=(n, n_stats)) + d

    r, s = cases(n_ref, 0.0), cases(n_site, shift)
    ref = {"stats": {f"s{j}": est.reference_sample(r[:, j]) for j in range(n_stats)}}
    site = {f"input.s{j}": list(s[:, j]) for j in range(n_stats)}
    return ref, site


def test_unshifted_sites_rarely_flag_however_many_statistics_are_tested():
    """20 statistics, 40 vs 40 cases, no shift: the family-wise false-positive rate stays near alpha
    (uncorrected KS tests at 0.01 flag about one such site in six)."""
    rng = np.random.default_rng(1)
    reps = 60
    flags = sum(est.drift_report(*_null_case(rng, 40, 40, n_stats=20))["flag"] for _ in range(reps))
    assert flags / reps <= 0.05, flags


def test_a_clear_shift_flags_and_names_the_statistic():
    rng = np.random.default_rng(2)
    ref, site = _null_case(rng, 40, 40)
    site["input.s3"] = [v + 2.0 for v in site["input.s3"]]  # one statistic moves by two standard deviations
    d = est.drift_report(ref, site)
    assert d["flag"] is True and d["status"] == "drift"
    assert d["drifted"] == ["input.s3"]
    s3 = d["statistics"]["input.s3"]
    assert s3["status"] == "drift" and s3["p_adjusted"] < d["alpha"] and s3["ks"] >= d["effect_floor"]
    assert d["statistics"]["input.s4"]["drift"] is False
    assert d["n_tested"] == 30 and d["correction"] == "holm"


def test_too_few_cases_is_insufficient_data_not_drift():
    rng = np.random.default_rng(3)
    for n_ref, n_site in ((5, 200), (200, 4)):
        ref, site = _null_case(rng, n_ref, n_site, n_stats=4, shift=3.0)  # a big shift, but too few cases
        d = est.drift_report(ref, site)
        assert d["flag"] is False and d["status"] == "insufficient data"
        assert d["summary"].startswith("insufficient data") and d["n_tested"] == 0
        assert all(v["status"] == "insufficient data" and v["ks"] is None for v in d["statistics"].values())
        assert sorted(d["insufficient"]) == sorted(site)
    ref, site = _null_case(rng, 50, 50, n_stats=2)
    ref["stats"]["few"] = [1.0, 2.0, 3.0]
    site["input.few"] = [10.0] * 50
    d = est.drift_report(ref, site)
    assert d["status"] == "no drift" and d["insufficient"] == ["input.few"] and d["n_tested"] == 2
    assert "1 not tested" in d["summary"]


def test_a_trivial_but_significant_difference_on_a_large_site_does_not_flag():
    rng = np.random.default_rng(4)
    ref = {"stats": {"x": est.reference_sample(rng.normal(0, 1, 1000))}}
    small = est.drift_report(ref, {"input.x": list(rng.normal(0.1, 1, 20000))})["statistics"]["input.x"]
    assert small["p_adjusted"] < est.DRIFT_ALPHA  # significant...
    assert small["ks"] < est.DRIFT_EFFECT_FLOOR and small["drift"] is False  # ...but below the effect floor
    assert small["status"] == "below effect floor"
    big = est.drift_report(ref, {"input.x": list(rng.normal(1.0, 1, 20000))})
    assert big["flag"] is True and big["statistics"]["input.x"]["status"] == "drift"


def test_bh_correction_is_selectable_and_recorded():
    rng = np.random.default_rng(5)
    ref, site = _null_case(rng, 40, 40, n_stats=6, shift=0.0)
    site["input.s0"] = [v + 3.0 for v in site["input.s0"]]
    d = est.drift_report(ref, site, alpha=0.05, method="bh")
    assert (d["correction"], d["alpha"]) == ("bh", 0.05) and "Benjamini-Hochberg" in d["rule"]
    assert d["drifted"] == ["input.s0"]


def test_estimate_json_keeps_its_drift_keys_and_records_the_test():
    """summarise (what `estimate` writes): the stable keys plus correction and alpha; too few site cases
    give a caution instead of a drift verdict."""
    rng = np.random.default_rng(6)
    n_val = 30
    conf = rng.uniform(0.6, 1.0, n_val)
    p = np.stack([conf, 1 - conf], 1)
    ne = np.sum(p * np.log(p), 1)
    stat = rng.normal(0, 1, n_val)
    reference = {
        "kind": "classifier",
        "labels": ["a", "b"],
        "val_cases": {"pred": [0] * n_val, "label": [0] * n_val, "max_softmax": list(conf), "neg_entropy": list(ne)},
        "stats": {"x": est.reference_sample(stat)},
        "confidence": {"max_softmax": est.reference_sample(conf), "neg_entropy": est.reference_sample(ne)},
    }

    def rows(n: int) -> list[dict[str, str]]:
        out = []
        for i in range(n):
            c = float(rng.uniform(0.6, 1.0))
            sc = est.confidence_scores(np.array([c, 1 - c]))
            obs = {"kind": "classifier", "pred": 0, "probs": [c, 1 - c], **sc, "stats": {"x": float(rng.normal())}}
            out.append({"case": f"c{i}", "status": "ok", "result": json.dumps(obs)})
        return out

    res = est.summarise(reference, rows(30), ["a", "b"], n_boot=0)
    d = res["drift"]
    for key in ("flag", "summary", "rule", "drifted", "statistics", "confidence", "correction", "alpha", "status"):
        assert key in d
    for entry in [d["statistics"]["input.x"], *d["confidence"].values()]:
        assert {"n", "ks", "ks_p", "p_adjusted", "psi", "drift", "status"} <= set(entry)
    assert d["n_tested"] == 3 and d["flag"] is False and res["estimate_reliable"] is True
    few = est.summarise(reference, rows(4), ["a", "b"], n_boot=0)
    assert few["drift"]["status"] == "insufficient data" and few["drift"]["flag"] is False
    assert "too few cases" in few["caution"]


def test_a_limited_test_split_is_a_sample_not_the_first_rows(tmp_path):
    """The demo's "unshifted" copy took the first 40 rows of a class-sorted split (two views of six): a
    class shift that the input statistics rightly flag.  A limited split is now a random sample in order."""
    from medtransfer.shared.runtime.estimate_shift import split_rows

    labels = [lab for lab in "abcdef" for _ in range(24)]
    for i in range(len(labels)):
        (tmp_path / f"{i:03d}.png").write_bytes(b"")
    (tmp_path / "m.csv").write_text(
        "path,label,split\n" + "".join(f"{i:03d}.png,{lab},test\n" for i, lab in enumerate(labels))
    )
    rows = split_rows(tmp_path / "m.csv", "test", limit=40)
    assert len(rows) == 40 and len({r["path"] for r in rows}) == 40
    assert {r["label"] for r in rows} == set("abcdef")
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # manifest order kept
    assert split_rows(tmp_path / "m.csv", "test", limit=40) == rows  # reproducible
    assert len(split_rows(tmp_path / "m.csv", "test")) == len(labels)
