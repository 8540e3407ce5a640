"""Readers for echo inputs: PNG/JPEG stills, DICOM (single/multi-frame, JPEG, YBR, palette), GIF/AVI/MP4.

Every reader returns a list of RGB ``uint8`` frames (H, W, 3).  Torch-free: numpy, OpenCV, pydicom, PIL.
Patient identifiers in DICOM headers are never read into the results.

Every reader checks the dimensions its header declares (``shared.runtime.gates``) BEFORE decoding
pixels, and turns any exception of the decoding library into one-line :class:`InputError` naming
the file and the problem (never quoting file content).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from medtransfer.shared.runtime import gates
from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.imports import module_available
from medtransfer.shared.utils.sniff import is_dicom
from medtransfer.shared.utils.video import open_capture

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".gif", ".avi", ".mp4", ".mov", ".mkv")
ALL_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES + (".dcm", ".dicom")

#: refuse images above this many pixels per frame (a very large image is not an echo frame)
MAX_PIXELS = 4096 * 4096
#: the cardiac reader's gate limits (stricter than the generic image limits in ``gates.LIMITS``)
GATES: dict[str, Any] = {"image_max_pixels": MAX_PIXELS}


def _limits(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    return {**GATES, **(overrides or {})}


#: the cardiac readers: import name -> distribution, all installed by ``medtransfer[cardiac]``
READERS = {"cv2": "opencv-python-headless", "pydicom": "pydicom"}


def require_readers(modules: Mapping[str, str] = READERS) -> None:
    """Refuse with one line naming ``medtransfer[cardiac]`` when a reader package is missing; imports nothing.

    Raises:
        MedTransferError: a reader is not installed.
    """
    for mod, dist in modules.items():
        if not module_available(mod):
            raise MedTransferError(
                f"the cardiac app needs the '{dist}' package, which is not installed: install medtransfer[cardiac]"
            )


@contextlib.contextmanager
def _quiet_pydicom() -> Iterator[None]:
    """Silence pydicom's warnings and log lines while reading: they quote raw header values
    (patient names / ids included), which must never reach logs or outputs."""
    import logging

    log = logging.getLogger("pydicom")
    was = log.disabled
    log.disabled = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        log.disabled = was


def _to_rgb(arr: np.ndarray, path: Path) -> np.ndarray:
    """Any 2-D/3-D array -> RGB uint8 (H, W, 3)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3:
        raise InputError(path, f"unexpected pixel array shape {tuple(arr.shape)}")
    c = arr.shape[2]
    if c not in (1, 3, 4):
        raise InputError(path, f"unexpected channel count {c} (expected 1, 3 or 4)")
    if arr.shape[0] < 16 or arr.shape[1] < 16:
        raise InputError(path, f"image too small ({arr.shape[1]}x{arr.shape[0]})")
    if arr.shape[0] * arr.shape[1] > MAX_PIXELS:
        raise InputError(path, f"image too large ({arr.shape[1]}x{arr.shape[0]} > {MAX_PIXELS} pixels)")
    if arr.dtype != np.uint8:
        a = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        lo, hi = float(np.min(a)), float(np.max(a))
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        arr = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def read_image(path: Path, overrides: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Read a still image (PNG/JPEG/BMP/TIFF) as one RGB frame; the header's size is checked first.

    Raises:
        InputError: unreadable header, implausible size, undecodable pixels.
    """
    import cv2

    lim = _limits(overrides)
    w, h = header_size(path)
    gates.check_image_size(w, h, path, lim)
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InputError(path, "empty file")
    try:
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    except cv2.error:
        img = None
    if img is None:
        raise InputError(path, "not a readable image (pixel data cannot be decoded)")
    if img.shape[:2] != (h, w):
        gates.check_image_size(img.shape[1], img.shape[0], path, lim)
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return [_to_rgb(img, path)]


def header_size(path: Path) -> tuple[int, int]:
    """(width, height) from an image header (PIL, lazy); any library failure -> one-line InputError."""
    try:
        return gates.image_header_size(path)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - any PIL failure on a broken header
        raise InputError(path, f"not a readable image header ({type(e).__name__})") from None


def _keep(n_total: int, max_frames: int) -> set[int] | None:
    """Frame indices to keep of ``n_total`` (None = all)."""
    if not max_frames or n_total <= max_frames:
        return None
    return set(np.linspace(0, n_total - 1, max_frames).round().astype(int).tolist())


def _read_gif(path: Path, max_frames: int, lim: Mapping[str, Any]) -> list[np.ndarray]:
    """Animated GIF through PIL: header size checked, frames decoded one by one, count capped."""
    from PIL import Image, ImageSequence

    w, h = header_size(path)
    gates.check_image_size(w, h, path, lim)
    cap = int(gates.limit("video_max_frames", lim))
    frames: list[np.ndarray] = []
    try:
        with Image.open(path) as im:
            for i, fr in enumerate(ImageSequence.Iterator(im)):
                if i >= cap:
                    raise InputError(path, f"more than {cap} frames (limit)")
                frames.append(_to_rgb(np.asarray(fr.convert("RGB")), path))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises many types on broken GIFs
        if not frames:
            raise InputError(path, f"GIF frames cannot be decoded ({type(e).__name__})") from None
        # keep the frames decoded before a broken tail (common in truncated GIFs)
    return _subsample(frames, max_frames)


def read_video(path: Path, max_frames: int = 0, overrides: Mapping[str, Any] | None = None) -> list[np.ndarray]:
    """Read an animated GIF (PIL) or a video (AVI/MP4, OpenCV).

    The container's frame size and frame count are checked before any frame is decoded; only the
    frames kept are held in memory.

    Args:
        path: the clip.
        max_frames: keep at most this many frames, evenly spaced (0 = all).
        overrides: gate limit overrides (the bundle's ``gates``).

    Raises:
        InputError: implausible declared size / frame count, no decodable frame, or a video that
            ends before its declared frame count (truncated or corrupt; a GIF keeps the frames
            before a broken tail).
    """
    import cv2

    lim = _limits(overrides)
    if path.suffix.lower() == ".gif":
        return _read_gif(path, max_frames, lim)
    cap = open_capture(path)
    try:
        if not cap.isOpened():
            raise InputError(path, "not a video OpenCV can open")
        w = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
        h = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        gates.check_image_size(w, h, path, lim, frames=max(n, 1))
        keep = _keep(n, max_frames) if n > 0 else None
        limit_n = int(gates.limit("video_max_frames", lim))
        frames: list[np.ndarray] = []
        i = 0
        while True:
            ok, fr = cap.read()
            if not ok or fr is None:
                break
            if i >= limit_n:
                raise InputError(path, f"more than {limit_n} frames (limit)")
            if fr.ndim != 3 or fr.shape[2] != 3 or fr.shape[:2] != (h, w):
                gates.check_image_size(fr.shape[1] if fr.ndim > 1 else 0, fr.shape[0], path, lim)
            if keep is None or i in keep:
                frames.append(_to_rgb(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB), path))
            i += 1
    except cv2.error:
        raise InputError(path, "video frames cannot be decoded (OpenCV error)") from None
    finally:
        cap.release()
    if not frames:
        raise InputError(path, "no readable frames (not a video OpenCV can decode)")
    if 0 < i < n:  # a view / grade from the frames before the damage would pass for the clip's
        raise InputError(path, f"frame {i} of {n} could not be decoded (video truncated or corrupt)")
    return _subsample(frames, max_frames)


def _subsample(frames: list[np.ndarray], max_frames: int) -> list[np.ndarray]:
    if max_frames and len(frames) > max_frames:
        idx = np.linspace(0, len(frames) - 1, max_frames).round().astype(int)
        return [frames[i] for i in idx]
    return frames


def dicom_info(ds: Any) -> dict[str, Any]:
    """Non-identifying acquisition facts of a DICOM dataset (never names, ids or dates)."""
    keep = ("Modality", "Manufacturer", "PhotometricInterpretation", "NumberOfFrames", "Rows", "Columns")
    out: dict[str, Any] = {}
    for k in keep:
        try:
            v = ds.get(k)
        except Exception:  # noqa: BLE001 - a malformed value is left out, never quoted
            continue
        if v is not None:
            out[k] = " ".join(str(v).split())[:64]
    tsu = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsu is not None:
        out["TransferSyntax"] = getattr(tsu, "name", str(tsu))
    return out


def _dicom_int(ds: Any, key: str, default: int, path: Path) -> int:
    """An integer header field; a malformed one is named (never quoted)."""
    try:
        v = ds.get(key, default)
        return int(default if v is None or v == "" else v)
    except Exception:  # noqa: BLE001
        raise InputError(path, f"DICOM header field '{key}' is not a valid integer") from None


def dicom_header(ds: Any, path: Path, overrides: Mapping[str, Any] | None = None) -> tuple[int, int, int]:
    """(width, height, frames) from a DICOM header, checked against the gates before any decoding.

    Raises:
        InputError: malformed or implausible Rows / Columns / NumberOfFrames, or a decode too large.
    """
    lim = _limits(overrides)
    rows = _dicom_int(ds, "Rows", 0, path)
    cols = _dicom_int(ds, "Columns", 0, path)
    n = _dicom_int(ds, "NumberOfFrames", 1, path) or 1
    spp = _dicom_int(ds, "SamplesPerPixel", 1, path)
    bits = _dicom_int(ds, "BitsAllocated", 8, path)
    if n < 0:
        raise InputError(path, f"DICOM NumberOfFrames is negative ({n})")
    gates.check_image_size(cols, rows, path, lim, frames=n)
    if not 1 <= spp <= 4 or not 1 <= bits <= 64:
        raise InputError(path, f"DICOM SamplesPerPixel {spp} / BitsAllocated {bits} not supported")
    # the decoded array (plus a float copy for conversion) must fit the ceiling
    gates.check_decode_bytes(rows * cols * n * spp * max(1, (bits + 7) // 8), path, lim)
    return cols, rows, n


def read_dicom(
    path: Path, max_frames: int = 0, overrides: Mapping[str, Any] | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Read a DICOM image or cine: JPEG-compressed, YBR -> RGB, palette colour -> RGB.

    Rows / Columns / NumberOfFrames are checked (pydicom header) before the pixel data is decoded;
    pydicom's warnings (which quote header values) are silenced.

    Args:
        path: the DICOM file.
        max_frames: keep at most this many frames, evenly spaced (0 = all).
        overrides: gate limit overrides (the bundle's ``gates``).

    Returns:
        (frames, info) with non-identifying acquisition facts.
    """
    with _quiet_pydicom():
        return _read_dicom(path, max_frames, overrides)


def _read_dicom(
    path: Path, max_frames: int, overrides: Mapping[str, Any] | None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    import pydicom
    from pydicom.pixels import apply_color_lut, convert_color_space

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # noqa: BLE001 - pydicom raises many types on broken files
        raise InputError(path, f"not a readable DICOM ({type(e).__name__})") from None
    try:
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    except Exception:  # noqa: BLE001
        has_pixels = False
    if not has_pixels:
        raise InputError(path, "DICOM has no pixel data")
    _, _, n_frames = dicom_header(ds, path, overrides)
    try:
        arr = ds.pixel_array  # pydicom 3 converts YBR to RGB by default for JPEG
    except Exception as e:  # noqa: BLE001 - decoder errors; the message may quote content: type only
        raise InputError(path, f"DICOM pixel data cannot be decoded ({type(e).__name__})") from None
    try:
        pi = str(ds.get("PhotometricInterpretation", "")).upper()
        spp = int(ds.get("SamplesPerPixel", 1) or 1)
        if pi == "PALETTE COLOR":
            arr = apply_color_lut(arr, ds)
        elif pi.startswith("YBR") and spp == 3:
            # pixel_array already converts JPEG-baseline YBR; convert only what is still YBR
            if not _already_rgb(ds):
                arr = convert_color_space(arr, pi, "RGB")
        elif pi == "MONOCHROME1" and arr.size:
            arr = arr.max() - arr
        if pi == "PALETTE COLOR" and arr.dtype == np.uint16 and arr.size and int(arr.max()) > 255:
            arr = (arr >> 8).astype(np.uint8)  # 16-bit LUT entries -> 8 bits, contrast kept
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - malformed LUT / colour fields
        raise InputError(path, f"DICOM colour conversion failed ({type(e).__name__})") from None
    arr = np.asarray(arr)
    if n_frames == 1 or arr.ndim == 2:
        arr = arr[None]
    keep = _keep(len(arr), max_frames)
    frames = [_to_rgb(np.asarray(f), path) for i, f in enumerate(arr) if keep is None or i in keep]
    if not frames:
        raise InputError(path, "DICOM has no frames")
    return _subsample(frames, max_frames), dicom_info(ds)


def _already_rgb(ds: Any) -> bool:
    tsu = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(tsu is not None and getattr(tsu, "is_compressed", False))


def read_frames(
    path: str | Path, max_frames: int = 0, overrides: Mapping[str, Any] | None = None
) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Read any supported input as RGB frames (the entry point ``predict``, ``score`` and training use).

    Args:
        path: PNG/JPEG/BMP/TIFF, DICOM (any suffix, detected by its preamble), GIF/AVI/MP4.
        max_frames: keep at most this many frames of a cine (0 = all).
        overrides: gate limit overrides (the bundle's ``gates``), on top of :data:`GATES`.

    Returns:
        (frames, info): frames are RGB uint8 arrays; info has ``kind`` and, for DICOM,
        non-identifying acquisition facts.

    Raises:
        InputError: missing, empty, unreadable, wrong channel count, implausible size.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not an image / DICOM / video file")
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    sfx = path.suffix.lower()
    if is_dicom(path) or sfx in (".dcm", ".dicom"):
        frames, info = read_dicom(path, max_frames, overrides)
        return frames, {"kind": "dicom", **info}
    if sfx in VIDEO_SUFFIXES:
        return read_video(path, max_frames, overrides), {"kind": "video"}
    if sfx in IMAGE_SUFFIXES:
        return read_image(path, overrides), {"kind": "image"}
    # unknown suffix: try as image
    try:
        return read_image(path, overrides), {"kind": "image"}
    except InputError:
        raise InputError(path, f"unsupported or unreadable file type '{sfx or 'no suffix'}'") from None


def list_inputs(folder: str | Path) -> list[Path]:
    """Echo files in a folder (recursive, sorted).

    Raises:
        InputError: not a folder, or no supported file in it (the message lists what was looked for).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "folder not found")
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in ALL_SUFFIXES)
    if not found:
        raise InputError(folder, f"no images found (looked for {', '.join(ALL_SUFFIXES)})")
    return found
