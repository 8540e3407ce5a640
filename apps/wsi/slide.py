"""Whole-slide reading, tissue detection, tiling and tile streaming.  Torch-free.

Slides open with OpenSlide when ``openslide`` is importable, else with tiffslide.  Coordinates
are CLAM/TRIDENT style: ``(x, y)`` of each tile's top-left corner in level-0 pixels.

A tiling is decided by a target resolution (``target_mpp``, microns per pixel; 0.5 ~ 20x) and
a patch size at that resolution.  The reading level is the coarsest level whose MPP is still at
most the target; a tile covers ``patch_size_level0`` level-0 pixels and is read as
``read_size`` pixels at ``patch_level`` then resized to ``patch_size``.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from medtransfer.shared.utils.errors import InputError

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn", ".mrxs", ".bif", ".svslide", ".vms")


def open_slide(path: str | Path) -> Any:
    """Open a slide (OpenSlide when installed, else tiffslide).

    Args:
        path: the slide file.

    Returns:
        An OpenSlide-compatible slide object (``dimensions``, ``level_dimensions``,
        ``level_downsamples``, ``properties``, ``read_region``).

    Raises:
        InputError: missing, unreadable or corrupt file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "slide file not found")
    try:
        import openslide  # type: ignore

        try:
            return openslide.OpenSlide(str(path))
        except Exception:
            pass  # fall through to tiffslide (e.g. generic TIFFs OpenSlide refuses)
    except ImportError:
        pass
    import logging

    import tiffslide

    log = logging.getLogger("tifffile")  # its warnings quote header offsets / values: keep them out of logs
    level = log.level
    log.setLevel(logging.ERROR + 1)
    try:
        slide = tiffslide.TiffSlide(str(path))
        _ = slide.level_dimensions
    except Exception as e:  # the library's message may quote header bytes: name the type only
        raise InputError(
            path, f"cannot read as a slide (corrupt or unsupported TIFF header: {type(e).__name__})"
        ) from None
    finally:
        log.setLevel(level)
    return slide


def slide_mpp(slide: Any, path: str | Path, mpp: Optional[float] = None) -> float:
    """Level-0 microns per pixel.

    Args:
        slide: an open slide.
        path: its file (for messages).
        mpp: an explicit override (``--mpp``) used when given.

    Returns:
        The MPP of level 0.

    Raises:
        InputError: the slide has no MPP metadata and no override was given.
    """
    if mpp is not None:
        if not mpp > 0:
            raise InputError(path, f"--mpp must be positive, got {mpp}")
        return float(mpp)
    props = slide.properties
    for key in ("openslide.mpp-x", "tiffslide.mpp-x", "aperio.MPP"):
        v = props.get(key)
        try:
            if v is not None and float(v) > 0:
                return float(v)
        except (TypeError, ValueError):
            continue
    raise InputError(
        path, "slide has no MPP (microns-per-pixel) metadata; pass --mpp (e.g. --mpp 0.25 for 40x, 0.5 for 20x)"
    )


@dataclass
class Tiling:
    """Where the tiles of one slide are and how to read them.

    Attributes:
        coords: (N, 2) int64 level-0 (x, y) of each tile's top-left corner.
        patch_level: level the tiles are read from.
        read_size: tile side in pixels at ``patch_level``.
        patch_size: tile side after resizing (the encoder's input size).
        patch_size_level0: tile side in level-0 pixels.
        level0_mpp: MPP of level 0 (from metadata or ``--mpp``).
        target_mpp: MPP of the resized tiles.
        tissue_fraction_min: minimum tissue fraction to keep a tile.
        thumb_scale: level-0 pixels per thumbnail pixel.
    """

    coords: np.ndarray
    patch_level: int
    read_size: int
    patch_size: int
    patch_size_level0: int
    level0_mpp: float
    target_mpp: float
    tissue_fraction_min: float
    thumb_scale: float

    def attrs(self) -> dict[str, Any]:
        """h5 attributes (CLAM: patch_level, patch_size; TRIDENT: patch_size_level0, magnifications)."""
        d = asdict(self)
        d.pop("coords")
        d["mpp"] = self.target_mpp
        d["target_magnification"] = round(10.0 / self.target_mpp, 3)  # 0.5 um/px ~ 20x
        d["level0_magnification"] = round(10.0 / self.level0_mpp, 3)
        return d


