"""Acquisition perturbations per modality, for robustness audits and validation (torch-free numpy).

Every perturbation is a :class:`Perturbation`: ``p(x, severity, rng, **meta) -> np.ndarray``.  Severity
is in the physical unit named by ``p.unit``; severity 0 is the identity (a copy of ``x``), and
``p.severities`` is the documented default ladder (0 first, then 3+ increasing severities).  The
output keeps ``x``'s shape and dtype (integer images are rounded and clipped to ``[0, vmax]``).
Look-ups go through :data:`PERTURBATIONS` (``modality -> name -> Perturbation``) or :func:`get`.

``meta`` keys: ``sfreq`` (Hz; required by the EEG perturbations that act in time), ``vmax`` (the
image intensity range's top; default 255 for integer images, 1 for float images whose maximum is
at most 1, else 255).

EEG (``"eeg"``; ``x``: channels x samples in microvolts, as read from the recording):

- ``white_noise``: additive Gaussian noise; severity = noise RMS in µV (5, 10, 20, 40).
- ``line_noise_50hz`` / ``line_noise_60hz``: mains interference, a sinusoid at 50 / 60 Hz (common
  phase, per-channel amplitude 0.5-1.5 x severity); severity = amplitude in µV (5, 20, 50).
  Needs ``sfreq``.
- ``gain``: amplifier gain error, every channel times ``10**(s/20)``; severity in dB (3, 6, 12).
- ``channel_dropout``: electrode loss, ``round(s * channels)`` (at least one) random channels replaced
  by the amplifier noise floor (0.5 µV RMS white noise: a disconnected electrode, near-flat but not
  constant); severity = fraction of channels (0.05, 0.1, 0.25).
- ``time_shift``: the recording starts ``s`` ms later (the signal is advanced, the tail reflected,
  length kept): window boundaries move against the content; severity in ms (100, 500, 1000).
  Needs ``sfreq``.
- ``rereference``: montage change towards the common average reference: ``x - s * mean over
  channels``; severity = fraction of the average subtracted (0.25, 0.5, 1 = full average reference).

Images (``"image"``, echo frames and photographs; ``x``: H x W or H x W x C, 0-255 or float):

- ``speckle``: multiplicative speckle, ``x * g`` with ``g ~ Gamma`` of mean 1 (one field shared by
  the colour channels); severity = standard deviation of ``g`` (0.1, 0.25, 0.5).
- ``gain``: overall gain, ``x * 10**(s/20)``, clipped; severity in dB (3, 6, 10).
- ``blur``: Gaussian blur (OpenCV); severity = sigma in pixels (1, 2, 4).
- ``depth_crop``: reduced imaging depth: the top-centred ``(1 - s)`` of rows and columns (the
  transducer stays at the top) rescaled to the frame; severity = fraction of depth lost (0.1, 0.2, 0.35).
- ``rotation``: probe / camera rotation about the centre, random sign, black border; severity in
  degrees (5, 10, 20).

WSI tiles (``"wsi"``; ``x``: H x W x 3 RGB, 0-255 or float):

- ``stain``: stain variation in HED space (``skimage.color.rgb2hed``): each of H, E, D is scaled by
  ``U(1 - s, 1 + s)`` and shifted by ``U(-s, s)``, then back to RGB (Tellez et al. 2018); severity =
  jitter ``s`` (0.01, 0.03, 0.05).
- ``blur``: out-of-focus scan, Gaussian blur; severity = sigma in pixels (1, 2, 4).
- ``jpeg``: JPEG compression round trip (OpenCV) at quality ``100 - s``; severity = quality points
  lost (30, 60, 90).

Feature bags (``"features"``; ``x``: patches x dims, an encoder's output, e.g. a wsi .h5 bag):

- ``noise``: additive Gaussian noise, severity in units of each dimension's standard deviation
  over the bag (0.1, 0.25, 0.5).
- ``patch_dropout``: lost tissue / tiles, a random ``round(s * patches)`` of the patches removed (at
  least one is kept; the output is shorter); severity = fraction removed (0.1, 0.25, 0.5).

Video (``"video"``; ``x``: T x H x W [x C], 0-255 or float):

- ``frame_drop``: dropped frames, each later frame replaced by the previous kept one with
  probability ``s`` (frame 0, the prompt frame, is always kept; length kept); severity = fraction
  of frames dropped (0.1, 0.25, 0.5).
- ``noise``: additive Gaussian noise per frame; severity = sigma in 0-255 intensity units (5, 10, 25),
  scaled by ``vmax / 255`` for other ranges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["PERTURBATIONS", "Perturbation", "get", "ladder", "modalities"]

#: RMS (µV) of what a lost electrode records (``eeg/channel_dropout``)
DROPOUT_FLOOR_UV = 0.5


@dataclass(frozen=True)
class Perturbation:
    """One named perturbation of one modality.

    Args:
        name: registry name (unique within its modality).
        modality: ``eeg``, ``image``, ``wsi``, ``features`` or ``video``.
        fn: ``fn(x, severity, rng, **meta) -> array`` for ``severity > 0``.
        unit: the physical unit of the severity.
        severities: the default ladder, 0 first, increasing.
        description: one line for reports.
        needs: ``meta`` keys the perturbation requires (e.g. ``sfreq``).
    """

    name: str
    modality: str
    fn: Callable[..., np.ndarray] = field(repr=False)
    unit: str
    severities: tuple[float, ...]
    description: str
    needs: tuple[str, ...] = ()

    def __call__(self, x: np.ndarray, severity: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
        """Apply at ``severity`` (0 = a copy of ``x``).

        Args:
            x: the input array (see the module docstring for each modality's layout).
            severity: in :attr:`unit`; must be >= 0.
            rng: the random generator (all randomness comes from it).
            meta: ``sfreq`` (Hz), ``vmax`` (intensity range top).

        Returns:
            The perturbed array, same dtype (and shape, except ``features/patch_dropout``).

        Raises:
            ValueError: negative severity or a missing ``meta`` key.
        """
        x = np.asarray(x)
        severity = float(severity)
        if not np.isfinite(severity) or severity < 0:
            raise ValueError(f"perturbation {self.modality}/{self.name}: severity must be >= 0, got {severity}")
        if severity == 0:
            return x.copy()
        missing = [k for k in self.needs if meta.get(k) in (None, "")]
        if missing:
            raise ValueError(f"perturbation {self.modality}/{self.name} needs {', '.join(missing)}")
        return self.fn(x, severity, rng, **meta)


# ---------------------------------------------------------------------------------------- helpers
def _vmax(x: np.ndarray, meta: dict[str, Any]) -> float:
    if meta.get("vmax") is not None:
        return float(meta["vmax"])
    if np.issubdtype(x.dtype, np.integer):
        return 255.0
    return 1.0 if x.size and float(np.nanmax(x)) <= 1.0 else 255.0


def _finish(y: np.ndarray, x: np.ndarray, meta: dict[str, Any], clip: bool = True) -> np.ndarray:
    """Back to ``x``'s dtype; intensity arrays are clipped to ``[0, vmax]`` (integers rounded)."""
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        return np.clip(np.rint(y), max(info.min, 0), min(info.max, _vmax(x, meta))).astype(x.dtype)
    if clip and x.size and float(np.nanmin(x)) >= 0:
        y = np.clip(y, 0.0, _vmax(x, meta))
    return y.astype(x.dtype, copy=False)


def _as_float(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float64 if x.dtype == np.float64 else np.float32)


def _per_image(x: np.ndarray, f: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply a 2-D image op to H x W [x C] (OpenCV handles up to 4 channels at once)."""
    if x.ndim == 2 or (x.ndim == 3 and x.shape[2] <= 4):
        return f(x)
    raise ValueError(f"expected an H x W [x C] image, got shape {x.shape}")


def _blur(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    import cv2

    y = _per_image(_as_float(x), lambda a: cv2.GaussianBlur(a, (0, 0), sigmaX=s, borderType=cv2.BORDER_REFLECT))
    return _finish(y, x, meta)


# ---------------------------------------------------------------------------------------- EEG
def _eeg_check(x: np.ndarray) -> None:
    if x.ndim != 2:
        raise ValueError(f"EEG perturbations expect channels x samples, got shape {x.shape}")


def _eeg_white_noise(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    _eeg_check(x)
    return (x + rng.normal(0.0, s, size=x.shape)).astype(x.dtype, copy=False)


def _line_noise(freq: float) -> Callable[..., np.ndarray]:
    def fn(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
        _eeg_check(x)
        t = np.arange(x.shape[1]) / float(meta["sfreq"])
        phase = rng.uniform(0, 2 * np.pi)
        amp = s * rng.uniform(0.5, 1.5, size=(x.shape[0], 1))
        return (x + amp * np.sin(2 * np.pi * freq * t + phase)[None, :]).astype(x.dtype, copy=False)

    return fn


def _eeg_gain(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    _eeg_check(x)
    return (x * 10 ** (s / 20.0)).astype(x.dtype, copy=False)


def _eeg_dropout(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    _eeg_check(x)
    n = min(x.shape[0], max(1, int(round(s * x.shape[0]))))
    y = x.copy()
    idx = rng.choice(x.shape[0], size=n, replace=False)
    y[idx] = rng.normal(0.0, DROPOUT_FLOOR_UV, size=(n, x.shape[1]))
    return y


def _eeg_time_shift(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    _eeg_check(x)
    n = int(round(s / 1000.0 * float(meta["sfreq"])))
    n = min(n, x.shape[1] - 1)
    if n <= 0:
        return x.copy()
    return np.concatenate([x[:, n:], x[:, -n - 1 : -1][:, ::-1]], axis=1).astype(x.dtype, copy=False)


def _eeg_reref(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    _eeg_check(x)
    return (x - min(s, 1.0) * x.mean(axis=0, keepdims=True)).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------------------------- images
def _img_speckle(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    k = 1.0 / (s * s)  # Gamma(k, 1/k): mean 1, std s
    g = rng.gamma(k, 1.0 / k, size=x.shape[:2])
    if x.ndim == 3:
        g = g[:, :, None]
    return _finish(_as_float(x) * g, x, meta)


def _img_gain(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    return _finish(_as_float(x) * 10 ** (s / 20.0), x, meta)


def _img_depth_crop(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    import cv2

    h, w = x.shape[:2]
    keep = 1.0 - min(s, 0.9)
    hh, ww = max(1, int(round(h * keep))), max(1, int(round(w * keep)))
    c0 = (w - ww) // 2
    crop = np.ascontiguousarray(_as_float(x)[:hh, c0 : c0 + ww])
    return _finish(_per_image(crop, lambda a: cv2.resize(a, (w, h), interpolation=cv2.INTER_LINEAR)), x, meta)


def _img_rotation(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    import cv2

    h, w = x.shape[:2]
    m = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(s * rng.choice([-1.0, 1.0])), 1.0)
    y = _per_image(
        _as_float(x), lambda a: cv2.warpAffine(a, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    )
    return _finish(y, x, meta)


# ---------------------------------------------------------------------------------------- WSI tiles
def _rgb_check(x: np.ndarray) -> None:
    if x.ndim != 3 or x.shape[2] != 3:
        raise ValueError(f"tile perturbations expect H x W x 3 RGB, got shape {x.shape}")


def _wsi_stain(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    from skimage.color import hed2rgb, rgb2hed

    _rgb_check(x)
    vmax = _vmax(x, meta)
    hed = rgb2hed(np.clip(x.astype(np.float64) / vmax, 0.0, 1.0))
    alpha = rng.uniform(1 - s, 1 + s, size=3)
    beta = rng.uniform(-s, s, size=3)
    rgb = hed2rgb(hed * alpha + beta)
    return _finish(np.clip(rgb, 0.0, 1.0) * vmax, x, meta)


def _wsi_jpeg(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    import cv2

    vmax = _vmax(x, meta)
    q = int(np.clip(round(100 - s), 1, 100))
    u8 = np.clip(np.rint(x.astype(np.float64) * (255.0 / vmax)), 0, 255).astype(np.uint8)
    bgr = u8[:, :, ::-1] if u8.ndim == 3 and u8.shape[2] == 3 else u8
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(bgr), [cv2.IMWRITE_JPEG_QUALITY, q])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an array of shape {x.shape}")
    dec = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
    if dec is None:
        raise ValueError(f"JPEG decoding failed for an array of shape {x.shape}")
    if dec.ndim == 3 and dec.shape[2] == 3:
        dec = dec[:, :, ::-1]
    dec = dec.reshape(x.shape)
    return _finish(dec.astype(np.float64) * (vmax / 255.0), x, meta)


# ---------------------------------------------------------------------------------------- feature bags
def _feat_noise(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"feature perturbations expect patches x dims, got shape {x.shape}")
    sd = x.std(axis=0, keepdims=True) if len(x) > 1 else np.abs(x) + 1e-6
    return (x + rng.normal(0.0, 1.0, size=x.shape) * s * sd).astype(x.dtype, copy=False)


def _feat_dropout(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    if x.ndim != 2:
        raise ValueError(f"feature perturbations expect patches x dims, got shape {x.shape}")
    n_drop = min(len(x) - 1, int(round(s * len(x))))
    if n_drop <= 0:
        return x.copy()
    keep = np.sort(rng.choice(len(x), size=len(x) - n_drop, replace=False))
    return x[keep].copy()


# ---------------------------------------------------------------------------------------- video
def _video_frame_drop(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    if x.ndim < 3:
        raise ValueError(f"video perturbations expect T x H x W [x C], got shape {x.shape}")
    y = x.copy()
    drop = rng.random(len(x)) < min(s, 1.0)
    drop[0] = False
    for t in range(1, len(x)):
        if drop[t]:
            y[t] = y[t - 1]
    return y


def _video_noise(x: np.ndarray, s: float, rng: np.random.Generator, **meta: Any) -> np.ndarray:
    if x.ndim < 3:
        raise ValueError(f"video perturbations expect T x H x W [x C], got shape {x.shape}")
    sigma = s * _vmax(x, meta) / 255.0
    return _finish(_as_float(x) + rng.normal(0.0, sigma, size=x.shape), x, meta)


def _p(modality: str, name: str, fn: Callable[..., np.ndarray], unit: str, sev: tuple[float, ...], desc: str,
       needs: tuple[str, ...] = ()) -> Perturbation:  # fmt: skip
    return Perturbation(name, modality, fn, unit, (0.0, *(float(v) for v in sev)), desc, needs)


_ALL = [
    _p("eeg", "white_noise", _eeg_white_noise, "µV RMS", (5, 10, 20, 40), "additive white Gaussian noise"),
    _p("eeg", "line_noise_50hz", _line_noise(50.0), "µV", (5, 20, 50), "50 Hz mains interference", ("sfreq",)),
    _p("eeg", "line_noise_60hz", _line_noise(60.0), "µV", (5, 20, 50), "60 Hz mains interference", ("sfreq",)),
    _p("eeg", "gain", _eeg_gain, "dB", (3, 6, 12), "amplifier gain error"),
    _p("eeg", "channel_dropout", _eeg_dropout, "fraction of channels", (0.05, 0.1, 0.25), "electrodes lost"),
    _p("eeg", "time_shift", _eeg_time_shift, "ms", (100, 500, 1000), "recording start shifted", ("sfreq",)),
    _p("eeg", "rereference", _eeg_reref, "fraction of average", (0.25, 0.5, 1.0), "towards average reference"),
    _p("image", "speckle", _img_speckle, "speckle std (x)", (0.1, 0.25, 0.5), "multiplicative speckle"),
    _p("image", "gain", _img_gain, "dB", (3, 6, 10), "overall gain"),
    _p("image", "blur", _blur, "sigma px", (1, 2, 4), "Gaussian blur"),
    _p("image", "depth_crop", _img_depth_crop, "fraction of depth", (0.1, 0.2, 0.35), "reduced imaging depth"),
    _p("image", "rotation", _img_rotation, "degrees", (5, 10, 20), "probe rotation"),
    _p("wsi", "stain", _wsi_stain, "HED jitter", (0.01, 0.03, 0.05), "stain variation in HED space"),
    _p("wsi", "blur", _blur, "sigma px", (1, 2, 4), "out-of-focus scan"),
    _p("wsi", "jpeg", _wsi_jpeg, "100 - JPEG quality", (30, 60, 90), "JPEG compression"),
    _p("features", "noise", _feat_noise, "feature std", (0.1, 0.25, 0.5), "additive feature noise"),
    _p("features", "patch_dropout", _feat_dropout, "fraction of patches", (0.1, 0.25, 0.5), "tiles lost"),
    _p("video", "frame_drop", _video_frame_drop, "fraction of frames", (0.1, 0.25, 0.5), "dropped frames repeated"),
    _p("video", "noise", _video_noise, "sigma (0-255 units)", (5, 10, 25), "additive Gaussian noise"),
]

#: modality -> name -> Perturbation
PERTURBATIONS: dict[str, dict[str, Perturbation]] = {}
for _q in _ALL:
    PERTURBATIONS.setdefault(_q.modality, {})[_q.name] = _q


def modalities() -> list[str]:
    """The registered modalities."""
    return list(PERTURBATIONS)


def get(modality: str, name: str) -> Perturbation:
    """One perturbation by modality and name.

    Raises:
        KeyError: unknown modality or name (the message lists what exists).
    """
    if modality not in PERTURBATIONS:
        raise KeyError(f"unknown modality '{modality}' (known: {', '.join(PERTURBATIONS)})")
    names = PERTURBATIONS[modality]
    if name not in names:
        raise KeyError(f"unknown {modality} perturbation '{name}' (known: {', '.join(names)})")
    return names[name]


def ladder(p: Perturbation, n: int | None = None) -> tuple[float, ...]:
    """The first ``n`` severities of ``p``'s ladder (0 always included; all when ``n`` is None).

    Args:
        p: the perturbation.
        n: how many severities in all, e.g. 3 for a fast audit: 0, the mildest and the strongest.

    Returns:
        Increasing severities starting at 0.
    """
    sev = p.severities
    if n is None or n >= len(sev):
        return sev
    if n <= 1:
        return sev[:1]
    idx = np.unique(np.round(np.linspace(0, len(sev) - 1, n)).astype(int))
    return tuple(sev[i] for i in idx)
