"""SAM2 / SAM2.1 / MedSAM2 builders from the official ``sam2`` package configs.

Models are built with the official hydra configs shipped inside ``sam2`` (tiny, small, base+,
large), at any image size that is a multiple of 32 (``image_size=256`` is the small CPU
configuration used by tests and the demo).  Weights come from local files only: official SAM2 /
SAM2.1 checkpoints (``{"model": state_dict}``) or MedSAM2's; a missing file raises
:class:`WeightsError` naming the expected file.  Random init is the default (tests).

Registered names: ``sam2_hiera_{tiny,small,base_plus,large}``,
``sam2.1_hiera_{tiny,small,base_plus,large}`` and ``medsam2_hiera_tiny`` (512 px).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from medtransfer.shared.registry.core import register_model
from medtransfer.shared.utils.errors import WeightsError

#: name -> (config inside the sam2 package, checkpoint file name, default image size)
SAM2_VARIANTS: dict[str, tuple[str, str, int]] = {
    "sam2_hiera_tiny": ("configs/sam2/sam2_hiera_t.yaml", "sam2_hiera_tiny.pt", 1024),
    "sam2_hiera_small": ("configs/sam2/sam2_hiera_s.yaml", "sam2_hiera_small.pt", 1024),
    "sam2_hiera_base_plus": ("configs/sam2/sam2_hiera_b+.yaml", "sam2_hiera_base_plus.pt", 1024),
    "sam2_hiera_large": ("configs/sam2/sam2_hiera_l.yaml", "sam2_hiera_large.pt", 1024),
    "sam2.1_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "sam2.1_hiera_tiny.pt", 1024),
    "sam2.1_hiera_small": ("configs/sam2.1/sam2.1_hiera_s.yaml", "sam2.1_hiera_small.pt", 1024),
    "sam2.1_hiera_base_plus": ("configs/sam2.1/sam2.1_hiera_b+.yaml", "sam2.1_hiera_base_plus.pt", 1024),
    "sam2.1_hiera_large": ("configs/sam2.1/sam2.1_hiera_l.yaml", "sam2.1_hiera_large.pt", 1024),
    # MedSAM2 (bowang-lab) fine-tunes SAM2.1 hiera-tiny at 512 px.
    "medsam2_hiera_tiny": ("configs/sam2.1/sam2.1_hiera_t.yaml", "MedSAM2_latest.pt", 512),
}


def sam2_overrides(image_size: int, video_predictor: bool = False) -> list[str]:
    """Hydra overrides for a SAM2 config at ``image_size`` (RoPE grids follow the size)."""
    if image_size % 32:
        raise ValueError(f"image_size must be a multiple of 32, got {image_size}")
    g = image_size // 16
    out = [
        f"++model.image_size={image_size}",
        f"++model.memory_attention.layer.self_attention.feat_sizes=[{g},{g}]",
        f"++model.memory_attention.layer.cross_attention.feat_sizes=[{g},{g}]",
    ]
    if video_predictor:
        out.insert(0, "++model._target_=sam2.sam2_video_predictor.SAM2VideoPredictor")
    return out


def load_sam2_checkpoint(model: Any, path: str | Path, strict: bool = True) -> dict[str, list[str]]:
    """Load an official SAM2 / SAM2.1 / MedSAM2 checkpoint file into ``model``.

    Args:
        model: a SAM2Base (possibly with adapters inserted: their keys are reported missing).
        path: ``.pt`` file holding ``{"model": state_dict}`` or a bare state dict.
        strict: raise when a checkpoint tensor has no place in the model.

    Returns:
        ``{"missing": [...], "unexpected": [...]}``.

    Raises:
        WeightsError: missing file, unreadable file, or unexpected keys under ``strict``.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: SAM2 checkpoint not found")
    try:
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file
        raise WeightsError(f"{path}: not a readable torch checkpoint ({type(e).__name__})") from None
    if isinstance(sd, dict) and isinstance(sd.get("model"), dict):
        sd = sd["model"]
    res = model.load_state_dict(sd, strict=False)
    unexpected = list(res.unexpected_keys)
    if strict and unexpected:
        raise WeightsError(f"{path}: {len(unexpected)} tensors do not fit the model (e.g. {unexpected[0]})")
    return {"missing": list(res.missing_keys), "unexpected": unexpected}


def build_sam2(
    variant: str = "sam2.1_hiera_tiny",
    image_size: int | None = None,
    checkpoint: str | Path | None = None,
    video_predictor: bool = False,
    extra_overrides: Sequence[str] = (),
    device: str = "cpu",
) -> Any:
    """Build a SAM2 model from the official config.

    Args:
        variant: a key of :data:`SAM2_VARIANTS`.
        image_size: input size (multiple of 32); default the variant's own.
        checkpoint: local weights file; ``None`` keeps the random init.
        video_predictor: build sam2's ``SAM2VideoPredictor`` (for comparisons) instead of SAM2Base.
        extra_overrides: more hydra overrides.
        device: torch device string.

    Returns:
        The model in eval mode.

    Raises:
        WeightsError: unknown variant or missing checkpoint (naming the expected file).
    """
    if variant not in SAM2_VARIANTS:
        raise WeightsError(f"unknown SAM2 variant '{variant}' (known: {', '.join(SAM2_VARIANTS)})")
    cfg_name, fname, default_size = SAM2_VARIANTS[variant]
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise WeightsError(
            f"{checkpoint}: SAM2 checkpoint for '{variant}' not found (expected the official file '{fname}')"
        )
    import sam2  # noqa: F401  (initialises hydra's config module)
    from hydra import compose
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    size = int(image_size or default_size)
    cfg = compose(config_name=cfg_name, overrides=[*sam2_overrides(size, video_predictor), *extra_overrides])
    OmegaConf.resolve(cfg)
    model = instantiate(cfg.model, _recursive_=True)
    if checkpoint is not None:
        load_sam2_checkpoint(model, checkpoint)
    model = model.to(device).eval()
    model.sam2_variant = variant
    model.sam2_image_size = size
    return model


def _register(name: str) -> None:
    cfg_name, fname, size = SAM2_VARIANTS[name]

    def builder(image_size: int = size, **kw: Any) -> Any:
        return build_sam2(name, image_size=image_size, **kw)

    register_model(
        name,
        family="sam2",
        pretrained_cfg={"filename": fname, "source": f"sam2 package config {cfg_name}"},
        head=("sam_mask_decoder",),
        description=f"SAM2 ({cfg_name}, default {size} px)",
    )(builder)


for _n in SAM2_VARIANTS:
    _register(_n)
