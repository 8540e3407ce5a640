"""Gated attention MIL (Ilse et al. 2018) for batched, variable-length bags of patch features.

Bags of different lengths are padded to one tensor ``x`` (B, N, D) with a boolean ``mask``
(B, N) that is True for real patches; padded patches get zero attention.  The module returns
the head's logits; :meth:`GatedAttentionMIL.embed` gives the bag embedding and attention.

Registered in the shared registry as ``abmil_gated``::

    create_model("abmil_gated", in_dim=1536, n_outputs=32)   # Path-PKT sizes: 512 / 384
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from medtransfer.shared.registry.core import register_model

NEG = -1e4  # finite "minus infinity": keeps softmax finite for half precision and ONNX


class GatedAttentionMIL(nn.Module):
    """Gated attention pooling over patch features, then a linear head.

    Args:
        in_dim: patch feature size D.
        hidden: size of the projected patch features (and of the bag embedding).
        attn_dim: size of the gated attention branch.
        n_outputs: head outputs (e.g. number of discrete-time hazard bins).
        dropout: dropout after the projection and in the attention branch.
    """

    def __init__(
        self, in_dim: int = 1536, hidden: int = 512, attn_dim: int = 384, n_outputs: int = 4, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim, self.hidden, self.n_outputs = in_dim, hidden, n_outputs
        self.fc = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_a = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Tanh(), nn.Dropout(dropout))
        self.attention_b = nn.Sequential(nn.Linear(hidden, attn_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.attention_c = nn.Linear(attn_dim, 1)
        self.classifier = nn.Linear(hidden, n_outputs)

    def embed(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Bag embeddings and attention weights.

        Args:
            x: (B, N, D) padded patch features (a single bag (N, D) is accepted).
            mask: (B, N) True/1 for real patches; None = all real.

        Returns:
            ``(embedding (B, hidden), attention (B, N))``; attention sums to 1 over real patches.
        """
        if x.dim() == 2:
            x = x.unsqueeze(0)
            mask = None if mask is None else mask.reshape(1, -1)
        h = self.fc(x)
        scores = self.attention_c(self.attention_a(h) * self.attention_b(h)).squeeze(-1)  # (B, N)
        if mask is not None:
            scores = scores.masked_fill(~mask.to(torch.bool), NEG)
        attn = torch.softmax(scores, dim=-1)
        if mask is not None:
            attn = attn * mask.to(attn.dtype)
        emb = torch.bmm(attn.unsqueeze(1), h).squeeze(1)
        return emb, attn

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Head logits (B, n_outputs)."""
        emb, _ = self.embed(x, mask)
        return self.classifier(emb)


@register_model(
    "abmil_gated",
    family="mil",
    head=("classifier",),
    description="gated attention MIL over patch-feature bags (padding mask)",
)
def abmil_gated(
    in_dim: int = 1536,
    hidden: int = 512,
    attn_dim: int = 384,
    n_outputs: int = 4,
    dropout: float = 0.25,
    num_classes: Optional[int] = None,
) -> GatedAttentionMIL:
    """Registry builder for :class:`GatedAttentionMIL` (``num_classes`` is accepted as ``n_outputs``)."""
    n_outputs = int(num_classes) if num_classes is not None else n_outputs
    return GatedAttentionMIL(in_dim=in_dim, hidden=hidden, attn_dim=attn_dim, n_outputs=n_outputs, dropout=dropout)
