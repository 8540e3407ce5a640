"""Evaluation: Dice, HD95, NSD and ASD (MONAI) on every labelled frame except the prompt frame,
beside the same metrics for copying the prompt frame's mask to every frame (the baseline a
tracker must beat: an LV moves little).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.apps.videoseg.data import VideoCase, load_manifest_cases
from medtransfer.apps.videoseg.io import open_video
from medtransfer.apps.videoseg.propagate import StreamingPropagator, mask_to_box


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


def _summ(m: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for k, v in m.items()}


def evaluate_case(prop: StreamingPropagator, case: VideoCase, prompt: str = "box") -> dict[str, Any]:
    """Propagate from the first non-empty labelled frame; score the later labelled frames.

    Returns:
        ``{"case", "frames_scored", "model": {...}, "copy_first": {...}}`` (means over frames).
    """
    lab = [k for k in case.labelled if case.masks[k].any()]
    p = lab[0]
    later = [k for k in case.labelled if k > p]
    stop = (later[-1] + 1) if later else p + 1
    rd = open_video(case.video)
    first = case.masks[p]
    kw = {"box": mask_to_box(first)} if prompt == "box" else {"mask": first}
    got: dict[int, np.ndarray] = {}
    for t, m in prop.run(rd.frames(p, stop), stop - p, **kw):
        if t + p in later:
            got[t + p] = m
    res: dict[str, Any] = {"case": case.case_id, "prompt_frame": p, "frames_scored": len(later)}
    if not later:
        return res
    gt = np.stack([case.masks[k] for k in later])
    res["model"] = _summ(frame_metrics(np.stack([got[k] for k in later]), gt))
    res["copy_first"] = _summ(frame_metrics(np.repeat(first[None], len(later), 0), gt))
    return res


def evaluate(
    manifest: str | Path,
    model: str | Path,
    split: str = "test",
    out: str | Path | None = None,
    backend: str = "onnx",
    prompt: str = "box",
    limit: int = 0,
) -> dict[str, Any]:
    """Evaluate a bundle (``backend='onnx'``) or a run directory (``'torch'``) on one split.

    Returns:
        ``{"split", "n_cases", "model": {...}, "copy_first": {...}, "cases": [...]}``; written to
        ``out/metrics.json`` when ``out`` is given.
    """
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

    rows = [evaluate_case(prop, c, prompt) for c in track(cases, description="videoseg evaluate", transient=True)]
    scored = [r for r in rows if r.get("frames_scored")]
    res: dict[str, Any] = {"split": split, "n_cases": len(scored), "first_frame_excluded": True}
    for key in ("model", "copy_first"):
        res[key] = {
            k: float(np.nanmean([r[key][k] for r in scored])) if scored else float("nan")
            for k in ("dice", "hd95", "nsd", "asd")
        }
    res["cases"] = rows
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "metrics.json").write_text(json.dumps(res, indent=2))
    return res
