"""Plausibility gates: implausible input never comes back as a plain confident answer.

Every predictor runs its modality's gates before (or right after) inference.  A gate either
raises :class:`InputError` (the case becomes an error row / error line: the input cannot be
answered at all, e.g. NaN features, a 30000x30000 image header) or returns reasons that mark the
answer ``unreliable: true`` with ``reasons`` (the input can be answered but is outside the
documented physiological / physical range, e.g. EEG at 1e4x normal amplitude, a flat channel).

The documented ranges live in :data:`LIMITS`; each app may override a limit from its bundle
metadata (``metadata["gates"]``), so the range a bundle used is recorded with it.
Torch-free; no message ever quotes file content.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from medtransfer.shared.utils.errors import InputError

#: Documented plausibility limits, by modality.  Units in the key names.
LIMITS: dict[str, Any] = {
    # Scalp / intracranial EEG: clinical scalp EEG is tens of microvolts; intracranial and
    # artefact-laden recordings reach a few millivolts.  Above ~10 mV peak-to-peak the recording
    # is not EEG at this calibration (wrong unit / gain, disconnected or saturated amplifier).
    "eeg_max_abs_uv": 10_000.0,
    # A channel whose robust std is below this is flat (disconnected electrode, zero-filled).
    "eeg_flat_std_uv": 0.1,
    # Fraction of flat / saturated channels above which the answer is unreliable.
    "eeg_bad_channel_fraction": 0.2,
    # Images: refuse before decoding anything larger than this (pixels = width * height).
    "image_max_pixels": 64_000_000,
    "image_max_side": 20_000,
    "image_min_side": 16,
    # Video frames: per-frame limits (the same as images) and a frame-count ceiling.
    "video_max_frames": 20_000,
    # Feature bags (WSI): |value| above this is not a normalised encoder feature.
    "feature_max_abs": 1e4,
}


def limits_for(*prefixes: str) -> dict[str, Any]:
    """The limits a bundle records as ``metadata["gates"]`` (those whose names start with a prefix).

    Args:
        prefixes: e.g. ``"eeg_"`` or ``"image_", "video_"``.

    Returns:
        name -> limit, so the range a bundle was exported with travels with it.
    """
    return {k: v for k, v in LIMITS.items() if k.startswith(prefixes)}


def limit(name: str, overrides: Mapping[str, Any] | None = None) -> Any:
    """One limit, from the bundle's ``gates`` overrides when present, else :data:`LIMITS`."""
    if overrides and name in overrides:
        return overrides[name]
    return LIMITS[name]


def mark_unreliable(result: dict[str, Any], reasons: Iterable[str]) -> dict[str, Any]:
    """Merge gate reasons into an answer: sets ``unreliable`` and extends ``reasons``.

    Args:
        result: the predictor's answer (modified in place and returned).
        reasons: short reasons (no file content).

    Returns:
        The same dict.
    """
    reasons = [r for r in reasons if r]
    old = list(result.get("reasons") or [])
    result["reasons"] = old + [r for r in reasons if r not in old]
    result["unreliable"] = bool(result.get("unreliable")) or bool(reasons)
    return result


def require_finite(arr: np.ndarray, path: str | Path, what: str = "values") -> None:
    """Raise InputError when ``arr`` holds NaN or inf (counts only, never values).

    Args:
        arr: the array to check.
        path: the input file, for the message.
        what: what the array is ("features", "signal", ...).
    """
    a = np.asarray(arr)
    if a.dtype.kind not in "fc":
        return
    bad = ~np.isfinite(a)
    if bad.any():
        raise InputError(path, f"{what} contain {int(bad.sum())} NaN/inf value(s) of {a.size}; refusing to answer")


