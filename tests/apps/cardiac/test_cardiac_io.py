"""Readers and bad input."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.apps.cardiac.io import read_frames
from medtransfer.apps.cardiac.synthetic import cine, write_avi, write_dicom, write_gif
from medtransfer.shared.utils.errors import InputError


@pytest.fixture(scope="module")
def frames():
    return cine("A4C", 8, 3, seed=0, size=(96, 128))


@pytest.mark.parametrize("kind,n", [("jpeg_ybr", 3), ("rgb", 3), ("palette", 1), ("mono16", 1)])
def test_dicom_kinds(tmp_path, frames, kind, n):
    p = write_dicom(tmp_path / f"{kind}.dcm", frames, kind)
    out, info = read_frames(p)
    assert len(out) == n and out[0].shape == (96, 128, 3) and out[0].dtype == np.uint8
    assert info["kind"] == "dicom"
    assert "DOE" not in str(info) and "12345" not in str(info)
    gray = frames[0].astype(float).mean(2)
    # content survives (JPEG / palette tinting within tolerance)
    assert abs(out[0].astype(float).mean(2).mean() - gray.mean()) < 12


def test_dicom_ybr_is_converted_to_rgb(tmp_path, frames):
    out, _ = read_frames(write_dicom(tmp_path / "y.dcm", frames, "jpeg_ybr"))
    # gray phantom: after YBR->RGB the channels agree; unconverted YBR would have Cb/Cr near 128
    assert np.abs(out[0][..., 0].astype(int) - out[0][..., 1].astype(int)).mean() < 6


def test_gif_avi_png(tmp_path, frames):
    import cv2

    assert len(read_frames(write_gif(tmp_path / "a.gif", frames))[0]) == 3
    assert len(read_frames(write_avi(tmp_path / "a.avi", frames))[0]) == 3
    cv2.imwrite(str(tmp_path / "a.png"), frames[0])
    assert read_frames(tmp_path / "a.png")[0][0].shape == (96, 128, 3)
    assert len(read_frames(write_gif(tmp_path / "b.gif", frames), max_frames=2)[0]) == 2


def test_bad_inputs(tmp_path, frames):
    import cv2

    (tmp_path / "e.png").write_bytes(b"")
    (tmp_path / "t.png").write_text("not an image")
    cases = [
        tmp_path / "e.png",
        tmp_path / "t.png",
        write_dicom(tmp_path / "n.dcm", frames, "nopixels"),
        tmp_path / "missing.png",
    ]
    big = np.zeros((4200, 4200), np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), big)
    cases.append(tmp_path / "big.png")
    two = np.zeros((64, 64, 2), np.uint8)
    np.save(tmp_path / "x.npy", two)
    cases.append(tmp_path / "x.npy")
    for c in cases:
        with pytest.raises(InputError) as e:
            read_frames(c)
        assert "\n" not in str(e.value) and str(c.name) in str(e.value)


def test_unexpected_channel_count(tmp_path):
    from medtransfer.apps.cardiac.io import _to_rgb

    with pytest.raises(InputError, match="channel count 2"):
        _to_rgb(np.zeros((64, 64, 2), np.uint8), tmp_path / "x")


def test_a_clip_that_ends_before_its_declared_frames_is_an_error(tmp_path):
    """A truncated AVI (24 frames declared, 6 decodable) was classified and graded from the frames
    before the damage, status ok: now an error naming where decoding stopped, as videoseg does."""
    clip = cine("A4C", 8, 24, seed=1, size=(96, 128))
    data = write_avi(tmp_path / "a.avi", clip).read_bytes()
    assert len(read_frames(tmp_path / "a.avi")[0]) == 24
    bad = tmp_path / "cut.avi"
    bad.write_bytes(data[: len(data) // 4])
    with pytest.raises(
        InputError, match=r"cut\.avi: frame \d+ of 24 could not be decoded \(video truncated or corrupt\)"
    ):
        read_frames(bad)
