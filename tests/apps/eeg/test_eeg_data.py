"""Importers (TUAB v2/v3, NMT, generic), the import report, the window cache."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medtransfer.apps.eeg import synthetic as S
from medtransfer.apps.eeg.data import (
    WindowDataset,
    aggregate,
    build_cache,
    cache_root,
    data_cfg,
    import_generic,
    import_nmt,
    import_tuab,
    recording_metrics,
    report_path,
)
from medtransfer.apps.eeg.io import PAPER_CHANNELS
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError

SMALL = {"window_seconds": 4.0, "crop_start_s": 4.0, "crop_max_s": 0.0, "sfreq": 50.0}  # as conftest


def _report(csv_path):
    return list(csv.DictReader(open(report_path(csv_path))))


def test_tuab_v3_splits_groups_and_report(tuab_csv):
    recs = read_manifest(tuab_csv)
    assert len(recs) == 16
    assert {r.label for r in recs} == {"normal", "abnormal"}
    test = [r for r in recs if r.split == "test"]
    assert len(test) == 6 and all("/eval/" in r.rel for r in test)  # eval -> test, untouched
    assert any(r.split == "val" for r in recs) and all("/train/" in r.rel for r in recs if r.split == "val")
    assert all(r.group and len(r.group) == 8 for r in recs)  # TUAB subject id from the file name
    rep = _report(tuab_csv)
    assert len(rep) == 16 and all(r["status"] == "ok" and r["channels_mapped"] == "21" for r in rep)
    assert json.loads(rep[0]["mapping"])["FP1"] == "EEG FP1-REF"


def test_tuab_v2_tree_and_missing_channel_reason(tmp_path):
    root = S.make_tuab(tmp_path / "t", n_per_class=1, eval_per_class=1, duration_s=16.0, version="v2.0.0")
    chans = [c for c in PAPER_CHANNELS if c not in ("A1", "A2")]
    x = S.synth_signals(np.random.default_rng(0), False, 16.0, 250.0, channels=chans)
    S.write_edf(
        root / "v2.0.0/edf/train/normal/01_tcp_ar/099/zzzzzzzz/s001_2015_01_01/zzzzzzzz_s001_t000.edf",
        x,
        250.0,
        [f"EEG {c}-LE" for c in chans],
    )
    out = import_tuab(root, tmp_path / "m.csv", **SMALL)
    recs = read_manifest(out)
    assert len(recs) == 4 and {r.split for r in recs if "/eval/" in r.rel} == {"test"}
    rep = {r["path"].split("/")[-1]: r for r in _report(out)}
    bad = rep["zzzzzzzz_s001_t000.edf"]
    assert bad["status"] == "skipped" and "A1, A2" in bad["reason"] and bad["channels_missing"] == "A1 A2"
    # the same file is kept, zero-filled, only when asked
    out2 = import_tuab(root, tmp_path / "m2.csv", fill_missing=True, **SMALL)
    assert len(read_manifest(out2)) == 5


def test_nmt_labels_csv_and_mismatch(nmt_root, nmt_csv, tmp_path):
    recs = read_manifest(nmt_csv)
    assert len(recs) == 16 and all(r.extra["dataset"] == "nmt" for r in recs)
    assert all(r.extra["gender"] in ("male", "female", "not specified") for r in recs)
    labels = {r["recordname"]: r["label"] for r in csv.DictReader(open(nmt_root / "Labels.csv"))}
    assert all(labels[r.path.name] == r.label for r in recs)
    assert all(r.split == "test" for r in recs if "/eval/" in r.rel)
    with pytest.raises(InputError, match="Labels.csv"):
        import_nmt(tmp_path, tmp_path / "x.csv")


def test_nmt_upper_case_suffix_and_listed_but_missing_files_are_not_lost(nmt_root, tmp_path):
    import shutil

    root = tmp_path / "nmt"
    shutil.copytree(nmt_root, root)
    edfs = sorted(root.rglob("*.edf"))
    edfs[0].rename(edfs[0].with_suffix(".EDF"))  # as some copies of the release spell it
    edfs[1].unlink()
    out = import_nmt(root, tmp_path / "m.csv", **SMALL)
    assert edfs[0].with_suffix(".EDF").name in {r.path.name for r in read_manifest(out)}
    rep = {r["path"].split("/")[-1]: r for r in _report(out)}
    assert rep[edfs[1].name]["status"] == "skipped" and "no such file" in rep[edfs[1].name]["reason"]


def test_generic_folder_and_manifest_with_brainvision(tmp_path):
    rng = np.random.default_rng(3)
    for i, lab in enumerate(["normal", "abnormal", "normal", "abnormal"]):
        x = S.synth_signals(rng, lab == "abnormal", 12.0, 250.0)
        if i < 2:
            S.write_edf(tmp_path / "d" / lab / f"r{i}.edf", x, 250.0, [f"EEG {c}-REF" for c in PAPER_CHANNELS])
        else:
            S.write_brainvision(tmp_path / "d" / lab / f"r{i}.vhdr", x, 250.0, list(PAPER_CHANNELS))
    (tmp_path / "d" / "normal" / "broken.edf").write_bytes(b"garbage" * 100)
    out = import_generic(tmp_path / "d", tmp_path / "g.csv", **SMALL)
    recs = read_manifest(out)
    assert sorted(r.path.name for r in recs) == ["r0.edf", "r1.edf", "r2.vhdr", "r3.vhdr"]
    rep = {r["path"].split("/")[-1]: r for r in _report(out)}
    assert rep["broken.edf"]["status"] == "skipped" and "EDF" in rep["broken.edf"]["reason"]
    # a manifest CSV as input
    out2 = import_generic(out, tmp_path / "g2.csv", **SMALL)
    assert len(read_manifest(out2)) == 4


def _small_cache(tuab_csv, tmp_path, n):
    """The first ``n`` records of the TUAB fixture, a small recipe cached under ``tmp_path``."""
    recs = read_manifest(tuab_csv)[:n]
    for r in recs:
        r.label = r.label.lower()
    cfg = data_cfg({**SMALL, "cache_dir": str(tmp_path)})
    return recs, cfg, cache_root(cfg)


def test_cache_reuse_hash_and_parallel(tuab_csv, tmp_path):
    recs, cfg, root = _small_cache(tuab_csv, tmp_path, 6)
    c1, err = build_cache(recs, cfg, root, workers=2, progress=False)
    assert not err and len(c1) == 6
    mtimes = {c.file: c.file.stat().st_mtime_ns for c in c1}
    c2, _ = build_cache(recs, cfg, root, workers=2, progress=False)
    assert {c.file: c.file.stat().st_mtime_ns for c in c2} == mtimes  # second run: nothing recomputed
    c3, _ = build_cache(
        recs, cfg, cache_root(data_cfg({**SMALL, "cache_dir": str(tmp_path / "one")})), workers=1, progress=False
    )
    for a, b in zip(c1, c3):
        assert np.array_equal(np.load(a.file), np.load(b.file))  # parallel == serial
    other = cache_root(data_cfg({**SMALL, "sfreq": 40.0, "cache_dir": str(tmp_path)}))
    assert other != root and other.parent == root.parent
    ds = WindowDataset(c1)
    x, y = ds[len(ds) - 1]
    assert x.shape == (21, 200) and x.dtype == np.float32 and y in (0, 1)
    assert isinstance(np.load(c1[0].file, mmap_mode="r"), np.memmap)


def test_a_cached_file_edited_by_hand_is_made_again(tuab_csv, tmp_path):
    """Found by a hostile audit: a cached .npy cut to 2 of its windows was reused (its index still
    said 8) and training stopped on an IndexError traceback."""
    recs, cfg, root = _small_cache(tuab_csv, tmp_path, 3)
    c1, _ = build_cache(recs, cfg, root, workers=1, progress=False)
    whole = [np.load(c.file) for c in c1]
    np.save(c1[0].file, whole[0][:1])  # fewer windows than the index says
    c1[1].file.write_bytes(b"not a numpy file")
    untouched = c1[2].file.stat().st_mtime_ns
    c2, err = build_cache(recs, cfg, root, workers=1, progress=False)
    assert not err
    for c, w in zip(c2, whole):
        assert np.array_equal(np.load(c.file), w)
    assert c2[2].file.stat().st_mtime_ns == untouched  # what fits its index is still reused
    ds = WindowDataset(c2)
    ds[len(ds) - 1]


def test_cache_index_keeps_entries_another_job_wrote_meanwhile(tuab_csv, tmp_path, monkeypatch):
    """Two jobs on one cache (two trainings of one config): each read index.json at its start and
    wrote its own copy at its end, so the later one dropped the other's entries (recomputed by the
    next run); an unreadable index raised a JSON traceback.  Now the index is merged under a lock."""
    import medtransfer.apps.eeg.data as D

    recs = read_manifest(tuab_csv)[:4]
    cfg = data_cfg({**SMALL, "cache_dir": str(tmp_path)})
    root = cache_root(cfg)
    build_cache(recs[:2], cfg, root, workers=1, progress=False)
    first = json.loads((root / "index.json").read_text())
    assert len(first) == 2
    real = D.preprocess_recording

    def other_job_finishes_meanwhile(*a, **k):
        d = json.loads((root / "index.json").read_text())
        d["other-job-recording"] = {"ok": False, "reason": "written by the other job"}
        (root / "index.json").write_text(json.dumps(d))
        return real(*a, **k)

    monkeypatch.setattr(D, "preprocess_recording", other_job_finishes_meanwhile)
    cached, err = build_cache(recs, cfg, root, workers=1, progress=False)
    assert len(cached) == 4 and not err
    index = json.loads((root / "index.json").read_text())
    assert set(first) < set(index) and "other-job-recording" in index and len(index) == 5
    monkeypatch.setattr(D, "preprocess_recording", real)
    (root / "index.json").write_text("{not json")  # interrupted / edited: recomputed, no traceback
    cached, err = build_cache(recs, cfg, root, workers=1, progress=False)
    assert len(cached) == 4 and not err and len(json.loads((root / "index.json").read_text())) == 4


def test_aggregate_and_metrics():
    rec = np.array([0, 0, 1, 1, 2, 2])
    p = np.array([0.9, 0.7, 0.2, 0.4, 0.6, 0.1])
    ids, prob = aggregate(p, rec)
    assert ids.tolist() == [0, 1, 2] and np.allclose(prob, [0.8, 0.3, 0.35])
    m = recording_metrics(np.array([1, 0, 1]), prob)
    assert m["balanced_accuracy"] == pytest.approx(0.75) and m["auroc"] == pytest.approx(1.0)
