"""Dataset importers and the video-segmentation manifest.  Torch-free.

Manifest (``path,label[,split,group]`` + extras): ``path`` is a video (AVI / MP4 / ``.mha`` /
frame folder); ``label`` its masks (``.npy`` / ``.npz`` / ``.mha`` stack or PNG folder; frames
without a mask allowed).

* :func:`import_echonet` - EchoNet-Dynamic: ``FileList.csv`` (``Split`` column), ``VolumeTracings.csv``
  (ED / ES tracings filled into LV masks), ``Videos/*.avi``.  FileName with or without ``.avi``.
* :func:`import_trackrad` - TrackRAD2025: ``<case>/images/<case>_frames.mha``,
  ``<case>/targets/<case>_labels.mha`` (+ ``_first_label.mha``), ``*.json`` metadata.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.videoseg.io import open_video, read_masks, write_masks
from medtransfer.shared.manifest import Record, assign_splits, read_manifest, write_manifest
from medtransfer.shared.utils.errors import InputError

ECHONET_SPLITS = {"TRAIN": "train", "VAL": "val", "TEST": "test"}


def tracing_polygon(rows: list[tuple[float, float, float, float]]) -> np.ndarray:
    """EchoNet tracing rows -> polygon: X1,Y1 of rows 2..n then X2,Y2 of rows 2..n reversed."""
    r = np.asarray(rows, dtype=np.float64)[1:]
    return np.concatenate([r[:, 0:2], r[::-1, 2:4]], axis=0)


def fill_polygon(poly: np.ndarray, height: int, width: int) -> np.ndarray:
    """Rasterise a polygon (x, y points) into a (H, W) uint8 mask (scikit-image)."""
    from skimage.draw import polygon as sk_polygon

    m = np.zeros((height, width), np.uint8)
    rr, cc = sk_polygon(poly[:, 1], poly[:, 0], shape=(height, width))
    m[rr, cc] = 1
    return m


def _rel(p: Path, out_csv: Path) -> str:
    """``p`` relative to the manifest's folder (manifest paths are relative to it)."""
    return os.path.relpath(Path(p).resolve(), Path(out_csv).resolve().parent)


def _stem(name: str) -> str:
    name = name.strip()
    return name[:-4] if name.lower().endswith(".avi") else name


def import_echonet(
    root: str | Path, out_csv: str | Path, masks_dir: str | Path | None = None, limit: int = 0, **_: Any
) -> Path:
    """Import EchoNet-Dynamic into a manifest with ED/ES masks.

    Args:
        root: the EchoNet-Dynamic folder (``FileList.csv``, ``VolumeTracings.csv``, ``Videos/``).
        out_csv: manifest to write.
        masks_dir: where the mask ``.npz`` files go (default ``<out_csv folder>/echonet_masks``).
        limit: import at most this many videos (0 = all).

    Returns:
        The manifest path.  Extra columns: ``ed_frame``, ``es_frame``, ``fps``, ``ef``.

    Raises:
        InputError: missing files or columns, no video with tracings.
    """
    root, out_csv = Path(root), Path(out_csv)
    fl, vt = root / "FileList.csv", root / "VolumeTracings.csv"
    for f in (fl, vt):
        if not f.is_file():
            raise InputError(f, "missing (is this the EchoNet-Dynamic folder?)")
    if not (root / "Videos").is_dir():
        raise InputError(root / "Videos", "missing (is this the EchoNet-Dynamic folder?)")
    masks_dir = Path(masks_dir) if masks_dir else out_csv.parent / "echonet_masks"
    traces: dict[str, dict[int, list[tuple[float, float, float, float]]]] = {}
    with open(vt, newline="") as f:
        rd = csv.DictReader(f)
        need = {"FileName", "X1", "Y1", "X2", "Y2", "Frame"}
        if not need <= set(rd.fieldnames or []):
            raise InputError(vt, f"needs columns {', '.join(sorted(need))}")
        for row in rd:
            traces.setdefault(_stem(row["FileName"]), {}).setdefault(int(float(row["Frame"])), []).append(
                (float(row["X1"]), float(row["Y1"]), float(row["X2"]), float(row["Y2"]))
            )
    records: list[dict[str, Any]] = []
    with open(fl, newline="") as f:
        rd = csv.DictReader(f)
        if "FileName" not in (rd.fieldnames or []):
            raise InputError(fl, "needs a FileName column")
        rows = list(rd)
    from rich.progress import track

    for row in track(rows[: limit or None], description="EchoNet import", transient=True):
        name = _stem(row["FileName"])
        video = root / "Videos" / f"{name}.avi"
        tr = traces.get(name)
        if not video.is_file() or not tr or len(tr) < 2:
            continue  # EchoNet has a few videos without tracings / files: skipped
        h = int(float(row.get("FrameHeight") or 112))
        w = int(float(row.get("FrameWidth") or 112))
        frames = sorted(tr)
        ms = [fill_polygon(tracing_polygon(tr[k]), h, w) for k in frames]
        areas = [int(m.sum()) for m in ms]
        ed, es = frames[int(np.argmax(areas))], frames[int(np.argmin(areas))]
        mpath = write_masks(masks_dir / f"{name}.npz", np.stack(ms), frames)
        records.append(
            {
                "path": video.resolve(),
                "label": _rel(mpath, out_csv),
                "split": ECHONET_SPLITS.get(str(row.get("Split", "")).upper(), ""),
                "group": name,
                "ed_frame": ed,
                "es_frame": es,
                "fps": row.get("FPS", ""),
                "ef": row.get("EF", ""),
            }
        )
    if not records:
        raise InputError(root, "no video with both a file in Videos/ and ED/ES tracings")
    return write_manifest(records, out_csv)


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except Exception:  # noqa: BLE001
        return ""