def thumbnail(slide: Any, max_side: int = 1024) -> tuple[np.ndarray, float]:
    """An RGB thumbnail and its scale (level-0 pixels per thumbnail pixel)."""
    w, h = slide.dimensions
    scale = max(w, h) / float(max_side) if max(w, h) > max_side else 1.0
    size = (max(1, int(round(w / scale))), max(1, int(round(h / scale))))
    img = slide.get_thumbnail(size)
    arr = np.asarray(img.convert("RGB"))
    return arr, w / arr.shape[1]


def tissue_mask(thumb: np.ndarray, min_saturation: float = 0.07, min_object_frac: float = 0.001) -> np.ndarray:
    """Tissue mask of an RGB thumbnail: Otsu on saturation, not white, not black, cleaned.

    Args:
        thumb: (H, W, 3) uint8.
        min_saturation: saturation floor (a blank slide's Otsu threshold is meaningless).
        min_object_frac: drop connected pieces smaller than this fraction of the thumbnail.

    Returns:
        (H, W) bool mask.
    """
    from scipy import ndimage
    from skimage import color, filters, morphology

    hsv = color.rgb2hsv(thumb)
    sat, val = hsv[..., 1], hsv[..., 2]
    try:
        thr = float(filters.threshold_otsu(sat)) if np.ptp(sat) > 1e-6 else 1.0
    except ValueError:
        thr = 1.0
    mask = (sat > max(thr, min_saturation)) & (val > 0.15) & (thumb.min(axis=-1) < 235)
    min_size = max(4, int(min_object_frac * mask.size))
    mask = ndimage.binary_closing(mask, structure=morphology.disk(2))
    mask = (
        morphology.remove_small_objects(mask, max_size=min_size)
        if _has_max_size()
        else morphology.remove_small_objects(mask, min_size=min_size)
    )
    mask = (
        morphology.remove_small_holes(mask, max_size=min_size * 4)
        if _has_max_size()
        else morphology.remove_small_holes(mask, area_threshold=min_size * 4)
    )
    return mask.astype(bool)


def _has_max_size() -> bool:
    import inspect

    from skimage import morphology

    return "max_size" in inspect.signature(morphology.remove_small_objects).parameters


