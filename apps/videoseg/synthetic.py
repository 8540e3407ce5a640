"""Synthetic echo-like cine loops in the EchoNet-Dynamic layout (for tests and the demo).

Each video shows a beating ellipse (the "left ventricle": a dark cavity in a bright wall, on
speckle noise) whose size follows a cardiac cycle.  Written exactly as EchoNet-Dynamic ships:
``Videos/<FileName>.avi``, ``FileList.csv`` (FileName, EF, ESV, EDV, FrameHeight, FrameWidth, FPS,
NumberOfFrames, Split) and ``VolumeTracings.csv`` (FileName, X1, Y1, X2, Y2, Frame: the long axis
then 20 chords, for the end-diastolic and end-systolic frames).  As an extension for evaluation,
``SyntheticMasks/<FileName>.npz`` holds the true mask of every frame.  Torch-free.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from medtransfer.apps.videoseg.io import write_avi, write_masks


def _ellipse(
    t: int, n_frames: int, size: int, rng_params: dict[str, float]
) -> tuple[float, float, float, float, float]:
    period = rng_params["period"]
    phase = 0.5 * (1 + math.cos(2 * math.pi * t / period + rng_params["phase"]))  # 1 = ED, 0 = ES
    scale = rng_params["es_scale"] + (1 - rng_params["es_scale"]) * phase
    a = rng_params["a"] * size * (0.75 + 0.25 * scale)  # long axis shortens less
    b = rng_params["b"] * size * scale
    cx = rng_params["cx"] * size + 1.5 * math.sin(2 * math.pi * t / period)
    cy = rng_params["cy"] * size + 1.0 * math.cos(2 * math.pi * t / period)
    return cx, cy, a, b, rng_params["angle"]


def _mask(cx: float, cy: float, a: float, b: float, ang: float, size: int) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = (xx - cx) * math.cos(ang) + (yy - cy) * math.sin(ang)
    v = -(xx - cx) * math.sin(ang) + (yy - cy) * math.cos(ang)
    return ((u / a) ** 2 + (v / b) ** 2 <= 1.0).astype(np.uint8)


def _tracing(
    cx: float, cy: float, a: float, b: float, ang: float, n_chords: int = 20
) -> list[tuple[float, float, float, float]]:
    ux, uy = math.cos(ang), math.sin(ang)
    vx, vy = -math.sin(ang), math.cos(ang)
    rows = [(cx - a * ux, cy - a * uy, cx + a * ux, cy + a * uy)]  # long axis first
    for s in np.linspace(-a, a, n_chords + 2)[1:-1]:
        h = b * math.sqrt(max(0.0, 1 - (s / a) ** 2))
        px, py = cx + s * ux, cy + s * uy
        rows.append((px + h * vx, py + h * vy, px - h * vx, py - h * vy))
    return rows


def make_cine(size: int = 112, n_frames: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """One synthetic cine.

    Returns:
        ``frames (T, H, W) uint8``, ``masks (T, H, W) uint8`` and the shape parameters per frame.
    """
    rng = np.random.default_rng(seed)
    p = {
        "period": float(rng.uniform(18, 26)),
        "phase": float(rng.uniform(0, 2 * math.pi)),
        "es_scale": float(rng.uniform(0.55, 0.75)),
        "a": float(rng.uniform(0.26, 0.32)),
        "b": float(rng.uniform(0.14, 0.18)),
        "cx": float(rng.uniform(0.42, 0.58)),
        "cy": float(rng.uniform(0.42, 0.58)),
        "angle": float(rng.uniform(1.2, 1.9)),
    }
    frames = np.zeros((n_frames, size, size), np.uint8)
    masks = np.zeros((n_frames, size, size), np.uint8)
    params = []
    yy, xx = np.mgrid[0:size, 0:size]
    sector = (np.abs(np.arctan2(xx - size / 2, yy + 5)) < 0.75).astype(np.float32)
    for t in range(n_frames):
        cx, cy, a, b, ang = _ellipse(t, n_frames, size, p)
        params.append((cx, cy, a, b, ang))
        inner = _mask(cx, cy, a, b, ang, size)
        wall = _mask(cx, cy, a + 5, b + 5, ang, size) & (1 - inner)
        img = 60 * sector + 110 * wall + 15 * inner
        img = img * rng.gamma(4.0, 0.25, img.shape) + rng.normal(0, 6, img.shape)
        frames[t] = np.clip(img, 0, 255).astype(np.uint8)
        masks[t] = inner
    return frames, masks, {"params": params, **p}


def make_echonet_like(
    root: str | Path,
    n_videos: int = 6,
    size: int = 112,
    n_frames: int = 32,
    seed: int = 0,
    splits: tuple[str, ...] = ("TRAIN", "TRAIN", "TRAIN", "VAL", "TEST", "TEST"),
    with_ext: bool = False,
) -> Path:
    """Write ``n_videos`` synthetic cines in the EchoNet-Dynamic layout under ``root``.

    Args:
        root: output folder (created).
        n_videos: number of videos.
        size: frame size (EchoNet: 112).
        n_frames: frames per video.
        seed: base seed.
        splits: split of each video (cycled).
        with_ext: write FileName with the ``.avi`` suffix in FileList.csv (both occur in releases).

    Returns:
        ``root``.
    """
    root = Path(root)
    (root / "Videos").mkdir(parents=True, exist_ok=True)
    file_rows, trace_rows = [], []
    for i in range(n_videos):
        name = f"0X{seed:02d}{i:04d}SYN"
        frames, masks, info = make_cine(size, n_frames, seed=seed * 1000 + i)
        write_avi(root / "Videos" / f"{name}.avi", frames, fps=50.0)
        write_masks(root / "SyntheticMasks" / f"{name}.npz", masks)
        areas = masks.reshape(n_frames, -1).sum(1)
        # ED / ES inside the first cycle, as EchoNet traces one beat
        first = int(info["period"]) + 1
        ed = int(np.argmax(areas[:first]))
        es = int(np.argmin(areas[:first]))
        edv, esv = float(areas[ed]), float(areas[es])
        file_rows.append(
            {
                "FileName": name + (".avi" if with_ext else ""),
                "EF": round(100 * (edv - esv) / edv, 2),
                "ESV": esv,
                "EDV": edv,
                "FrameHeight": size,
                "FrameWidth": size,
                "FPS": 50,
                "NumberOfFrames": n_frames,
                "Split": splits[i % len(splits)],
            }
        )
        for fr in sorted((ed, es)):
            for x1, y1, x2, y2 in _tracing(*info["params"][fr]):
                trace_rows.append(
                    {
                        "FileName": name + ".avi",
                        "X1": round(x1, 3),
                        "Y1": round(y1, 3),
                        "X2": round(x2, 3),
                        "Y2": round(y2, 3),
                        "Frame": fr,
                    }
                )
    with open(root / "FileList.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(file_rows[0]))
        w.writeheader()
        w.writerows(file_rows)
    with open(root / "VolumeTracings.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(trace_rows[0]))
        w.writeheader()
        w.writerows(trace_rows)
    return root


def make_trackrad_like(
    root: str | Path, case: str = "S_001", size: int = 64, n_frames: int = 12, seed: int = 0
) -> Path:
    """One synthetic case in the TrackRAD2025 layout (moving disc; ``(H, W, T)`` .mha stacks)."""
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    d = Path(root) / case
    (d / "images").mkdir(parents=True, exist_ok=True)
    (d / "targets").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    imgs = np.zeros((size, size, n_frames), np.uint16)
    labs = np.zeros((size, size, n_frames), np.uint8)
    for t in range(n_frames):
        cy = size / 2 + size * 0.15 * math.sin(2 * math.pi * t / 10)
        m = ((yy - cy) ** 2 + (xx - size / 2) ** 2) <= (size * 0.12) ** 2
        labs[..., t] = m
        imgs[..., t] = np.clip(80 + 120 * m + rng.normal(0, 10, m.shape), 0, 65535).astype(np.uint16)
    sitk.WriteImage(sitk.GetImageFromArray(imgs), str(d / "images" / f"{case}_frames.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(labs), str(d / "targets" / f"{case}_labels.mha"))
    sitk.WriteImage(sitk.GetImageFromArray(labs[..., :1]), str(d / "targets" / f"{case}_first_label.mha"))
    (d / "frame-rate.json").write_text("4.0")
    (d / "b-field-strength.json").write_text("0.35")
    (d / "scanned-region.json").write_text('"abdomen"')
    return Path(root)
