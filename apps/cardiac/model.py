"""The two-head echo network: a registry backbone with a view head (6 classes) and a grade head (0-10)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from medtransfer.apps.cardiac.synthetic import VIEWS
from medtransfer.shared.rundir import model_builder


@model_builder
class CardiacNet(nn.Module):
    """Backbone (pooled features) -> ``view_logits`` (B, 6) and ``grade`` (B,) in [0, 10].

    Args:
        backbone: registry name (``resnet18`` default, ``densenet121`` option).
        pretrained: False, True (registry file) or a local ImageNet weight file.
        n_views: number of view classes.
        in_chans: input channels.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool | str | Path = False,
        n_views: int = len(VIEWS),
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        from medtransfer.shared.registry import create_model

        self.backbone = create_model(backbone, pretrained=pretrained, num_classes=0, in_chans=in_chans)
        dim = int(getattr(self.backbone, "num_features", 512))
        self.view_head = nn.Linear(dim, n_views)
        self.grade_head = nn.Linear(dim, 1)
        self.transfer_head = ["view_head", "grade_head"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.backbone(x)
        return self.view_head(f), 10.0 * torch.sigmoid(self.grade_head(f)).squeeze(-1)


def build_model(cfg: dict[str, Any], pretrained: bool | str | Path = False) -> CardiacNet:
    """Build from the resolved config's ``model`` section (``model.views``: the view classes, default all 6)."""
    m = cfg["model"]
    n = len(m.get("views") or VIEWS)
    return CardiacNet(backbone=str(m["backbone"]), pretrained=pretrained, n_views=n)


@torch.no_grad()
def extend_view_head(model: CardiacNet, n_new: int = 1) -> CardiacNet:
    """Add ``n_new`` view classes to a trained model, keeping every old class (CACTUS's added view).

    The old rows of the view head are copied unchanged (same order); each new row gets the mean
    weight of the old rows plus a small random part, and the mean old bias, so the new class starts
    neither dominant nor unreachable.  Backbone and grade head are untouched.

    Args:
        model: a trained :class:`CardiacNet`.
        n_new: number of classes to append.

    Returns:
        The same model, its ``view_head`` replaced by a wider ``nn.Linear``.
    """
    old = model.view_head
    new = nn.Linear(old.in_features, old.out_features + n_new).to(old.weight.device, old.weight.dtype)
    new.weight[: old.out_features] = old.weight
    new.bias[: old.out_features] = old.bias
    w0 = old.weight.mean(0, keepdim=True)
    new.weight[old.out_features :] = w0 + 0.01 * torch.randn(n_new, old.in_features, device=w0.device) * (
        old.weight.std() + 1e-8
    )
    new.bias[old.out_features :] = old.bias.mean()
    model.view_head = new
    return model
