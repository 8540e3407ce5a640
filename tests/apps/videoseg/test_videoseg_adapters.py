"""Adapters: DD-Adapter structure, parameter counts, and which parameters get gradients."""

from __future__ import annotations

import pytest
import torch

from medtransfer.apps.videoseg.adapters import DDAdapter, configure_peft, parameter_report
from medtransfer.shared.peft import AdapterWrapped, LoRALinear


def test_dd_adapter_structure_and_identity_at_init():
    a = DDAdapter(96, dilations=(1, 3))
    x = torch.randn(2, 8, 8, 96)
    assert torch.equal(a(x), x)  # zero-initialised up-projection: starts as the identity
    assert [b.dilation for b in a.branches] == [(1, 1), (3, 3)]
    assert all(b.groups == 48 and b.kernel_size == (3, 3) for b in a.branches)  # depthwise
    assert (a.down.in_channels, a.down.out_channels, a.up.out_channels) == (96, 48, 96)
    n = sum(p.numel() for p in a.parameters())
    assert n == (96 * 48 + 48) + 2 * (48 * 9 + 48) + (48 * 96 + 96)
    torch.nn.init.normal_(a.up.weight)
    assert not torch.allclose(a(x), x)


def test_parameter_counts_on_sam21_tiny():
    from medtransfer.shared.models.sam2_builder import build_sam2

    counts = {}
    for method in ("dd_adapter", "lora", "mlp_adapter"):
        m = build_sam2("sam2.1_hiera_tiny", image_size=256)
        counts[method] = configure_peft(m, method)
        if method == "dd_adapter":
            blocks = m.image_encoder.trunk.blocks
            assert all(isinstance(blocks[i], AdapterWrapped) for i in range(6))
            assert not isinstance(blocks[6], AdapterWrapped)
        if method == "lora":
            assert isinstance(m.image_encoder.trunk.blocks[0].attn.qkv, LoRALinear)
    dd = counts["dd_adapter"]
    # DD-SAM2 reports about 0.54 M adapter parameters on Hiera-T
    assert 0.5e6 < dd["adapter"] < 0.6e6
    assert dd["trainable"] == dd["adapter"] + dd["decoder"]
    assert dd["trainable"] < 0.15 * dd["total"]
    assert counts["lora"]["adapter"] != dd["adapter"] and counts["mlp_adapter"]["adapter"] != dd["adapter"]


@pytest.mark.parametrize("method", ["dd_adapter", "lora"])
def test_only_adapters_and_decoder_get_gradients(vs_micro, method):
    from medtransfer.apps.videoseg.adapters import DECODER_PREFIXES
    from medtransfer.apps.videoseg.model import build_model, clip_forward
    from medtransfer.apps.videoseg.train import make_loss

    torch.manual_seed(0)
    model, rep = build_model({**vs_micro, "adapter": method})
    model.train()
    frames = torch.randn(2, 3, 128, 128)
    masks = torch.zeros(1, 2, 128, 128)
    masks[:, :, 40:80, 50:90] = 1
    logits, scores = clip_forward(model, frames, box=torch.tensor([50.0, 40.0, 90.0, 80.0]))
    loss = make_loss("box")(
        {"logits": logits[None, :, 0], "scores": scores[None, :, 0]}, {"masks": masks, "valid": torch.ones(1, 2)}
    )
    loss.backward()
    got = {n for n, p in model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert got <= trainable
    peft_names = {n for n in trainable if "adapter" in n or "lora_" in n}
    assert peft_names and all(n.startswith("image_encoder.trunk.blocks.") for n in peft_names)
    assert trainable == peft_names | {n for n in trainable if n.startswith(DECODER_PREFIXES)}
    # nothing of the frozen encoder, memory attention or memory encoder
    frozen_hit = [
        n
        for n in got
        if n.startswith(("memory_attention", "memory_encoder"))
        or (n.startswith("image_encoder") and n not in peft_names)
    ]
    assert not frozen_hit
    # the adapters really receive a signal
    up = [n for n in peft_names if n.endswith(("adapter.up.weight", "lora_b.weight"))]
    assert up and any(float(dict(model.named_parameters())[n].grad.abs().sum()) > 0 for n in up)
    assert rep["trainable"] == sum(p.numel() for n, p in model.named_parameters() if n in trainable)
    assert parameter_report(model)["memory"] == 0
