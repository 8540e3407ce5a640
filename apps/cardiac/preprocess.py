"""Ultrasound preprocessing: find the scan sector (fan), crop to it, grayscale, resize, normalise.

Vendor text, ECG trace, scale bars, colour bars and other UI outside the sector are removed by
masking with the convex hull of the largest bright, speckle-filled region.  Every parameter lives
in one dict (:data:`DEFAULT_PREPROC`) written into the bundle, so ``predict`` reproduces training
exactly.  Torch-free: numpy + OpenCV.
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: every preprocessing parameter (the bundle's ``preprocessing`` section)
DEFAULT_PREPROC: dict[str, Any] = {
    "work_long_side": 256,  # detection runs on a copy resized to this long side
    "intensity_threshold": 12,  # gray level above which a pixel may be tissue
    "saturation_max": 70,  # pixels more saturated than this (ECG, colour bars, Doppler) are not tissue
    "close_frac": 0.03,  # closing kernel / long side: joins speckle into one region
    "open_frac": 0.03,  # opening kernel / long side: removes text, ECG trace, thin scale bars
    "min_area_frac": 0.08,  # sector hull must cover at least this fraction of the frame
    "max_area_frac": 0.97,
    "min_solidity": 0.6,  # region area / hull area
    "max_top_width_ratio": 0.6,  # hull width in the top 10% rows / max width (a fan narrows at the top)
    "max_mid_width_ratio": 0.99,  # hull width at half height / max width (< 1: the region widens with depth)
    "size": 224,  # model input side (square, letterboxed)
    "mean": 0.5,  # normalisation of [0,1] gray, replicated to 3 channels
    "std": 0.25,
    "channels": 3,
}


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 -> gray uint8."""
    import cv2

    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


