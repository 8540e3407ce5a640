"""The one-read EEG path (edfio + numpy polyphase resampling) gives the windows the previous MNE path
gives, the cache built with prefetch / worker processes holds the same windows, and the predict path
imports neither MNE, SciPy's signal package nor torch.  No timing assertions: speed is the bench's
output (``python -m medtransfer.apps.eeg.bench``)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.eeg import io as I
from medtransfer.apps.eeg import synthetic as S
from medtransfer.apps.eeg.data import build_cache, data_cfg
from medtransfer.shared.manifest import Record

#: short windows keep the files small; 250 Hz -> 100 Hz is the paper's 2/5 polyphase ratio
PP = {"crop_start_s": 2.0, "crop_max_s": 20.0, "window_seconds": 4.0, "sfreq": 100.0}
LABELS = [f"EEG {c}-REF" for c in I.PAPER_CHANNELS] + ["EKG1", "PHOTIC"]


def _edf(path: Path, sfreq: float = 250.0, seconds: float = 30.0, seed: int = 0, labels=LABELS) -> Path:
    rng = np.random.default_rng(seed)
    x = S.synth_signals(rng, seed % 2 == 1, seconds, sfreq, channels=[lb.split()[-1] for lb in labels])
    return S.write_edf(path, x, sfreq, labels)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    # float32 windows from float64 arithmetic done in another order: a few float32 ulps at most
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize(
    "sfreq, extra",
    [
        (250.0, {}),  # the paper: 2/5 polyphase
        (200.0, {}),  # 1/2
        (256.0, {}),  # 25/64
        (250.0, {"resample": "fft"}),  # MNE's FFT resampling, unchanged
        (250.0, {"car": False, "clip_uv": 0.0}),
        (250.0, {"crop_max_s": 0.0, "crop_start_s": 2.01}),  # 6998 samples: MNE's length-derived factors
    ],
)
def test_fast_path_equals_mne_path(tmp_path, sfreq, extra):
    f = _edf(tmp_path / "r.edf", sfreq=sfreq)
    pp = {**PP, **extra}
    fast, info = I.preprocess_recording(f, pp)
    slow, info_mne = I.preprocess_recording(f, pp, engine="mne")
    _same(fast, slow)
    assert info == info_mne
    assert I.load_recording(f, pp)["header"] is not None  # really the edfio path, not a fallback


def test_fast_path_with_gates_and_missing_channel_equals_mne(tmp_path):
    labels = [lb for lb in LABELS if "CZ" not in lb.upper()]
    f = _edf(tmp_path / "r.edf", labels=labels)
    pp = {**PP, "fill_missing": True}
    fast, info = I.preprocess_recording(f, pp, gates=True)
    slow, info_mne = I.preprocess_recording(f, pp, gates=True, engine="mne")
    _same(fast, slow)
    assert info["filled"] == ["CZ"] and info == info_mne
    assert np.all(fast[:, I.PAPER_CHANNELS.index("CZ")] == 0)


@pytest.mark.filterwarnings("ignore:Loading an EDF with mixed sampling frequencies")
def test_mixed_rate_edf_falls_back_to_mne(tmp_path):
    """A picked channel slower than the file's top rate: only MNE decodes it (it upsamples), same answer."""
    import edfio

    rng = np.random.default_rng(3)
    sigs = [
        edfio.EdfSignal(rng.standard_normal(int(30 * (125 if i == 0 else 250))) * 20, 125 if i == 0 else 250, label=lb)
        for i, lb in enumerate(LABELS)
    ]
    f = tmp_path / "mixed.edf"
    edfio.Edf(sigs).write(f)
    assert I.load_recording(f, PP)["header"] is None  # MNE decoded it
    _same(I.preprocess_recording(f, PP)[0], I.preprocess_recording(f, PP, engine="mne")[0])


def test_header_info_matches_mne(tmp_path):
    f = _edf(tmp_path / "r.edf", seconds=27.0)
    fast = I.header_info(f, PP)
    raw = I.read_raw(f)
    assert fast["sfreq"] == float(raw.info["sfreq"]) and fast["duration_s"] == round(raw.n_times / 250.0, 3)
    assert fast["ok"] and fast["n_windows"] == 5 and not fast["missing"]
    short = I.header_info(f, {**PP, "crop_start_s": 25.0})
    assert not short["ok"] and "shorter than one window" in short["reason"]


