"""The eeg app's hooks for ``medtransfer estimate``: validation cases of a run, band powers of a recording.

Torch-free (numpy only: importing scipy.signal costs seconds per process): ``input_stats`` runs at export (reference) and at a new site (drift).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

#: clinical EEG bands (Hz)
BANDS = {"delta": (0.5, 4.0), "theta": (4.0, 8.0), "alpha": (8.0, 13.0), "beta": (13.0, 30.0)}


def reference_cases(run_dir: str | Path) -> list[dict[str, Any]]:
    """The VALIDATION recordings of the manifest the run was trained on (``run.json["manifest"]``)."""
    from medtransfer.shared.export.reference import manifest_val_cases
    from medtransfer.shared.rundir import RunDir

    manifest = RunDir(run_dir).info().get("manifest")
    return manifest_val_cases(manifest) if manifest else []


def input_stats(path: str | Path, bundle: Any) -> dict[str, float]:
    """Band powers of one recording after the bundle's preprocessing (what the model sees).

    Returns:
        ``<band>_log_power`` (log10 uV^2/Hz, median over channels), ``<band>_relative`` (share of the
        0.5-30 Hz power, median over channels), ``total_log_power_<channel>`` per channel (log10 of
        the 0.5-30 Hz power), ``amplitude_sd`` (uV).

    Raises:
        InputError: the recording cannot be read (as in ``predict``).
    """
    from medtransfer.apps.eeg.io import preprocess_recording

    pp = {k: v for k, v in bundle.preprocessing.items() if k not in ("aggregation", "threshold")}
    win, _ = preprocess_recording(Path(path), pp, gates=False)
    sf = float(pp["sfreq"])
    n_fft = int(min(win.shape[-1], 4 * sf))
    freqs, psd = _psd(win.astype(np.float64), sf, n_fft)
    keep = (freqs >= 0.5) & (freqs <= min(30.0, sf / 2))
    freqs, psd = freqs[keep], psd.mean(axis=0)[:, keep]  # channels x freqs, averaged over windows
    df = float(freqs[1] - freqs[0]) if len(freqs) > 1 else 1.0
    total = psd.sum(axis=1) * df + 1e-12
    out: dict[str, float] = {}
    for band, (lo, hi) in BANDS.items():
        sel = (freqs >= lo) & (freqs < hi)
        if not sel.any():
            continue
        bp = psd[:, sel].sum(axis=1) * df
        out[f"{band}_log_power"] = float(np.log10(np.median(bp) + 1e-12))
        out[f"{band}_relative"] = float(np.median(bp / total))
    for name, t in zip(pp["channels"], total):
        out[f"total_log_power_{name}"] = float(np.log10(t))
    out["amplitude_sd"] = float(np.std(win))
    return out


def _psd(x: np.ndarray, sf: float, n_seg: int) -> tuple[np.ndarray, np.ndarray]:
    """Welch PSD (Hann segments, 50 % overlap, one-sided, density scaling) along the last axis.

    Args:
        x: windows x channels x samples.
        sf: sampling rate (Hz).
        n_seg: samples per segment.

    Returns:
        (frequencies, PSD windows x channels x frequencies in unit^2/Hz).
    """
    n_seg = max(2, min(n_seg, x.shape[-1]))
    step = max(1, n_seg // 2)
    starts = range(0, x.shape[-1] - n_seg + 1, step)
    w = np.hanning(n_seg)
    scale = 1.0 / (sf * np.sum(w**2))
    segs = np.stack([x[..., s : s + n_seg] for s in starts], axis=-2)  # ... x segments x n_seg
    segs = segs - segs.mean(axis=-1, keepdims=True)
    p = np.abs(np.fft.rfft(segs * w, axis=-1)) ** 2 * scale
    p[..., 1:-1] *= 2.0 if n_seg % 2 == 0 else 1.0
    if n_seg % 2:
        p[..., 1:] *= 2.0
    return np.fft.rfftfreq(n_seg, 1.0 / sf), p.mean(axis=-2)
