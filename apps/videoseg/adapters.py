"""Parameter-efficient tuning of SAM2's Hiera image encoder.

* :class:`DDAdapter` - the depthwise-dilated adapter of DD-SAM2 (1x1 conv d->d/2 + GELU; depthwise
  3x3 convs at several dilations, each + GELU, summed; 1x1 conv d/2->d + GELU; residual add),
  inserted after the first ``n_blocks`` Hiera blocks through the shared
  :func:`~medtransfer.shared.peft.insert_adapters` (the block is wrapped in a module that runs the
  block then the adapter; nothing is patched).
* LoRA on the attention ``qkv`` / ``proj`` linears and a bottleneck MLP adapter after each block,
  as comparisons (both from ``medtransfer.shared.peft``).

:func:`configure_peft` freezes SAM2 and unfreezes the adapters plus the mask decoder (and, if asked,
the memory modules), returning the parameter counts.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from medtransfer.shared.peft import (
    BottleneckAdapter,
    PEFTModule,
    apply_lora,
    count_parameters,
    insert_adapters,
    mark_peft_trainable,
)

METHODS = ("dd_adapter", "lora", "mlp_adapter", "none")
DECODER_PREFIXES = ("sam_mask_decoder.", "sam_prompt_encoder.", "obj_ptr_proj.")
MEMORY_PREFIXES = ("memory_attention.", "memory_encoder.", "maskmem_tpos_enc", "obj_ptr_tpos_proj.")


class DDAdapter(PEFTModule):
    """Depthwise-dilated convolutional adapter on channels-last Hiera features ``(B, H, W, C)``.

    Args:
        dim: channels of the wrapped block's output.
        dilations: dilation rates of the parallel depthwise 3x3 convolutions.
        reduction: bottleneck width = ``dim // reduction``.
    """

    def __init__(self, dim: int, dilations: Sequence[int] = (1, 3), reduction: int = 2) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.down = nn.Conv2d(dim, hidden, 1)
        self.branches = nn.ModuleList(
            nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d, groups=hidden) for d in dilations
        )
        self.up = nn.Conv2d(hidden, dim, 1)
        self.act = nn.GELU()
        # start as (almost) the identity map so the frozen model is unchanged at step 0
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x + adapter(x)`` for ``x`` of shape (B, H, W, C)."""
        y = x.permute(0, 3, 1, 2)
        y = self.act(self.down(y))
        y = sum(self.act(b(y)) for b in self.branches)
        y = self.act(self.up(y))
        return x + y.permute(0, 2, 3, 1)


def _blocks(model: nn.Module) -> nn.ModuleList:
    return model.image_encoder.trunk.blocks


def add_dd_adapters(model: nn.Module, n_blocks: int = 6, dilations: Sequence[int] = (1, 3)) -> list[str]:
    """Wrap the first ``n_blocks`` Hiera blocks as ``block -> DDAdapter``.

    Returns:
        The names of the wrapped blocks.
    """
    n = min(n_blocks, len(_blocks(model)))
    targets = [f"image_encoder.trunk.blocks.{i}" for i in range(n)]
    return insert_adapters(model, targets, lambda name, blk: DDAdapter(blk.dim_out, dilations))


def add_mlp_adapters(model: nn.Module, n_blocks: int = 6, reduction: int = 4) -> list[str]:
    """Bottleneck MLP adapter (channels-last) after the first ``n_blocks`` Hiera blocks."""
    n = min(n_blocks, len(_blocks(model)))
    targets = [f"image_encoder.trunk.blocks.{i}" for i in range(n)]
    return insert_adapters(model, targets, lambda name, blk: BottleneckAdapter(blk.dim_out, reduction=reduction))


def add_lora(model: nn.Module, r: int = 8, alpha: float = 16.0) -> list[str]:
    """LoRA on every Hiera attention ``qkv`` and ``proj`` linear."""
    return apply_lora(
        model,
        targets=("image_encoder.trunk.blocks.*.attn.qkv", "image_encoder.trunk.blocks.*.attn.proj"),
        r=r,
        alpha=alpha,
    )


def configure_peft(
    model: nn.Module,
    method: str = "dd_adapter",
    n_blocks: int = 6,
    dilations: Sequence[int] = (1, 3),
    lora_r: int = 8,
    train_decoder: bool = True,
    train_memory: bool = False,
) -> dict[str, Any]:
    """Insert the chosen adapters and freeze everything else.

    Args:
        model: a SAM2Base, changed in place.
        method: ``dd_adapter``, ``lora``, ``mlp_adapter`` or ``none`` (decoder only).
        n_blocks: adapters after the first N Hiera blocks.
        dilations: DD-Adapter dilation rates.
        lora_r: LoRA rank.
        train_decoder: also train the prompt encoder, mask decoder and object-pointer head.
        train_memory: also train memory attention / memory encoder.

    Returns:
        ``{"method", "wrapped", "total", "trainable", "adapter", "decoder", "memory"}`` counts.
    """
    if method not in METHODS:
        raise ValueError(f"unknown adapter method '{method}' (choose from {', '.join(METHODS)})")
    wrapped: list[str] = []
    if method == "dd_adapter":
        wrapped = add_dd_adapters(model, n_blocks, dilations)
    elif method == "mlp_adapter":
        wrapped = add_mlp_adapters(model, n_blocks)
    elif method == "lora":
        wrapped = add_lora(model, r=lora_r)
    also: tuple[str, ...] = ()
    if train_decoder:
        also += DECODER_PREFIXES
    if train_memory:
        also += MEMORY_PREFIXES
    mark_peft_trainable(model, also=also)
    return {"method": method, "wrapped": len(wrapped), **parameter_report(model)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Trainable parameters that belong to PEFT modules (for the adapter LR multiplier)."""
    ids: set[int] = set()
    out: list[nn.Parameter] = []
    for m in model.modules():
        if isinstance(m, PEFTModule):
            for p in m.peft_parameters():
                if p.requires_grad and id(p) not in ids:
                    ids.add(id(p))
                    out.append(p)
    return out


def parameter_report(model: nn.Module) -> dict[str, int]:
    """Parameter counts: total, trainable, adapters, trainable decoder, trainable memory."""
    adapter = sum(p.numel() for p in adapter_parameters(model))
    named = list(model.named_parameters())
    dec = sum(p.numel() for n, p in named if p.requires_grad and n.startswith(DECODER_PREFIXES))
    mem = sum(p.numel() for n, p in named if p.requires_grad and n.startswith(MEMORY_PREFIXES))
    return {
        "total": count_parameters(model),
        "trainable": count_parameters(model, trainable=True),
        "adapter": adapter,
        "decoder": dec,
        "memory": mem,
    }
