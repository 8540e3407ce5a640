"""Reading EEG recordings and the paper's preprocessing (torch-free).

EDF files are read once (header and samples from one buffer) and decoded with edfio; the recipe
runs vectorised over channels and windows, resampling with a numpy polyphase filter identical to
MNE's / SciPy's (so neither is imported on the predict path).  BDF / EEGLAB / BrainVision files and
EDF files that only MNE decodes (mixed rates on the picked channels, duplicate labels, empty
ranges) go through MNE, the previous path (``engine="mne"`` forces it); both give the same windows.

Recipe (Darvishi-Bayazi et al. 2024, all keys of the ``data`` config section):
pick the configured channels (names mapped from ``EEG XX-REF`` / ``-LE`` / ``-Ref`` and the
10-10 names T7/T8/P7/P8 -> T3/T4/T5/T6), skip the first ``crop_start_s`` seconds and keep up to
``crop_max_s`` seconds, volts -> microvolts (``scale``), clip at +-``clip_uv``, resample to
``sfreq``, common average reference (``car``), cut non-overlapping ``window_seconds`` windows.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import warnings
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.imports import module_available

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
    "engine": "local",  # local (processes) | ray (actors, medtransfer[distributed]): shared.runtime.engines
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
    if isinstance(out["channels"], str) or not isinstance(out["channels"], (list, tuple)):
        raise InputError("config", "data.channels must be a list of channel names")
    out["channels"] = [canonical_channel(c) for c in out["channels"]]
    for k in ("sfreq", "window_seconds", "crop_start_s", "crop_max_s", "scale", "clip_uv", "min_sfreq"):
        try:
            out[k] = float(out[k])
        except (TypeError, ValueError):
            raise InputError("config", f"data.{k} must be a number (got {str(out[k])[:20]!r})") from None
        if not math.isfinite(out[k]) or out[k] < 0:
            raise InputError("config", f"data.{k} must be a finite number >= 0 (got {out[k]})")
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


#: the readers of this app: import name -> (distribution, extra that installs it)
READERS = {"edfio": ("edfio", "eeg"), "mne": ("mne", "eeg-mne")}


def missing_reader(module: str, path: str | Path | None = None) -> MedTransferError:
    """The one-line error for a reader package that is not installed (names the extra to install)."""
    dist, extra = READERS.get(module, (module, "eeg"))
    problem = f"reading this file needs the '{dist}' package, which is not installed: install medtransfer[{extra}]"
    if path is not None:
        return InputError(path, problem)
    return MedTransferError(
        f"the eeg app needs the '{dist}' package, which is not installed: install medtransfer[{extra}]"
    )


def require_readers(modules: tuple[str, ...] = ("edfio",)) -> None:
    """Refuse (one line naming ``medtransfer[eeg]``) when a reader package is missing; imports nothing.

    Raises:
        MedTransferError: a reader is not installed.
    """
    for m in modules:
        if not module_available(m):
            raise missing_reader(m)


def not_a_file(path: Path) -> str:
    """Why ``path`` (not a file) cannot be read: a folder, or nothing there."""
    return "is a folder, expected a file" if path.is_dir() else "file not found"


def read_raw(path: str | Path):
    """Open a recording lazily with MNE (EDF, BDF, EEGLAB .set, BrainVision .vhdr).

    Raises:
        InputError: missing, unknown format, unreadable / corrupt / truncated file, MNE not installed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, not_a_file(path))
    try:
        import mne
    except ImportError:
        raise missing_reader("mne", path) from None
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
        with warnings.catch_warnings():  # numpy's overflow warnings on absurd header ranges: the
            warnings.simplefilter("ignore")  # outcome is checked below and by the gates, not printed
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