def plan_tiles(
    slide: Any,
    path: str | Path,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    tissue_fraction_min: float = 0.25,
    thumb_max_side: int = 1024,
) -> tuple[Tiling, np.ndarray, np.ndarray]:
    """Detect tissue and lay a non-overlapping grid of tiles on it.

    Args:
        slide: open slide.
        path: its file (messages).
        target_mpp: resolution of the tiles in microns per pixel.
        patch_size: tile side at ``target_mpp``.
        mpp: level-0 MPP override.
        tissue_fraction_min: keep tiles with at least this tissue fraction.
        thumb_max_side: thumbnail size for tissue detection.

    Returns:
        ``(tiling, thumbnail, tissue mask)``.

    Raises:
        InputError: no MPP, slide smaller than one tile, or no tissue found.
    """
    l0_mpp = slide_mpp(slide, path, mpp)
    ds_needed = target_mpp / l0_mpp
    level = 0
    for i, ds in enumerate(slide.level_downsamples):
        if ds <= ds_needed * 1.0001:
            level = i if ds >= slide.level_downsamples[level] else level
    ds = float(slide.level_downsamples[level])
    ps0 = int(round(patch_size * ds_needed))
    read_size = int(round(ps0 / ds))
    W, H = slide.dimensions
    if ps0 < 1 or ps0 > W or ps0 > H:
        raise InputError(path, f"slide ({W}x{H} px) is smaller than one {patch_size} px tile at {target_mpp} um/px")
    thumb, scale = thumbnail(slide, thumb_max_side)
    mask = tissue_mask(thumb)
    if not mask.any():
        raise InputError(path, "no tissue found on the slide thumbnail")
    nx, ny = W // ps0, H // ps0
    xs = np.arange(nx) * ps0
    ys = np.arange(ny) * ps0
    # tissue fraction per tile from an integral image of the mask
    ii = np.pad(mask.astype(np.float64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    x0 = np.clip(np.floor(xs / scale).astype(int), 0, mask.shape[1])
    x1 = np.clip(np.ceil((xs + ps0) / scale).astype(int), 0, mask.shape[1])
    y0 = np.clip(np.floor(ys / scale).astype(int), 0, mask.shape[0])
    y1 = np.clip(np.ceil((ys + ps0) / scale).astype(int), 0, mask.shape[0])
    Y0, X0 = np.meshgrid(y0, x0, indexing="ij")
    Y1, X1 = np.meshgrid(y1, x1, indexing="ij")
    area = np.maximum((Y1 - Y0) * (X1 - X0), 1)
    frac = (ii[Y1, X1] - ii[Y0, X1] - ii[Y1, X0] + ii[Y0, X0]) / area
    jy, jx = np.nonzero(frac >= tissue_fraction_min)
    coords = np.stack([xs[jx], ys[jy]], axis=1).astype(np.int64) if len(jx) else np.zeros((0, 2), np.int64)
    if len(coords) == 0:
        raise InputError(path, f"no tile has >= {tissue_fraction_min:.0%} tissue")
    tiling = Tiling(
        coords=coords,
        patch_level=level,
        read_size=read_size,
        patch_size=patch_size,
        patch_size_level0=ps0,
        level0_mpp=l0_mpp,
        target_mpp=float(target_mpp),
        tissue_fraction_min=float(tissue_fraction_min),
        thumb_scale=float(scale),
    )
    return tiling, thumb, mask


def _resize(tile: np.ndarray, size: int) -> np.ndarray:
    if tile.shape[0] == size and tile.shape[1] == size:
        return tile
    import cv2

    return cv2.resize(tile, (size, size), interpolation=cv2.INTER_AREA if tile.shape[0] > size else cv2.INTER_LINEAR)


def _rgb(region: Any) -> np.ndarray:
    arr = np.asarray(region)
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA from read_region: composite on white
        a = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * a + 255.0 * (1 - a)).astype(np.uint8)
    return np.ascontiguousarray(arr[..., :3])


def iter_tile_batches(
    slide: Any,
    tiling: Tiling,
    batch_size: int = 64,
    block: int = 8,
    prefetch: int = 4,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream tiles as uint8 batches, read ahead in a background thread.

    Tiles are read in row blocks: one ``read_region`` per run of up to ``block`` horizontally
    adjacent tiles, then cut and resized, so far fewer calls reach the slide decoder.

    Args:
        slide: open slide.
        tiling: from :func:`plan_tiles`.
        batch_size: tiles per batch.
        block: maximum tiles per ``read_region`` call.
        prefetch: batches buffered ahead of the consumer.

    Yields:
        ``(indices (b,), tiles (b, patch_size, patch_size, 3) uint8)`` in coordinate order.
    """
    coords = tiling.coords
    ps0, rs, lvl, out = tiling.patch_size_level0, tiling.read_size, tiling.patch_level, tiling.patch_size
    # group tiles into runs of adjacent tiles on one row
    runs: list[list[int]] = []
    for i in range(len(coords)):
        if runs and len(runs[-1]) < block:
            j = runs[-1][-1]
            if coords[j, 1] == coords[i, 1] and coords[i, 0] - coords[j, 0] == ps0:
                runs[-1].append(i)
                continue
        runs.append([i])
    q: "queue.Queue[Any]" = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()

    def producer() -> None:
        try:
            idx: list[int] = []
            buf: list[np.ndarray] = []
            for run in runs:
                if stop.is_set():
                    return
                x, y = int(coords[run[0], 0]), int(coords[run[0], 1])
                region = _rgb(slide.read_region((x, y), lvl, (rs * len(run), rs)))
                for k, i in enumerate(run):
                    buf.append(_resize(region[:, k * rs : (k + 1) * rs], out))
                    idx.append(i)
                    if len(buf) == batch_size:
                        q.put((np.asarray(idx), np.stack(buf)))
                        idx, buf = [], []
            if buf:
                q.put((np.asarray(idx), np.stack(buf)))
            q.put(None)
        except BaseException as e:  # hand the error to the consumer
            q.put(e)

    t = threading.Thread(target=producer, daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while t.is_alive():  # drain so the producer can finish
            try:
                q.get(timeout=0.05)
            except queue.Empty:
                pass


def read_tiles_plain(slide: Any, tiling: Tiling) -> Iterator[np.ndarray]:
    """The plain loop: one ``read_region`` per tile (the bench baseline)."""
    for x, y in tiling.coords:
        yield _resize(
            _rgb(slide.read_region((int(x), int(y)), tiling.patch_level, (tiling.read_size, tiling.read_size))),
            tiling.patch_size,
        )


def save_overlay(
    thumb: np.ndarray, mask: np.ndarray, tiling: Tiling, out_png: str | Path, scores: Optional[np.ndarray] = None
) -> Path:
    """Thumbnail PNG with the tissue outline (green) and tiles (blue boxes, or a score heat map).

    Args:
        thumb: RGB thumbnail.
        mask: tissue mask.
        tiling: the tiles.
        out_png: output file.
        scores: optional per-tile values (e.g. attention) coloured from blue to red.

    Returns:
        The PNG path.
    """
    from PIL import Image, ImageDraw
    from skimage import segmentation

    img = thumb.copy()
    edge = segmentation.find_boundaries(mask, mode="outer")
    img[edge] = (0, 200, 0)
    im = Image.fromarray(img)
    draw = ImageDraw.Draw(im, "RGBA")
    s = tiling.thumb_scale
    side = tiling.patch_size_level0 / s
    if scores is not None and len(scores):
        v = np.asarray(scores, dtype=np.float64)
        v = (v - v.min()) / (np.ptp(v) + 1e-12)
    for i, (x, y) in enumerate(tiling.coords):
        box = (x / s, y / s, x / s + side - 1, y / s + side - 1)
        if scores is not None and len(scores):
            c = (int(255 * v[i]), 0, int(255 * (1 - v[i])), 110)
            draw.rectangle(box, fill=c)
        else:
            draw.rectangle(box, outline=(30, 60, 255, 200))
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    im.save(out_png)
    return out_png


def find_slides(path: str | Path) -> list[Path]:
    """A slide file, or the slides in a folder (sorted, recursive)."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise InputError(path, "no such file or folder")
    return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES)


def slide_name(path: str | Path) -> str:
    """The slide's name without its suffix (the h5 file stem; TCGA slide_id minus .svs)."""
    return Path(path).stem


def grid_note(tiling: Tiling) -> str:
    """One-line description of a tiling."""
    return (
        f"{len(tiling.coords)} tiles of {tiling.patch_size}px at {tiling.target_mpp:g} um/px "
        f"(level {tiling.patch_level}, {tiling.read_size}px read, {tiling.patch_size_level0}px level-0)"
    )


__all__ = [
    "open_slide",
    "slide_mpp",
    "plan_tiles",
    "Tiling",
    "iter_tile_batches",
    "read_tiles_plain",
    "save_overlay",
    "find_slides",
    "slide_name",
    "tissue_mask",
    "thumbnail",
    "grid_note",
]