def detect_sector(rgb: np.ndarray, params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Find the ultrasound sector in one RGB frame.

    Args:
        rgb: RGB uint8 frame (H, W, 3).
        params: preprocessing parameters (defaults: :data:`DEFAULT_PREPROC`).

    Returns:
        dict with ``mask`` (H, W) uint8 hull mask, ``bbox`` (x0, y0, x1, y1), ``found`` (bool: a
        fan-shaped sector was found), ``reason`` (why not), and the measured ``area_frac``,
        ``solidity``, ``top_width_ratio``.
    """
    import cv2

    p = {**DEFAULT_PREPROC, **(params or {})}
    h, w = rgb.shape[:2]
    scale = float(p["work_long_side"]) / max(h, w)
    sw, sh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
    small = cv2.resize(rgb, (sw, sh), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
    fg = ((gray > p["intensity_threshold"]) & (hsv[..., 1] <= p["saturation_max"])).astype(np.uint8)
    # colour Doppler inside the sector: keep it as tissue when surrounded by gray (closing does that)
    long_side = max(sw, sh)
    kc = max(3, int(round(p["close_frac"] * long_side)) | 1)
    ko = max(3, int(round(p["open_frac"] * long_side)) | 1)
    fg = cv2.morphologyEx(fg, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (kc, kc)))
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (ko, ko)))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    out: dict[str, Any] = {
        "found": False,
        "reason": "",
        "area_frac": 0.0,
        "solidity": 0.0,
        "top_width_ratio": 1.0,
        "mid_width_ratio": 1.0,
    }
    if n <= 1:
        out.update(mask=np.full((h, w), 255, np.uint8), bbox=(0, 0, w, h), reason="no bright region")
        return out
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    region = (labels == big).astype(np.uint8)
    contours, _ = cv2.findContours(region, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull = cv2.convexHull(np.vstack(contours))
    hull_mask = np.zeros((sh, sw), np.uint8)
    cv2.fillConvexPoly(hull_mask, hull, 1)
    hull_area = float(hull_mask.sum())
    area_frac = hull_area / float(sw * sh)
    solidity = float(region.sum()) / max(hull_area, 1.0)
    ys, xs = np.nonzero(hull_mask)
    y0, y1 = int(ys.min()), int(ys.max()) + 1
    widths = hull_mask[y0:y1].sum(axis=1).astype(np.float32)
    top = widths[: max(1, (y1 - y0) // 10)]
    top_ratio = float(top.mean() / max(widths.max(), 1.0))
    mid = widths[int(len(widths) * 0.45) : max(int(len(widths) * 0.55), int(len(widths) * 0.45) + 1)]
    mid_ratio = float(np.median(mid) / max(widths.max(), 1.0))
    out.update(
        area_frac=round(area_frac, 4),
        solidity=round(solidity, 4),
        top_width_ratio=round(top_ratio, 4),
        mid_width_ratio=round(mid_ratio, 4),
    )
    reasons = []
    if not (p["min_area_frac"] <= area_frac <= p["max_area_frac"]):
        reasons.append(f"sector area {area_frac:.2f} of frame outside [{p['min_area_frac']}, {p['max_area_frac']}]")
    if solidity < p["min_solidity"]:
        reasons.append(f"region solidity {solidity:.2f} < {p['min_solidity']}")
    if top_ratio > p["max_top_width_ratio"]:
        reasons.append(f"not fan-shaped (top/max width {top_ratio:.2f} > {p['max_top_width_ratio']})")
    if mid_ratio > p["max_mid_width_ratio"]:
        reasons.append(f"not fan-shaped (mid/max width {mid_ratio:.2f} > {p['max_mid_width_ratio']})")
    out["found"] = not reasons
    out["reason"] = "; ".join(reasons)
    full = cv2.resize(hull_mask * 255, (w, h), interpolation=cv2.INTER_NEAREST)
    x0b, y0b = int(xs.min() / scale), int(y0 / scale)
    x1b, y1b = min(w, int(np.ceil((xs.max() + 1) / scale))), min(h, int(np.ceil(y1 / scale)))
    out.update(mask=full, bbox=(x0b, y0b, x1b, y1b))
    return out


def letterbox(img: np.ndarray, size: int) -> np.ndarray:
    """Resize keeping the aspect ratio and pad with zeros to ``size x size``."""
    import cv2

    h, w = img.shape[:2]
    s = float(size) / max(h, w)
    nw, nh = max(1, int(round(w * s))), max(1, int(round(h * s)))
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    r = cv2.resize(img, (nw, nh), interpolation=interp)
    out = np.zeros((size, size), dtype=img.dtype)
    y, x = (size - nh) // 2, (size - nw) // 2
    out[y : y + nh, x : x + nw] = r
    return out


def crop_sector(rgb: np.ndarray, params: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Mask outside the sector, crop to it, gray, letterbox to the model size.

    Args:
        rgb: RGB uint8 frame.
        params: preprocessing parameters.

    Returns:
        (crop, info): crop is gray uint8 (size, size); info is :func:`detect_sector` minus the mask.
    """
    p = {**DEFAULT_PREPROC, **(params or {})}
    det = detect_sector(rgb, p)
    gray = to_gray(rgb)
    gray = np.where(det["mask"] > 0, gray, 0).astype(np.uint8)
    x0, y0, x1, y1 = det["bbox"]
    crop = letterbox(gray[y0:y1, x0:x1], int(p["size"]))
    info = {k: v for k, v in det.items() if k != "mask"}
    info["bbox"] = [int(v) for v in det["bbox"]]
    return crop, info


def normalise(crops: np.ndarray | list[np.ndarray], params: dict[str, Any] | None = None) -> np.ndarray:
    """Gray uint8 crops (N, S, S) -> float32 model input (N, C, S, S)."""
    p = {**DEFAULT_PREPROC, **(params or {})}
    x = np.asarray(crops, dtype=np.float32) / 255.0
    x = (x - float(p["mean"])) / float(p["std"])
    return np.repeat(x[:, None], int(p["channels"]), axis=1).astype(np.float32)


def contact_sheet(crops: list[np.ndarray], titles: list[str], path: Any, cols: int = 6) -> Any:
    """Write the crops a prediction used as one PNG grid (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(1, len(crops))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.5 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i < len(crops):
            ax.imshow(crops[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(titles[i], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
