"""Reader fuzzing: the cardiac entry point (``read_frames``, what predict / score / training call) on
mutated DICOM, PNG, JPEG, GIF and AVI must return frames or raise our one-line InputError, never a
library exception or a hang.  Seeds are small generated files (plus real ultrasound DICOM when
``../shared/data`` is present)."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.apps.cardiac.io import read_frames
from medtransfer.apps.cardiac.synthetic import cine, write_avi, write_dicom, write_gif

pytestmark = pytest.mark.fuzz


def _reader(path):
    read_frames(path, max_frames=4)


#: identifiers in the DICOM seeds (generated: DOE^JANE / ID-12345; the real Aloka file: NAME^PATIENT)
_IDS = ("DOE^JANE", "ID-12345", "NAME^PATIENT", "98279")


def _dicom_reader(path):
    """read_frames, also checking that no warning or log line quotes a patient identifier."""
    import logging
    import warnings

    records: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    h = _Grab(level=logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(h)
    try:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            try:
                read_frames(path, max_frames=4)
            except Exception as e:  # noqa: BLE001 - the message must not quote identifiers either
                records.append(str(e))
                raise
            finally:
                records.extend(str(w.message) for w in got)
    finally:
        root.removeHandler(h)
        text = " ".join(records)
        assert not any(i in text for i in _IDS), "a patient identifier reached a warning, log line or error"


@pytest.fixture(scope="module")
def small_frames():
    return cine("A4C", 8, 3, seed=0, size=(32, 40))


@pytest.mark.parametrize("kind", ["rgb", "jpeg_ybr", "palette", "mono16"])
def test_fuzz_dicom_generated(fuzz, tmp_path, small_frames, kind):
    seed = write_dicom(tmp_path / "seed.dcm", small_frames[:2], kind).read_bytes()
    fuzz.run(seed, ".dcm", _dicom_reader, tmp_path)


@pytest.mark.parametrize("name", ["OBXXXX1A.dcm", "gdcm-US-ALOKA-16.dcm"])
def test_fuzz_dicom_real(fuzz, tmp_path, shared_data, name):
    src = shared_data / "echo" / "pydicom_ultrasound" / name
    if not src.is_file():
        pytest.skip(f"{name} not present")
    fuzz.run(src.read_bytes(), ".dcm", _dicom_reader, tmp_path)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_fuzz_still_images(fuzz, tmp_path, small_frames, ext):
    import cv2

    ok, buf = cv2.imencode(ext, small_frames[0])
    assert ok
    fuzz.run(buf.tobytes(), ext, _reader, tmp_path)


def test_fuzz_gif(fuzz, tmp_path, small_frames):
    fuzz.run(write_gif(tmp_path / "seed.gif", small_frames).read_bytes(), ".gif", _reader, tmp_path)


@pytest.mark.parametrize("ext", [".avi", ".mp4"])
def test_fuzz_video(fuzz, tmp_path, small_frames, ext):
    if ext == ".avi":
        seed = write_avi(tmp_path / "seed.avi", small_frames).read_bytes()
    else:
        import cv2

        vw = cv2.VideoWriter(str(tmp_path / "seed.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 10, (40, 32))
        if not vw.isOpened():
            pytest.skip("no mp4 encoder in this OpenCV build")
        for fr in small_frames:
            vw.write(np.ascontiguousarray(fr[..., ::-1]))
        vw.release()
        seed = (tmp_path / "seed.mp4").read_bytes()
    assert seed
    fuzz.run(seed, ext, _reader, tmp_path)
