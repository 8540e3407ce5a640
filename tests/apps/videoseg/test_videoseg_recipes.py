"""The DD-SAM2 recipes: their key values are the authors', and the full-size model builds and steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtransfer.apps.videoseg.data import VideoCase
from medtransfer.apps.videoseg.train import (
    clip_indices,
    copy_first_dice,
    head_modules,
    make_config,
    make_forward,
    make_loss,
    minmax_scale,
    recipe_path,
)
from medtransfer.shared.utils.errors import ConfigError

# the authors' values (github.com/apple1986/DD-SAM2 @ b29073a4; see the comments in each recipe)
AUTHORS = {
    "dd_sam2_echonet": {
        "model.arch": "sam2.1_hiera_tiny",
        "model.image_size": 1024,
        "model.adapter": "dd_adapter",
        "model.adapter_blocks": 6,
        "model.dilations": [1, 3],
        "model.train_decoder": True,
        "model.train_memory": False,
        "model.train_prompt_encoder": False,
        "data.sampling": "consecutive",
        "data.clip_len": 4,
        "data.clips_per_video": 4,
        "data.intensity": "minmax_video",
        "data.prompt": "box",
        "data.box_jitter": 0.0,
        "train.epochs": 10,
        "train.batch_size": 2,
        "train.optimizer": "adamw",
        "train.lr": 1e-5,
        "train.peft.lr_mult": 10.0,
        "train.weight_decay": 1e-4,
        "train.scheduler": "step",
        "train.step_size": 5,
        "train.gamma": 0.5,
        "train.loss": "squared_dice_bce",
        "train.monitor": "val_dice",
        "train.mode": "max",
        "train.patience": 0,
        "train.seed": 2024,
    },
    "dd_sam2_trackrad": {
        "model.arch": "medsam2_hiera_tiny",
        "model.image_size": 512,
        "model.adapter": "dd_adapter",
        "model.adapter_blocks": 6,
        "model.dilations": [1, 3],
        "model.train_decoder": True,
        "model.train_memory": False,
        "model.train_prompt_encoder": False,
        "data.sampling": "consecutive",
        "data.clip_len": 8,
        "data.clips_per_video": 128,
        "data.intensity": "minmax_video",
        "data.prompt": "box",
        "data.box_jitter": 0.0,
        "train.epochs": 30,
        "train.batch_size": 2,
        "train.optimizer": "adamw",
        "train.lr": 1e-5,
        "train.peft.lr_mult": 10.0,
        "train.weight_decay": 1e-4,
        "train.scheduler": "step",
        "train.step_size": 15,
        "train.gamma": 0.5,
        "train.loss": "squared_dice_bce",
        "train.monitor": "val_dice",
        "train.mode": "max",
        "train.patience": 0,
        "train.seed": 2024,
    },
}


def _get(cfg: dict, dotted: str):
    node = cfg
    for k in dotted.split("."):
        node = node[k]
    return node


@pytest.mark.parametrize("name", sorted(AUTHORS))
def test_recipe_values_are_the_authors(name):
    cfg = make_config(recipe_path(name))
    got = {k: _get(cfg, k) for k in AUTHORS[name]}
    assert got == AUTHORS[name]
    assert "sam_prompt_encoder" not in head_modules(cfg) and "sam_mask_decoder" in head_modules(cfg)


def test_recipe_errors():
    with pytest.raises(ConfigError, match="no such videoseg recipe"):
        recipe_path("dd_sam2_nowhere")
    with pytest.raises(ConfigError, match="data.sampling"):
        make_config(overrides=["data.sampling=random"])
    with pytest.raises(ConfigError, match="train.loss"):
        make_config(overrides=["train.loss=focal"])


def _case(n_frames: int, labelled: list[int]) -> VideoCase:
    m = np.zeros((8, 8), np.uint8)
    m[2:5, 2:5] = 1
    return VideoCase(None, {k: m for k in labelled}, "train", "c", n_frames, 8, 8)  # type: ignore[arg-type]


def test_consecutive_clips_start_on_a_labelled_frame_that_fits():
    case = _case(20, [3, 14, 18])
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        idx = clip_indices(case, 4, 32, rng, "consecutive")
        assert idx == list(range(idx[0], idx[0] + 4))
        starts.add(idx[0])
    assert starts == {3, 14}  # 18 + 4 > 20 frames: never a start
    assert clip_indices(case, 4, 32, None, "consecutive") == [3, 4, 5, 6]
    # ours (spread) reaches a later labelled frame instead
    assert clip_indices(case, 4, 32, None, "spread")[-1] == 18


def test_minmax_scale_per_video():
    f = np.array([[[10, 20]], [[30, 50]]], np.uint8)
    out = minmax_scale(f, 10.0, 50.0)
    np.testing.assert_allclose(out.ravel(), [0.0, 63.75, 127.5, 255.0])
    assert not minmax_scale(f, 7.0, 7.0).any()


def test_copy_first_dice_by_hand():
    """Two clips: prompt mask copied onto the later labelled frames; frame 0 never scored."""
    a = np.zeros((3, 4, 4), np.float32)
    a[:, 0:2, 0:2] = 1  # 4 px, same on every frame -> Dice 1 on frames 1, 2
    b = np.zeros((3, 4, 4), np.float32)
    b[0, 0:2, 0:2] = 1
    b[2, 0:2, 0:1] = 1  # 2 px inside the 4-px prompt -> 2*2/(4+2) = 2/3; frame 1 unlabelled
    items = [
        {"masks": torch.from_numpy(a), "valid": torch.tensor([1.0, 1.0, 1.0])},
        {"masks": torch.from_numpy(b), "valid": torch.tensor([1.0, 0.0, 1.0])},
    ]
    assert copy_first_dice(items) == pytest.approx((1 + 1 + 2 / 3) / 3)  # type: ignore[arg-type]


def _one_step(name: str, clip_len: int) -> None:
    """Full-size model from the recipe (random init), one AdamW step on a tiny generated clip."""
    from medtransfer.apps.videoseg.model import build_model
    from medtransfer.shared.finetune.strategies import param_groups, setup_strategy

    cfg = make_config(recipe_path(name), [f"data.clip_len={clip_len}"])
    torch.manual_seed(0)
    model, params = build_model(cfg["model"])
    S = int(cfg["model"]["image_size"])
    assert model.image_size == S and params["adapter"] > 0
    head = head_modules(cfg)
    setup_strategy(model, cfg["train"], head)
    groups = param_groups(model, cfg["train"], head)
    assert max(g["lr"] for g in groups) == pytest.approx(1e-4)  # adapters at 10x the decoder's 1e-5
    assert not any(p.requires_grad for p in model.sam_prompt_encoder.parameters())
    opt = torch.optim.AdamW(groups)
    T = clip_len
    m = torch.zeros(T, S, S)
    m[:, S // 4 : S // 2, S // 4 : S // 2] = 1
    g = torch.Generator().manual_seed(0)
    batch = {
        "frames": torch.randn(1, T, 3, S, S, generator=g),
        "box": torch.tensor([[S / 4, S / 4, S / 2, S / 2]]),
        "prompt_mask": m[None, 0],
        "masks": m[None],
        "valid": torch.ones(1, T),
    }
    ad = {n: p.detach().clone() for n, p in model.named_parameters() if "adapter" in n and p.requires_grad}
    dec = {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("sam_mask_decoder.")}
    model.train()
    out, tgt = make_forward("box")(model, batch)
    assert out["logits"].shape == (1, T, S, S)
    loss = make_loss("box", cfg["train"]["loss"])(out, tgt)
    assert torch.isfinite(loss)
    loss.backward()
    opt.step()
    now = dict(model.named_parameters())
    # the adapters' zero-initialised output convs and the decoder move on the first step
    assert any(not torch.equal(v, now[n].detach()) for n, v in ad.items())
    assert any(not torch.equal(v, now[n].detach()) for n, v in dec.items())


@pytest.mark.slow
def test_trackrad_recipe_full_size_one_step():
    """MedSAM2 hiera-tiny at 512 px, the recipe's model, one step on a 2-frame clip (~40 s on CPU)."""
    _one_step("dd_sam2_trackrad", 2)


def test_echonet_recipe_full_size_builds():
    """SAM2.1 hiera-tiny at 1024 px with 6 DD-Adapters; the 8-frame 1024-px step runs under ``-m gpu``."""
    from medtransfer.apps.videoseg.model import build_model

    cfg = make_config(recipe_path("dd_sam2_echonet"))
    model, params = build_model(cfg["model"])
    assert model.image_size == 1024
    blocks = model.image_encoder.trunk.blocks
    with_adapter = [i for i, b in enumerate(blocks) if any("adapter" in n for n, _ in b.named_parameters())]
    assert with_adapter == list(range(6))
    # REFERENCE.md: about 0.54 M adapter parameters on Hiera-T
    assert 0.45e6 < params["adapter"] < 0.65e6