def check_image_size(
    width: int, height: int, path: str | Path, overrides: Mapping[str, Any] | None = None, frames: int = 1
) -> None:
    """Refuse implausible image / video dimensions (call this with the header's size, before decoding).

    Raises:
        InputError: empty, too small, too large (pixels or side) or too many frames.
    """
    w, h = int(width), int(height)
    if w <= 0 or h <= 0:
        raise InputError(path, f"image has no pixels ({w}x{h})")
    lo = int(limit("image_min_side", overrides))
    if min(w, h) < lo:
        raise InputError(path, f"image {w}x{h} is smaller than {lo} px on a side")
    side = int(limit("image_max_side", overrides))
    if max(w, h) > side:
        raise InputError(path, f"image {w}x{h} exceeds {side} px on a side; refused before decoding")
    px = int(limit("image_max_pixels", overrides))
    if w * h > px:
        raise InputError(path, f"image {w}x{h} has {w * h} pixels (limit {px}); refused before decoding")
    nf = int(limit("video_max_frames", overrides))
    if frames > nf:
        raise InputError(path, f"{frames} frames exceed the limit of {nf}")


def image_header_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of a PNG / JPEG / BMP / TIFF / GIF from its header, without decoding pixels.

    Raises:
        InputError: not a readable image header.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:  # lazy: reads the header only
            return int(im.size[0]), int(im.size[1])
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise InputError(path, "not a readable image (unknown or corrupt header)") from None
    except Image.DecompressionBombError:
        raise InputError(path, "image dimensions are implausibly large; refused before decoding") from None


