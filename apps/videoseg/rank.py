"""The videoseg ``rank_features`` hook: SAM2 image-encoder features of the target's labelled training frames.

A candidate is a videoseg run folder (SAM2 with its adapters), a bundle through its run folder, or
a SAM2 registry name (``sam2.1_hiera_tiny``...) with its local checkpoint, or randomly initialised
(seed 0).  The feature of a frame is the image encoder's lowest-resolution FPN map (the one the
mask decoder reads), mean-pooled over space (256-d).  The target is the frame's mask area as a
fraction of the frame (e.g. the left-ventricle area on EchoNet): a regression target, ranked with
the regression variants (LogME on the standardised area, TMI on quantile bins, Spearman probes).
Only a ranking: no fine-tuning validation of this ranking is in the demo.

Options: ``model.image_size`` / ``model.overrides`` for registry candidates (runs keep theirs),
``max_frames`` (labelled frames per video, 0 = all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError


def _model_and_cfg(candidate: Any, opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    import torch

    from medtransfer.apps.videoseg.model import MODEL_DEFAULTS, build_model
    from medtransfer.apps.videoseg.train import load_run_model, make_config

    if candidate.path is not None:
        model, cfg = load_run_model(candidate.path)
        return model.eval(), dict(cfg)
    if not str(candidate.backbone).startswith("sam2"):
        raise MedTransferError(f"'{candidate.backbone}' is not a SAM2 model")
    cfg = make_config()
    mcfg = {**MODEL_DEFAULTS, **cfg["model"], "arch": str(candidate.backbone)}
    mcfg["checkpoint"] = str(candidate.weights) if candidate.weights is not None else ""
    mcfg.update({k.split(".", 1)[1]: v for k, v in opts.items() if k.startswith("model.")})
    torch.manual_seed(0)
    model, _ = build_model(mcfg)
    cfg["model"] = mcfg
    return model.eval(), cfg


def rank_features(
    candidate: Any, manifest: Path, max_frames: int = 0, **opts: Any
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(features (k, 256), mask area fraction (k,))`` per training video of the manifest.

    Args:
        candidate: a resolved ``shared.transferability.rank.Candidate``.
        manifest: videoseg manifest (videos with masks; rows of split ``train``, or every row when
            no row has a split).
        max_frames: labelled frames per video at most (0 = all).
        **opts: ``model.*`` overrides for registry candidates.
    """
    import torch

    from medtransfer.apps.videoseg.data import load_manifest_cases
    from medtransfer.apps.videoseg.io import open_video
    from medtransfer.apps.videoseg.propagate import preprocess
    from medtransfer.apps.videoseg.train import minmax_scale

    model, cfg = _model_and_cfg(candidate, dict(opts))
    size = int(cfg["model"]["image_size"])
    minmax = str(cfg.get("data", {}).get("intensity", "fixed")) == "minmax_video"
    cases = load_manifest_cases(manifest)
    train = [c for c in cases if c.split == "train"] or [c for c in cases if not c.split]
    for case in train:
        idx = case.labelled[:max_frames] if max_frames else case.labelled
        frames = open_video(case.video).read(idx)
        if minmax:
            allf = open_video(case.video).frames(0, case.n_frames)
            lo, hi = np.inf, -np.inf
            for f in allf:
                lo, hi = min(lo, float(f.min())), max(hi, float(f.max()))
            frames = minmax_scale(frames, lo, hi)
        x = torch.from_numpy(np.concatenate([preprocess(f, size) for f in frames]))
        with torch.no_grad():
            fmap = model.forward_image(x)["backbone_fpn"][-1]
        area = np.array([case.masks[k].astype(bool).mean() for k in idx], np.float64)
        yield fmap.float().mean(dim=(2, 3)).numpy(), area
