"""Shift writers of ``estimate_shift`` for the drift-only check: feature bags (scale + offset), videos, extra columns."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.runtime import estimate_shift as es


def test_scale_offset_is_one_site_wide_shift_of_every_bag():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((50, 8)).astype(np.float32)
    b = rng.standard_normal((30, 8)).astype(np.float32) + 2.0
    ya, yb = (es._shift_array(x, "features", "scale_offset", 0.25, rng) for x in (a, b))
    assert ya.shape == a.shape and ya.dtype == np.float32
    assert ya.std() / a.std() == pytest.approx(1.25, rel=0.05)
    # the offset points the same way for every bag of the site (not a fresh random direction per file)
    da = (ya - 1.25 * a).mean(0) / a.std(0)
    db = (yb - 1.25 * b).mean(0) / b.std(0)
    np.testing.assert_allclose(da, db, rtol=1e-4, atol=1e-5)
    assert np.abs(da).max() > 0.05
    np.testing.assert_array_equal(es._shift_array(a, "features", "scale_offset", 0.0, rng), a)


def _avi(path: Path, frames: np.ndarray) -> Path:
    import cv2

    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, frames.shape[1:3][::-1], True)
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
    vw.release()
    return path


def _read(path: Path) -> np.ndarray:
    import cv2

    cap, out = cv2.VideoCapture(str(path)), []
    while True:
        ok, f = cap.read()
        if not ok:
            return np.stack(out)
        out.append(f)


def test_video_gain_and_noise_copies_keep_the_clip_and_shift_its_intensity(tmp_path):
    frames = np.tile(np.linspace(20, 100, 64, dtype=np.uint8)[None, None, :], (6, 48, 1))
    src = _avi(tmp_path / "clip.avi", frames)
    assert es.modality_of(src) == "video"
    same = es.shift_file(src, tmp_path / "out" / "none.avi", "gain", 0.0, np.random.default_rng(0))
    assert same.read_bytes() == src.read_bytes()
    gain = es.shift_file(src, tmp_path / "out" / "gain.avi", "gain", 6.0, np.random.default_rng(0))
    g, x = _read(gain).astype(float), _read(src).astype(float)
    assert g.shape == x.shape
    assert g.mean() / x.mean() == pytest.approx(10 ** (6 / 20), rel=0.05)
    noisy = _read(es.shift_file(src, tmp_path / "out" / "noise.avi", "noise", 25.0, np.random.default_rng(0)))
    assert noisy.shape == x.shape and np.abs(noisy.astype(float) - x).mean() > 5


def test_mha_video_gain_keeps_geometry(tmp_path):
    import SimpleITK as sitk

    arr = np.full((4, 16, 16), 50, np.uint8)
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.5, 0.5, 1.0))
    sitk.WriteImage(img, str(tmp_path / "cine.mha"))
    out = es.shift_file(tmp_path / "cine.mha", tmp_path / "o" / "cine.mha", "gain", 6.0, np.random.default_rng(0))
    back = sitk.ReadImage(str(out))
    assert back.GetSpacing() == (0.5, 0.5, 1.0)
    assert np.all(sitk.GetArrayFromImage(back) == np.rint(50 * 10 ** (6 / 20)))


def test_split_cases_resolve_file_columns_and_shifted_manifest_keeps_them(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "m.npz").write_bytes(b"x")
    _avi(tmp_path / "v.avi", frames)
    _avi(tmp_path / "w.avi", frames[::-1])  # another video for the train row (one file in two splits is refused)
    with open(tmp_path / "m.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", "mask", "ed_frame"])
        w.writerow(["v.avi", "masks/m.npz", "test", "masks/m.npz", "3"])
        w.writerow(["w.avi", "masks/m.npz", "train", "", "1"])
    rows = es.split_cases(tmp_path / "m.csv", "test")
    assert len(rows) == 1
    mask = str((tmp_path / "masks" / "m.npz").resolve())
    assert rows[0]["label"] == mask and rows[0]["extra"] == {"mask": mask, "ed_frame": "3"}
    man = es.shifted_manifest(rows, tmp_path / "shifted", "gain", 6.0)
    with open(man, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["mask"] == mask and row["ed_frame"] == "3" and (man.parent / row["path"]).is_file()
