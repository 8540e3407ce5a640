"""Reader fuzzing for EEG files: mutated EDF / BDF through the predictor's own reading path.

The reader under test is what ``EEGPredictor.predict`` runs before the ONNX model:
``preprocess_recording(path, recipe, gates=True)`` (header checks, MNE decoding, the recipe and
the plausibility gates).  Every mutation must give windows or our own one-line InputError within
10 s, never another exception.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.eeg import synthetic as S
from medtransfer.apps.eeg.io import preprocess_recording

#: a 4-channel recipe with 1 s windows keeps the seed file small (most bytes are header)
PP = {
    "channels": ["FP1", "FP2", "C3", "C4"],
    "sfreq": 50.0,
    "window_seconds": 1.0,
    "crop_start_s": 0.0,
    "crop_max_s": 0.0,
}
LABELS = ["EEG Fp1-REF", "EEG Fp2-REF", "EEG C3-REF", "EEG C4-REF"]


def _signal(seconds: float = 3.0, sfreq: float = 100.0) -> np.ndarray:
    return S.synth_signals(np.random.default_rng(0), False, seconds, sfreq, channels=PP["channels"])


def seed_edf(tmp: Path) -> bytes:
    """A small valid EDF+ (edfio): 4 channels, 100 Hz, 3 s."""
    return S.write_edf(tmp / "seed.edf", _signal(), 100.0, LABELS).read_bytes()


def seed_bdf(tmp: Path) -> bytes:
    """A small valid BDF (MNE's exporter): 4 channels, 100 Hz, 3 s."""
    import mne

    info = mne.create_info(LABELS, 100.0, "eeg")
    raw = mne.io.RawArray(_signal() * 1e-6, info, verbose="error")
    f = tmp / "seed.bdf"
    mne.export.export_raw(f, raw, fmt="bdf", overwrite=True, verbose="error")
    return f.read_bytes()


def _reader(path: Path) -> None:
    preprocess_recording(path, PP, gates=True)


def test_fuzz_seeds_are_valid(tmp_path):
    """The seeds themselves read cleanly (else the fuzzing would only test the error path)."""
    for name, blob in (("a.edf", seed_edf(tmp_path)), ("a.bdf", seed_bdf(tmp_path))):
        (tmp_path / name).write_bytes(blob)
        win, info = preprocess_recording(tmp_path / name, PP, gates=True)
        assert win.shape == (3, 4, 50) and info["reasons"] == []


@pytest.mark.fuzz
def test_fuzz_edf_reader(fuzz, tmp_path):
    fuzz.run(seed_edf(tmp_path), ".edf", _reader, tmp_path)


@pytest.mark.fuzz
def test_fuzz_bdf_reader(fuzz, tmp_path):
    fuzz.run(seed_bdf(tmp_path), ".bdf", _reader, tmp_path)


@pytest.mark.fuzz
def test_fuzz_real_edf_header(fuzz, shared_data, tmp_path):
    """The real 42-channel MNE test EDF, mutated in its header region only (data cut to 2 records)."""
    real = shared_data / "eeg" / "mne_testing_data" / "EDF" / "chtypes_edf.edf"
    if not real.is_file():
        pytest.skip("chtypes_edf.edf absent")
    blob = bytearray(real.read_bytes())
    ns = int(blob[252:256].decode().strip())
    n_header = 256 + 256 * ns
    spr = [int(blob[256 + 216 * ns + 8 * i : 256 + 216 * ns + 8 * (i + 1)].decode().strip()) for i in range(ns)]
    rec = sum(spr) * 2
    blob[236:244] = b"2       "  # keep two data records: a small, still valid file
    head, data = bytes(blob[:n_header]), bytes(blob[n_header : n_header + 2 * rec])
    pp = {
        "channels": ["FP1", "FP2", "C3", "C4"],
        "sfreq": 100.0,
        "window_seconds": 1.0,
        "crop_start_s": 0.0,
        "crop_max_s": 0.0,
    }
    (tmp_path / "ok.edf").write_bytes(head + data)
    preprocess_recording(tmp_path / "ok.edf", pp, gates=True)  # the cut seed is valid

    def reader(path: Path) -> None:
        b = path.read_bytes()
        # mutations are applied to the header; the two data records stay as they were
        path.write_bytes(b + data)
        preprocess_recording(path, pp, gates=True)

    fuzz.run(head, ".edf", reader, tmp_path)
