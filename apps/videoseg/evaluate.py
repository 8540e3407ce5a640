"""Evaluation: Dice, HD95, NSD and ASD (MONAI) on every labelled frame except the prompt frame,
beside the same metrics for copying the prompt frame's mask to every frame (the baseline a
tracker must beat: an LV moves little).

Two protocols:

* ``frame`` (ours): 2-D metrics per labelled frame, averaged per case, NSD at 2 px.
* ``dd_sam2`` (the DD-SAM2 paper's ``gp_knife/eval_model.py``): the labelled frames after the
  prompt frame stacked into one (T, H, W) volume per case; MONAI ``DiceMetric``,
  ``HausdorffDistanceMetric(percentile=95)``, ``SurfaceDiceMetric(class_thresholds=[0.5])`` and
  ``SurfaceDistanceMetric`` (not symmetric) over that volume (the frame axis counts as a spatial
  axis of spacing 1), then averaged over cases.  With dense labels (TrackRAD) that is the paper's
  "frame 0 excluded" volume; EchoNet-Dynamic has only ED / ES traced, so its volume is the ES frame.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.videoseg.data import VideoCase, load_manifest_cases, prompt_mask
from medtransfer.apps.videoseg.io import open_video
from medtransfer.apps.videoseg.propagate import StreamingPropagator, mask_to_box
from medtransfer.shared.export.guard import baseline_record
from medtransfer.shared.utils.errors import ConfigError


def frame_metrics(pred: np.ndarray, gt: np.ndarray, nsd_tolerance: float = 2.0) -> dict[str, np.ndarray]:
    """MONAI Dice / HD95 / NSD / ASD per frame for (N, H, W) binary stacks (pixel units).

    Frames where a mask is empty give NaN distances (averaged with nanmean).
    """
    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p = torch.from_numpy(pred.astype(np.float32))[:, None]
    g = torch.from_numpy(gt.astype(np.float32))[:, None]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = compute_dice(p, g, include_background=True, ignore_empty=False)[:, 0].numpy()
        hd95 = compute_hausdorff_distance(p, g, include_background=True, percentile=95)[:, 0].numpy()
        asd = compute_average_surface_distance(p, g, include_background=True, symmetric=True)[:, 0].numpy()
        nsd = compute_surface_dice(p, g, class_thresholds=[nsd_tolerance], include_background=True)[:, 0].numpy()
    bad = (pred.reshape(len(pred), -1).sum(1) == 0) | (gt.reshape(len(gt), -1).sum(1) == 0)
    for a in (hd95, asd):
        a[bad | ~np.isfinite(a)] = np.nan
    return {"dice": dice, "hd95": hd95, "nsd": nsd, "asd": asd}


PROTOCOLS = ("frame", "dd_sam2")
DD_SAM2_NSD_TOLERANCE = 0.5  # gp_knife/eval_model.py: SurfaceDiceMetric(class_thresholds=[0.5,])


def volume_metrics(pred: np.ndarray, gt: np.ndarray, nsd_tolerance: float = DD_SAM2_NSD_TOLERANCE) -> dict[str, float]:
    """DD-SAM2's case-volume metrics: MONAI Dice / HD95 / NSD / ASD of one (T, H, W) binary volume.

    Args:
        pred: (T, H, W) predicted masks (the frames to score: prompt frame already removed).
        gt: (T, H, W) ground truth.
        nsd_tolerance: NSD tolerance in voxels (the paper: 0.5).

    Returns:
        ``{"dice", "hd95", "nsd", "asd"}``; distances NaN when either volume is empty.
    """
    import warnings

    import torch
    from monai.metrics import (
        compute_average_surface_distance,
        compute_dice,
        compute_hausdorff_distance,
        compute_surface_dice,
    )

    p = torch.from_numpy((pred > 0).astype(np.float32))[None, None]
    g = torch.from_numpy((gt > 0).astype(np.float32))[None, None]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dice = float(compute_dice(p, g, include_background=True, ignore_empty=False)[0, 0])
        hd95 = float(compute_hausdorff_distance(p, g, include_background=True, percentile=95)[0, 0])
        asd = float(compute_average_surface_distance(p, g, include_background=True, symmetric=False)[0, 0])
        nsd = float(compute_surface_dice(p, g, class_thresholds=[nsd_tolerance], include_background=True)[0, 0])
    if not pred.any() or not gt.any():
        hd95 = asd = float("nan")
    return {
        "dice": dice,
        "hd95": hd95 if np.isfinite(hd95) else float("nan"),
        "nsd": nsd,
        "asd": asd if np.isfinite(asd) else float("nan"),
    }


def _summ(m: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in m.items()}


def evaluate_case(
    prop: StreamingPropagator, case: VideoCase, prompt: str = "box", protocol: str = "frame"
) -> dict[str, Any]:
    """Propagate from the first non-empty labelled frame; score the later labelled frames.

    Args:
        prop: the streaming propagator.
        case: the video and its masks.
        prompt: ``box`` or ``mask`` on the prompt frame.
        protocol: ``frame`` (per-frame means, NSD 2 px) or ``dd_sam2`` (:func:`volume_metrics`).

    Returns:
        ``{"case", "frames_scored", "model": {...}, "copy_first": {...}}`` (means over frames).
    """
    p, first = prompt_mask(case.masks, case.case_id)  # the same rule as predict / score / estimate
    later = [k for k in case.labelled if k > p]
    stop = (later[-1] + 1) if later else p + 1
    rd = open_video(case.video)
    kw = {"box": mask_to_box(first)} if prompt == "box" else {"mask": first}
    got: dict[int, np.ndarray] = {}
    for t, m in prop.run(rd.frames(p, stop), stop - p, **kw):
        if t + p in later:
            got[t + p] = m
    res: dict[str, Any] = {"case": case.case_id, "prompt_frame": p, "frames_scored": len(later)}
    if not later:
        return res
    gt = np.stack([case.masks[k] for k in later])
    pred, copy = np.stack([got[k] for k in later]), np.repeat(first[None], len(later), 0)
    if protocol == "dd_sam2":
        res["model"], res["copy_first"] = volume_metrics(pred, gt), volume_metrics(copy, gt)
    else:
        res["model"], res["copy_first"] = _summ(frame_metrics(pred, gt)), _summ(frame_metrics(copy, gt))
    return res


def evaluate(
    manifest: str | Path,
    model: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    backend: str = "onnx",
    prompt: str = "box",
    limit: int = 0,
    protocol: str = "frame",
) -> dict[str, Any]:
    """Evaluate a bundle (``backend='onnx'``) or a run directory (``'torch'``) on one split.

    Args:
        protocol: ``frame`` (ours) or ``dd_sam2`` (the paper's case-volume metrics, NSD 0.5).

    Returns:
        ``{"split", "n_cases", "protocol", "model": {...}, "copy_first": {...}, "baseline": {...},
        "cases": [...]}`` (``baseline``: Dice of the model beside the copy-first-mask baseline on
        the same cases); written to ``out/metrics.json`` when ``out`` is given.

    Raises:
        ConfigError: an unknown protocol.
    """
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    cases = [c for c in load_manifest_cases(manifest) if not split or c.split == split]
    if limit:
        cases = cases[:limit]
    if backend == "onnx":
        from medtransfer.apps.videoseg.predict import OnnxBackend
        from medtransfer.shared.runtime.bundle import Bundle

        prop = StreamingPropagator(OnnxBackend(Bundle(model)))
    else:
        from medtransfer.apps.videoseg.model import TorchBackend
        from medtransfer.apps.videoseg.train import load_run_model

        prop = StreamingPropagator(TorchBackend(load_run_model(model)[0]))
    from rich.progress import track

    rows = [
        evaluate_case(prop, c, prompt, protocol) for c in track(cases, description="videoseg evaluate", transient=True)
    ]
    scored = [r for r in rows if r.get("frames_scored")]
    res: dict[str, Any] = {
        "split": split,
        "n_cases": len(scored),
        "first_frame_excluded": True,
        "protocol": protocol,
        "nsd_tolerance_px": DD_SAM2_NSD_TOLERANCE if protocol == "dd_sam2" else 2.0,
    }
    for key in ("model", "copy_first"):
        res[key] = {
            k: float(np.nanmean([r[key][k] for r in scored])) if scored else float("nan")
            for k in ("dice", "hd95", "nsd", "asd")
        }
    res["baseline"] = baseline_record(
        "dice", res["model"]["dice"], res["copy_first"]["dice"], "copy first mask", higher_is_better=True, split=split
    )
    res["cases"] = rows
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(res, indent=2))
    return res
