"""Plausibility gates in the EEG predictor, header content kept out of messages, per-input plot
folders, and importers writing manifest paths relative to the CSV's folder."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.eeg import synthetic as S
from medtransfer.apps.eeg.data import import_generic, import_nmt, import_tuab, report_path
from medtransfer.apps.eeg.io import PAPER_CHANNELS, preprocess_recording
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError

SMALL = {"window_seconds": 4.0, "crop_start_s": 4.0, "crop_max_s": 0.0, "sfreq": 50.0}  # as conftest
TUAB_LABELS = [f"EEG {c}-REF" for c in PAPER_CHANNELS]


def _edf(path: Path, gain: float = 1.0, seed: int = 0, labels=TUAB_LABELS, channels=PAPER_CHANNELS) -> Path:
    x = S.synth_signals(np.random.default_rng(seed), False, 24.0, 100.0, channels=channels) * gain
    return S.write_edf(path, x, 100.0, labels)


def _set_field(path: Path, field_offset: int, width: int, signal: int, text: bytes) -> Path:
    """Overwrite one per-signal EDF header field (offset in units of ns bytes, as the spec lays them out)."""
    b = bytearray(path.read_bytes())
    ns = int(b[252:256].decode().strip())
    at = 256 + field_offset * ns + signal * width
    b[at : at + width] = text.ljust(width)[:width]
    path.write_bytes(bytes(b))
    return path


def _predictor(bundle, **opts):
    from medtransfer.apps.eeg.predict import EEGPredictor
    from medtransfer.shared.runtime.bundle import load_bundle

    return EEGPredictor(load_bundle(bundle), **opts)


# ------------------------------------------------------------------------------------ gates
def test_empty_range_channel_is_unreliable_not_confident(bundle, tmp_path):
    """Reproduction: digital min == max on one channel (MNE warns; values ~ volts) came out
    'abnormal, p=0.9999' with status ok.  Now the answer is marked unreliable, naming the electrode."""
    f = _edf(tmp_path / "dig.edf")
    dmin = f.read_bytes()[256 + 120 * 21 + 3 * 8 : 256 + 120 * 21 + 4 * 8]
    _set_field(f, 128, 8, 3, dmin)  # signal 4 (FP2): digital maximum := digital minimum
    r = _predictor(bundle).predict(f)
    assert r["unreliable"] is True
    assert any("empty range" in x and "FP2" in x for x in r["reasons"]), r["reasons"]
    assert any("amplitude" in x for x in r["reasons"])  # the unscalable channel reads as volts


def test_empty_range_channel_with_free_text_label_is_not_named(tmp_path):
    """A channel label that is not a standard electrode name is free header text: never quoted."""
    chans = ["FP1", "FP2", "ZQ7SECRT"]
    f = _edf(tmp_path / "free.edf", labels=["EEG Fp1-REF", "EEG Fp2-REF", "EEG Zq7Secrt-REF"], channels=chans)
    _set_field(f, 104, 8, 2, b"5")  # physical minimum := physical maximum (both 5) on the third signal
    _set_field(f, 112, 8, 2, b"5")
    _, info = preprocess_recording(f, {**SMALL, "channels": chans}, gates=True)
    text = " ".join(info["reasons"])
    assert "empty range" in text and "channel 3" in text
    assert "zq7" not in text.lower()


def test_amplitude_1e4_times_normal_is_unreliable(bundle, tmp_path):
    """Reproduction: a recording at 1e4x normal amplitude came out 'abnormal, p=0.9999', status ok."""
    r = _predictor(bundle).predict(_edf(tmp_path / "big.edf", gain=1e4))
    assert r["unreliable"] is True
    assert any("amplitude" in x and "uV" in x for x in r["reasons"]), r["reasons"]


def test_plausible_recording_is_not_flagged(bundle, tmp_path):
    r = _predictor(bundle).predict(_edf(tmp_path / "ok.edf"))
    assert r["unreliable"] is False and r["reasons"] == []


def test_gate_limits_follow_bundle_overrides(bundle, tmp_path):
    """``metadata["gates"]`` overrides a documented limit (the range a bundle used travels with it)."""
    p = _predictor(bundle)
    p.gates = {"eeg_max_abs_uv": 1.0}
    r = p.predict(_edf(tmp_path / "ok.edf"))
    assert r["unreliable"] is True and any("amplitude" in x for x in r["reasons"])


def test_nan_samples_are_an_error_not_an_answer(bundle, tmp_path):
    x = S.synth_signals(np.random.default_rng(2), False, 24.0, 100.0)
    x[4, 900:950] = np.nan
    f = S.write_brainvision(tmp_path / "nan.vhdr", x, 100.0, list(PAPER_CHANNELS))
    with pytest.raises(InputError, match="NaN"):
        _predictor(bundle).predict(f)


# ------------------------------------------------------------------------- header content
@pytest.mark.parametrize(
    "field,offset,width",
    [
        ("digital minimum", 120, 8),
        ("physical minimum", 104, 8),
        ("digital maximum", 128, 8),
        ("samples per record", 216, 8),
    ],
)
def test_header_bytes_never_reach_messages(tmp_path, field, offset, width):
    """Reproduction: error messages quoted raw header bytes (MNE's 'could not convert string to float: ...')."""
    f = _set_field(_edf(tmp_path / "x.edf"), offset, width, 0, b"Zq7SECRT")
    with pytest.raises(InputError) as e:
        preprocess_recording(f, SMALL)
    msg = str(e.value)
    assert "zq7" not in msg.lower() and "\n" not in msg
    assert field in msg or "EDF" in msg


def test_record_duration_field_named_not_quoted(tmp_path):
    f = _edf(tmp_path / "x.edf")
    b = bytearray(f.read_bytes())
    b[244:252] = b"Zq7SECRT"
    f.write_bytes(bytes(b))
    with pytest.raises(InputError, match="duration of a data record") as e:
        preprocess_recording(f, SMALL)
    assert "Zq7" not in str(e.value)


# ------------------------------------------------------------------------ per-input plots
def test_trace_plots_never_collide(bundle, tmp_path):
    """a/s1.edf and b/s1.edf get their own plot folders; without an input root the second is refused
    before any work instead of overwriting the first one's plot."""
    a = _edf(tmp_path / "in" / "a" / "s1.edf", seed=1)
    b = _edf(tmp_path / "in" / "b" / "s1.edf", seed=2)
    p = _predictor(bundle, plot=True, out_dir=str(tmp_path / "out"), input_root=str(tmp_path / "in"))
    ra, rb = p.predict(a), p.predict(b)
    assert Path(ra["plot"]) == tmp_path / "out" / "a" / "s1" / "trace.png"
    assert Path(rb["plot"]) == tmp_path / "out" / "b" / "s1" / "trace.png"
    assert Path(ra["plot"]).is_file() and Path(rb["plot"]).is_file()
    q = _predictor(bundle, plot=True, out_dir=str(tmp_path / "out2"))
    q.predict(a)
    with pytest.raises(InputError, match="overwrite"):
        q.predict(b)
    assert q.predict(a)["plot"]  # the same input again is fine


def test_no_plot_beside_inputs_without_out_dir(bundle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = _predictor(bundle, plot=True).predict(_edf(tmp_path / "s.edf"))
    assert "plot" not in r and not list(tmp_path.rglob("*.png"))


# ----------------------------------------------------------------- manifest relative paths
def _check_relative(csv_path: Path) -> list[str]:
    """Every manifest and report path is relative (posix) and names an existing file from the CSV's folder."""
    base = csv_path.parent
    paths = [row["path"] for row in csv.DictReader(open(csv_path))]
    paths += [row["path"] for row in csv.DictReader(open(report_path(csv_path)))]
    assert paths
    for p in paths:
        assert not os.path.isabs(p) and "\\" not in p, p
        assert (base / p).is_file(), p
    return paths


def test_importers_write_paths_relative_to_the_csv(tmp_path, monkeypatch):
    """Relative root and --out given from another working directory: paths relative to the CSV."""
    S.make_tuab(tmp_path / "data" / "tuab", n_per_class=1, eval_per_class=1, duration_s=12.0, seed=0)
    nmt = S.make_nmt(tmp_path / "data" / "nmt", n_per_class=1, eval_per_class=1, duration_s=12.0, seed=1)
    (nmt / "normal" / "train" / "9999999.edf").write_bytes((next((nmt / "normal").rglob("*.edf"))).read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    t = import_tuab(Path("../data/tuab"), Path("out/sub/t.csv"), **SMALL)
    n = import_nmt(Path("../data/nmt"), Path("out/n.csv"), **SMALL)  # 9999999.edf: not in Labels.csv
    g = import_generic(Path("../data/tuab"), Path("g.csv"), **SMALL)
    g2 = import_generic(Path("out/sub/t.csv"), Path("../elsewhere/g2.csv"), **SMALL)
    for out in (t, n, g, g2):
        _check_relative(out)
    rep = {r["path"].split("/")[-1]: r for r in csv.DictReader(open(report_path(n)))}
    assert rep["9999999.edf"]["status"] == "skipped"
    monkeypatch.chdir(tmp_path)
    assert len(read_manifest(Path("work/out/sub/t.csv"))) == 4 and all(
        r.path.is_file() for r in read_manifest(tmp_path / "elsewhere" / "g2.csv")
    )


def test_importer_keeps_symlinked_data_folder(tmp_path, monkeypatch):
    """A data folder linked into the project is written through the link (relative, portable),
    not as a '../../..' path to wherever the link points."""
    S.make_tuab(tmp_path / "store" / "tuab", n_per_class=1, eval_per_class=1, duration_s=12.0, seed=0)
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "tuab").symlink_to(tmp_path / "store" / "tuab", target_is_directory=True)
    monkeypatch.chdir(proj)
    out = import_tuab(Path("tuab"), Path("m.csv"), **SMALL)
    paths = _check_relative(out)
    assert all(p.startswith("tuab/") for p in paths), paths[:2]


def test_bonn_importer_relative_from_another_cwd(eeg_real, tmp_path, monkeypatch):
    from medtransfer.apps.eeg.data import import_bonn

    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    out = import_bonn(eeg_real / "bonn", Path("../b/bonn.csv"), limit_per_set=1)
    paths = _check_relative(out)
    assert all(p.startswith("bonn_edf/") for p in paths)
    assert json.dumps(paths).count("..") == 0


def test_edf_plus_d_is_marked_only_when_its_records_have_gaps(eeg_real, tmp_path):
    """Nihon Kohden writes EDF+D without gaps (not marked); the same file with its records from 15 s
    moved 1000 s later is marked (it was answered as one continuous recording)."""
    from medtransfer.apps.eeg.io import edf_gap_seconds, edf_header

    src = eeg_real / "mne_testing_data" / "NihonKohden" / "MB0400FU.EDF"
    if not src.is_file():
        pytest.skip("the Nihon Kohden sample is absent")
    assert edf_gap_seconds(src) == 0.0
    h = edf_header(src)
    sigs = h["signals"]
    ann = next(i for i, s in enumerate(sigs) if s["annotation"])
    rec = sum(s["samples_per_record"] for s in sigs) * 2
    before = sum(s["samples_per_record"] for s in sigs[:ann]) * 2
    b = bytearray(src.read_bytes())
    for r in range(15, h["n_records"]):
        at = h["n_header"] + r * rec + before
        b[at : at + 24] = f"+{r + 1000}.000000\x14\x14\x00".encode().ljust(24, b"\x00")
    gap = tmp_path / "gap.edf"
    gap.write_bytes(bytes(b))
    assert edf_gap_seconds(gap) == pytest.approx(1000.0)
