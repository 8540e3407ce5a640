"""Image reading/preprocessing (torch-free), folder importer and the shapes fixture generator."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.manifest import Record, assign_splits, write_manifest
from medtransfer.shared.utils.errors import InputError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MAX_PIXELS = 80_000_000


def default_preprocessing(size: int = 64) -> dict[str, Any]:
    """The preprocessing parameters written into the bundle."""
    return {"size": size, "grayscale": True, "mean": 0.5, "std": 0.25, "resize": "area"}


def load_image(path: str | Path, prep: dict[str, Any]) -> np.ndarray:
    """Read and preprocess one image to (1, size, size) float32.

    Raises:
        InputError: unreadable / not an image / too large / odd channel count.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        with Image.open(path) as im:
            if im.width * im.height > MAX_PIXELS:
                raise InputError(path, f"image too large ({im.width}x{im.height} pixels)")
            bands = len(im.getbands())
            if bands not in (1, 2, 3, 4):
                raise InputError(path, f"unexpected channel count {bands}")
            im = im.convert("L") if prep.get("grayscale", True) else im.convert("RGB")
            size = int(prep["size"])
            im = im.resize((size, size), Image.Resampling.BOX)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(path, f"not a readable image ({type(e).__name__})") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return ((arr - float(prep["mean"])) / float(prep["std"])).astype(np.float32)


def import_image_folder(root: str | Path, out_csv: str | Path, seed: int = 0, **_: Any) -> Path:
    """``ROOT/<class>/<image>`` (optionally ``ROOT/<split>/<class>/<image>``) -> manifest."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "dataset folder not found")
    recs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in SUFFIXES:
            continue
        parts = p.relative_to(root).parts
        if len(parts) < 2:
            continue
        split = parts[0] if len(parts) >= 3 and parts[0] in ("train", "val", "test") else ""
        recs.append(Record(path=p.resolve(), label=parts[-2], split=split))
    if not recs:
        raise InputError(root, "no images found in <class>/ sub-folders")
    return write_manifest(assign_splits(recs, seed=seed), out_csv)


CLASSES = ("circle", "square", "triangle")


def make_shapes(root: str | Path, n_per_class: int = 40, size: int = 64, seed: int = 0) -> Path:
    """Write ``root/<class>/<i>.png`` noisy shapes (the core demo/test fixture); returns root."""
    import cv2

    rng = np.random.default_rng(seed)
    root = Path(root)
    for ci, cls in enumerate(CLASSES):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            img = rng.normal(60, 20, (size, size)).clip(0, 255).astype(np.uint8)
            c = rng.integers(size // 3, 2 * size // 3, 2)
            r = int(rng.integers(size // 8, size // 4))
            col = int(rng.integers(160, 255))
            if cls == "circle":
                cv2.circle(img, (int(c[0]), int(c[1])), r, col, -1)
            elif cls == "square":
                cv2.rectangle(img, (int(c[0] - r), int(c[1] - r)), (int(c[0] + r), int(c[1] + r)), col, -1)
            else:
                pts = np.array([[c[0], c[1] - r], [c[0] - r, c[1] + r], [c[0] + r, c[1] + r]], np.int32)
                cv2.fillPoly(img, [pts], col)
            cv2.imwrite(str(root / cls / f"{cls}_{i:03d}.png"), img)
    return root
