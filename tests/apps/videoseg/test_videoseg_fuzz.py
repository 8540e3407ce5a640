"""Reader fuzzing: the videoseg entry points (``open_video(...).read()`` for videos / ``.mha`` cines,
``read_masks`` for prompt masks; what predict / score / training call) on mutated files must return
or raise our one-line InputError, never a library exception or a hang.  Seeds are small generated
files (plus the TrackRAD example case when ``../shared/data`` is present)."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.apps.videoseg.io import open_video, read_masks, write_avi, write_masks
from medtransfer.apps.videoseg.synthetic import make_cine

pytestmark = pytest.mark.fuzz


def _video(path):
    open_video(path).read()


def _masks(path):
    read_masks(path)


@pytest.fixture(scope="module")
def small():
    frames, masks, _ = make_cine(32, 4, seed=3)
    return frames, masks


@pytest.mark.parametrize("compressed", [False, True])
def test_fuzz_mha_cine(fuzz, tmp_path, small, compressed):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(small[0].astype(np.uint16) * 10)
    sitk.WriteImage(img, str(tmp_path / "seed.mha"), compressed)
    fuzz.run((tmp_path / "seed.mha").read_bytes(), ".mha", _video, tmp_path)


def test_fuzz_mha_trackrad_example(fuzz, tmp_path, shared_data):
    case = shared_data / "videoseg" / "trackrad_format_example_synthetic" / "Z_001"
    if not case.is_dir():
        pytest.skip("TrackRAD example case not present")
    fuzz.run((case / "images" / "Z_001_frames.mha").read_bytes(), ".mha", _video, _mk(tmp_path / "img"))
    fuzz.run((case / "targets" / "Z_001_labels.mha").read_bytes(), ".mha", _masks, _mk(tmp_path / "lab"))


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_fuzz_video(fuzz, tmp_path, small, ext):
    import cv2

    if ext == ".avi":
        seed = write_avi(tmp_path / "seed.avi", small[0]).read_bytes()
    else:
        vw = cv2.VideoWriter(str(tmp_path / "seed.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (32, 32))
        if not vw.isOpened():
            pytest.skip("no mp4 encoder in this OpenCV build")
        for fr in small[0]:
            vw.write(cv2.cvtColor(fr, cv2.COLOR_GRAY2BGR))
        vw.release()
        seed = (tmp_path / "seed.mp4").read_bytes()
    fuzz.run(seed, ext, _video, tmp_path)


@pytest.mark.parametrize("ext", [".npz", ".npy", ".png"])
def test_fuzz_prompt_masks(fuzz, tmp_path, small, ext):
    import cv2

    m = small[1][:2]
    if ext == ".npz":
        write_masks(tmp_path / "seed.npz", m, frames=[0, 3])
    elif ext == ".npy":
        np.save(tmp_path / "seed.npy", m)
    else:
        cv2.imwrite(str(tmp_path / "seed.png"), m[0] * 255)
    fuzz.run((tmp_path / f"seed{ext}").read_bytes(), ext, _masks, tmp_path)


def _mk(d):
    d.mkdir(parents=True, exist_ok=True)
    return d
