"""Models of the wsi app on the shared registry: patch encoders, the MIL survival model, MoE-PKT.

* Patch encoders: any registry image net (``resnet18`` default, features = pooled output) and
  ``uni2h``: the UNI2-h architecture (timm ViT-H/14, 1536-d, SwiGLU, 8 register tokens) that
  reads a user's local UNI2-h weights (``pretrained=PATH``).
* Survival MIL: the shared ``abmil_gated`` aggregator with one logit per time bin.
* :class:`MoEPKT`: the Path-PKT mixture of source experts for a target cancer.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torch import nn

from medtransfer.shared.registry import create_model
from medtransfer.shared.utils.errors import ConfigError, MedTransferError


def uni2h(num_classes: int = 0, depth: int = 24, **kw: Any) -> nn.Module:
    """UNI2-h-compatible ViT (timm kwargs as published in the UNI2-h model card); registered as
    ``uni2h`` by the wsi plugin's ``backbones`` declaration.

    Args:
        num_classes: 0 = features (1536-d).
        depth: transformer blocks (24 in UNI2-h; fewer only for tests).
    """
    import timm

    args = dict(
        img_size=224,
        patch_size=14,
        depth=depth,
        num_heads=24,
        init_values=1e-5,
        embed_dim=1536,
        mlp_ratio=2.66667 * 2,
        num_classes=num_classes,
        no_embed_class=True,
        mlp_layer=timm.layers.SwiGLUPacked,
        act_layer=torch.nn.SiLU,
        reg_tokens=8,
        dynamic_img_size=True,
    )
    args.update(kw)
    return timm.create_model("vit_giant_patch14_224", pretrained=False, **args)


#: the seed of a random-init patch encoder (bags record its weights' digest, ``random_init_sha256``)
RANDOM_INIT_SEED = 0


def build_encoder(name: str = "resnet18", weights: Any = None, **kw: Any) -> tuple[nn.Module, int, bool]:
    """A registry image net as a patch feature extractor.

    Args:
        name: registry name (timm family: resnet18, resnet50, densenet121, uni2h, ...).
        weights: None = random init, drawn with :data:`RANDOM_INIT_SEED` (features usable for
            plumbing, not for science; the same encoder in every job);
            True = the registry's file from the weights dirs; a path = that file.
        **kw: passed to the builder (e.g. ``depth`` for ``uni2h``).

    Returns:
        ``(model, feature_dim, pretrained)``.
    """
    if weights:
        model = create_model(name, pretrained=weights, num_classes=0, **kw)
    else:  # random init: one fixed draw, so every extraction (and export) of it gives the same features
        with torch.random.fork_rng(devices=[]):  # the caller's random stream is left as it was
            torch.manual_seed(RANDOM_INIT_SEED)
            model = create_model(name, pretrained=False, num_classes=0, **kw)
    dim = int(getattr(model, "num_features", 0) or 0)
    if not dim:
        with torch.no_grad():
            dim = int(model.eval()(torch.zeros(2, 3, 224, 224)).shape[-1])
    return model, dim, bool(weights)


#: The tile normalisation every encoder of this app sees (ImageNet statistics on 0-255 RGB).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class TileEncoder(nn.Module):
    """The one tile preprocessing + encoder: (B, 3, H, W) float RGB in [0, 255] -> (B, D) features.

    Feature extraction (h5 bags for training) and the exported ONNX encoder both run this module,
    so the normalisation has one source of truth.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255.0)

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.model((tiles - self.mean) / self.std)


def build_tile_encoder(name: str = "resnet18", weights: Any = None, **kw: Any) -> tuple[TileEncoder, int, bool]:
    """:func:`build_encoder` wrapped in :class:`TileEncoder` (normalisation inside)."""
    model, dim, pre = build_encoder(name, weights, **kw)
    return TileEncoder(model), dim, pre


def build_mil(in_dim: int, n_bins: int, hidden: int = 512, attn_dim: int = 384, dropout: float = 0.25) -> nn.Module:
    """The shared gated-attention MIL with one hazard logit per time bin."""
    return create_model(
        "abmil_gated", in_dim=in_dim, n_outputs=n_bins, hidden=hidden, attn_dim=attn_dim, dropout=dropout
    )


#: MoE-PKT gate weighting: ``renorm`` (ours) or ``raw`` (Path-PKT, the top-k softmax probabilities).
ROUTINGS = ("renorm", "raw")


