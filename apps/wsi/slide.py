"""Whole-slide reading, tissue detection, tiling and tile streaming.  Torch-free.

Slides open with OpenSlide when ``openslide`` is importable, else with tiffslide.  Coordinates
are CLAM/TRIDENT style: ``(x, y)`` of each tile's top-left corner in level-0 pixels.

A tiling is decided by a target resolution (``target_mpp``, microns per pixel; 0.5 ~ 20x) and
a patch size at that resolution.  The reading level is the coarsest level whose MPP is still at
most the target; a tile covers ``patch_size_level0`` level-0 pixels and is read as
``read_size`` pixels at ``patch_level`` then resized to ``patch_size``.
"""

from __future__ import annotations

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
    from skimage import filters, morphology
    from skimage.util import img_as_float

    # saturation and value exactly as skimage's rgb2hsv computes them (same float64 steps), without
    # the hue it would also compute (most of its time, and of the slide's fixed cost)
    rgb = img_as_float(thumb[..., :3])
    val = rgb.max(axis=-1)
    delta = np.ptp(rgb, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        sat = delta / val
    sat[delta == 0.0] = 0.0
    try:
        thr = float(filters.threshold_otsu(sat)) if float(sat.max() - sat.min()) > 1e-6 else 1.0
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
    if arr.ndim == 2:  # grayscale page
        arr = arr[..., None]
    if arr.ndim == 3 and arr.shape[2] == 4:  # RGBA from read_region: composite on white
        a = arr[..., 3:4].astype(np.float32) / 255.0
        arr = (arr[..., :3].astype(np.float32) * a + 255.0 * (1 - a)).astype(np.uint8)
    if arr.shape[2] < 3:
        arr = np.repeat(arr[..., :1], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3], dtype=np.uint8)


def read_rgb(slide: Any, xy: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
    """One region as an (h, w, 3) uint8 array.

    tiffslide hands the decoded array over directly (``as_array``: no PIL image in between);
    OpenSlide's RGBA is composited on white.  Both give the same pixels as ``read_region`` + RGB.
    """
    if type(slide).__module__.startswith("tiffslide"):
        return _rgb(slide.read_region(xy, level, size, as_array=True))
    return _rgb(slide.read_region(xy, level, size))


def tile_runs(tiling: Tiling, block: int = 8) -> list[list[int]]:
    """Tile indices grouped into runs of up to ``block`` horizontally adjacent tiles (one read each)."""
    coords, ps0 = tiling.coords, tiling.patch_size_level0
    runs: list[list[int]] = []
    for i in range(len(coords)):
        if runs and len(runs[-1]) < block:
            j = runs[-1][-1]
            if coords[j, 1] == coords[i, 1] and coords[i, 0] - coords[j, 0] == ps0:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def _read_run(slide: Any, tiling: Tiling, run: list[int]) -> list[np.ndarray]:
    """Read one run of adjacent tiles with a single ``read_region`` and cut / resize it."""
    rs, out = tiling.read_size, tiling.patch_size
    x, y = int(tiling.coords[run[0], 0]), int(tiling.coords[run[0], 1])
    region = read_rgb(slide, (x, y), tiling.patch_level, (rs * len(run), rs))
    return [_resize(region[:, k * rs : (k + 1) * rs], out) for k in range(len(run))]


def iter_tile_batches(
    slide: Any,
    tiling: Tiling,
    batch_size: int = 64,
    block: int = 8,
    prefetch: int = 4,
    workers: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Stream tiles as uint8 batches, read and decoded ahead of the consumer by a thread pool.

    Tiles are read in row blocks (one ``read_region`` per run of up to ``block`` adjacent tiles,
    see :func:`tile_runs`), cut and resized in ``workers`` threads (JPEG decoding and OpenCV
    release the GIL).  At most ``prefetch`` batches' worth of runs are in flight (a bounded
    queue), so memory stays flat on any slide; batches come out in coordinate order, so the
    result does not depend on the thread count.  tiffslide and OpenSlide handles are safe to
    read from several threads.

    Args:
        slide: open slide.
        tiling: from :func:`plan_tiles`.
        batch_size: tiles per batch.
        block: maximum tiles per ``read_region`` call.
        prefetch: batches buffered ahead of the consumer.
        workers: reader threads (1 = one background reader).

    Yields:
        ``(indices (b,), tiles (b, patch_size, patch_size, 3) uint8)`` in coordinate order.
    """
    from collections import deque
    from concurrent.futures import Future, ThreadPoolExecutor

    runs = tile_runs(tiling, block)
    max_inflight = max(2, -(-max(1, prefetch) * batch_size // max(1, block)), 2 * max(1, workers))
    pending: "deque[tuple[list[int], Future[list[np.ndarray]]]]" = deque()
    ex = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="wsi-read")
    nxt = 0
    try:
        idx: list[int] = []
        buf: list[np.ndarray] = []
        while nxt < len(runs) or pending:
            while nxt < len(runs) and len(pending) < max_inflight:
                pending.append((runs[nxt], ex.submit(_read_run, slide, tiling, runs[nxt])))
                nxt += 1
            run, fut = pending.popleft()
            for i, tile in zip(run, fut.result()):
                idx.append(i)
                buf.append(tile)
                if len(buf) == batch_size:
                    yield np.asarray(idx), np.stack(buf)
                    idx, buf = [], []
        if buf:
            yield np.asarray(idx), np.stack(buf)
    finally:
        for _, fut in pending:
            fut.cancel()
        ex.shutdown(wait=True)


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
    "read_rgb",
    "tile_runs",
    "save_overlay",
    "find_slides",
    "slide_name",
    "tissue_mask",
    "thumbnail",
    "grid_note",
]