def edf_header(path: str | Path, data: bytes | memoryview | None = None) -> dict[str, Any]:
    """Validate an EDF/BDF header before its samples are decoded; return the per-signal ranges.

    Checks the fixed header (signal count, header size, record count and duration), every
    signal's numeric fields and the file size the header promises.  Messages name the field,
    never its content.

    Args:
        path: the ``.edf`` / ``.bdf`` file (named in messages; read when ``data`` is None).
        data: the whole file's bytes when already read (one read per recording).

    Returns:
        ``{"n_signals", "n_header", "n_records", "record_s", "sample_bytes", "record_bytes", "continuity",
        "signals": [{"label", "unit", "physical_min", "physical_max", "digital_min", "digital_max",
        "samples_per_record"}, ...]}`` (``unit`` is the physical dimension: for scaling only, never for
        messages; ``continuity`` the reserved field's ``EDF+C`` / ``EDF+D`` / ``BDF+D``, else "").

    Raises:
        InputError: not an EDF/BDF file, unreadable field, truncated file.
    """
    import io

    path = Path(path)
    size = len(data) if data is not None else path.stat().st_size
    with io.BytesIO(data) if data is not None else open(path, "rb") as f:
        head = f.read(256)
        if len(head) < 256:
            raise InputError(path, "not an EDF/BDF file (shorter than its 256-byte header)")
        bdf, sfx = head[:8] == b"\xffBIOSEMI", path.suffix.lower()
        if sfx in (".edf", ".bdf") and bdf != (sfx == ".bdf"):  # 24- vs 16-bit samples: decoded wrongly
            kind, right = ("a BDF (24-bit)", ".bdf") if bdf else ("an EDF (16-bit)", ".edf")
            raise InputError(path, f"{kind} file named {sfx}: rename it {right}")
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
    units = [b.strip().decode("latin-1") for b in fields["physical dimension"]]
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
        signals.append({"label": labels[i], "unit": units[i], "annotation": ann, "samples_per_record": spr, **vals})
    if all(s["annotation"] for s in signals):
        raise InputError(path, "no signal channels in the file (annotations only?)")
    if not record_s > 0 and n_records != 0:
        raise InputError(path, "EDF header field 'duration of a data record' is not positive")
    width = 3 if path.suffix.lower() == ".bdf" else 2
    record_bytes = sum(s["samples_per_record"] for s in signals) * width
    if n_records > 0:
        expected = n_header + n_records * record_bytes
        if size < expected:
            raise InputError(path, f"truncated file: {size} bytes, header promises {expected}")
    elif n_records == 0:
        raise InputError(path, "EDF header says the file holds no data records")
    return {
        "n_signals": ns,
        "n_header": n_header,
        "n_records": n_records,
        "record_s": record_s,
        "sample_bytes": width,
        "record_bytes": record_bytes,
        "continuity": head[192:236].decode("ascii", "replace").strip().upper()[:5],  # EDF+C / EDF+D / ""
        "signals": signals,
    }


def _check_edf_size(path: Path) -> None:
    """Refuse EDF/BDF files whose header is invalid or whose size disagrees with it (see :func:`edf_header`)."""
    edf_header(path)


def empty_range_signals(path: str | Path, header: Mapping[str, Any] | None = None) -> tuple[list[int], list[str]]:
    """Data signals of an EDF/BDF whose header gives an empty range (digital min == max or physical
    min == max): their samples cannot be scaled to physical units (MNE warns and returns volts).

    Args:
        path: the ``.edf`` / ``.bdf`` file.
        header: its :func:`edf_header` when already read (else the header is read again).

    Returns:
        (indices among the data signals, i.e. in MNE's channel order, of the empty-range signals;
        the labels of all data signals, for matching).
    """
    sigs = [s for s in (header or edf_header(path))["signals"] if not s["annotation"]]
    bad = [
        i for i, s in enumerate(sigs) if s["digital_min"] == s["digital_max"] or s["physical_min"] == s["physical_max"]
    ]
    return bad, [s["label"] for s in sigs]


