"""Frozen-feature extraction helpers for the apps' ``rank_features`` hooks (imports torch when called)."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

MAX_FLAT = 4096  # flatten the head's input up to this size; larger maps are mean-pooled to channels


def head_input_features(model: Any, head: str, x: Any, forward: Callable[[Any, Any], Any] | None = None) -> np.ndarray:
    """The input of the named head module (the penultimate representation) for a batch, as (B, D).

    Args:
        model: the network (eval mode).
        head: name of its final module (the last module whose dotted name ends with it is used).
        x: the input batch (a tensor).
        forward: ``forward(model, x)`` when calling ``model(x)`` is not how the network runs.

    Returns:
        float32 (B, D): the head's input flattened (mean-pooled over trailing dims when larger than
        :data:`MAX_FLAT`).
    """
    import torch

    mods = [m for n, m in model.named_modules() if n == head or n.endswith("." + head)]
    if not mods:
        raise ValueError(f"model has no module named {head!r}")
    got: list[torch.Tensor] = []

    def grab(_m: Any, inputs: tuple[Any, ...]) -> None:
        got.append(inputs[0].detach())

    h = mods[-1].register_forward_pre_hook(grab)
    try:
        with torch.no_grad():
            forward(model, x) if forward else model(x)
    finally:
        h.remove()
    z = got[-1].float()
    if z[0].numel() > MAX_FLAT and z.ndim > 2:
        z = z.flatten(2).mean(2)
    return z.reshape(z.shape[0], -1).cpu().numpy()


def dotted_overrides(opts: dict[str, Any]) -> list[str]:
    """``--opt`` keys with a dot (``data.sfreq=50``) as ``--set``-style overrides; the rest stay hook options."""
    return [f"{k}={v}" for k, v in opts.items() if "." in k]