class MoEPKT(nn.Module):
    """MoE-PKT: route a target slide through the top-k of several frozen source-cancer models.

    A trainable target MIL embeds the bag; ``router`` (Linear hidden -> E) scores the experts;
    the top-k probabilities (renormalised) weight expert outputs; expert i is Linear+ReLU on
    source model i's embedding of the same bag; a linear head gives the hazard logits.  It is
    initialised as a gated ensemble of the sources (identity experts, mean of the source heads)
    so that few target patients fine-tune a sensible start instead of a random one.

    Args:
        sources: trained source MIL models (frozen here).
        target: a MIL model for the router's target embedding (trainable).
        n_bins: hazard bins.
        top_k: experts used per slide.
        names: source names (for reports).
        routing: ``renorm`` (ours: the kept top-k probabilities rescaled to sum to 1) or ``raw``
            (Path-PKT: the kept softmax probabilities as they are, summing to less than 1).
    """

    def __init__(
        self,
        sources: Sequence[nn.Module],
        target: nn.Module,
        n_bins: int,
        top_k: int = 2,
        names: Optional[Sequence[str]] = None,
        routing: str = "renorm",
    ) -> None:
        super().__init__()
        if not sources:
            raise MedTransferError("MoE-PKT needs at least one source model")
        if routing not in ROUTINGS:
            raise ConfigError(f"moe.routing must be one of {', '.join(ROUTINGS)} (got '{routing}')")
        self.routing = routing
        self.sources = nn.ModuleList(sources)
        for p in self.sources.parameters():
            p.requires_grad_(False)
        self.target = target
        h = int(target.hidden)
        self.router = nn.Linear(h, len(sources))
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(int(s.hidden), h), nn.ReLU()) for s in sources)
        self.head = nn.Linear(h, n_bins)
        self.top_k = max(1, min(int(top_k), len(sources)))
        self.names = list(names or [f"source{i}" for i in range(len(sources))])
        self._init_from_sources(n_bins)

    @torch.no_grad()
    def _init_from_sources(self, n_bins: int) -> None:
        """Start as a gated ensemble of the source models: identity experts (the source embeddings
        are non-negative, so ReLU keeps them) and the mean of the source heads."""
        h = self.head.in_features
        heads = [s.classifier for s in self.sources if isinstance(getattr(s, "classifier", None), nn.Linear)]
        for s, e in zip(self.sources, self.experts):
            if int(s.hidden) == h:
                e[0].weight.copy_(torch.eye(h))
                e[0].bias.zero_()
        if heads and all(c.out_features == n_bins and c.in_features == h for c in heads):
            self.head.weight.copy_(torch.stack([c.weight for c in heads]).mean(0))
            self.head.bias.copy_(torch.stack([c.bias for c in heads]).mean(0))

    def train(self, mode: bool = True) -> "MoEPKT":
        super().train(mode)
        self.sources.eval()  # frozen: no dropout in the source embeddings
        return self

    def route(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        """Everything the forward computes: logits, router logits/probs, gates, attention."""
        emb_t, attn = self.target.embed(x, mask)
        r_logits = self.router(emb_t)
        probs = torch.softmax(r_logits, dim=-1)
        kth = torch.topk(probs, self.top_k, dim=-1).values[:, -1:]
        keep = (probs >= kth).to(probs.dtype)
        gates = probs * keep
        if self.routing == "renorm":
            gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-9)
        outs = torch.stack([e(s.embed(x, mask)[0]) for s, e in zip(self.sources, self.experts)], dim=1)  # (B,E,H)
        mixed = (gates.unsqueeze(-1) * outs).sum(1)
        return {
            "logits": self.head(mixed),
            "router_logits": r_logits,
            "probs": probs,
            "gates": gates,
            "keep": keep,
            "attention": attn,
        }

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Hazard logits (B, n_bins)."""
        return self.route(x, mask)["logits"]

    def embed(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The target embedding and attention (used for attention heat maps)."""
        return self.target.embed(x, mask)

    @staticmethod
    def aux_losses(out: dict[str, torch.Tensor], scale_by_experts: bool = True) -> dict[str, torch.Tensor]:
        """Switch-style balance loss and router z-loss (mean logsumexp^2).

        Args:
            out: :meth:`route` outputs (``probs``, ``keep``, ``router_logits``).
            scale_by_experts: ours multiplies the balance term by the number of experts E
                (``E * sum_i f_i P_i``, as the Switch Transformer); Path-PKT does not
                (``sum_i f_i P_i``).  ``f_i`` = fraction of the batch's top-k picks that went to
                expert i, ``P_i`` = mean router probability of expert i.

        Returns:
            ``{"balance", "z"}`` (unweighted).
        """
        probs, keep = out["probs"], out["keep"]
        n_exp = probs.shape[-1]
        f = keep.mean(0) / keep.sum(-1).mean().clamp_min(1e-9)
        p = probs.mean(0)
        balance = (f * p).sum() * (n_exp if scale_by_experts else 1)
        z = torch.logsumexp(out["router_logits"], dim=-1).pow(2).mean()
        return {"balance": balance, "z": z}


class SurvivalHead(nn.Module):
    """Export wrapper: (features (B,N,D), mask (B,N)) -> risk, hazards, survival, attention."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, features: torch.Tensor, mask: torch.Tensor):
        m = mask > 0.5
        if isinstance(self.model, MoEPKT):
            out = self.model.route(features, m)
            logits, attn = out["logits"], out["attention"]
        else:
            emb, attn = self.model.embed(features, m)
            logits = self.model.classifier(emb)
        hazards = torch.sigmoid(logits)
        # S_j = prod_{i<=j} (1 - h_i) = exp(-cumsum(softplus(logit_i))): exact, stable, and exportable
        surv = torch.exp(-torch.cumsum(torch.nn.functional.softplus(logits), dim=-1))
        risk = -surv.sum(-1)
        return risk, hazards, surv, attn
