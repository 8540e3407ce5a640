"""Echo-like phantoms in the CACTUS layout (shared by the demo and the tests).

Each phantom is a screenshot-like frame: a fan-shaped sector holding view-dependent structures
(A4C, PL, PSAV, PSMV, SC, Random), speckle, and vendor-style overlays outside the sector (text,
ECG trace, depth scale, colour bar).  Quality ``q`` (0-10) drives blur, noise, gain and how much
of the heart has slid out of the sector, so the grade is learnable.  Torch-free.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

VIEWS = ("A4C", "PL", "PSAV", "PSMV", "SC", "Random")
#: folder that holds the view folders inside ``Cactus Dataset/`` (see data_cards/cactus.md)
IMAGES_DIR = "Images Dataset"
GRADES_DIR = "Grades"
GRADE_COLUMNS = ("Image Name", "Subfolder Name", "Grade")


def _ellipse(
    img: np.ndarray, c: tuple[float, float], ax: tuple[float, float], ang: float, val: float, thick: int = -1
) -> None:
    import cv2

    cv2.ellipse(
        img,
        (int(c[0]), int(c[1])),
        (max(1, int(ax[0])), max(1, int(ax[1]))),
        ang,
        0,
        360,
        float(val),
        thick,
        lineType=cv2.LINE_AA,
    )


def _structures(view: str, h: int, w: int, rng: np.random.Generator, shift: float) -> np.ndarray:
    """Tissue map in [0,1] for one view (before sector mask, speckle and degradation)."""
    import cv2

    img = np.full((h, w), 0.45, np.float32)
    s = min(h, w)
    ang = rng.uniform(-8, 8)
    sc = rng.uniform(0.9, 1.1)
    cx = w / 2 + (rng.uniform(-0.05, 0.05) + shift) * s
    cy = h * 0.55 + rng.uniform(-0.04, 0.04) * s

    def P(u: float, v: float) -> tuple[float, float]:
        a = np.deg2rad(ang)
        x, y = u * s * sc, v * s * sc
        return (cx + x * np.cos(a) - y * np.sin(a), cy + x * np.sin(a) + y * np.cos(a))

    def L(a: float) -> float:
        return a * s * sc

    dark = 0.06
    if view == "A4C":
        for u, v, a, b in (
            (-0.17, -0.12, 0.13, 0.17),
            (0.17, -0.12, 0.13, 0.17),
            (-0.17, 0.22, 0.14, 0.12),
            (0.17, 0.22, 0.14, 0.12),
        ):
            _ellipse(img, P(u, v), (L(a), L(b)), ang, dark)
        cv2.line(img, tuple(map(int, P(0, -0.32))), tuple(map(int, P(0, 0.36))), 0.95, max(2, int(L(0.03))))
        cv2.line(img, tuple(map(int, P(-0.32, 0.06))), tuple(map(int, P(0.32, 0.06))), 0.9, max(2, int(L(0.025))))
    elif view == "PL":
        _ellipse(img, P(0.08, 0.0), (L(0.34), L(0.1)), ang + 8, dark)
        _ellipse(img, P(-0.28, 0.12), (L(0.1), L(0.1)), ang, dark)
        _ellipse(img, P(-0.22, -0.12), (L(0.16), L(0.05)), ang - 10, dark)
        _ellipse(img, P(0.0, -0.22), (L(0.36), L(0.045)), ang, 0.12)
        cv2.line(img, tuple(map(int, P(-0.36, 0.26))), tuple(map(int, P(0.4, 0.2))), 0.95, max(2, int(L(0.035))))
    elif view == "PSAV":
        _ellipse(img, P(0, 0), (L(0.13), L(0.13)), 0, 0.95, max(2, int(L(0.03))))
        _ellipse(img, P(0, 0), (L(0.11), L(0.11)), 0, dark)
        for t in (90, 210, 330):
            a = np.deg2rad(t + ang)
            p2 = (P(0, 0)[0] + L(0.11) * np.cos(a), P(0, 0)[1] + L(0.11) * np.sin(a))
            cv2.line(img, tuple(map(int, P(0, 0))), tuple(map(int, p2)), 0.9, max(1, int(L(0.015))))
        _ellipse(img, P(-0.24, 0.12), (L(0.09), L(0.08)), 0, dark)
        _ellipse(img, P(0.05, 0.24), (L(0.14), L(0.06)), 0, dark)
        cv2.ellipse(
            img, tuple(map(int, P(0, 0))), (int(L(0.27)), int(L(0.24))), ang, 180, 360, dark, max(2, int(L(0.06)))
        )
    elif view == "PSMV":
        _ellipse(img, P(0, 0.02), (L(0.3), L(0.28)), 0, 0.92, max(3, int(L(0.06))))
        _ellipse(img, P(0, 0.02), (L(0.26), L(0.24)), 0, dark)
        _ellipse(img, P(0, 0.02), (L(0.17), L(0.06)), ang, 0.85, max(1, int(L(0.02))))
        cv2.ellipse(
            img, tuple(map(int, P(0, 0.02))), (int(L(0.4)), int(L(0.36))), ang, 200, 340, dark, max(2, int(L(0.05)))
        )
    elif view == "SC":
        cv2.rectangle(img, (0, 0), (w, int(P(0, -0.22)[1])), 0.8, -1)
        for u, v, a, b in (
            (-0.2, 0.0, 0.1, 0.09),
            (0.05, -0.02, 0.11, 0.09),
            (-0.15, 0.2, 0.12, 0.08),
            (0.12, 0.18, 0.12, 0.08),
        ):
            _ellipse(img, P(u, v), (L(a), L(b)), ang - 25, dark)
        cv2.line(img, tuple(map(int, P(-0.35, 0.1))), tuple(map(int, P(0.35, 0.08))), 0.9, max(2, int(L(0.02))))
    else:  # Random: a random probe position: blobs and bands with no cardiac arrangement
        for _ in range(int(rng.integers(1, 5))):
            c = (rng.uniform(0, w), rng.uniform(0, h))
            _ellipse(
                img,
                c,
                (rng.uniform(0.04, 0.3) * s, rng.uniform(0.04, 0.3) * s),
                rng.uniform(0, 180),
                float(rng.choice([dark, 0.9, 0.25])),
            )
        if rng.random() < 0.5:
            y = rng.uniform(0.2, 0.9) * h
            cv2.line(img, (0, int(y)), (w, int(y + rng.uniform(-0.3, 0.3) * h)), 0.9, max(2, int(0.03 * s)))
    return img


def sector_mask(h: int, w: int, apex_y: int, radius: float, half_angle: float, cx: float | None = None) -> np.ndarray:
    """Boolean fan mask (apex at the top)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 if cx is None else cx
    dx, dy = xx - cx, yy - apex_y
    r = np.hypot(dx, dy)
    th = np.degrees(np.arctan2(dx, np.maximum(dy, 1e-6)))
    return (r <= radius) & (dy > 0) & (np.abs(th) <= half_angle)


