"""Graph passes: ``split_packed_qkv`` on Hiera-style attention blocks, exported and parity-checked."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.shared.export import export_onnx
from medtransfer.shared.export.onnx_passes import split_packed_qkv


class PackedAttention(nn.Module):
    """SAM2 Hiera's ``MultiScaleAttention`` pattern: one qkv Linear, ``unbind(2)``, optional query pooling."""

    def __init__(self, dim: int = 16, heads: int = 2, pool: bool = False, timm_style: bool = False) -> None:
        super().__init__()
        self.heads, self.pool, self.timm_style = heads, pool, timm_style
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (B, H, W, dim)
        b, h, w, _ = x.shape
        qkv = self.qkv(x)
        if self.timm_style:  # permute first, then unbind(0): a different pattern, left alone
            q, k, v = qkv.reshape(b, h * w, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
            o = F.scaled_dot_product_attention(q, k, v)
            return self.proj(o.transpose(1, 2).reshape(b, h, w, -1))
        q, k, v = torch.unbind(qkv.reshape(b, h * w, 3, self.heads, -1), 2)
        if self.pool:
            q = q.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            q = F.max_pool2d(q, 2, 2).permute(0, 2, 3, 1)
            h, w = h // 2, w // 2
            q = q.reshape(b, h * w, self.heads, -1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        return self.proj(o.transpose(1, 2).reshape(b, h, w, -1))


def _export(tmp_path, module, passes=(split_packed_qkv,)):
    import onnx

    module = module.eval()
    x = torch.randn(2, 4, 4, 16)
    rep = export_onnx(
        module,
        (x,),
        tmp_path / "m.onnx",
        ["x"],
        ["y"],
        dynamic={"x": {0: "batch"}},
        atol=1e-5,
        parity_args=[(torch.randn(3, 4, 4, 16),)],
        opset=23,
        graph_passes=passes,
    )
    return rep, onnx.load(str(tmp_path / "m.onnx"))


@pytest.mark.parametrize("pool", [False, True])
def test_split_packed_qkv_rewrites_and_keeps_parity(tmp_path, pool):
    import onnxruntime as ort

    torch.manual_seed(0)
    mod = PackedAttention(pool=pool)
    rep, model = _export(tmp_path, mod)
    assert rep["passes"] == {"split_packed_qkv": 1} and rep["max_abs_diff"] < 1e-5
    ops = [n.op_type for n in model.graph.node]
    prod = {o: n for n in model.graph.node for o in n.output}
    (att,) = [n for n in model.graph.node if n.op_type == "Attention"]
    assert {a.name: a.i for a in att.attribute if a.name.endswith("num_heads")} == {"q_num_heads": 2, "kv_num_heads": 2}
    assert [prod[i].op_type for i in att.input] == ["Reshape"] * 3
    # the packed projection is gone: three MatMuls of a third of the width, no Slice/Squeeze/Transpose
    # left on the q/k/v path (the pooled query keeps its own NCHW<->NHWC permutes)
    assert ops.count("MatMul") == 4 and "Squeeze" not in ops and "Slice" not in ops
    assert ops.count("Transpose") == (2 if pool else 0)
    # dynamic batch still works after the rewrite, against the module itself
    x = torch.randn(5, 4, 4, 16)
    got = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        want = mod(x).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_split_packed_qkv_leaves_other_patterns_alone(tmp_path):
    import onnx

    mod = PackedAttention(timm_style=True)
    rep, model = _export(tmp_path, mod)
    assert rep["passes"] == {"split_packed_qkv": 0}
    # unchanged: what the exporter wrote without the pass
    _, plain = _export(tmp_path / "plain", mod, passes=())
    assert [n.op_type for n in model.graph.node] == [n.op_type for n in plain.graph.node]
    assert onnx.checker.check_model(model, full_check=True) is None


def test_split_packed_qkv_skips_attention_whose_output_is_used_elsewhere(tmp_path):
    """An Attention whose (B, H, S, C) output feeds something besides the transpose-back keeps its 4-D form."""

    class Tapped(PackedAttention):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, h, w, _ = x.shape
            q, k, v = torch.unbind(self.qkv(x).reshape(b, h * w, 3, self.heads, -1), 2)
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
            return self.proj(o.transpose(1, 2).reshape(b, h, w, -1)) + o.mean()

    rep, model = _export(tmp_path, Tapped())
    assert rep["passes"] == {"split_packed_qkv": 0}
    assert all(not any(a.name == "q_num_heads" for a in n.attribute) for n in model.graph.node)
