"""The eeg bench on a tiny generated TUAB set: what it measures is the right thing (same windows as
braindecode, the cache really skips work).  No timing or ratio assertions: those numbers are the
bench's output (``medtransfer bench --app eeg``), not test conditions."""

from __future__ import annotations

from medtransfer.apps.eeg.bench import bench


def test_bench_small(tmp_path):
    res = bench(n_recordings=4, scale=2, duration_s=365.0, workdir=str(tmp_path))
    assert res["dataset"]["recordings_1x"] == 4 and res["dataset"]["recordings_big"] == 8
    ours = res["ours"]
    for run in (ours["1x"], ours["1x_one_process"], ours["2x"]):
        assert "error" not in run, run
        assert run["errors"] == 0
    # 4 recordings x 300 s / 60 s windows; the 2x set is renamed copies of the same files
    assert ours["1x"]["windows"] == 20 and ours["1x_one_process"]["windows"] == 20 and ours["2x"]["windows"] == 40
    # the second build_cache finds every recording cached and rewrites none of them
    assert ours["1x"]["cached_files"] == 4 and ours["1x"]["cached_rerun_rewrote"] == 0
    bd = res["braindecode"]
    assert "error" not in bd["1x"] and "error" not in bd["2x"], bd
    # same recipe on both sides: braindecode's TUH path cuts exactly the windows we cut
    assert bd["1x"]["recordings"] == 4 and bd["1x"]["windows"] == ours["1x"]["windows"]
    assert bd["2x"]["windows"] == ours["2x"]["windows"]
    # every comparison figure the bench reports is there (their values are the bench's output)
    assert {"speedup_vs_braindecode", "recordings_per_s", "ours_peak_rss_growth", "braindecode_peak_rss_growth"} <= set(
        res
    )
