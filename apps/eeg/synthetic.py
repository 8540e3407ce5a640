"""Synthetic clinical EEG written as real EDF files (edfio writes, MNE reads), in the TUAB and NMT
release layouts, with a learnable abnormality (diffuse delta slowing, reduced alpha, spikes).

Used by the tests, the demo and the bench, so all three see the same data.  Torch-free.
"""

from __future__ import annotations

import csv
import datetime as dt
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medtransfer.apps.eeg.io import PAPER_CHANNELS
from medtransfer.shared.utils.errors import InputError

#: extra non-EEG channels clinical files carry (they must be ignored)
EXTRA_CHANNELS = ("EKG1", "PHOTIC")
#: a fake patient name written into every synthetic header: it must never reach any output
SYNTH_PATIENT_NAME = "Synthpatient_Doe"

_POSTERIOR = {"O1", "O2", "P3", "P4", "T5", "T6", "PZ"}


def synth_signals(
    rng: np.random.Generator,
    abnormal: bool,
    duration_s: float,
    sfreq: float,
    channels: Sequence[str] = PAPER_CHANNELS,
    alpha_hz: float = 10.0,
    severity: float = 1.0,
    gain: float = 1.0,
) -> np.ndarray:
    """Microvolt signals (channels x samples) of one synthetic recording.

    Args:
        rng: random generator.
        abnormal: add slowing and spikes, weaken alpha.
        duration_s: length in seconds.
        sfreq: sampling rate.
        channels: canonical channel names (posterior ones carry alpha).
        alpha_hz: posterior dominant rhythm frequency.
        severity: scale of the abnormality (0 = none).
        gain: overall amplitude factor (a site / amplifier difference).

    Returns:
        float64 array in microvolts.
    """
    n = int(round(duration_s * sfreq))
    t = np.arange(n) / sfreq
    c = len(channels)
    white = rng.standard_normal((c, n))
    f = np.fft.rfftfreq(n, 1 / sfreq)
    shape = 1.0 / np.sqrt(np.maximum(f, 0.5))
    bg = np.fft.irfft(np.fft.rfft(white, axis=1) * shape, n=n, axis=1)
    bg *= 12.0 / (bg.std(axis=1, keepdims=True) + 1e-9)
    common = np.fft.irfft(np.fft.rfft(rng.standard_normal(n)) * shape, n=n)
    bg += 6.0 * common / (common.std() + 1e-9)
    alpha_amp = 14.0 * (1.0 - 0.6 * severity if abnormal else 1.0)
    for i, ch in enumerate(channels):
        amp = alpha_amp * (1.0 if ch in _POSTERIOR else 0.3)
        phase = rng.uniform(0, 2 * np.pi)
        fm = alpha_hz + 0.3 * np.sin(2 * np.pi * 0.05 * t + phase)
        bg[i] += amp * np.sin(2 * np.pi * np.cumsum(fm) / sfreq + phase)
    if abnormal and severity > 0:
        side = rng.uniform(0.6, 1.0, size=c)
        delta_f = rng.uniform(1.0, 3.0)
        slow = np.sin(2 * np.pi * delta_f * t + rng.uniform(0, 2 * np.pi))
        slow += 0.5 * np.sin(2 * np.pi * (delta_f * 0.6) * t + rng.uniform(0, 2 * np.pi))
        bg += (35.0 * severity) * side[:, None] * slow[None, :]
        n_spikes = int(duration_s / 4)
        width = max(3, int(0.07 * sfreq))
        kernel = -np.exp(-0.5 * np.linspace(-3, 3, width) ** 2)
        focus = rng.choice(c, size=max(2, c // 4), replace=False)
        for s in rng.integers(0, max(1, n - width), size=n_spikes):
            bg[focus, s : s + width] += (120.0 * severity) * kernel
    return bg * gain


def write_edf(
    path: Path,
    data_uv: np.ndarray,
    sfreq: float,
    labels: Sequence[str],
    patient_code: str = "X",
    age: int | None = None,
    sex: str = "X",
    patient_name: str = SYNTH_PATIENT_NAME,
) -> Path:
    """Write microvolt signals as an EDF+ file with edfio.

    Args:
        path: output file.
        data_uv: channels x samples, microvolts.
        sfreq: sampling rate (samples per 1 s data record must be an integer).
        labels: channel labels as they appear in the file.
        patient_code: header patient code (a pseudonymous id).
        age: written as ``Age:NN`` (as TUH headers carry it).
        sex: ``M``, ``F`` or ``X``.
        patient_name: header patient name.

    Returns:
        The path.
    """
    import edfio

    path.parent.mkdir(parents=True, exist_ok=True)
    lim = float(np.ceil(max(np.abs(data_uv).max(), 1.0) * 1.05))
    sigs = [
        edfio.EdfSignal(
            np.asarray(row, dtype=np.float64),
            sampling_frequency=sfreq,
            label=lab,
            physical_dimension="uV",
            physical_range=(-lim, lim),
            transducer_type="AgAgCl electrode",
        )
        for row, lab in zip(data_uv, labels)
    ]
    patient = edfio.Patient(
        code=patient_code,
        sex=sex,
        birthdate=None,
        name=patient_name,
        additional=[f"Age:{age}"] if age is not None else [],
    )
    edf = edfio.Edf(sigs, patient=patient, starttime=dt.time(10, 0, 0), data_record_duration=1.0)
    edf.write(path)
    return path


def _labels(style: str) -> list[str]:
    names = list(PAPER_CHANNELS)
    if style == "tuab":
        lab = [f"EEG {c}-REF" for c in names]
    elif style == "nmt":  # linked-ear montage names, mixed case, new 10-10 names for T3/T4
        ren = {"T3": "T7", "T4": "T8"}
        lab = [f"EEG {ren.get(c, c).capitalize() if len(c) > 1 else c}-LE" for c in names]
    else:
        raise ValueError(style)
    return lab + [f"{'EEG ' if style == 'tuab' else ''}{e}" for e in EXTRA_CHANNELS]


def make_tuab(
    root: Path,
    n_per_class: int = 4,
    eval_per_class: int = 2,
    duration_s: float = 90.0,
    sfreq: float = 250.0,
    seed: int = 0,
    version: str = "v3.0.1",
    severity: float = 1.0,
) -> Path:
    """Write a synthetic TUAB tree: ``<root>/<version>/edf/{train,eval}/{normal,abnormal}/01_tcp_ar/``.

    v3 puts ``<subject>_s001_t000.edf`` directly there; v2 (``version="v2.0.0"``) nests
    ``<NNN>/<subject>/s001_2015_01_01/<subject>_s001_t000.edf``.

    Args:
        root: output folder (the folder ABOVE the version folder, as braindecode wants it).
        n_per_class: train recordings per class.
        eval_per_class: eval recordings per class.
        duration_s: recording length.
        sfreq: sampling rate.
        seed: random seed.
        version: ``v3.0.1`` or ``v2.0.0``.
        severity: abnormality strength.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    labels = _labels("tuab")
    k = 0
    for split, n in (("train", n_per_class), ("eval", eval_per_class)):
        for cls in ("normal", "abnormal"):
            for _ in range(n):
                subj = "".join(chr(ord("a") + (k // 26**j) % 26) for j in range(8))[::-1]
                k += 1
                base = root / version / "edf" / split / cls / "01_tcp_ar"
                fname = f"{subj}_s001_t000.edf"
                if version.startswith("v2"):
                    base = base / f"{k:03d}" / subj / "s001_2015_01_01"
                x = synth_signals(rng, cls == "abnormal", duration_s, sfreq, severity=severity)
                extra = rng.standard_normal((len(EXTRA_CHANNELS), x.shape[1])) * 50
                write_edf(
                    base / fname,
                    np.vstack([x, extra]),
                    sfreq,
                    labels,
                    patient_code=subj,
                    age=int(rng.integers(20, 80)),
                    sex=str(rng.choice(["M", "F"])),
                )
    return root


def make_nmt(
    root: Path,
    n_per_class: int = 4,
    eval_per_class: int = 2,
    duration_s: float = 90.0,
    sfreq: float = 200.0,
    seed: int = 1,
    severity: float = 0.6,
    gain: float = 1.4,
    alpha_hz: float = 9.0,
) -> Path:
    """Write a synthetic NMT release: ``<root>/{normal,abnormal}/{train,eval}/NNNNNNN.edf`` + ``Labels.csv``.

    The target site differs from the synthetic TUAB one: other rate, channel names (``-LE``,
    T7/T8), amplifier gain, alpha frequency and a milder abnormality.

    Args:
        root: the ``nmt_scalp_eeg_dataset`` folder to create.
        n_per_class: train recordings per class.
        eval_per_class: eval recordings per class.
        duration_s: recording length.
        sfreq: sampling rate.
        seed: random seed.
        severity: abnormality strength.
        gain: amplitude factor.
        alpha_hz: dominant rhythm.

    Returns:
        ``root``.
    """
    rng = np.random.default_rng(seed)
    labels = _labels("nmt")
    rows = []
    k = 0
    for split, n in (("train", n_per_class), ("eval", eval_per_class)):
        for cls in ("normal", "abnormal"):
            for _ in range(n):
                k += 1
                rec = f"{k:07d}.edf"
                x = synth_signals(
                    rng, cls == "abnormal", duration_s, sfreq, alpha_hz=alpha_hz, severity=severity, gain=gain
                )
                extra = rng.standard_normal((len(EXTRA_CHANNELS), x.shape[1])) * 50
                age = int(rng.integers(18, 80))
                sex = str(rng.choice(["male", "female", "not specified"]))
                write_edf(
                    root / cls / split / rec,
                    np.vstack([x, extra]),
                    sfreq,
                    labels,
                    patient_code=rec[:-4],
                    age=age,
                    sex={"male": "M", "female": "F"}.get(sex, "X"),
                )
                rows.append({"recordname": rec, "label": cls, "age": age, "gender": sex, "loc": split})
    with open(root / "Labels.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=["recordname", "label", "age", "gender", "loc"])
        w.writeheader()
        w.writerows(rows)
    return root


def write_bonn_edfs(npz_path: Path, out_dir: Path, limit_per_set: int | None = None) -> list[dict[str, Any]]:
    """Write the Bonn segments (single channel, 173.61 Hz, 4097 samples) as EDF files.

    Z, O (healthy volunteers) are ``normal``; N, F (interictal) and S (ictal) are ``abnormal``.

    Args:
        npz_path: ``bonn_dev_int16.npz`` (``signals``, ``segment_id``, ``set_letter``, ``sfreq``).
        out_dir: folder for ``<segment_id>.edf``.
        limit_per_set: keep only the first N segments of each set (tests).

    Returns:
        Manifest rows (``path``, ``label``, ``group``, ``bonn_set``).
    """
    import edfio

    if not Path(npz_path).is_file():
        raise InputError(npz_path, "Bonn npz not found")
    z = np.load(npz_path, allow_pickle=False)
    sig, ids, sets = z["signals"], z["segment_id"], z["set_letter"]
    sf = float(z["sfreq"]) if "sfreq" in z else 173.61
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, seen = [], {}
    for x, sid, s in zip(sig, ids, sets):
        s = str(s)
        seen[s] = seen.get(s, 0) + 1
        if limit_per_set and seen[s] > limit_per_set:
            continue
        n = x.shape[0]
        rec_dur = float(f"{n / sf:.5f}")  # one data record; EDF stores its duration in 8 chars
        lim = float(max(np.abs(x).max(), 1) + 1)
        sigl = edfio.EdfSignal(
            x.astype(np.float64),
            sampling_frequency=n / rec_dur,
            label="EEG CH1",
            physical_dimension="uV",
            physical_range=(-lim, lim),
        )
        p = out_dir / f"{sid}.edf"
        edfio.Edf([sigl], data_record_duration=rec_dur).write(p)
        rows.append({"path": p, "label": "normal" if s in ("Z", "O") else "abnormal", "group": str(sid), "bonn_set": s})
    return rows


def write_brainvision(path: Path, data_uv: np.ndarray, sfreq: float, labels: Sequence[str]) -> Path:
    """Write a minimal BrainVision triplet (``.vhdr``/``.vmrk``/``.eeg``, float32 multiplexed, uV).

    Used for fixtures of the generic importer (NaN samples can only be stored in float formats).

    Args:
        path: the ``.vhdr`` file to write.
        data_uv: channels x samples in microvolts (NaN allowed).
        sfreq: sampling rate.
        labels: channel names.

    Returns:
        The ``.vhdr`` path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    chans = "\n".join(f"Ch{i + 1}={lab},,1,µV" for i, lab in enumerate(labels))
    path.write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\nMarkerFile={stem}.vmrk\nDataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
        f"NumberOfChannels={len(labels)}\nSamplingInterval={1e6 / sfreq:g}\n[Binary Infos]\n"
        f"BinaryFormat=IEEE_FLOAT_32\n[Channel Infos]\n{chans}\n",
        encoding="utf-8",
    )
    path.with_suffix(".vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n[Common Infos]\nCodepage=UTF-8\n"
        f"DataFile={stem}.eeg\n[Marker Infos]\n",
        encoding="utf-8",
    )
    np.asarray(data_uv, dtype="<f4").T.tofile(path.with_suffix(".eeg"))
    return path
