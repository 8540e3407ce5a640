"""Slides to feature bags: tile, encode in batches while the next tiles are read, write h5.

One h5 per slide, CLAM/TRIDENT layout::

    coords    (N, 2) int64   level-0 (x, y) of each tile's top-left corner
    features  (N, D) float32 encoder features
    attrs (file and both datasets): patch_level, patch_size, patch_size_level0, mpp,
        level0_mpp, target_magnification, level0_magnification, encoder, feature_dim, complete

A slide whose h5 exists with ``complete=True`` and the same encoder / tiling is skipped, so a
second run recomputes nothing; partial files from an interrupted run are redone.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from medtransfer.apps.wsi.slide import (
    find_slides,
    grid_note,
    iter_tile_batches,
    open_slide,
    plan_tiles,
    save_overlay,
    slide_name,
)
from medtransfer.shared.utils.errors import InputError, MedTransferError


@dataclass
class ExtractResult:
    """Outcome for one slide (an error row when ``status == "error"``)."""

    slide: str
    status: str  # done | skipped | error
    h5: str = ""
    n_tiles: int = 0
    feature_dim: int = 0
    seconds: float = 0.0
    error: str = ""
    overlay: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def row(self) -> dict[str, Any]:
        """A flat dict for CSV / JSON."""
        d = {k: v for k, v in self.__dict__.items() if k != "extra"}
        d.update(self.extra)
        return d


class Encoder:
    """A patch encoder from the shared registry, run in batches on uint8 tiles.

    Args:
        name: registry name (``resnet18`` default; ``uni2h`` for the 1536-d UNI2-h ViT).
        weights: local weight file, True (registry file in the weights dirs), or None (random init).
        device: ``cpu``, ``cuda`` or ``auto``.
        patch_size: input side the encoder sees.
    """

    def __init__(
        self, name: str = "resnet18", weights: Any = None, device: str = "auto", patch_size: int = 224
    ) -> None:
        import torch

        from medtransfer.apps.wsi.model import build_tile_encoder

        self.name = name
        # the same module (normalisation inside) that export writes to encoder.onnx
        self.model, self.feature_dim, self.pretrained = build_tile_encoder(name, weights)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        self.model = self.model.eval().to(self.device).to(memory_format=torch.channels_last)
        self.patch_size = patch_size

    def __call__(self, tiles: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 -> (B, D) float32 features."""
        import torch

        with torch.inference_mode():
            tiles = tiles if tiles.flags.writeable else tiles.copy()
            x = torch.from_numpy(tiles).to(self.device).permute(0, 3, 1, 2).float()
            return self.model(x.contiguous(memory_format=torch.channels_last)).float().cpu().numpy()


def h5_is_complete(h5_path: Path, encoder: str, target_mpp: float, patch_size: int) -> bool:
    """True when the h5 holds a finished extraction with these settings."""
    import h5py

    if not h5_path.is_file():
        return False
    try:
        with h5py.File(h5_path, "r") as f:
            a = f.attrs
            return (
                bool(a.get("complete", False))
                and str(a.get("encoder", "")) == encoder
                and abs(float(a.get("mpp", -1)) - target_mpp) < 1e-6
                and int(a.get("patch_size", -1)) == patch_size
                and "features" in f
                and "coords" in f
                and f["features"].shape[0] == f["coords"].shape[0]
            )
    except Exception:  # a corrupt / foreign h5 is simply not a finished extraction: redo it
        return False


class ImplausibleBagError(InputError):
    """A feature bag whose values are implausible (NaN / inf / |x| above ``feature_max_abs``).

    Prediction turns it into an error row like any InputError; training refuses to start on it
    (one such bag would poison the model), naming the file.
    """


