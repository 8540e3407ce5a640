"""Reading EEG recordings and the paper's preprocessing (torch-free: numpy + MNE only).

Recipe (Darvishi-Bayazi et al. 2024, all keys of the ``data`` config section):
pick the configured channels (names mapped from ``EEG XX-REF`` / ``-LE`` / ``-Ref`` and the
10-10 names T7/T8/P7/P8 -> T3/T4/T5/T6), skip the first ``crop_start_s`` seconds and keep up to
``crop_max_s`` seconds, volts -> microvolts (``scale``), clip at +-``clip_uv``, resample to
``sfreq``, common average reference (``car``), cut non-overlapping ``window_seconds`` windows.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from medtransfer.shared.utils.errors import InputError

#: the paper's 21 channels, in its order
PAPER_CHANNELS: list[str] = [
    "A1",
    "A2",
    "FP1",
    "FP2",
    "F3",
    "F4",
    "C3",
    "C4",
    "P3",
    "P4",
    "O1",
    "O2",
    "F7",
    "F8",
    "T3",
    "T4",
    "T5",
    "T6",
    "FZ",
    "CZ",
    "PZ",
]

#: the ``data`` section of the eeg config: the preprocessing recipe plus data handling keys
DATA_DEFAULTS: dict[str, Any] = {
    "channels": list(PAPER_CHANNELS),
    "sfreq": 100.0,
    "window_seconds": 60.0,
    "crop_start_s": 60.0,
    "crop_max_s": 300.0,  # seconds kept after the start crop (0 = keep all); the paper keeps 60-360 s
    "scale": 1.0e6,  # volts -> microvolts
    "clip_uv": 800.0,  # 0 = no clipping
    "car": True,
    "fill_missing": False,  # zero-fill missing channels instead of refusing the recording
    "resample": "auto",  # auto (polyphase when the rate ratio is a small fraction, else FFT) | poly | fft (MNE's)
    "min_sfreq": 0.0,  # refuse recordings sampled below this (0 = the target sfreq)
    "cache_dir": "",  # "" = <manifest folder>/.eeg_cache
    "workers": 2,
    "max_windows_per_recording": 0,  # 0 = all windows of each recording
    "window_stride_seconds": 0.0,  # training windows only: 0 = window_seconds (no overlap); < window = overlap
    "val_fraction": 0.15,
    "test_fraction": 0.15,
    "split_seed": 0,
}

#: keys that change the windows (the cache key)
PREPROCESS_KEYS = (
    "channels",
    "sfreq",
    "window_seconds",
    "crop_start_s",
    "crop_max_s",
    "scale",
    "clip_uv",
    "car",
    "fill_missing",
    "min_sfreq",
    "resample",
)
PREPROCESS_VERSION = 1

_RENAME_1010 = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
SUFFIXES = (".edf", ".bdf", ".set", ".vhdr")


def canonical_channel(name: str) -> str:
    """Map a channel label to the paper's naming.

    ``EEG FP1-REF``, ``EEG Fp1-Ref``, ``FP1-LE``, ``Fp1.`` -> ``FP1``; ``T7``/``T8``/``P7``/``P8``
    -> ``T3``/``T4``/``T5``/``T6``.

    Args:
        name: the label as stored in the file.

    Returns:
        The canonical upper-case name.
    """
    n = name.strip()
    n = re.sub(r"^EEG[\s_]+", "", n, flags=re.IGNORECASE)
    n = re.sub(r"[-_ ]?(REF|LE|AR|AVG)$", "", n, flags=re.IGNORECASE)
    n = n.rstrip(".").strip().upper()
    return _RENAME_1010.get(n, n)


def map_channels(ch_names: list[str], wanted: list[str]) -> tuple[dict[str, str], list[str]]:
    """Find each wanted channel among a file's labels.

    Args:
        ch_names: labels in the file.
        wanted: canonical names required.

    Returns:
        (wanted name -> file label for those found, wanted names missing).
    """
    found: dict[str, str] = {}
    for orig in ch_names:
        c = canonical_channel(orig)
        if c not in found:
            found[c] = orig
    want = [canonical_channel(w) for w in wanted]
    mapping = {w: found[w] for w in want if w in found}
    missing = [w for w in want if w not in found]
    return mapping, missing


def pp_config(data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The preprocessing keys of a ``data`` config (defaults filled in), in a stable form."""
    out = {k: data_cfg.get(k, DATA_DEFAULTS[k]) for k in PREPROCESS_KEYS}
    out["channels"] = [canonical_channel(c) for c in out["channels"]]
    for k in ("sfreq", "window_seconds", "crop_start_s", "crop_max_s", "scale", "clip_uv", "min_sfreq"):
        out[k] = float(out[k])
    out["car"] = bool(out["car"])
    out["fill_missing"] = bool(out["fill_missing"])
    if not out["channels"]:
        raise InputError("config", "data.channels is empty")
    if out["car"] and len(out["channels"]) < 2:
        raise InputError("config", "common average reference needs 2+ channels (set data.car=false for one channel)")
    out["resample"] = str(out["resample"])
    if out["resample"] not in ("auto", "poly", "fft"):
        raise InputError("config", f"data.resample must be auto, poly or fft (got '{out['resample']}')")
    if out["sfreq"] <= 0 or out["window_seconds"] <= 0:
        raise InputError("config", "data.sfreq and data.window_seconds must be positive")
    return out


