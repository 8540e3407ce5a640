"""shared/models/sam2_builder: official configs, local checkpoints, clear errors."""

from __future__ import annotations

import pytest
import torch

from medtransfer.apps.videoseg.model import MICRO_OVERRIDES
from medtransfer.shared.models.sam2_builder import SAM2_VARIANTS, build_sam2, load_sam2_checkpoint
from medtransfer.shared.registry import create_model, list_models
from medtransfer.shared.utils.errors import WeightsError


def test_registered_names():
    names = set(list_models("sam2"))
    assert {
        "sam2.1_hiera_tiny",
        "sam2.1_hiera_small",
        "sam2.1_hiera_base_plus",
        "sam2.1_hiera_large",
        "sam2_hiera_tiny",
        "medsam2_hiera_tiny",
    } <= names
    assert SAM2_VARIANTS["medsam2_hiera_tiny"][2] == 512


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    a = build_sam2("sam2.1_hiera_tiny", image_size=128, extra_overrides=MICRO_OVERRIDES)
    assert a.image_size == 128 and len(a.image_encoder.trunk.blocks) == 5
    ck = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": a.state_dict()}, ck)
    torch.manual_seed(1)
    b = create_model("sam2.1_hiera_tiny", pretrained=ck, image_size=128, extra_overrides=MICRO_OVERRIDES)
    key = "image_encoder.trunk.blocks.0.attn.qkv.weight"
    assert torch.equal(a.state_dict()[key], b.state_dict()[key])
    c = build_sam2("sam2.1_hiera_tiny", image_size=128, extra_overrides=MICRO_OVERRIDES, checkpoint=ck)
    assert torch.equal(a.state_dict()[key], c.state_dict()[key])
    with pytest.raises(WeightsError, match="sam2.1_hiera_small.pt"):
        build_sam2("sam2.1_hiera_small", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(WeightsError, match="expected file 'sam2.1_hiera_tiny.pt'"):
        create_model("sam2.1_hiera_tiny", pretrained=True, weights_dir=tmp_path / "none", image_size=128)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(WeightsError, match="not a readable"):
        load_sam2_checkpoint(c, bad)
    with pytest.raises(ValueError, match="multiple of 32"):
        build_sam2("sam2.1_hiera_tiny", image_size=100)
