"""LoRA and bottleneck adapters."""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Iterable

import torch
from torch import nn


class PEFTModule(nn.Module):
    """Marker base class: parameters of PEFT modules stay trainable under ``mark_peft_trainable``.

    Subclasses list the names of their own trainable parameters/sub-modules in
    ``peft_trainable`` (all own parameters when empty).
    """

    peft_trainable: tuple[str, ...] = ()

    def peft_parameters(self) -> Iterable[nn.Parameter]:
        """The parameters this PEFT module trains."""
        if not self.peft_trainable:
            return self.parameters()
        params = []
        for n in self.peft_trainable:
            obj = getattr(self, n)
            params += list(obj.parameters()) if isinstance(obj, nn.Module) else [obj]
        return params


class LoRALinear(PEFTModule):
    """``y = base(x) + (alpha / r) * B(A(dropout(x)))`` with ``B`` initialised to zero.

    Args:
        base: the wrapped ``nn.Linear`` (frozen by ``mark_peft_trainable``).
        r: rank.
        alpha: scaling numerator.
        dropout: dropout on the LoRA path.
    """

    peft_trainable = ("lora_a", "lora_b")

    def __init__(self, base: nn.Linear, r: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.r = r
        self.scaling = alpha / r
        self.lora_a = nn.Linear(base.in_features, r, bias=False)
        self.lora_b = nn.Linear(r, base.out_features, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # some callers read .weight (e.g. attention fast paths)
        return self.base.weight + self.scaling * (self.lora_b.weight @ self.lora_a.weight)

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_b(self.lora_a(self.dropout(x)))

    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the LoRA update folded in (for export)."""
        lin = nn.Linear(self.in_features, self.out_features, bias=self.base.bias is not None)
        with torch.no_grad():
            lin.weight.copy_(self.weight)
            if self.base.bias is not None:
                lin.bias.copy_(self.base.bias)
        return lin


class LoRAConv2d(PEFTModule):
    """LoRA for ``nn.Conv2d``: a k x k conv to rank r, then a 1x1 conv back, zero-initialised.

    Args:
        base: the wrapped conv.
        r: rank.
        alpha: scaling numerator.
    """

    peft_trainable = ("lora_a", "lora_b")

    def __init__(self, base: nn.Conv2d, r: int = 8, alpha: float = 16.0) -> None:
        super().__init__()
        self.base = base
        self.scaling = alpha / r
        # torch annotates these as 2-tuples; the base Conv2d's own values always fit
        geometry: dict[str, Any] = {
            "kernel_size": base.kernel_size,
            "stride": base.stride,
            "padding": base.padding,
            "dilation": base.dilation,
        }
        self.lora_a = nn.Conv2d(base.in_channels, r, bias=False, **geometry)
        self.lora_b = nn.Conv2d(r, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.lora_a.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_b.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scaling * self.lora_b(self.lora_a(x))


class BottleneckAdapter(PEFTModule):
    """Houlsby-style residual adapter: ``x + up(act(down(x)))``, up-projection zero-initialised.

    Works on the last dimension (tokens, channels-last) or, with ``channels_first``, on dim 1.

    Args:
        dim: feature size.
        reduction: bottleneck = dim // reduction.
        act: activation factory.
        channels_first: features on dim 1 (conv feature maps).
    """

    def __init__(
        self, dim: int, reduction: int = 4, act: Callable[[], nn.Module] = nn.GELU, channels_first: bool = False
    ) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.channels_first = channels_first
        self.down = nn.Linear(dim, hidden)
        self.act = act()
        self.up = nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            y = x.movedim(1, -1)
            return x + self.up(self.act(self.down(y))).movedim(-1, 1)
        return x + self.up(self.act(self.down(x)))


class AdapterWrapped(nn.Module):
    """Run ``block`` then ``adapter`` on its output (the way adapters are added after a block).

    Args:
        block: the original block (kept frozen by the strategy).
        adapter: a PEFT module mapping the block's output to the same shape.
    """

    def __init__(self, block: nn.Module, adapter: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.adapter = adapter

    def forward(self, *args, **kwargs):
        return self.adapter(self.block(*args, **kwargs))


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def apply_lora(
    model: nn.Module, targets: Iterable[str] = ("*qkv", "*proj"), r: int = 8, alpha: float = 16.0, dropout: float = 0.0
) -> list[str]:
    """Wrap every ``nn.Linear`` (and ``nn.Conv2d``) whose qualified name matches a glob in ``targets``.

    Args:
        model: the model, changed in place.
        targets: fnmatch patterns on module names (``"*attn.qkv"``).
        r: LoRA rank.
        alpha: LoRA alpha.
        dropout: LoRA dropout (linear only).

    Returns:
        The names of the wrapped modules.

    Raises:
        ValueError: no module matched (a typo would otherwise train nothing).
    """
    pats = list(targets)
    done: list[str] = []
    for name, mod in list(model.named_modules()):
        if not name or not any(fnmatch.fnmatch(name, p) for p in pats):
            continue
        if isinstance(mod, nn.Linear):
            _set_submodule(model, name, LoRALinear(mod, r=r, alpha=alpha, dropout=dropout))
            done.append(name)
        elif isinstance(mod, nn.Conv2d) and mod.groups == 1:
            _set_submodule(model, name, LoRAConv2d(mod, r=r, alpha=alpha))
            done.append(name)
    if not done:
        raise ValueError(f"LoRA targets {pats} matched no Linear/Conv2d module")
    return done


def insert_adapters(
    model: nn.Module, targets: Iterable[str], make_adapter: Callable[[str, nn.Module], nn.Module]
) -> list[str]:
    """Wrap each module whose name matches ``targets`` as ``AdapterWrapped(block, make_adapter(name, block))``.

    Returns:
        The names of the wrapped modules.
    """
    pats = list(targets)
    names = [n for n, _ in model.named_modules() if n and any(fnmatch.fnmatch(n, p) for p in pats)]
    # don't wrap a child of something already wrapped
    names = [n for n in names if not any(n != o and n.startswith(o + ".") for o in names)]
    for n in names:
        block = model.get_submodule(n)
        _set_submodule(model, n, AdapterWrapped(block, make_adapter(n, block)))
    if not names:
        raise ValueError(f"adapter targets {pats} matched no module")
    return names


def mark_peft_trainable(model: nn.Module, also: Iterable[str] = ()) -> int:
    """Freeze everything except PEFT parameters and modules whose names start with ``also``.

    Returns:
        Number of trainable parameters.
    """
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, PEFTModule):
            for p in m.peft_parameters():
                p.requires_grad_(True)
    prefixes = tuple(also)
    if prefixes:
        for n, p in model.named_parameters():
            if n.startswith(prefixes):
                p.requires_grad_(True)
    return count_parameters(model, trainable=True)


def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every ``LoRALinear`` by its merged ``nn.Linear`` (in place); returns the model."""
    for name, mod in list(model.named_modules()):
        if isinstance(mod, LoRALinear):
            _set_submodule(model, name, mod.merged())
    return model


def count_parameters(model: nn.Module, trainable: bool | None = None) -> int:
    """Parameter count (all, trainable only, or frozen only)."""
    return sum(p.numel() for p in model.parameters() if trainable is None or p.requires_grad == trainable)
