"""Sector detection and cropping, on phantoms and on the real TTE47 screenshots."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.cardiac.preprocess import DEFAULT_PREPROC, crop_sector, detect_sector, normalise
from medtransfer.apps.cardiac.synthetic import render

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "echo"


def test_phantom_overlays_removed():
    rgb = render("A4C", 10, np.random.default_rng(0), size=(192, 256))
    det = detect_sector(rgb)
    assert det["found"], det["reason"]
    x0, y0, x1, y1 = det["bbox"]
    # text (top-left), ECG (bottom) and colour bar (right) lie outside the crop box / mask
    assert x0 > 20 and x1 < 256 - 12
    assert det["mask"][5:40, 0:30].sum() == 0
    crop, info = crop_sector(rgb, {"size": 64})
    assert crop.shape == (64, 64) and crop.dtype == np.uint8
    x = normalise([crop], {"size": 64})
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32


def test_non_sector_is_not_found():
    rect = np.zeros((200, 300, 3), np.uint8)
    rect[20:180, 30:270] = 120
    assert not detect_sector(rect)["found"]
    assert not detect_sector(np.zeros((100, 100, 3), np.uint8))["found"]


def test_bundle_preprocessing_round_trips_and_is_honoured():
    """The bundle stores these parameters as JSON; predict must crop exactly as training did."""
    import json

    stored = json.loads(json.dumps(DEFAULT_PREPROC))
    # no tuples, numpy scalars or other values JSON would silently change
    assert stored == DEFAULT_PREPROC
    assert all(type(stored[k]) is type(v) for k, v in DEFAULT_PREPROC.items())
    rgb = render("PSAV", 8, np.random.default_rng(3), size=(192, 256))
    a, _ = crop_sector(rgb, {**DEFAULT_PREPROC, "size": 64})
    b, _ = crop_sector(rgb, {**stored, "size": 64})
    np.testing.assert_array_equal(a, b)
    # the values read back are used, not decoration: an impossible area bound refuses the sector
    assert detect_sector(rgb, stored)["found"]
    refused = detect_sector(rgb, {**stored, "min_area_frac": 0.99})
    assert not refused["found"] and "area" in refused["reason"]


@pytest.mark.realdata
def test_tte47_gallery_sectors():
    d = REAL / "tte47_gallery"
    if not d.is_dir():
        pytest.skip("../shared/data/echo absent")
    import csv

    from medtransfer.apps.cardiac.io import read_frames

    rows = list(csv.DictReader(open(d / "labels.csv")))
    found = {}
    for r in rows:
        fr, _ = read_frames(d / r["file"])
        found[r["file"]] = detect_sector(fr[0])["found"]
    twod = [r["file"] for r in rows if r["coarse_view"] not in ("DOPPLER", "MMODE")]
    assert sum(found[f] for f in twod) >= 0.85 * len(twod)
    # a spectral Doppler screenshot is mostly not a fan
    dop = [r["file"] for r in rows if r["coarse_view"] == "DOPPLER"]
    assert sum(found[f] for f in dop) <= len(dop) // 2