def edf_gap_seconds(path: str | Path, header: Mapping[str, Any] | None = None) -> float:
    """Seconds of gaps between the data records of an interrupted (EDF+D / BDF+D) recording, from the
    onset each record's annotation signal states (its first time-keeping TAL, ``+onset\\x14\\x14``);
    0 for a continuous file.  (Nihon Kohden writes EDF+D without gaps: the header alone says nothing.)

    Args:
        path: the ``.edf`` / ``.bdf`` file.
        header: its :func:`edf_header` when already read.

    Returns:
        The summed gaps (0 when the file is continuous, not EDF+D, or its onsets cannot be read).
    """
    path = Path(path)
    h = header or edf_header(path)
    if h["continuity"] not in ("EDF+D", "BDF+D"):
        return 0.0
    sigs = h["signals"]
    ann = next((i for i, s in enumerate(sigs) if s["annotation"]), None)
    n, dur = int(h["n_records"]), float(h["record_s"])
    if ann is None or n <= 1 or dur <= 0:
        return 0.0
    width, rec = int(h["sample_bytes"]), int(h["record_bytes"])
    before, size = sum(s["samples_per_record"] for s in sigs[:ann]) * width, sigs[ann]["samples_per_record"] * width
    onsets = []
    with open(path, "rb") as f:
        for r in range(n):
            f.seek(int(h["n_header"]) + r * rec + before)
            tal = f.read(size).split(b"\x14", 1)[0]
            try:
                onsets.append(float(tal.decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                return 0.0  # not the time-keeping TAL this check reads: say nothing
    steps = np.diff(np.asarray(onsets))
    return float(np.clip(steps - dur, 0.0, None).sum())


# ---------------------------------------------------------------------------------------------
# one read per EDF recording (header + samples from one buffer, edfio decodes; MNE only as fallback)
# ---------------------------------------------------------------------------------------------
#: EDF files up to this size are read in one call and decoded from memory; larger ones are memory-mapped
READ_ALL_MAX_BYTES = 256 * 1024 * 1024

#: physical dimensions MNE reads as microvolts / millivolts (anything else: volts)
_MICROVOLT = ("\u03bcV", "\u00b5V", "\x83\xcaV", "uV")


def read_edf_bytes(path: str | Path) -> bytes | None:
    """The whole file in one read (None for files above :data:`READ_ALL_MAX_BYTES`, which are memory-mapped).

    Used to prefetch the next recording on a thread while the current one is being processed.
    """
    path = Path(path)
    try:
        if path.stat().st_size > READ_ALL_MAX_BYTES:
            return None
        return path.read_bytes()
    except OSError:
        return None  # the reader reports the problem with the file's name


def edf_layout(header: Mapping[str, Any]) -> tuple[list[str], float, int, list[int]] | None:
    """(data-signal labels, sampling rate, samples per signal at that rate, samples per record of each
    data signal) exactly as MNE reports them, or None when only MNE should decode the file
    (duplicate labels, stim channels, unknown record count).

    Args:
        header: from :func:`edf_header`.
    """
    sigs = [s for s in header["signals"] if not s["annotation"]]
    labels = [s["label"] for s in sigs]
    spr = [int(s["samples_per_record"]) for s in sigs]
    if (
        int(header["n_records"]) <= 0
        or len(set(labels)) != len(labels)
        or any(lb.lower() in ("status", "trigger") for lb in labels)  # MNE's stim channels
    ):
        return None
    top = max(spr)
    return labels, top * 1.0 / float(header["record_s"]), int(header["n_records"]) * top, spr


def _crop(sf: float, n_times: int, pp: Mapping[str, Any]) -> tuple[int, int]:
    start = int(round(float(pp["crop_start_s"]) * sf))
    stop = n_times
    if float(pp["crop_max_s"]) > 0:
        stop = min(stop, start + int(round(float(pp["crop_max_s"]) * sf)))
    return start, stop


def _load_edf(
    path: Path, pp: Mapping[str, Any], data: bytes | None, scale: float = 1.0, clip: float = 0.0
) -> dict[str, Any] | None:
    """The picked, cropped channels of an EDF in volts (times ``scale``, clipped at +-``clip`` when
    given: one in-cache pass per channel) from one read; None when MNE must decode it.

    Raises:
        InputError: invalid header or a recording the recipe refuses (same messages as the MNE path).
    """
    if data is None:
        data = read_edf_bytes(path)
    hdr = edf_header(path, data)
    lay = edf_layout(hdr)
    if lay is None:
        return None
    labels, sf, n_times, spr = lay
    mapping, missing = map_channels(labels, pp["channels"])
    problem = recipe_problem(sf, n_times, mapping, missing, pp)
    if problem:
        raise InputError(path, problem)
    start, stop = _crop(sf, n_times, pp)
    picks = [labels.index(mapping[c]) for c in pp["channels"] if c in mapping]
    if any(spr[k] != max(spr) for k in picks):
        return None  # MNE upsamples slower channels to the file's top rate
    sigs = [s for s in hdr["signals"] if not s["annotation"]]
    p = [sigs[k] for k in picks]
    pmin, pmax = np.array([s["physical_min"] for s in p]), np.array([s["physical_max"] for s in p])
    dmin, dmax = np.array([s["digital_min"] for s in p]), np.array([s["digital_max"] for s in p])
    if np.any(pmax == pmin) or np.any(dmax == dmin):
        return None  # MNE's substitutions for an empty range apply
    unit = np.array([1e-6 if s["unit"] in _MICROVOLT else 1e-3 if s["unit"] == "mV" else 1.0 for s in p])
    with np.errstate(all="ignore"):
        cal = (pmax - pmin) / (dmax - dmin)
        off = pmin - dmin * cal
        bound = (32768.0 * np.abs(cal) + np.abs(off)) * unit
    if not np.all(np.isfinite(bound)):
        return None  # MNE's path reports the non-finite samples
    gain, shift = cal * unit * scale, off * unit * scale
    try:
        import edfio
    except ImportError:
        raise missing_reader("edfio", path) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # lazy: nothing decoded yet; bytes (not a memoryview) so edfio's header reader shares the buffer
            edf = edfio.read_edf(data if data is not None else path)
            signals = edf.signals
            if len(signals) != len(labels):
                return None
            x = np.empty((len(picks), stop - start), dtype=np.float64)
            flat = np.zeros(len(picks), dtype=bool)
            for r, k in enumerate(picks):
                dig = signals[k].get_digital_slice(start / sf, stop / sf)
                if len(dig) != stop - start:
                    dig = signals[k].digital[start:stop]
                flat[r] = len(dig) > 0 and dig.min() == dig.max()  # same test as on volts: cal != 0
                np.multiply(dig, gain[r], out=x[r])  # (digital * cal + offset) * unit * scale, as MNE
                x[r] += shift[r]
                if clip > 0:
                    np.clip(x[r], -clip, clip, out=x[r])
    except Exception:  # noqa: BLE001 - anything edfio refuses goes through MNE, whose errors we map to one line
        return None
    return {
        "x": x,
        "sf": sf,
        "n_times": n_times,
        "ch_names": labels,
        "mapping": mapping,
        "missing": missing,
        "picks": picks,
        "header": hdr,
        "finite": True,  # integers times finite factors
        "flat": flat,
        "scaled": (scale, clip),
    }


def _load_mne(path: Path, pp: Mapping[str, Any]) -> dict[str, Any]:
    """The previous path: MNE opens the file lazily and reads the picked, cropped channels (volts)."""
    raw = read_raw(path)
    mapping, missing = map_channels(raw.ch_names, pp["channels"])
    problem = _header_problem(raw, mapping, missing, pp)
    if problem:
        raise InputError(path, problem)
    sf = float(raw.info["sfreq"])
    start, stop = _crop(sf, raw.n_times, pp)
    picks = [raw.ch_names.index(mapping[c]) for c in pp["channels"] if c in mapping]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            x = raw.get_data(picks=picks, start=start, stop=stop)
    except Exception as e:  # never quote the library's message (it may carry file content)
        raise InputError(path, f"cannot read samples (corrupt data records: {type(e).__name__})") from None
    return {
        "x": x,
        "sf": sf,
        "n_times": int(raw.n_times),
        "ch_names": list(raw.ch_names),
        "mapping": mapping,
        "missing": missing,
        "picks": picks,
        "header": None,
        "finite": False,
        "flat": None,
        "scaled": (1.0, 0.0),
    }


def load_recording(
    path: str | Path,
    pp: Mapping[str, Any],
    data: bytes | None = None,
    engine: str = "auto",
    scaled: bool = False,
) -> dict[str, Any]:
    """Read the recipe's channels of one recording (cropped, volts) with the recording's facts.

    Args:
        path: EDF / BDF / .set / .vhdr file.
        pp: preprocessing config.
        data: the file's bytes when already read (a prefetch).
        engine: ``auto`` (EDF through edfio from one read, MNE for the rest and for EDF files MNE
            must decode: mixed rates, duplicate labels, empty ranges) or ``mne`` (always MNE).
        scaled: the edfio path may return the samples already times ``scale`` and clipped
            (``scaled`` in the result says what was applied: (scale, clip)).

    Returns:
        ``x`` (picked channels x cropped samples, float64 volts), ``sf``, ``n_times``, ``ch_names``,
        ``mapping``, ``missing``, ``picks`` (rows' indices in ``ch_names``), ``header`` (EDF header
        when read by edfio), ``finite`` (samples known finite), ``flat`` (per row, when known) and
        ``scaled`` ((scale, clip) already applied).
    """
    pp = pp_config(pp)
    path = Path(path)
    if not path.is_file():
        raise InputError(path, not_a_file(path))
    if engine == "auto" and path.suffix.lower() == ".edf":
        sc = (float(pp["scale"]), float(pp["clip_uv"])) if scaled else (1.0, 0.0)
        got = _load_edf(path, pp, data, *sc)
        if got is not None:
            return got
    return _load_mne(path, pp)


def header_info(path: str | Path, pp: Mapping[str, Any]) -> dict[str, Any]:
    """Cheap header-level checks for an import report (no samples read; EDF/BDF headers parsed
    directly, other formats through MNE).

    Args:
        path: the recording.
        pp: preprocessing config.

    Returns:
        dict with ``ok`` (bool), ``reason``, ``sfreq``, ``duration_s``, ``n_windows``,
        ``mapped`` (canonical -> label), ``missing``.  Never raises for bad files.
    """
    pp = pp_config(pp)
    path = Path(path)
    try:
        lay = None
        if path.suffix.lower() in (".edf", ".bdf") and path.is_file():
            lay = edf_layout(edf_header(path))
        if lay is not None:
            ch_names, sf, n_times, _ = lay
        else:
            raw = read_raw(path)
            ch_names, sf, n_times = list(raw.ch_names), float(raw.info["sfreq"]), int(raw.n_times)
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
    mapping, missing = map_channels(ch_names, pp["channels"])
    dur = n_times / sf
    info = {
        "ok": True,
        "reason": "",
        "sfreq": sf,
        "duration_s": round(dur, 3),
        "mapped": mapping,
        "missing": missing,
        "n_windows": n_windows_for(dur, pp),
    }
    reason = recipe_problem(sf, n_times, mapping, missing, pp)
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
    return recipe_problem(float(raw.info["sfreq"]), int(raw.n_times), mapping, missing, pp)


def recipe_problem(sf: float, n_times: int, mapping: dict[str, str], missing: list[str], pp: Mapping[str, Any]) -> str:
    """Why the recipe refuses a recording from its header facts ("" when it does not)."""
    min_sf = float(pp["min_sfreq"]) or float(pp["sfreq"])
    if sf < min_sf:
        return f"sampling rate {sf:g} Hz is below the required {min_sf:g} Hz"
    if missing and not pp["fill_missing"]:
        return f"missing required channel(s): {', '.join(missing)}"
    if not mapping:
        return "none of the required channels is present"
    dur = n_times / sf
    if n_windows_for(dur, pp) < 1:
        need = float(pp["crop_start_s"]) + float(pp["window_seconds"])
        return f"recording is {dur:.1f} s, shorter than one window (needs {need:g} s: skip {float(pp['crop_start_s']):g} s + one {float(pp['window_seconds']):g} s window)"
    return ""


def preprocess_recording(
    path: str | Path,
    pp: Mapping[str, Any],
    gates: bool | Mapping[str, Any] = False,
    data: bytes | None = None,
    engine: str = "auto",
    transform: Callable[..., np.ndarray] | None = None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Run the recipe on one recording (one read; vectorised over channels and windows).

    Args:
        path: EDF / BDF / .set / .vhdr file.
        pp: preprocessing config (``data`` section keys).
        gates: also run the plausibility gates (True, or a mapping of limit overrides from the
            bundle's ``gates``): amplitude, flat / saturated channels on the raw signal in
            microvolts (before scaling and clipping), and EDF/BDF channels whose header range is
            empty.  Their reasons go to ``info["reasons"]``.
        data: the file's bytes when already read (prefetch; EDF only).
        engine: ``auto`` or ``mne`` (see :func:`load_recording`).
        transform: ``fn(x_uv, sfreq=Hz) -> x_uv`` applied to the cropped recording (channels x samples,
            µV, its own rate) before the checks (``medtransfer audit``'s perturbations).

    Returns:
        (windows float32 of shape (n_windows, n_channels, window_samples), info dict with
        ``orig_sfreq``, ``duration_s``, ``mapped``, ``filled`` and ``reasons`` (gate reasons,
        empty without ``gates``)).

    Raises:
        InputError: unreadable file, missing channels, too low a rate, too short, NaN, constant
            (flat) channels without ``gates`` (with them, a reason).
    """
    pp = pp_config(pp)
    path = Path(path)
    # without gates / transform the volts are not needed: scale and clip fused into the read
    fused = not gates and transform is None
    rec = load_recording(path, pp, data=data, engine=engine, scaled=fused)
    x, sf, mapping, missing = rec["x"], rec["sf"], rec["mapping"], rec["missing"]
    if transform is not None:
        x = np.asarray(transform(x * 1e6, sfreq=sf), dtype=np.float64) * 1e-6
        rec["finite"], rec["flat"] = False, None
    present_names = [c for c in pp["channels"] if c in mapping]
    if not rec["finite"] and not np.all(np.isfinite(x)):
        bad = [present_names[i] for i in range(x.shape[0]) if not np.all(np.isfinite(x[i]))]
        raise InputError(path, f"NaN/inf samples in channel(s): {', '.join(bad)}")
    if not gates:  # training: a dead electrode's recording is left out; predict: the gates below
        # name it and the answer is marked unreliable (one dead electrode of 21 was an error)
        is_flat = rec["flat"] if rec["flat"] is not None else np.ptp(x, axis=1) == 0
        flat = [c for c, f in zip(present_names, is_flat) if f]
        if flat:
            raise InputError(path, f"flat channel(s) (constant signal): {', '.join(flat)}")
    reasons = (
        gate_reasons(
            path,
            x,
            present_names,
            rec["picks"],
            rec["ch_names"],
            None if isinstance(gates, bool) else gates,
            header=rec["header"],
        )
        if gates
        else []
    )
    done_scale, done_clip = rec["scaled"]
    if done_scale != float(pp["scale"]):
        x *= float(pp["scale"])  # x is this function's own array (a fresh read)
    if float(pp["clip_uv"]) > 0 and done_clip != float(pp["clip_uv"]):
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
    w = window_samples(pp)
    n = x.shape[1] // w
    if n < 1:
        raise InputError(path, "recording is shorter than one window after cropping")
    win = np.empty((n, x.shape[0], w), dtype=np.float32)
    cut = x[:, : n * w].reshape(x.shape[0], n, w).transpose(1, 0, 2)  # a view: windows x channels x samples
    if pp["car"] and not missing:  # reference, window and cast in one pass
        np.subtract(cut, x.mean(axis=0)[: n * w].reshape(n, 1, w), out=win, casting="same_kind")
    else:
        if pp["car"]:
            present = [i for i, c in enumerate(pp["channels"]) if c in mapping]
            x[present] -= x[present].mean(axis=0, keepdims=True)
        win[...] = cut
    info = {
        "orig_sfreq": sf,
        "duration_s": round(rec["n_times"] / sf, 3),
        "mapped": mapping,
        "filled": missing,
        "reasons": reasons,
    }
    return win, info


def gate_reasons(
    path: str | Path,
    x_volts: np.ndarray,
    names: list[str],
    picks: list[int],
    ch_names: list[str],
    overrides: Mapping[str, Any] | None = None,
    header: Mapping[str, Any] | None = None,
) -> list[str]:
    """Plausibility reasons for the picked channels of one recording (see ``shared.runtime.gates``).

    Args:
        path: the recording (EDF/BDF headers are checked for empty-range channels).
        x_volts: picked channels x samples as MNE returns them (volts), before scaling / clipping.
        names: canonical channel names of the rows (from the recipe, never header text).
        picks: the rows' indices in ``ch_names``.
        ch_names: MNE's channel names of the file (to match the EDF header's signals).
        overrides: limit overrides (the bundle's ``gates``).
        header: the file's :func:`edf_header` when already read.

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
        bad, labels = empty_range_signals(path, header)
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
        gap = edf_gap_seconds(path, header)
        if gap > 0:
            reasons.append(f"an interrupted (EDF+D) recording: {gap:.1f} s of gaps joined; windows may span them")
    # MNE returns volts; the documented ranges are in microvolts
    reasons += eeg_reasons(np.asarray(x_volts, dtype=np.float64) * 1e6, names, overrides)
    return reasons


def firwin_lowpass(numtaps: int, cutoff: float) -> np.ndarray:
    """Kaiser-windowed (beta 5) linear-phase low-pass FIR, unit DC gain: ``scipy.signal.firwin(numtaps,
    cutoff, window=("kaiser", 5.0))`` (the filter MNE's and SciPy's polyphase resampling design),
    in numpy alone so the torch-free predict path does not import SciPy's signal package (seconds).

    Args:
        numtaps: filter length (odd).
        cutoff: cutoff relative to Nyquist (0..1).
    """
    m = np.arange(numtaps) - 0.5 * (numtaps - 1)
    h = cutoff * np.sinc(cutoff * m)
    h *= np.kaiser(numtaps, 5.0)
    return h / h.sum()


@functools.lru_cache(maxsize=16)
def _poly_plan(up: int, down: int) -> tuple[np.ndarray, np.ndarray, int, int, int, int, int]:
    """The polyphase filter of ``resample_poly(up, down)`` as two block-Toeplitz matrices.

    The input is cut in blocks of ``down`` samples and the output in blocks of ``up``; output block
    ``J`` needs input blocks ``J + s .. J + s + n_a - 1``.  Grouping ``r = n_a`` blocks per row, a
    row of output blocks is ``row_i @ t0 + row_(i+1) @ t1``: two plain matrix products (BLAS), no
    gathered copies.

    Returns:
        (t0, t1, r, s, a_min, off, h_len): ``t0``/``t1`` of shape (r*down, r*up).
    """
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin_lowpass(2 * half_len + 1, 1.0 / max_rate) * up
    n_pre_pad = down - half_len % down
    n_pre_remove = (half_len + n_pre_pad) // down
    h = np.concatenate([np.zeros(n_pre_pad), h])  # SciPy's post-pad zeros change nothing here
    lh = len(h)
    # y[o] = sum_n xe[n] * h[(o + n_pre_remove) * down - n * up], xe = x reflected beyond its ends;
    # o = J*up + p, n = B*down + b, B = J - a  ->  h index c0 + p*down - b*up + a*up*down
    u, c0 = up * down, n_pre_remove * down
    p_idx, b_idx = np.arange(up)[None, :], np.arange(down)[:, None]
    gs: dict[int, np.ndarray] = {}
    for a in range((-c0 - (up - 1) * down) // u - 1, (lh - 1 - c0 + (down - 1) * up) // u + 2):
        idx = c0 + p_idx * down - b_idx * up + a * u
        g = np.where((idx >= 0) & (idx < lh), h[np.clip(idx, 0, lh - 1)], 0.0)
        if np.any(g):
            gs[a] = g
    a_min, a_max = min(gs), max(gs)
    r = a_max - a_min + 1
    off = max(0, a_max)
    t = np.zeros((2, r, down, r, up))
    for m in range(r):
        for j in range(r):
            for which, k in ((0, m - j), (1, m + r - j)):
                if 0 <= k < r and (a_max - k) in gs:
                    t[which, m, :, j, :] = gs[a_max - k]
    return t[0].reshape(r * down, r * up), t[1].reshape(r * down, r * up), r, off - a_max, a_min, off, lh


#: OpenBLAS runs a matrix product on one thread below m*n*k = 65536 * 4
_BLAS_ONE_THREAD_MNK = 200_000


def _resample_poly_reflect(x: np.ndarray, up: int, down: int) -> np.ndarray:
    """``scipy.signal.resample_poly(x, up, down, axis=-1, window=firwin(...), padtype="reflect")`` as MNE's
    polyphase method calls it, as two batched matrix products per call (see :func:`_poly_plan`).

    Args:
        x: channels x samples (float64).
        up: reduced up factor.
        down: reduced down factor.

    Returns:
        channels x ``ceil(n * up / down)`` samples.

    Raises:
        ValueError: a signal shorter than the filter's reach (callers fall back to MNE).
    """
    c, n_in = x.shape
    t0, t1, r, s, a_min, off, _ = _poly_plan(up, down)
    n_out = n_in * up // down + bool(n_in * up % down)
    n_blocks = -(-n_out // up)
    n_rows = -(-n_blocks // r)
    pad_l = off * down
    pad_r = max(0, (n_blocks - a_min + off) * down - pad_l - n_in)
    if pad_l >= n_in or pad_r >= n_in:
        raise ValueError("signal shorter than the filter")
    width = max((s + (n_rows + 1) * r) * down, pad_l + n_in + pad_r)
    xe = np.empty((c, width))  # x with reflected ends (numpy's "reflect": the edge sample not repeated)
    xe[:, :pad_l] = x[:, pad_l:0:-1]
    xe[:, pad_l : pad_l + n_in] = x
    xe[:, pad_l + n_in : pad_l + n_in + pad_r] = x[:, n_in - 2 - np.arange(pad_r)]
    xe[:, pad_l + n_in + pad_r :] = 0.0
    rows = xe[:, s * down : s * down + (n_rows + 1) * r * down].reshape(c, n_rows + 1, r * down)
    y = np.empty((c, n_rows, r * up))
    # products small enough that BLAS stays on this thread (a threaded BLAS on a busy machine, or
    # inside worker processes, is many times slower than one thread for these shapes)
    step = max(1, _BLAS_ONE_THREAD_MNK // (t0.shape[0] * t0.shape[1]))
    for i in range(0, n_rows, step):
        j = min(n_rows, i + step)
        np.matmul(rows[:, i:j], t0, out=y[:, i:j])
        y[:, i:j] += rows[:, i + 1 : j + 1] @ t1
    return y.reshape(c, n_rows * r * up)[:, :n_out]


def resample_signal(x: np.ndarray, sf_in: float, sf_out: float, method: str = "auto") -> np.ndarray:
    """Resample channels x samples from ``sf_in`` to ``sf_out``.

    ``poly``: MNE's polyphase method (Kaiser-windowed FIR anti-aliasing, reflected edges), used by
    ``auto`` when the rate ratio reduces to a fraction with terms <= 64 (250->100 is 2/5, 200->100 is
    1/2); computed here with numpy (same result as MNE within float rounding) unless MNE's own
    length-derived factors are large, where MNE runs it; ``fft``: MNE's FFT resampling (what
    ``raw.resample`` / braindecode do), used otherwise.

    Args:
        x: channels x samples.
        sf_in: input rate.
        sf_out: output rate.
        method: ``auto``, ``poly`` or ``fft``.

    Returns:
        The resampled array (float64).
    """
    from fractions import Fraction
    from math import gcd

    frac = Fraction(sf_out / sf_in).limit_denominator(1000)
    exact = abs(float(frac) - sf_out / sf_in) < 1e-9
    small = frac.numerator <= 64 and frac.denominator <= 64
    poly = method == "poly" or (method == "auto" and exact and small)
    if poly and x.ndim == 2 and x.shape[-1] > 0:
        # MNE derives the factors from the lengths: final = round(n * up / down), then reduces final / n
        n = x.shape[-1]
        final = int(round(n * frac.numerator / frac.denominator))
        g = gcd(final, n)
        up, down = final // g, n // g
        if max(up, down) <= 64:
            try:
                return _resample_poly_reflect(np.asarray(x, dtype=np.float64), up, down)
            except ValueError:
                pass  # very short signals: MNE's own path below
    try:
        from mne.filter import resample
    except ImportError:
        raise missing_reader("mne") from None
    if poly:
        return resample(x, up=frac.numerator, down=frac.denominator, method="polyphase", verbose="error")
    return resample(x, up=sf_out, down=sf_in, npad="auto", verbose="error")


def warm_imports(mne: bool = False) -> None:
    """Import the readers once (before forking workers or timing); MNE too when asked (non-EDF inputs)."""
    import edfio  # noqa: F401

    if mne:
        import mne.filter  # noqa: F401
        import mne.io  # noqa: F401
        import scipy.signal  # noqa: F401

        resample_signal(np.zeros((1, 500)), 250.0, 200.0, "fft")  # first calls build FFT plans lazily
    resample_signal(np.zeros((1, 500)), 250.0, 100.0, "poly")
