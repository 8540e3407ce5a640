"""Readers for echo inputs: PNG/JPEG stills, DICOM (single/multi-frame, JPEG, YBR, palette), GIF/AVI/MP4.

Every reader returns a list of RGB ``uint8`` frames (H, W, 3).  Torch-free: numpy, OpenCV, pydicom.
Patient identifiers in DICOM headers are never read into the results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.utils.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".gif", ".avi", ".mp4", ".mov", ".mkv")
DICOM_SUFFIXES = (".dcm", ".dicom", "")
ALL_SUFFIXES = IMAGE_SUFFIXES + VIDEO_SUFFIXES + (".dcm", ".dicom")

#: refuse images above this many pixels per frame (a very large image is not an echo frame)
MAX_PIXELS = 4096 * 4096


def _is_dicom(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


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
        a = arr.astype(np.float32)
        lo, hi = float(np.min(a)), float(np.max(a))
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        arr = np.clip(a + 0.5, 0, 255).astype(np.uint8)
    if c == 1:
        arr = np.repeat(arr, 3, axis=2)
    elif c == 4:
        arr = arr[..., :3]
    return np.ascontiguousarray(arr)


def read_image(path: Path) -> list[np.ndarray]:
    """Read a still image (PNG/JPEG/BMP/TIFF) as one RGB frame."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        raise InputError(path, "empty file")
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(path, "not a readable image")
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    return [_to_rgb(img, path)]


def read_video(path: Path, max_frames: int = 0) -> list[np.ndarray]:
    """Read an animated GIF or a video (AVI/MP4) with OpenCV.

    Args:
        path: the clip.
        max_frames: keep at most this many frames, evenly spaced (0 = all).
    """
    import cv2

    frames: list[np.ndarray] = []
    if path.suffix.lower() == ".gif":
        ok, anim = cv2.imreadanimation(str(path))
        if ok:
            for fr in anim.frames:
                if fr.ndim == 3 and fr.shape[2] == 4:
                    fr = cv2.cvtColor(fr, cv2.COLOR_BGRA2RGB)
                elif fr.ndim == 3:
                    fr = cv2.cvtColor(fr, cv2.COLOR_BGR2RGB)
                frames.append(_to_rgb(fr, path))
    if not frames:
        cap = cv2.VideoCapture(str(path))
        try:
            while True:
                ok, fr = cap.read()
                if not ok:
                    break
                frames.append(_to_rgb(cv2.cvtColor(fr, cv2.COLOR_BGR2RGB), path))
        finally:
            cap.release()
    if not frames:
        raise InputError(path, "no readable frames (not a video OpenCV can decode)")
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
        v = ds.get(k)
        if v is not None:
            out[k] = str(v)
    tsu = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if tsu is not None:
        out["TransferSyntax"] = getattr(tsu, "name", str(tsu))
    return out


def read_dicom(path: Path, max_frames: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Read a DICOM image or cine: JPEG-compressed, YBR -> RGB, palette colour -> RGB.

    Args:
        path: the DICOM file.
        max_frames: keep at most this many frames, evenly spaced (0 = all).

    Returns:
        (frames, info) with non-identifying acquisition facts.
    """
    import pydicom
    from pydicom.pixels import apply_color_lut, convert_color_space

    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises many types on broken files
        raise InputError(path, f"not a readable DICOM ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(path, "DICOM has no pixel data")
    try:
        arr = ds.pixel_array  # pydicom 3 converts YBR to RGB by default for JPEG
    except Exception as e:
        raise InputError(path, f"DICOM pixel data cannot be decoded ({type(e).__name__}: {str(e)[:80]})") from None
    pi = str(ds.get("PhotometricInterpretation", "")).upper()
    n_frames = int(ds.get("NumberOfFrames", 1) or 1)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    if pi == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
    elif pi.startswith("YBR") and spp == 3:
        # pixel_array already converts JPEG-baseline YBR; convert only what is still YBR
        if not _already_rgb(ds):
            arr = convert_color_space(arr, pi, "RGB")
    elif pi == "MONOCHROME1":
        arr = arr.max() - arr
    if pi == "PALETTE COLOR" and arr.dtype == np.uint16 and int(arr.max()) > 255:
        arr = (arr >> 8).astype(np.uint8)  # 16-bit LUT entries -> 8 bits, contrast kept
    if n_frames == 1:
        arr = arr[None]
    frames = [_to_rgb(np.asarray(f), path) for f in arr]
    if not frames:
        raise InputError(path, "DICOM has no frames")
    return _subsample(frames, max_frames), dicom_info(ds)


def _already_rgb(ds: Any) -> bool:
    tsu = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(tsu is not None and getattr(tsu, "is_compressed", False))


def read_frames(path: str | Path, max_frames: int = 0) -> tuple[list[np.ndarray], dict[str, Any]]:
    """Read any supported input as RGB frames.

    Args:
        path: PNG/JPEG/BMP/TIFF, DICOM (any suffix, detected by its preamble), GIF/AVI/MP4.
        max_frames: keep at most this many frames of a cine (0 = all).

    Returns:
        (frames, info): frames are RGB uint8 arrays; info has ``kind`` and, for DICOM,
        non-identifying acquisition facts.

    Raises:
        InputError: missing, empty, unreadable, wrong channel count, too large.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    sfx = path.suffix.lower()
    if _is_dicom(path) or sfx in (".dcm", ".dicom"):
        frames, info = read_dicom(path, max_frames)
        return frames, {"kind": "dicom", **info}
    if sfx in VIDEO_SUFFIXES:
        return read_video(path, max_frames), {"kind": "video"}
    if sfx in IMAGE_SUFFIXES:
        return read_image(path), {"kind": "image"}
    # unknown suffix: try as image, then as video
    try:
        return read_image(path), {"kind": "image"}
    except InputError:
        raise InputError(path, f"unsupported or unreadable file type '{sfx or 'no suffix'}'") from None