@pytest.mark.parametrize("n, up, down", [(75000, 2, 5), (1000, 1, 2), (2560, 25, 64), (1500, 3, 2), (775, 4, 5)])
def test_polyphase_equals_mne(n, up, down):
    from mne.filter import resample

    x = np.random.default_rng(n).standard_normal((3, n)) * 50
    ref = resample(x, up=up, down=down, method="polyphase", verbose="error")
    fr = Fraction(ref.shape[1], n)  # MNE's own factors come from the lengths
    got = I._resample_poly_reflect(x, fr.numerator, fr.denominator)
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-9)


def test_firwin_equals_scipy():
    from scipy.signal import firwin

    for taps, cut in ((101, 0.2), (1281, 1 / 64), (41, 0.5)):
        np.testing.assert_allclose(I.firwin_lowpass(taps, cut), firwin(taps, cut, window=("kaiser", 5.0)), atol=1e-15)


@pytest.mark.parametrize("workers", [1, 2])
def test_cache_holds_the_mne_windows(tmp_path, workers):
    files = [_edf(tmp_path / f"r{i}.edf", seed=i) for i in range(3)]
    bad = tmp_path / "bad.edf"
    bad.write_bytes(b"not an edf at all")
    recs = [Record(path=f, label="normal", rel=f.name) for f in [*files, bad]]
    cfg = data_cfg({**PP, "workers": workers})
    cached, errors = build_cache(recs, cfg, tmp_path / "cache", workers=workers, progress=False)
    assert [c.case_id for c in cached] == [f.name for f in files]
    assert len(errors) == 1 and errors[0]["path"] == "bad.edf" and "EDF" in errors[0]["reason"]
    for c, f in zip(cached, files):
        got = np.load(c.file)
        _same(got, I.preprocess_recording(f, PP, engine="mne")[0])
        assert c.n_windows == got.shape[0] == 5


def test_predict_path_imports_no_mne_scipy_or_torch(bundle, tuab_root):
    edf = sorted(Path(tuab_root).rglob("*.edf"))[0]
    code = textwrap.dedent(f"""
        import json, sys
        from typer.testing import CliRunner
        from medtransfer.shared.cli.main import app
        r = CliRunner().invoke(app, ["predict", r"{bundle}", r"{edf}"])
        assert r.exit_code == 0, r.output
        heavy = [m for m in ("mne", "scipy.signal", "scipy", "torch", "braindecode") if m in sys.modules]
        print(json.dumps({{"heavy": heavy, "answer": json.loads(r.output.splitlines()[0])}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["heavy"] == []
    assert res["answer"]["status"] == "ok" and res["answer"]["label"] in ("normal", "abnormal")


def test_missing_edfio_is_one_line_naming_the_extra(bundle, tuab_root):
    """With edfio not importable (simulated), predict ends with one line naming medtransfer[eeg], exit 2."""
    edf = sorted(Path(tuab_root).rglob("*.edf"))[0]
    code = textwrap.dedent(f"""
        import sys
        sys.modules["edfio"] = None  # what Python's import does for a package that is not installed
        sys.argv = ["medtransfer", "predict", r"{bundle}", r"{edf}"]
        from medtransfer.shared.cli.main import main
        main()
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "install medtransfer[eeg]" in lines[0]


def test_missing_reader_on_read_names_file_and_extra(tmp_path, monkeypatch):
    f = _edf(tmp_path / "r.edf")
    monkeypatch.setitem(sys.modules, "edfio", None)
    with pytest.raises(I.InputError) as e:
        I.preprocess_recording(f, PP)
    assert str(f) in str(e.value) and "install medtransfer[eeg]" in str(e.value)
    monkeypatch.setitem(sys.modules, "mne", None)
    with pytest.raises(I.InputError) as e:
        I.read_raw(f)
    assert "install medtransfer[eeg-mne]" in str(e.value)
