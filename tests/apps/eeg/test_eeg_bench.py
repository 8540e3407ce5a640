"""The eeg bench on a tiny generated TUAB set (numbers present and sane; no speed assertions)."""
from __future__ import annotations

from medtransfer.apps.eeg.bench import bench


def test_bench_small(tmp_path):
    res = bench(n_recordings=4, scale=2, duration_s=365.0, workdir=str(tmp_path))
    assert res["dataset"]["recordings_1x"] == 4 and res["dataset"]["recordings_big"] == 8
    ours = res["ours"]
    assert ours["1x"]["windows"] == 20 and ours["2x"]["windows"] == 40 and ours["1x"]["errors"] == 0
    assert ours["1x"]["cached_rerun_s"] < ours["1x"]["preprocess_s"]  # second run skips preprocessing
    bd = res["braindecode"]["1x"]
    assert "error" not in bd, bd
    assert bd["windows"] == ours["1x"]["windows"]  # same recipe, same windows
    assert res["speedup_vs_braindecode"] > 0 and res["ours_peak_rss_growth"] > 0