def checked_image_size(path: str | Path, overrides: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """(width, height) from the header (:func:`image_header_size`), then :func:`check_image_size`.

    Any reader failure on a broken header is one InputError naming only the exception type.
    """
    try:
        w, h = image_header_size(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any PIL failure on a broken header
        raise InputError(path, f"not a readable image header ({type(e).__name__})") from None
    check_image_size(w, h, path, overrides)
    return w, h


def row_quantiles(x: np.ndarray, qs: Iterable[float], stride: int = 32, margin: float = 4.0) -> np.ndarray:
    """Quantiles of each row of a finite 2-D array, equal to ``np.quantile(x, qs, axis=1)`` (linear
    interpolation, bit for bit) at a third of its time on long rows.

    ``np.quantile`` partitions every full row.  Here a sorted strided sample of the row brackets each
    wanted rank (Floyd-Rivest): one pass counts the values below the bracket and keeps those inside
    it, and only those few are partitioned.  A rank the bracket misses (rare: an unlucky sample, a
    short row) falls back to partitioning the full row, so the answer is exact either way.

    Args:
        x: (rows, samples) finite values.
        qs: quantiles in [0, 1].
        stride: sample every ``stride``-th value for the brackets.
        margin: half-width of a bracket, in standard deviations of the sampled rank.

    Returns:
        (len(qs), rows) array.
    """
    x = np.asarray(x, dtype=np.float64)
    rows, n = x.shape
    qs = [float(q) for q in qs]
    if not all(0.0 <= q <= 1.0 for q in qs):
        raise ValueError(f"quantiles must lie in [0, 1], got {qs}")
    out = np.empty((len(qs), rows))
    if n == 0:
        out[:] = np.nan
        return out
    sample = np.sort(x[:, :: max(1, int(stride))], axis=1)
    m = sample.shape[1]
    for j, q in enumerate(qs):
        v = (n - 1) * q  # numpy's virtual index for the linear method
        k = int(np.floor(v))
        frac = v - k
        k1 = min(k + 1, n - 1)
        half = margin * np.sqrt(m * q * (1 - q)) + 2
        lo_i, hi_i = max(0, int(q * (m - 1) - half)), min(m - 1, int(np.ceil(q * (m - 1) + half)))
        for i in range(rows):
            row = x[i]
            lo, hi = sample[i, lo_i], sample[i, hi_i]
            ge = row >= lo
            below = n - int(np.count_nonzero(ge))
            inside = row[ge & (row <= hi)]
            kk = k - below
            if 0 <= kk and kk + (k1 - k) < len(inside):  # both ranks fall inside the bracket
                part = np.partition(inside, [kk, kk + (k1 - k)])
                a, b = part[kk], part[kk + (k1 - k)]
            else:
                part = np.partition(row, [k, k1])
                a, b = part[k], part[k1]
            d = b - a  # numpy's _lerp, the same two formulas either side of 0.5
            out[j, i] = a + d * frac if frac < 0.5 else b - d * (1 - frac)
    return out


def eeg_reasons(
    data_uv: np.ndarray, ch_names: list[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> list[str]:
    """Plausibility reasons for an EEG array in microvolts, shape (channels, samples).

    Raises InputError for NaN/inf (nothing can be answered); returns reasons (possibly empty) for
    implausible amplitude and flat / saturated channels.
    """
    x = np.asarray(data_uv, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        return ["empty recording"]
    if not np.isfinite(x).all():
        raise InputError("signal", f"{int(np.count_nonzero(~np.isfinite(x)))} NaN/inf samples")
    names = ch_names or [str(i) for i in range(x.shape[0])]
    reasons: list[str] = []
    # one pass each for the rows' extremes (no |x| copy: the peak is the larger of max and -min)
    mx, mn = x.max(axis=1, keepdims=True), x.min(axis=1, keepdims=True)
    peak = float(max(mx.max(), -mn.min()))
    max_uv = float(limit("eeg_max_abs_uv", overrides))
    if peak > max_uv:
        reasons.append(
            f"amplitude {peak:.3g} uV exceeds the plausible EEG range ({max_uv:.0f} uV): wrong unit, gain or saturated amplifier"
        )
    q75, q25 = row_quantiles(x, (0.75, 0.25))  # = np.percentile(x, [75, 25], axis=1), faster on long rows
    robust_std = (q75 - q25) / 1.349
    flat = [names[i] for i in np.flatnonzero(robust_std < float(limit("eeg_flat_std_uv", overrides)))]
    sat_frac = np.count_nonzero((x >= mx) | (x <= mn), axis=1) / x.shape[1]
    saturated = [
        names[i] for i in np.flatnonzero((sat_frac > 0.05) & (robust_std >= float(limit("eeg_flat_std_uv", overrides))))
    ]
    frac = float(limit("eeg_bad_channel_fraction", overrides))
    n_bad = len(set(flat) | set(saturated))
    if n_bad and n_bad / x.shape[0] > frac:
        reasons.append(f"{n_bad} of {x.shape[0]} channels flat or saturated (limit {frac:.0%})")
    elif flat:
        reasons.append(f"flat channel(s): {', '.join(flat[:8])}")
    return reasons


# ------------------------------------------------------------------ image / video content gates
# (cardiac, videoseg, the core image task).  Header checks use :func:`check_image_size` above;
# this block adds what only the decoded pixels can tell, and a ceiling on what a decode allocates.
LIMITS.setdefault("image_min_std", 1.0)  # grey levels (0-255): below this a frame is blank / constant
LIMITS.setdefault("decode_max_bytes", 2 * 1024**3)  # refuse a decode that would allocate more than this


#: how much of a MetaImage file is read looking for its header (the header is short text before the pixels)
_META_HEADER_MAX = 64 * 1024


def check_metaimage_data_file(path: str | Path) -> None:
    """Refuse a MetaImage (``.mha`` / ``.mhd``) whose header sends the reader to pixel data outside the
    input: ``ElementDataFile`` must be ``LOCAL`` (the pixels follow the header) or the bare name of a
    file beside it, never a path (``../other_patient.raw``, ``/etc/passwd``), a list or a pattern.

    Args:
        path: the MetaImage file.

    Raises:
        InputError: no header, or a data file elsewhere (named in the message, not followed).
    """
    p = Path(path)
    if p.suffix.lower() not in (".mha", ".mhd"):
        return
    try:
        with open(p, "rb") as f:
            head = f.read(_META_HEADER_MAX)
    except OSError as e:
        raise InputError(p, f"cannot be read ({e.strerror or type(e).__name__})") from None
    name = None
    for raw in head.replace(b"\r", b"\n").split(b"\n"):
        m = re.match(rb"\s*ElementDataFile\s*[=:]\s*(.*?)\s*$", raw)  # MetaIO takes '=' or ':'
        if m:  # the header's last field, and the one ITK follows; what comes after may be pixels
            name = m.group(1).decode("utf-8", "replace")
            break
    if name is None:
        raise InputError(p, "not a MetaImage file (no ElementDataFile in its header)")
    if name.upper() == "LOCAL":
        return
    if name.upper() == "LIST" or "%" in name:
        raise InputError(p, "MetaImage header lists several data files; only one file is read")
    if "/" in name or "\\" in name or name in (".", "..") or name.startswith("~"):
        raise InputError(p, "MetaImage header points its pixel data at another folder; refused")
    # a link beside the header is the owner's own arrangement (git-annex / DataLad pairs): followed
    if not (p.parent / name).is_file():
        raise InputError(p, "MetaImage header names a pixel data file that is not beside it")


def check_decode_bytes(n_bytes: int, path: str | Path, overrides: Mapping[str, Any] | None = None) -> None:
    """Refuse a decode whose output (frames x height x width x channels x bytes) exceeds the ceiling.

    Args:
        n_bytes: bytes the decoded array would take, computed from the header.
        path: the input file, for the message.
        overrides: the bundle's ``gates`` overrides.

    Raises:
        InputError: the decoded pixels would exceed ``decode_max_bytes``.
    """
    cap = int(limit("decode_max_bytes", overrides))
    if int(n_bytes) > cap:
        raise InputError(
            path,
            f"decoded pixels would take {int(n_bytes) / 1024**2:.0f} MiB "
            f"(limit {cap / 1024**2:.0f} MiB); refused before decoding",
        )


def image_content_reasons(frames: Any, overrides: Mapping[str, Any] | None = None) -> list[str]:
    """Reasons an image / cine is not plausible content: blank or constant frames.

    Args:
        frames: one image (H, W[, C]) or a sequence / array of frames, grey levels 0-255.
        overrides: the bundle's ``gates`` overrides (``image_min_std``).

    Returns:
        ``[]`` when every frame has content; else one short reason (counts only, no values
        beyond the measured spread).
    """
    if isinstance(frames, np.ndarray) and frames.ndim in (2, 3) and (frames.ndim == 2 or frames.shape[-1] in (1, 3, 4)):
        frames = [frames]
    lo = float(limit("image_min_std", overrides))
    stds = [float(np.asarray(f, dtype=np.float32).std()) if np.asarray(f).size else 0.0 for f in frames]
    if not stds:
        return ["no frames"]
    blank = sum(s < lo for s in stds)
    if blank == len(stds):
        return [f"blank / constant image (pixel std {max(stds):.2f} < {lo:g} grey levels)"]
    if blank:
        return [f"{blank} of {len(stds)} frames blank / constant"]
    return []


# ------------------------------------------------------------------------------------------------
# Feature bags (wsi app): one gate for every path that reads a bag (predict, score, training).
# ------------------------------------------------------------------------------------------------
def check_feature_bag(features: np.ndarray, path: str | Path, overrides: Mapping[str, Any] | None = None) -> None:
    """Refuse a feature bag that cannot be answered: empty, not (N, D), NaN/inf, or |x| above the limit.

    Encoder features are normalised activations (a few units; UNI / ResNet features stay far
    below ``feature_max_abs``); NaN / inf or huge values mean a failed extraction or a file
    written by something else.  Counts and limits only, never values.

    Args:
        features: the bag, shape (N, D).
        path: the bag file, for the message.
        overrides: bundle ``gates`` overrides (``feature_max_abs``).

    Raises:
        InputError: the bag is empty, malformed, non-finite or out of range.
    """
    a = np.asarray(features)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(path, f"features must be a non-empty (N, D) array, got shape {tuple(a.shape)}")
    if a.dtype.kind not in "fiu":
        raise InputError(path, f"features must be numeric (got dtype kind '{a.dtype.kind}')")
    require_finite(a, path, "features")
    lim = float(limit("feature_max_abs", overrides))
    n_big = int((np.abs(a) > lim).sum())
    if n_big:
        raise InputError(
            path,
            f"{n_big} feature value(s) exceed |x| <= {lim:g} (not normalised encoder features); refusing to answer",
        )