def read_bag(
    h5_path: str | Path, gates: Optional[dict[str, Any]] = None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Read ``features`` (N, D), ``coords`` (N, 2) and attributes from a feature-bag h5.  Torch-free.

    The bag passes the plausibility gate (``shared.runtime.gates.check_feature_bag``): non-empty,
    finite, ``|x| <= feature_max_abs``.  Messages never quote the file's content.

    Args:
        h5_path: the bag.
        gates: limit overrides (a bundle's ``gates`` metadata).

    Raises:
        InputError: missing file, not HDF5, no ``features``, bad shapes, or an empty bag.
        ImplausibleBagError: NaN / inf or out-of-range feature values.
    """
    import h5py

    from medtransfer.shared.runtime.gates import check_feature_bag

    h5_path = Path(h5_path)
    if not h5_path.is_file():
        raise InputError(h5_path, "feature bag not found")
    try:
        with h5py.File(h5_path, "r") as f:
            ds = f.get("features")
            if not isinstance(ds, h5py.Dataset):
                raise InputError(h5_path, "h5 has no 'features' dataset")
            if ds.dtype.kind not in "fiu":
                raise InputError(h5_path, f"'features' must be numeric (dtype kind '{ds.dtype.kind}')")
            if ds.ndim not in (2, 3) or (ds.ndim == 3 and ds.shape[0] != 1):
                raise InputError(h5_path, f"features must be a non-empty (N, D) array, got shape {tuple(ds.shape)}")
            _check_declared_size(ds, h5_path, "features")
            feats = np.asarray(ds[()], dtype=np.float32)
            c = f.get("coords")
            if isinstance(c, h5py.Dataset):
                if c.dtype.kind not in "fiu":
                    raise InputError(h5_path, f"'coords' must be numeric (dtype kind '{c.dtype.kind}')")
                _check_declared_size(c, h5_path, "coords")
                coords = np.asarray(c[()])
            else:
                coords = None
            attrs = {}
            for k in f.attrs.keys():
                try:
                    v = f.attrs[k]
                    attrs[k] = v.item() if hasattr(v, "item") and getattr(v, "size", 1) == 1 else v
                except Exception:  # an attribute h5py cannot decode is not needed to answer
                    continue
    except InputError:
        raise
    except Exception as e:  # h5py raises OSError, KeyError, ValueError, RuntimeError ... for corrupt files
        raise InputError(
            h5_path, f"not a readable HDF5 feature bag (corrupt or truncated file: {type(e).__name__})"
        ) from None
    if feats.ndim == 3 and feats.shape[0] == 1:  # some tools save (1, N, D)
        feats = feats[0]
    if feats.ndim != 2 or feats.shape[0] == 0 or feats.shape[1] == 0:
        raise InputError(h5_path, f"features must be a non-empty (N, D) array, got shape {feats.shape}")
    if coords is None:
        coords = np.zeros((len(feats), 2), np.int64)
    if coords.ndim == 3 and coords.shape[0] == 1:
        coords = coords[0]
    if coords.ndim != 2 or coords.shape[0] != feats.shape[0] or coords.shape[1] < 2:
        raise InputError(h5_path, f"coords must be ({feats.shape[0]}, 2) like the features, got shape {coords.shape}")
    if not np.all(np.isfinite(coords)):
        raise InputError(h5_path, "coords contain NaN/inf")
    try:
        check_feature_bag(feats, h5_path, gates)
    except InputError as e:
        raise ImplausibleBagError(h5_path, e.problem) from None
    return feats, coords, attrs


#: largest bag read (elements): 1M patches x 2048-d; a header declaring more is refused before reading
MAX_BAG_ELEMENTS = 2**31


def _check_declared_size(ds: Any, path: Path, what: str) -> None:
    """Refuse a dataset whose declared size is impossible for this file (before allocating it)."""
    n = int(np.prod(ds.shape, dtype=np.float64)) if ds.shape else 1
    if n > MAX_BAG_ELEMENTS:
        raise InputError(path, f"'{what}' declares {n} values (limit {MAX_BAG_ELEMENTS}); refused before reading")
    if ds.compression is None and n * ds.dtype.itemsize > 2 * path.stat().st_size + (1 << 20):
        raise InputError(path, f"'{what}' declares more data than the file holds (truncated or corrupt)")


def find_bags(features_dir: str | Path) -> dict[str, Path]:
    """Feature bags under a folder (recursive, as ``wsi extract`` lays them out), keyed by slide name.

    Labels match bags by slide name (the file stem, e.g. TCGA ``slide_id`` minus ``.svs``), so two
    bags with one name in different sub-folders are ambiguous and refused.

    Args:
        features_dir: the folder given to ``wsi extract --out``.

    Returns:
        slide name -> h5 path (sorted by path).

    Raises:
        MedTransferError: two bags share a slide name.
    """
    out: dict[str, Path] = {}
    base = Path(features_dir)
    for p in sorted(base.rglob("*.h5")):
        if not p.is_file():
            continue
        if p.stem in out:
            raise MedTransferError(
                f"{out[p.stem]} and {p} are both bags of slide '{p.stem}'; labels match bags by "
                "slide name, so keep one or give each cohort its own features folder"
            )
        out[p.stem] = p
    return out


def write_bag(h5_path: Path, coords: np.ndarray, features: np.ndarray, attrs: dict[str, Any]) -> Path:
    """Write a feature bag h5 atomically (temp file then rename)."""
    import h5py

    h5_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = h5_path.with_suffix(".h5.part")
    with h5py.File(tmp, "w") as f:
        dc = f.create_dataset("coords", data=coords.astype(np.int64))
        df = f.create_dataset("features", data=features.astype(np.float32))
        for k, v in attrs.items():
            v = json.dumps(v) if isinstance(v, (dict, list)) else v
            f.attrs[k] = v
            dc.attrs[k] = v
            df.attrs[k] = v
    tmp.replace(h5_path)
    return h5_path


def _skipped(name: str, h5_path: Path) -> ExtractResult:
    import h5py

    with h5py.File(h5_path, "r") as f:
        n, d = f["features"].shape
    return ExtractResult(name, "skipped", str(h5_path), int(n), int(d))


def extract_slide(
    slide_path: str | Path,
    out_dir: str | Path,
    encoder: Encoder,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    batch_size: int = 32,
    tissue_fraction_min: float = 0.25,
    overwrite: bool = False,
    progress: Optional[Callable[[int], None]] = None,
    key: Optional[str] = None,
) -> ExtractResult:
    """Tile one slide, encode its tiles and write ``out_dir/<key>.h5`` plus a thumbnail PNG.

    Args:
        slide_path: the slide.
        out_dir: output folder (h5 files; thumbnails under ``thumbnails/``).
        encoder: the patch encoder.
        target_mpp: tile resolution (um/px).
        patch_size: tile side at ``target_mpp``.
        mpp: level-0 MPP override for slides without metadata.
        batch_size: tiles per encoder batch.
        tissue_fraction_min: minimum tissue fraction per tile.
        overwrite: redo even when a complete h5 exists.
        progress: called with the number of tiles done after each batch.
        key: output key (the slide's path relative to the input root, without suffix, e.g.
            ``a/s1``; default: the slide's name).  Bags go to ``out_dir/<key>.h5``, thumbnails to
            ``out_dir/thumbnails/<key>.png``.

    Returns:
        An :class:`ExtractResult` (status done / skipped; errors raise InputError).
    """
    slide_path, out_dir = Path(slide_path), Path(out_dir)
    name = key or slide_name(slide_path)
    h5_path = out_dir / f"{name}.h5"
    if not overwrite and h5_is_complete(h5_path, encoder.name, target_mpp, patch_size):
        return _skipped(name, h5_path)
    t0 = time.perf_counter()
    slide = open_slide(slide_path)
    try:
        tiling, thumb, mask = plan_tiles(slide, slide_path, target_mpp, patch_size, mpp, tissue_fraction_min)
        feats = np.zeros((len(tiling.coords), encoder.feature_dim), np.float32)
        done = 0
        for idx, tiles in iter_tile_batches(slide, tiling, batch_size=batch_size):
            feats[idx] = encoder(tiles)
            done += len(idx)
            if progress:
                progress(done)
    except InputError:
        raise
    except Exception as e:  # the decoder's message may quote file content: the type only
        raise InputError(
            slide_path, f"reading tiles failed (corrupt or unsupported tile data: {type(e).__name__})"
        ) from None
    finally:
        try:
            slide.close()
        except Exception:
            pass
    from medtransfer.shared.runtime.gates import require_finite

    require_finite(feats, slide_path, "encoder features")
    attrs = {
        **tiling.attrs(),
        "encoder": encoder.name,
        "feature_dim": int(encoder.feature_dim),
        "pretrained": bool(encoder.pretrained),
        "slide": slide_path.name,
        "key": name,
        "complete": True,
        "coords_convention": "level-0 top-left (x, y)",
    }
    write_bag(h5_path, tiling.coords, feats, attrs)
    overlay = save_overlay(thumb, mask, tiling, out_dir / "thumbnails" / f"{name}.png")
    return ExtractResult(
        name,
        "done",
        str(h5_path),
        len(tiling.coords),
        int(encoder.feature_dim),
        round(time.perf_counter() - t0, 3),
        overlay=str(overlay),
        extra={"grid": grid_note(tiling)},
    )


def extract_many(
    source: str | Path,
    out_dir: str | Path,
    encoder: str = "resnet18",
    weights: Any = None,
    target_mpp: float = 0.5,
    patch_size: int = 224,
    mpp: Optional[float] = None,
    batch_size: int = 32,
    tissue_fraction_min: float = 0.25,
    device: str = "auto",
    overwrite: bool = False,
    show_progress: bool = True,
) -> list[ExtractResult]:
    """Extract feature bags for a slide or every slide in a folder; bad slides become error rows.

    Each slide's outputs are named by its path relative to ``source`` without the suffix
    (``a/s1.svs`` -> ``out_dir/a/s1.h5``, ``out_dir/thumbnails/a/s1.png``), so two slides never
    share a bag; two slides that would still map to one name (``s1.svs`` and ``s1.tif`` in one
    folder) are refused with one line before any work.  Writes ``out_dir/extract_log.csv`` (one
    row per slide: done / skipped / error).

    Returns:
        One :class:`ExtractResult` per slide (``slide`` is its output key).

    Raises:
        InputError: no slides found.
        MedTransferError: two slides map to one output name.
    """
    import csv

    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from medtransfer.shared.runtime.outputs import unique_keys

    slides = find_slides(source)
    if not slides:
        raise InputError(source, "no slide files found")
    root = Path(source) if Path(source).is_dir() else Path(source).parent
    keyed = unique_keys(slides, root)  # refuses a clash before any work
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    enc: Optional[Encoder] = None
    results: list[ExtractResult] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeRemainingColumn(),
        disable=not show_progress,
        transient=True,
    ) as bar:
        task = bar.add_task("slides", total=len(slides))
        for name, sp in keyed.items():
            if not overwrite and h5_is_complete(out_dir / f"{name}.h5", encoder, target_mpp, patch_size):
                results.append(_skipped(name, out_dir / f"{name}.h5"))
                bar.advance(task)
                continue
            if enc is None:
                enc = Encoder(encoder, weights, device, patch_size)
            bar.update(task, description=f"{name[:40]}")
            try:
                results.append(
                    extract_slide(
                        sp,
                        out_dir,
                        enc,
                        target_mpp,
                        patch_size,
                        mpp,
                        batch_size,
                        tissue_fraction_min,
                        overwrite,
                        key=name,
                    )
                )
            except MedTransferError as e:
                results.append(ExtractResult(name, "error", error=str(e)))
            bar.advance(task)
    rows = [r.row() for r in results]
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    with open(out_dir / "extract_log.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    return results
