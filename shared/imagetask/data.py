"""Image reading/preprocessing (torch-free), folder importer and the shapes fixture generator.

:func:`read_image` (what ``predict``, ``score`` and training read through) checks the header's
size against ``shared.runtime.gates`` before decoding any pixel, turns PIL's exceptions into one-line
:class:`InputError`, and reports blank / constant images as plausibility reasons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from medtransfer.shared.manifest import Record, assign_splits, write_manifest
from medtransfer.shared.runtime import gates
from medtransfer.shared.utils.errors import ConfigError, InputError

SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
#: kept for callers; the limit applied is ``gates.LIMITS["image_max_pixels"]`` (or the bundle's override)
MAX_PIXELS = 80_000_000


def read_image(
    path: str | Path,
    prep: dict[str, Any],
    overrides: Mapping[str, Any] | None = None,
    transform: Callable[..., np.ndarray] | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Read and preprocess one image to (C, size, size) float32, with its plausibility reasons.

    The header's width / height are checked (``gates.image_header_size`` / ``check_image_size``)
    before the pixels are decoded.

    Args:
        path: the image file.
        prep: the bundle's preprocessing parameters.
        overrides: the bundle's ``gates`` limit overrides.
        transform: applied to the resized 0-255 pixels before the gates (``medtransfer audit``).

    Returns:
        (array, reasons): reasons is empty unless the image is blank / constant.

    Raises:
        InputError: missing / unreadable / implausibly sized / undecodable / odd channel count.
    """
    from PIL import Image

    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a folder, not an image file")
    if not path.is_file():
        raise InputError(path, "file not found")
    gates.checked_image_size(path, overrides)
    try:
        with Image.open(path) as im:
            bands = len(im.getbands())
            if bands not in (1, 2, 3, 4):
                raise InputError(path, f"unexpected channel count {bands}")
            conv = im.convert("L") if prep.get("grayscale", True) else im.convert("RGB")
            size = int(prep["size"])
            raw = np.asarray(conv.resize((size, size), Image.Resampling.BOX), dtype=np.float32)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL decoders raise many types on broken pixel data
        raise InputError(path, f"image pixel data cannot be decoded ({type(e).__name__})") from None
    if transform is not None:
        raw = np.asarray(transform(raw, vmax=255.0), dtype=np.float32)
    reasons = gates.image_content_reasons(raw, overrides)
    arr = raw / 255.0
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return ((arr - float(prep["mean"])) / float(prep["std"])).astype(np.float32), reasons


def load_image(path: str | Path, prep: dict[str, Any]) -> np.ndarray:
    """Read and preprocess one image to (1, size, size) float32 (see :func:`read_image`).

    Raises:
        InputError: unreadable / not an image / too large / odd channel count.
    """
    return read_image(path, prep)[0]


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
    """Write ``root/<class>/<i>.png`` noisy shapes (the core demo/test fixture); returns root.

    Raises:
        ConfigError: ``size`` below 16 px (no room for the shapes) or ``n_per_class`` below 1.
    """
    import cv2

    if int(size) < 16 or int(n_per_class) < 1:
        raise ConfigError(f"shapes need size >= 16 px and n_per_class >= 1 (got {size}, {n_per_class})")

    rng = np.random.default_rng(seed)
    root = Path(root)
    for cls in CLASSES:
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
