import pytest
import torch
from torch import nn

from medtransfer.shared.peft import (
    BottleneckAdapter,
    LoRALinear,
    apply_lora,
    count_parameters,
    insert_adapters,
    mark_peft_trainable,
    merge_lora,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(8, 8), nn.GELU()) for _ in range(3)])
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(8, 24)
        self.attn.proj = nn.Linear(24, 8)
        self.head = nn.Linear(8, 2)

    def forward(self, x):
        x = self.blocks(x)
        return self.head(self.attn.proj(self.attn.qkv(x)))


def test_lora_starts_as_identity_and_only_lora_trains():
    torch.manual_seed(0)
    m = Tiny()
    x = torch.randn(4, 8)
    ref = m(x)
    names = apply_lora(m, targets=["*qkv", "*proj"], r=2)
    assert names == ["attn.qkv", "attn.proj"]
    assert torch.allclose(m(x), ref)
    n = mark_peft_trainable(m, also=["head"])
    assert n == count_parameters(m, trainable=True)
    m(x).sum().backward()
    for name, p in m.named_parameters():
        has = p.grad is not None and p.grad.abs().sum() > 0
        if "lora_" in name or name.startswith("head"):
            assert p.requires_grad and (has or "lora_b" in name or "lora_a" in name), name
        else:
            assert not p.requires_grad and p.grad is None, name
    # the zero-initialised B gets gradient
    assert m.attn.qkv.lora_b.weight.grad.abs().sum() > 0


def test_merge_equals_unmerged():
    m = Tiny()
    apply_lora(m, targets=["*qkv"], r=2)
    with torch.no_grad():
        m.attn.qkv.lora_b.weight.normal_()
    x = torch.randn(3, 8)
    y = m(x)
    merge_lora(m)
    assert isinstance(m.attn.qkv, nn.Linear) and not isinstance(m.attn.qkv, LoRALinear)
    assert torch.allclose(m(x), y, atol=1e-5)


def test_adapters_wrap_blocks():
    m = Tiny()
    x = torch.randn(2, 8)
    ref = m(x)
    names = insert_adapters(m, ["blocks.[01]"], lambda n, b: BottleneckAdapter(8, reduction=2))
    assert names == ["blocks.0", "blocks.1"]
    assert torch.allclose(m(x), ref)  # zero-initialised up-projection
    mark_peft_trainable(m)
    assert count_parameters(m, trainable=True) == 2 * (8 * 4 + 4 + 4 * 8 + 8)


def test_no_match_is_an_error():
    with pytest.raises(ValueError, match="matched no"):
        apply_lora(Tiny(), targets=["*nothing*"])
