"""videoseg ``rank_features``: SAM2 image-encoder features against per-frame mask area (regression)."""

from __future__ import annotations

import numpy as np
import pytest

from medtransfer.shared.transferability.rank import CandidateError, rank


def test_videoseg_rank_sam2_on_mask_area(tmp_path, vs_micro):
    from medtransfer.apps.videoseg.data import import_echonet, load_manifest_cases
    from medtransfer.apps.videoseg.synthetic import make_echonet_like

    root = make_echonet_like(tmp_path / "EchoNet", n_videos=3, n_frames=12, splits=("TRAIN", "TRAIN", "TRAIN"))
    man = import_echonet(root, tmp_path / "m.csv")
    opts = {"model.image_size": vs_micro["image_size"], "model.overrides": vs_micro["overrides"]}
    res = rank("videoseg", man, ["sam2.1_hiera_tiny"], tmp_path / "o", True, opts, progress=False)
    cases = load_manifest_cases(man)
    n = sum(len(c.labelled) for c in cases)
    row = res["rows"][0]
    assert res["task"] == "regression" and row["n"] == n and row["dim"] == 256 and row["random_init"]
    with np.load(next((tmp_path / "o" / "feature_cache").glob("*.npz"))) as z:
        want = [c.masks[k].astype(bool).mean() for c in cases for k in c.labelled]
        assert np.allclose(z["target"], want)  # the target is each labelled frame's mask area fraction
    with pytest.raises(CandidateError, match="not a SAM2 model"):
        rank("videoseg", man, ["resnet18"], tmp_path / "o2", True, opts, progress=False)