def render(
    view: str, quality: float, rng: np.random.Generator, size: tuple[int, int] = (192, 256), overlays: bool = True
) -> np.ndarray:
    """Render one phantom frame.

    Args:
        view: one of :data:`VIEWS`.
        quality: 0 (useless) to 10 (perfect).
        rng: random generator.
        size: (H, W) of the screenshot.
        overlays: draw vendor text, ECG trace, depth scale and colour bar outside the sector.

    Returns:
        RGB uint8 (H, W, 3).
    """
    import cv2

    h, w = size
    sev = float(np.clip((10.0 - quality) / 10.0, 0, 1))
    shift = float(rng.choice([-1, 1])) * 0.35 * max(0.0, sev - 0.3)  # partial sector: heart slides out
    tissue = _structures(view, h, w, rng, shift)
    speckle = rng.rayleigh(0.6, size=(h, w)).astype(np.float32)
    img = tissue * (0.55 + 0.45 * speckle)
    img = cv2.GaussianBlur(img, (0, 0), 0.6 + 3.0 * sev * min(h, w) / 192)
    img = img + rng.normal(0, 0.05 + 0.3 * sev, size=(h, w)).astype(np.float32)
    gain = 1.0 + float(rng.choice([-1, 1])) * 0.55 * sev
    img = np.clip(img * gain, 0, 1)
    apex_y = int(0.06 * h)
    mask = sector_mask(h, w, apex_y, radius=0.9 * h, half_angle=float(rng.uniform(36, 42)))
    gray = (img * 235 * mask).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    if overlays:
        f = h / 192
        cv2.putText(
            rgb,
            f"{int(rng.integers(40, 70))}Hz",
            (4, int(14 * f)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35 * f,
            (230, 230, 230),
            1,
        )
        cv2.putText(
            rgb,
            f"{int(rng.integers(12, 18))}cm",
            (4, int(26 * f)),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.35 * f,
            (230, 230, 230),
            1,
        )
        cv2.putText(rgb, "2D 60%", (4, int(38 * f)), cv2.FONT_HERSHEY_SIMPLEX, 0.3 * f, (200, 200, 200), 1)
        xs = np.arange(4, int(w * 0.45))
        ys = (h - 10 * f - 8 * f * np.exp(-(((xs % 40) - 20) ** 2) / 4.0)).astype(np.int32)
        cv2.polylines(rgb, [np.stack([xs, ys], 1)], False, (40, 200, 60), 1)
        for k in range(6):
            y = int(apex_y + k * 0.15 * h)
            cv2.line(rgb, (w - 8, y), (w - 3, y), (200, 200, 200), 1)
        for k in range(int(30 * f)):
            cv2.line(rgb, (w - 14, int(10 * f + k)), (w - 10, int(10 * f + k)), (int(255 * k / (30 * f)),) * 3, 1)
    return rgb


def grade_for(view: str, quality: int) -> int:
    """The grade a phantom carries (Random frames are graded 0: no cardiac view to assess)."""
    return 0 if view == "Random" else int(quality)


def make_cactus_tree(
    root: str | Path,
    n_per_view: int = 20,
    seed: int = 0,
    size: tuple[int, int] = (192, 256),
    views: tuple[str, ...] = VIEWS,
    n_sessions: int = 4,
) -> Path:
    """Write a phantom copy of the CACTUS release layout.

    Layout (see data_cards/cactus.md)::

        ROOT/Cactus Dataset/Images Dataset/<VIEW>/<session>_D<k>_<n>.png
        ROOT/Cactus Dataset/Grades/<VIEW>_grades.csv   columns: Image Name, Subfolder Name, Grade

    Args:
        root: output folder.
        n_per_view: images per view.
        seed: random seed.
        size: (H, W) of each image.
        views: views to write.
        n_sessions: acquisition sessions (groups) per view, encoded in file names.

    Returns:
        The ``Cactus Dataset`` folder.
    """
    import cv2

    rng = np.random.default_rng(seed)
    base = Path(root) / "Cactus Dataset"
    (base / GRADES_DIR).mkdir(parents=True, exist_ok=True)
    for vi, view in enumerate(views):
        folder = base / IMAGES_DIR / view
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for i in range(n_per_view):
            q = int(rng.integers(0, 11))
            img = render(view, q, rng, size=size)
            sess = i % n_sessions
            name = f"{vi + 1}{sess}_D{sess + 1}_{i:04d}.png"
            cv2.imwrite(str(folder / name), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            rows.append({"Image Name": name, "Subfolder Name": view, "Grade": grade_for(view, q)})
        with open(base / GRADES_DIR / f"{view}_grades.csv", "w", newline="", encoding="utf-8") as f:
            wr = csv.DictWriter(f, fieldnames=list(GRADE_COLUMNS))
            wr.writeheader()
            wr.writerows(rows)
    return base


# ---- format fixtures for the readers -----------------------------------------------------------
def write_dicom(
    path: str | Path, frames: list[np.ndarray], kind: str = "jpeg_ybr", patient_name: str = "DOE^JANE"
) -> Path:
    """Write a small DICOM fixture.

    Args:
        path: output file.
        frames: RGB uint8 frames (all the same size).
        kind: ``jpeg_ybr`` (JPEG baseline, YBR_FULL_422, multi-frame), ``rgb`` (uncompressed),
            ``palette`` (8-bit PALETTE COLOR of the first frame's gray), ``mono16`` (16-bit
            MONOCHROME2), ``nopixels`` (header only).
        patient_name: written to the header (tests check it never reaches outputs).
    """
    import cv2
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, UltrasoundMultiFrameImageStorage, generate_uid

    path = Path(path)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UltrasoundMultiFrameImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName = patient_name
    ds.PatientID = "ID-12345"
    h, w = frames[0].shape[:2]
    ds.Rows, ds.Columns = h, w
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelRepresentation = 0
    if kind == "jpeg_ybr":
        meta.TransferSyntaxUID = JPEGBaseline8Bit
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "YBR_FULL_422"
        ds.NumberOfFrames = len(frames)
        blobs = [
            cv2.imencode(".jpg", cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])[1].tobytes()
            for f in frames
        ]
        ds.PixelData = encapsulate(blobs)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
    elif kind == "rgb":
        ds.SamplesPerPixel = 3
        ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = "RGB"
        if len(frames) > 1:
            ds.NumberOfFrames = len(frames)
        ds.PixelData = np.stack(frames).astype(np.uint8).tobytes()
    elif kind == "palette":
        gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "PALETTE COLOR"
        lut = np.arange(256, dtype=np.uint16) * 257
        for c, scale in (("Red", 1.0), ("Green", 0.9), ("Blue", 0.8)):
            setattr(ds, f"{c}PaletteColorLookupTableDescriptor", [256, 0, 16])
            setattr(ds, f"{c}PaletteColorLookupTableData", (lut * scale).astype("<u2").tobytes())
        ds.PixelData = gray.tobytes()
    elif kind == "mono16":
        gray = cv2.cvtColor(frames[0], cv2.COLOR_RGB2GRAY).astype(np.uint16) * 16
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 12, 11
        ds.PixelData = gray.tobytes()
    elif kind == "nopixels":
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
    else:
        raise ValueError(f"unknown DICOM fixture kind {kind!r}")
    ds.save_as(str(path), enforce_file_format=True)
    return path


def write_gif(path: str | Path, frames: list[np.ndarray], duration_ms: int = 40) -> Path:
    """Write an animated GIF fixture (Pillow)."""
    from PIL import Image

    ims = [Image.fromarray(f) for f in frames]
    ims[0].save(str(path), save_all=True, append_images=ims[1:], duration=duration_ms, loop=0)
    return Path(path)


def write_avi(path: str | Path, frames: list[np.ndarray], fps: float = 20.0) -> Path:
    """Write an MJPG AVI fixture (OpenCV)."""
    import cv2

    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
    vw.release()
    return Path(path)


def cine(view: str, quality: float, n: int, seed: int = 0, size: tuple[int, int] = (192, 256)) -> list[np.ndarray]:
    """A short phantom cine (independent speckle per frame)."""
    return [render(view, quality, np.random.default_rng(seed * 1000 + k), size=size) for k in range(n)]
