"""Channel mapping, the preprocessing recipe and bad-input refusals."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.apps.eeg import synthetic as S
from medtransfer.apps.eeg.io import (
    PAPER_CHANNELS,
    canonical_channel,
    map_channels,
    pp_config,
    pp_hash,
    preprocess_recording,
)
from medtransfer.shared.utils.errors import InputError

PP = {"window_seconds": 4.0, "crop_start_s": 2.0, "crop_max_s": 0.0, "sfreq": 50.0}


@pytest.mark.parametrize(
    "label,want",
    [
        ("EEG FP1-REF", "FP1"),
        ("EEG Fp1-Ref", "FP1"),
        ("EEG A1-LE", "A1"),
        ("FZ-REF", "FZ"),
        ("EEG T7-REF", "T3"),
        ("EEG T8-LE", "T4"),
        ("P7", "T5"),
        ("EEG P8-Ref", "T6"),
        ("Fp2.", "FP2"),
        ("Cz..", "CZ"),
        ("EEG T3-Ref", "T3"),
    ],
)
def test_canonical_channel(label, want):
    assert canonical_channel(label) == want


def test_map_channels_reports_missing_and_ignores_lookalikes():
    labels = [f"EEG {c}-Ref" for c in PAPER_CHANNELS if c not in ("A1", "A2")] + ["POL $A1", "POL $A2", "ECG EKG"]
    mapping, missing = map_channels(labels, PAPER_CHANNELS)
    assert missing == ["A1", "A2"]
    assert mapping["T3"] == "EEG T3-Ref" and len(mapping) == 19


def test_pp_hash_changes_with_recipe_only():
    a = pp_hash(PP)
    assert a == pp_hash(dict(PP, workers=8, cache_dir="/elsewhere"))
    assert a != pp_hash(dict(PP, sfreq=100.0))
    assert a != pp_hash(dict(PP, channels=PAPER_CHANNELS[:-1]))


def test_pp_config_refuses_car_on_one_channel():
    with pytest.raises(InputError, match="average reference"):
        pp_config({**PP, "channels": ["CH1"], "car": True})


def _rec(tmp_path, name="r.edf", sfreq=250.0, dur=20.0, labels=None, data=None, seed=0):
    rng = np.random.default_rng(seed)
    x = S.synth_signals(rng, False, dur, sfreq) if data is None else data
    return S.write_edf(tmp_path / name, x, sfreq, labels or [f"EEG {c}-REF" for c in PAPER_CHANNELS])


def test_recipe_shape_units_clip_car(tmp_path):
    rng = np.random.default_rng(0)
    x = S.synth_signals(rng, True, 20.0, 250.0)
    x[3, 1000:1100] = 5000.0  # a huge artefact on FP2, beyond the +-800 uV clip
    f = S.write_edf(tmp_path / "a.edf", x, 250.0, [f"EEG {c}-REF" for c in PAPER_CHANNELS])
    win, info = preprocess_recording(f, PP)
    assert win.shape == (4, 21, 200) and win.dtype == np.float32  # (20-2)//4 windows of 4 s at 50 Hz
    assert np.allclose(win.mean(axis=1), 0, atol=1e-3)  # common average reference
    assert 5.0 < win.std() < 200.0  # microvolts, not volts
    # clipped at +800 uV; checked without resampling (the paper clips before resampling, which may ring)
    no_car, _ = preprocess_recording(f, {**PP, "car": False, "crop_start_s": 0.0, "sfreq": 250.0})
    assert no_car.max() == pytest.approx(800.0, abs=1e-3)
    assert info["orig_sfreq"] == 250.0


def test_crop_max_limits_windows(tmp_path):
    f = _rec(tmp_path)
    win, _ = preprocess_recording(f, {**PP, "crop_max_s": 8.0})
    assert win.shape[0] == 2


def test_missing_channels_refused_unless_fill(tmp_path):
    chans = [c for c in PAPER_CHANNELS if c not in ("A1", "A2")]
    rng = np.random.default_rng(0)
    x = S.synth_signals(rng, False, 12.0, 250.0, channels=chans)
    f = S.write_edf(tmp_path / "m.edf", x, 250.0, [f"EEG {c}-REF" for c in chans])
    with pytest.raises(InputError, match="missing required channel.*A1, A2"):
        preprocess_recording(f, PP)
    win, info = preprocess_recording(f, {**PP, "fill_missing": True})
    assert info["filled"] == ["A1", "A2"] and np.all(win[:, :2] == 0) and np.any(win[:, 2] != 0)


def test_bad_inputs_give_one_line_errors(tmp_path):
    good = _rec(tmp_path)
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.edf"
    trunc.write_bytes(raw[: len(raw) // 2])
    junk = tmp_path / "junk.edf"
    junk.write_bytes(b"this is not an edf file at all" * 20)
    tiny = tmp_path / "tiny.edf"
    tiny.write_bytes(b"0  ")
    short = _rec(tmp_path, "short.edf", dur=5.0)
    lowrate = _rec(tmp_path, "low.edf", sfreq=32.0)
    flat_x = S.synth_signals(np.random.default_rng(1), False, 20.0, 250.0)
    flat_x[5] = 0.0
    flat = _rec(tmp_path, "flat.edf", data=flat_x)
    cases = {
        trunc: "truncated",
        junk: "EDF",
        tiny: "EDF",
        short: "shorter than one window",
        lowrate: "below the required",
        flat: "flat channel.*F4",
        tmp_path / "nope.edf": "not found",
        tmp_path / "x.txt": "unsupported",
    }
    (tmp_path / "x.txt").write_text("hi")
    for f, pat in cases.items():
        with pytest.raises(InputError, match=pat) as e:
            preprocess_recording(f, PP)
        assert "\n" not in str(e.value) and str(f) in str(e.value)


def test_nan_samples_refused_brainvision(tmp_path):
    x = S.synth_signals(np.random.default_rng(2), False, 12.0, 250.0)
    ok = S.write_brainvision(tmp_path / "ok.vhdr", x, 250.0, list(PAPER_CHANNELS))
    win, _ = preprocess_recording(ok, PP)
    assert win.shape == (2, 21, 200)
    x[7, 500:520] = np.nan
    bad = S.write_brainvision(tmp_path / "nan.vhdr", x, 250.0, list(PAPER_CHANNELS))
    with pytest.raises(InputError, match="NaN.*C4"):
        preprocess_recording(bad, PP)


@pytest.mark.parametrize(
    "name,first,words",
    [
        ("x.edf", b"\xffBIOSEMI", r"a BDF \(24-bit\) file named .edf: rename it .bdf"),
        ("x.bdf", b"0       ", r"an EDF \(16-bit\) file named .bdf: rename it .edf"),
    ],
)
def test_a_bdf_named_edf_is_not_decoded_as_16_bit(name, first, words):
    """A BDF renamed .edf was decoded 16-bit (std 0.13 µV for 11 µV of signal) and imported ok."""
    from medtransfer.apps.eeg.io import edf_header
    from medtransfer.shared.utils.errors import InputError

    head = first + b" " * 176 + b"512     " + b" " * 44 + b"1       " + b"1       " + b"1   "
    with pytest.raises(InputError, match=words):
        edf_header(name, head + b" " * 256)


@pytest.mark.parametrize("key,value", [("window_seconds", "abc"), ("sfreq", float("nan")), ("crop_start_s", -10)])
def test_a_preprocessing_value_that_is_no_plausible_number_is_one_line(key, value):
    from medtransfer.apps.eeg.io import pp_config
    from medtransfer.shared.utils.errors import InputError

    with pytest.raises(InputError, match=f"data.{key} must be"):
        pp_config({key: value})


def test_with_gates_a_dead_electrode_is_a_reason_not_an_error(tmp_path):
    """Found by a hostile audit: predict refused a recording with one constant channel of 21, though
    the predictor's contract (and the gate's 20 % rule) answers it marked unreliable."""
    x = S.synth_signals(np.random.default_rng(1), False, 20.0, 250.0)
    x[5] = 0.0  # F4 disconnected, recorded as zeros
    flat = _rec(tmp_path, "flat.edf", data=x)
    with pytest.raises(InputError, match="flat channel.*F4"):
        preprocess_recording(flat, PP)  # training still leaves it out
    win, info = preprocess_recording(flat, PP, gates=True)
    assert win.shape[0] >= 1 and info["reasons"] == ["flat channel(s): F4"]
    x[:6] = 0.0  # six of 21: past the gate's 20 %
    many = _rec(tmp_path, "many.edf", data=x)
    assert preprocess_recording(many, PP, gates=True)[1]["reasons"] == [
        "6 of 21 channels flat or saturated (limit 20%)"
    ]


def test_a_folder_named_like_a_recording_and_absurd_header_ranges_are_one_line(tmp_path, capfd):
    (tmp_path / "x.edf").mkdir()
    with pytest.raises(InputError, match="x.edf: is a folder, expected a file"):
        preprocess_recording(tmp_path / "x.edf", PP, gates=True)
    f = _rec(tmp_path, "huge.edf")
    raw = bytearray(f.read_bytes())
    ns = int(raw[252:256])
    for i in range(ns):  # physical min / max of every signal: -1e308 / 1e308 (MNE's overflow warnings)
        raw[256 + ns * 104 + 8 * i : 256 + ns * 104 + 8 * i + 8] = b"-1e308  "
        raw[256 + ns * 112 + 8 * i : 256 + ns * 112 + 8 * i + 8] = b"1e308   "
    f.write_bytes(bytes(raw))
    capfd.readouterr()
    with pytest.raises(InputError, match="NaN/inf samples"):
        preprocess_recording(f, PP, gates=True)
    assert "Warning" not in capfd.readouterr().err  # one line, no library noise