def pp_hash(pp: Mapping[str, Any]) -> str:
    """Short hash of a preprocessing config (the cache key)."""
    text = json.dumps({"v": PREPROCESS_VERSION, **pp_config(pp)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def window_samples(pp: Mapping[str, Any]) -> int:
    """Samples per window at the target rate."""
    return int(round(float(pp["window_seconds"]) * float(pp["sfreq"])))


def read_raw(path: str | Path):
    """Open a recording lazily with MNE (EDF, BDF, EEGLAB .set, BrainVision .vhdr).

    Raises:
        InputError: missing, unknown format, unreadable / corrupt / truncated file.
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    sfx = path.suffix.lower()
    readers = {
        ".edf": mne.io.read_raw_edf,
        ".bdf": mne.io.read_raw_bdf,
        ".set": mne.io.read_raw_eeglab,
        ".vhdr": mne.io.read_raw_brainvision,
    }
    if sfx not in readers:
        raise InputError(path, f"unsupported EEG format '{sfx}' (use {', '.join(SUFFIXES)})")
    if sfx in (".edf", ".bdf"):
        _check_edf_size(path)
    try:
        raw = readers[sfx](str(path), preload=False, verbose="error")
    except InputError:
        raise
    except Exception as e:  # MNE raises many types for corrupt files; its messages may quote header bytes
        raise InputError(
            path, f"cannot read {sfx[1:].upper()} file (corrupt or unsupported header: {type(e).__name__})"
        ) from None
    if len(raw.ch_names) == 0 or raw.n_times == 0:
        raise InputError(path, "no signal channels in the file (annotations only?)")
    return raw


#: standard 10-20 / 10-10 electrode names (canonical, upper case): the only channel labels a
#: message may name; any other label is free text from the file header and is never quoted
STANDARD_ELECTRODES: frozenset[str] = frozenset(
    [
        "A1",
        "A2",
        "M1",
        "M2",
        "NZ",
        "IZ",
        "FPZ",
        "FP1",
        "FP2",
        "AFZ",
        "OZ",
        "POZ",
        "CPZ",
        "FCZ",
        "FZ",
        "CZ",
        "PZ",
        "T3",
        "T4",
        "T5",
        "T6",
        "T9",
        "T10",
        "P9",
        "P10",
        "F9",
        "F10",
        "TP9",
        "TP10",
        "FT9",
        "FT10",
    ]
    + [f"{row}{i}" for row in ("AF", "F", "FC", "C", "CP", "P", "PO", "O", "FT", "TP") for i in range(1, 9)]
)

#: per-signal fields of an EDF/BDF header: (name used in messages, width in bytes)
_EDF_SIGNAL_FIELDS = (
    ("label", 16),
    ("transducer type", 80),
    ("physical dimension", 8),
    ("physical minimum", 8),
    ("physical maximum", 8),
    ("digital minimum", 8),
    ("digital maximum", 8),
    ("prefiltering", 80),
    ("samples per record", 8),
    ("reserved", 32),
)
_EDF_MAX_SIGNALS = 4096


def safe_channel_name(label: str, index: int) -> str:
    """A channel name fit for a message: the canonical electrode name when the label is a standard
    10-20 / 10-10 electrode (``EEG Fp1-REF`` -> ``FP1``), else ``signal <index + 1>`` (never free text)."""
    c = canonical_channel(label)
    return c if c in STANDARD_ELECTRODES else f"signal {index + 1}"


def _edf_number(raw: bytes, path: Path, field: str, index: int | None = None, kind: type = float) -> float:
    """One numeric header field; a one-line error naming the field (never its bytes) when it is not a number."""
    where = f" of signal {index + 1}" if index is not None else ""
    try:
        text = raw.decode("ascii").strip()
        v = kind(text) if kind is int else float(text)
    except (UnicodeDecodeError, ValueError):
        raise InputError(path, f"EDF header field '{field}'{where} is not a number") from None
    if kind is float and not np.isfinite(v):
        raise InputError(path, f"EDF header field '{field}'{where} is not a finite number")
    return v


def edf_header(path: str | Path) -> dict[str, Any]:
    """Validate an EDF/BDF header before MNE decodes it; return the per-signal ranges.

    Checks the fixed header (signal count, header size, record count and duration), every
    signal's numeric fields and the file size the header promises.  Messages name the field,
    never its content.

    Args:
        path: the ``.edf`` / ``.bdf`` file.

    Returns:
        ``{"n_signals", "n_records", "record_s", "signals": [{"label", "physical_min",
        "physical_max", "digital_min", "digital_max", "samples_per_record"}, ...]}``.

    Raises:
        InputError: not an EDF/BDF file, unreadable field, truncated file.
    """
    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise InputError(path, "not an EDF/BDF file (shorter than its 256-byte header)")
        try:
            n_header = int(head[184:192].decode("ascii").strip())
            n_records = int(head[236:244].decode("ascii").strip())
            ns = int(head[252:256].decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise InputError(path, "not an EDF/BDF file (header fields unreadable)") from None
        if ns <= 0:
            raise InputError(path, "no signal channels in the file (annotations only?)")
        if ns > _EDF_MAX_SIGNALS:
            raise InputError(
                path, f"EDF header declares {ns} signals (more than {_EDF_MAX_SIGNALS}); not a valid recording"
            )
        if size < 256 + ns * 256:
            raise InputError(path, f"truncated file: {size} bytes, shorter than its {256 + ns * 256}-byte header")
        if n_header != 256 + ns * 256:
            raise InputError(
                path, f"EDF header field 'bytes in header' disagrees with its {ns} signals (expected {256 + ns * 256})"
            )
        if n_records < -1:
            raise InputError(path, "EDF header field 'number of data records' is negative")
        record_s = _edf_number(head[244:252], path, "duration of a data record")
        sig = f.read(ns * 256)
    fields: dict[str, list[bytes]] = {}
    off = 0
    for name, width in _EDF_SIGNAL_FIELDS:
        fields[name] = [sig[off + i * width : off + (i + 1) * width] for i in range(ns)]
        off += ns * width
    labels = [b.decode("latin-1").strip() for b in fields["label"]]
    signals = []
    for i in range(ns):
        ann = labels[i] in ("EDF Annotations", "BDF Annotations")
        spr = int(_edf_number(fields["samples per record"][i], path, "samples per record", i, int))
        if spr < 0 or (spr == 0 and not ann):
            raise InputError(path, f"EDF header field 'samples per record' of signal {i + 1} is not positive")
        vals = {
            k: _edf_number(fields[name][i], path, name, i)
            for k, name in (
                ("physical_min", "physical minimum"),
                ("physical_max", "physical maximum"),
                ("digital_min", "digital minimum"),
                ("digital_max", "digital maximum"),
            )
        }
        signals.append({"label": labels[i], "annotation": ann, "samples_per_record": spr, **vals})
    if all(s["annotation"] for s in signals):
        raise InputError(path, "no signal channels in the file (annotations only?)")
    if not record_s > 0 and n_records != 0:
        raise InputError(path, "EDF header field 'duration of a data record' is not positive")
    width = 3 if path.suffix.lower() == ".bdf" else 2
    if n_records > 0:
        expected = n_header + n_records * sum(s["samples_per_record"] for s in signals) * width
        if size < expected:
            raise InputError(path, f"truncated file: {size} bytes, header promises {expected}")
    elif n_records == 0:
        raise InputError(path, "EDF header says the file holds no data records")
    return {"n_signals": ns, "n_records": n_records, "record_s": record_s, "signals": signals}


def _check_edf_size(path: Path) -> None:
    """Refuse EDF/BDF files whose header is invalid or whose size disagrees with it (see :func:`edf_header`)."""
    edf_header(path)


def empty_range_signals(path: str | Path) -> tuple[list[int], list[str]]:
    """Data signals of an EDF/BDF whose header gives an empty range (digital min == max or physical
    min == max): their samples cannot be scaled to physical units (MNE warns and returns volts).

    Args:
        path: the ``.edf`` / ``.bdf`` file.

    Returns:
        (indices among the data signals, i.e. in MNE's channel order, of the empty-range signals;
        the labels of all data signals, for matching).
    """
    sigs = [s for s in edf_header(path)["signals"] if not s["annotation"]]
    bad = [
        i for i, s in enumerate(sigs) if s["digital_min"] == s["digital_max"] or s["physical_min"] == s["physical_max"]
    ]
    return bad, [s["label"] for s in sigs]


def header_info(path: str | Path, pp: Mapping[str, Any]) -> dict[str, Any]:
    """Cheap header-level checks for an import report (no samples read).

    Args:
        path: the recording.
        pp: preprocessing config.

    Returns:
        dict with ``ok`` (bool), ``reason``, ``sfreq``, ``duration_s``, ``n_windows``,
        ``mapped`` (canonical -> label), ``missing``.  Never raises for bad files.
    """
    pp = pp_config(pp)
    try:
        raw = read_raw(path)
    except InputError as e:
        return {
            "ok": False,
            "reason": e.problem,
            "sfreq": "",
            "duration_s": "",
            "n_windows": 0,
            "mapped": {},
            "missing": [],
        }
    mapping, missing = map_channels(raw.ch_names, pp["channels"])
    sf = float(raw.info["sfreq"])
    dur = raw.n_times / sf
    info = {
        "ok": True,
        "reason": "",
        "sfreq": sf,
        "duration_s": round(dur, 3),
        "mapped": mapping,
        "missing": missing,
        "n_windows": n_windows_for(dur, pp),
    }
    reason = _header_problem(raw, mapping, missing, pp)
    if reason:
        info.update(ok=False, reason=reason, n_windows=0)
    return info


def n_windows_for(duration_s: float, pp: Mapping[str, Any]) -> int:
    """Number of windows a recording of this length gives."""
    avail = duration_s - float(pp["crop_start_s"])
    if float(pp["crop_max_s"]) > 0:
        avail = min(avail, float(pp["crop_max_s"]))
    return max(0, int(np.floor(avail / float(pp["window_seconds"]) + 1e-9)))


def _header_problem(raw: Any, mapping: dict[str, str], missing: list[str], pp: Mapping[str, Any]) -> str:
    sf = float(raw.info["sfreq"])
    min_sf = float(pp["min_sfreq"]) or float(pp["sfreq"])
    if sf < min_sf:
        return f"sampling rate {sf:g} Hz is below the required {min_sf:g} Hz"
    if missing and not pp["fill_missing"]:
        return f"missing required channel(s): {', '.join(missing)}"
    if not mapping:
        return "none of the required channels is present"
    dur = raw.n_times / sf
    if n_windows_for(dur, pp) < 1:
        need = float(pp["crop_start_s"]) + float(pp["window_seconds"])
        return f"recording is {dur:.1f} s, shorter than one window (needs {need:g} s: skip {float(pp['crop_start_s']):g} s + one {float(pp['window_seconds']):g} s window)"
    return ""


def preprocess_recording(
    path: str | Path, pp: Mapping[str, Any], gates: bool | Mapping[str, Any] = False
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the recipe on one recording.

    Args:
        path: EDF / BDF / .set / .vhdr file.
        pp: preprocessing config (``data`` section keys).
        gates: also run the plausibility gates (True, or a mapping of limit overrides from the
            bundle's ``gates``): amplitude, flat / saturated channels on the raw signal in
            microvolts (before scaling and clipping), and EDF/BDF channels whose header range is
            empty.  Their reasons go to ``info["reasons"]``.

    Returns:
        (windows float32 of shape (n_windows, n_channels, window_samples), info dict with
        ``orig_sfreq``, ``duration_s``, ``mapped``, ``filled`` and ``reasons`` (gate reasons,
        empty without ``gates``)).

    Raises:
        InputError: unreadable file, missing channels, too low a rate, too short, NaN, flat channels.
    """
    pp = pp_config(pp)
    path = Path(path)
    raw = read_raw(path)
    mapping, missing = map_channels(raw.ch_names, pp["channels"])
    problem = _header_problem(raw, mapping, missing, pp)
    if problem:
        raise InputError(path, problem)
    sf = float(raw.info["sfreq"])
    start = int(round(float(pp["crop_start_s"]) * sf))
    stop = raw.n_times
    if float(pp["crop_max_s"]) > 0:
        stop = min(stop, start + int(round(float(pp["crop_max_s"]) * sf)))
    picks = [raw.ch_names.index(mapping[c]) for c in pp["channels"] if c in mapping]
    try:
        x = raw.get_data(picks=picks, start=start, stop=stop)
    except Exception as e:  # never quote the library's message (it may carry file content)
        raise InputError(path, f"cannot read samples (corrupt data records: {type(e).__name__})") from None
    present_names = [c for c in pp["channels"] if c in mapping]
    if not np.all(np.isfinite(x)):
        bad = [present_names[i] for i in range(x.shape[0]) if not np.all(np.isfinite(x[i]))]
        raise InputError(path, f"NaN/inf samples in channel(s): {', '.join(bad)}")
    flat = [c for c, row in zip(present_names, x) if np.ptp(row) == 0]
    if flat:
        raise InputError(path, f"flat channel(s) (constant signal): {', '.join(flat)}")
    reasons = (
        gate_reasons(path, x, present_names, picks, list(raw.ch_names), None if isinstance(gates, bool) else gates)
        if gates
        else []
    )
    x = x * float(pp["scale"])
    if float(pp["clip_uv"]) > 0:
        np.clip(x, -float(pp["clip_uv"]), float(pp["clip_uv"]), out=x)
    if abs(sf - float(pp["sfreq"])) > 1e-6:
        x = resample_signal(x, sf, float(pp["sfreq"]), pp["resample"])
    if missing:  # only reached with fill_missing: zero rows for missing channels, in config order
        full = np.zeros((len(pp["channels"]), x.shape[1]), dtype=x.dtype)
        rows = iter(x)
        for i, c in enumerate(pp["channels"]):
            if c in mapping:
                full[i] = next(rows)
        x = full
    if pp["car"]:
        present = [i for i, c in enumerate(pp["channels"]) if c in mapping]
        x[present] -= x[present].mean(axis=0, keepdims=True)
    w = window_samples(pp)
    n = x.shape[1] // w
    if n < 1:
        raise InputError(path, "recording is shorter than one window after cropping")
    win = x[:, : n * w].reshape(x.shape[0], n, w).transpose(1, 0, 2).astype(np.float32)
    info = {
        "orig_sfreq": sf,
        "duration_s": round(raw.n_times / sf, 3),
        "mapped": mapping,
        "filled": missing,
        "reasons": reasons,
    }
    return np.ascontiguousarray(win), info


def gate_reasons(
    path: str | Path,
    x_volts: np.ndarray,
    names: list[str],
    picks: list[int],
    ch_names: list[str],
    overrides: Mapping[str, Any] | None = None,
) -> list[str]:
    """Plausibility reasons for the picked channels of one recording (see ``shared.runtime.gates``).

    Args:
        path: the recording (EDF/BDF headers are checked for empty-range channels).
        x_volts: picked channels x samples as MNE returns them (volts), before scaling / clipping.
        names: canonical channel names of the rows (from the recipe, never header text).
        picks: the rows' indices in ``ch_names``.
        ch_names: MNE's channel names of the file (to match the EDF header's signals).
        overrides: limit overrides (the bundle's ``gates``).

    Returns:
        Reasons (empty when plausible).

    Raises:
        InputError: NaN / inf samples.
    """
    from medtransfer.shared.runtime.gates import eeg_reasons

    path = Path(path)
    finite = np.isfinite(x_volts)
    if not finite.all():
        raise InputError(path, f"{int((~finite).sum())} NaN/inf samples")
    reasons = []
    if path.suffix.lower() in (".edf", ".bdf"):
        bad, labels = empty_range_signals(path)
        if len(labels) == len(ch_names):  # MNE keeps the data signals in file order
            bad_rows = [r for r, k in enumerate(picks) if k in bad]
        else:  # fall back to matching labels
            bad_labels = {labels[i] for i in bad}
            bad_rows = [r for r, k in enumerate(picks) if ch_names[k] in bad_labels]
        empty = [names[r] if names[r] in STANDARD_ELECTRODES else f"channel {r + 1}" for r in bad_rows]
        if empty:
            reasons.append(
                f"{len(empty)} channel(s) with an empty range in the EDF header (digital or physical "
                f"min == max; samples cannot be scaled): {', '.join(empty[:8])}"
            )
    # MNE returns volts; the documented ranges are in microvolts
    reasons += eeg_reasons(np.asarray(x_volts, dtype=np.float64) * 1e6, names, overrides)
    return reasons


def resample_signal(x: np.ndarray, sf_in: float, sf_out: float, method: str = "auto") -> np.ndarray:
    """Resample channels x samples from ``sf_in`` to ``sf_out``.

    ``poly``: MNE's polyphase method (scipy's Kaiser-windowed FIR anti-aliasing), used by ``auto`` when
    the rate ratio reduces to a fraction with terms <= 64 (250->100 is 2/5, 200->100 is 1/2);
    ``fft``: MNE's FFT resampling (what ``raw.resample`` / braindecode do), used otherwise.

    Args:
        x: channels x samples.
        sf_in: input rate.
        sf_out: output rate.
        method: ``auto``, ``poly`` or ``fft``.

    Returns:
        The resampled array (float64).
    """
    from fractions import Fraction

    frac = Fraction(sf_out / sf_in).limit_denominator(1000)
    exact = abs(float(frac) - sf_out / sf_in) < 1e-9
    small = frac.numerator <= 64 and frac.denominator <= 64
    from mne.filter import resample

    if method == "poly" or (method == "auto" and exact and small):
        return resample(x, up=frac.numerator, down=frac.denominator, method="polyphase", verbose="error")
    return resample(x, up=sf_out, down=sf_in, npad="auto", verbose="error")


def warm_imports() -> None:
    """Import the lazily loaded readers / filters once (before forking workers or timing)."""
    import mne.filter  # noqa: F401
    import mne.io  # noqa: F401
    import scipy.signal  # noqa: F401

    for method in ("poly", "fft"):  # first calls build filters / FFT plans lazily
        resample_signal(np.zeros((1, 500)), 250.0, 100.0, method)