def import_trackrad(root: str | Path, out_csv: str | Path, seed: int = 0, **_: Any) -> Path:
    """Import TrackRAD2025 cases (``<case>/images``, ``<case>/targets``, json metadata).

    Returns:
        The manifest path; extra columns ``first_label``, ``frame_rate``, ``field_strength``,
        ``scanned_region``.  Splits are assigned per case (seeded).
    """
    root = Path(root)
    cases = sorted(d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()) if root.is_dir() else []
    if not cases:
        raise InputError(root, "no TrackRAD case folders (<case>/images/*.mha) found")
    recs: list[Record] = []
    for d in cases:
        imgs = sorted((d / "images").glob("*.mha"))
        labs = (
            sorted(p for p in (d / "targets").glob("*.mha") if "first_label" not in p.name)
            if (d / "targets").is_dir()
            else []
        )
        first = sorted((d / "targets").glob("*first_label*.mha")) if (d / "targets").is_dir() else []
        if not imgs:
            raise InputError(d / "images", "no .mha frames")
        recs.append(
            Record(
                path=imgs[0].resolve(),
                label=_rel(labs[0], Path(out_csv)) if labs else "",
                group=d.name,
                extra={
                    "first_label": _rel(first[0], Path(out_csv)) if first else "",
                    "frame_rate": str(_read_json(d / "frame-rate.json")),
                    "field_strength": str(_read_json(d / "b-field-strength.json")),
                    "scanned_region": str(_read_json(d / "scanned-region.json")),
                },
            )
        )
    assign_splits(recs, seed=seed, stratify=False)
    return write_manifest(recs, out_csv)


def prompt_mask(masks: dict[int, np.ndarray], where: str | Path = "mask") -> tuple[int, np.ndarray]:
    """The prompt of a mask stack: the first labelled frame whose mask is not empty.

    The one rule of the app's protocol, shared by evaluation (:func:`evaluate.evaluate_case`),
    ``predict`` / ``score`` / ``estimate`` with a mask file (EchoNet: the ED or ES tracing, whichever
    comes first; TrackRAD: the first-frame label) and the export's reference cases: tracking starts
    on that frame and nothing else of the stack is used.

    Args:
        masks: frame index -> (H, W) mask (:func:`medtransfer.apps.videoseg.io.read_masks`).
        where: the mask file, for the error message.

    Returns:
        (frame index, its (H, W) uint8 mask).

    Raises:
        InputError: no frame of the stack has a non-empty mask.
    """
    for k in sorted(masks):
        if masks[k].any():
            return int(k), masks[k]
    raise InputError(where, "mask is empty (no labelled frame has a non-empty mask)")


@dataclass
class VideoCase:
    """One video with its (possibly sparse) masks.

    Attributes:
        video: path of the video.
        masks: frame index -> (H, W) uint8 mask.
        split: train / val / test / "".
        case_id: identifier (manifest path).
        n_frames, height, width: video geometry.
    """

    video: Path
    masks: dict[int, np.ndarray]
    split: str
    case_id: str
    n_frames: int
    height: int
    width: int

    @property
    def labelled(self) -> list[int]:
        return sorted(self.masks)


def load_case(rec: Record, base: Path | None = None) -> VideoCase:
    """Open a manifest row's video (header only) and read its masks, checking sizes.

    Raises:
        InputError: unreadable video or masks, size mismatch, no mask at all.
    """
    rd = open_video(rec.path)
    if not rec.label:
        raise InputError(rec.path, "no masks (label column empty)")
    lab = Path(rec.label)
    lab = lab if lab.is_absolute() else (base or rec.path.parent) / lab
    masks = read_masks(lab, n_frames=rd.n_frames)
    if not masks:
        raise InputError(lab, "holds no mask")
    for m in masks.values():
        if m.shape != (rd.height, rd.width):
            raise InputError(lab, f"mask size {m.shape} differs from video frame size {(rd.height, rd.width)}")
    return VideoCase(rec.path, masks, rec.split, rec.case_id, rd.n_frames, rd.height, rd.width)


def load_manifest_cases(manifest: str | Path) -> list[VideoCase]:
    """All cases of a videoseg manifest (bad rows raise with the file named)."""
    recs = read_manifest(manifest)
    if not recs:
        raise InputError(manifest, "manifest has no rows")
    base = Path(manifest).resolve().parent
    return [load_case(r, base) for r in recs]
