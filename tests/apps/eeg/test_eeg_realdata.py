"""Real files under ../shared/data/eeg (skipped when absent): MNE test recordings and Bonn."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medtransfer.apps.eeg.data import import_bonn, import_generic, report_path
from medtransfer.apps.eeg.io import header_info, preprocess_recording
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError

pytestmark = pytest.mark.realdata

SHORT = {"window_seconds": 10.0, "crop_start_s": 0.0, "crop_max_s": 0.0}


def test_nihon_kohden_maps_19_plus_a1_a2(eeg_real):
    f = eeg_real / "mne_testing_data" / "NihonKohden" / "MB0400FU.EDF"
    info = header_info(f, SHORT)
    assert info["ok"] and info["missing"] == []
    m = info["mapped"]
    assert m["T3"] == "EEG T3-Ref" and m["T6"] == "EEG T6-Ref" and m["FP1"] == "EEG Fp1-Ref"
    assert m["A1"] == "EEG A1-Ref" and m["A2"] == "EEG A2-Ref"  # not the 'POL $A1' look-alikes
    win, _ = preprocess_recording(f, SHORT)
    assert win.shape == (2, 21, 1000) and np.isfinite(win).all()
    # with the paper default (skip 60 s + one 60 s window) the 29 s file is refused with a reason
    with pytest.raises(InputError, match="29.0 s, shorter than one window"):
        preprocess_recording(f, {})


def test_other_mne_files_import_or_are_refused_with_reasons(eeg_real, tmp_path):
    d = eeg_real / "mne_testing_data"
    rows = [
        {"path": str(p), "label": "normal"}
        for p in [
            d / "NihonKohden" / "MB0400FU.EDF",
            d / "EDF" / "chtypes_edf.edf",
            d / "EDF" / "test_edf_overlapping_annotations.edf",
            d / "EDF" / "SC4001EC-Hypnogram.edf",
            d / "EEGLAB" / "test_raw.set",
        ]
    ]
    src = tmp_path / "in.csv"
    with open(src, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "label"])
        w.writeheader()
        w.writerows(rows)
    out = import_generic(src, tmp_path / "m.csv", **{**SHORT, "window_seconds": 4.0})
    kept = {r.path.name for r in read_manifest(out)}
    rep = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(report_path(out)))}
    assert kept == {"MB0400FU.EDF", "chtypes_edf.edf"}  # chtypes: T7/T8/P7/P8 mapped to T3/T4/T5/T6
    assert json.loads(rep["chtypes_edf.edf"]["mapping"])["T5"] == "EEG P7-Ref"
    assert "A1, A2" in rep["test_edf_overlapping_annotations.edf"]["reason"]  # 10-10 cap without ears
    assert "no signal channels" in rep["SC4001EC-Hypnogram.edf"]["reason"]
    assert "missing required channel" in rep["test_raw.set"]["reason"]  # EEGLAB file named 'EEG 000'...


def test_bonn_segments_as_edf_through_generic_manifest(eeg_real, tmp_path):
    out = import_bonn(eeg_real / "bonn", tmp_path / "bonn.csv", limit_per_set=4)
    recs = read_manifest(out)
    assert len(recs) == 20
    assert sum(r.label == "normal" for r in recs) == 8  # Z, O
    assert {r.split for r in recs} == {"train", "val", "test"}
    win, info = preprocess_recording(
        recs[0].path,
        {
            "channels": ["CH1"],
            "car": False,
            "clip_uv": 0.0,
            "window_seconds": 20.0,
            "crop_start_s": 0.0,
            "crop_max_s": 0.0,
        },
    )
    assert abs(info["orig_sfreq"] - 173.61) < 1e-3 and win.shape == (1, 1, 2000)
    z = np.load(eeg_real / "bonn" / "bonn_dev_int16.npz")
    assert abs(float(np.std(win)) - float(np.std(z["signals"][0][:3472]))) / float(np.std(z["signals"][0])) < 0.3
