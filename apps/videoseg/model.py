"""The videoseg model: SAM2 (official package) + adapters, split into exportable parts.

* :func:`build_model` - SAM2 from the shared registry (local checkpoint or random init) with the
  adapters of :mod:`.adapters`, encoder frozen.
* ``EncoderPart``, ``DecoderPart``, ``MaskPromptPart``, ``MemoryEncoderPart``,
  ``MemoryAttentionPart`` - the networks of the video path as modules with tensor-only inputs and
  outputs (ONNX export and the PyTorch backend of the streaming loop).  ``MemoryAttentionPart``
  reuses SAM2's memory-attention weights with a real-valued rotary encoding (SAM2's uses complex
  numbers, which the ONNX exporter cannot write).
* :class:`TorchBackend` - those parts behind the numpy interface of :mod:`.propagate`.
* :func:`clip_forward` - differentiable forward of a training clip through SAM2's ``track_step``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medtransfer.apps.videoseg.adapters import configure_peft
from medtransfer.shared.rundir import model_builder

MODEL_DEFAULTS: dict[str, Any] = {
    "arch": "sam2.1_hiera_tiny",
    "image_size": 256,
    "checkpoint": "",
    "adapter": "dd_adapter",
    "adapter_blocks": 6,
    "dilations": [1, 3],
    "lora_r": 8,
    "train_decoder": True,
    "train_memory": False,
    "train_prompt_encoder": True,  # DD-SAM2 freezes the prompt encoder (decoder + adapters only)
    "overrides": [],  # extra hydra overrides of the SAM2 config (e.g. a micro model for tests)
}

#: a very small SAM2 (fewer Hiera blocks, one memory-attention layer) for tests on 2 CPU cores
MICRO_OVERRIDES = [
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    "++model.memory_attention.num_layers=1",
    "++model.memory_attention.layer.dim_feedforward=256",
]


@model_builder
def build_model(mcfg: dict[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """SAM2 + adapters, frozen except adapters (+ decoder / memory as configured).

    Args:
        mcfg: the ``model`` section (see :data:`MODEL_DEFAULTS`).

    Returns:
        ``(model, parameter_report)``.
    """
    import medtransfer.shared.models.sam2_builder  # noqa: F401  (registers the SAM2 names)
    from medtransfer.shared.models.sam2_builder import load_sam2_checkpoint
    from medtransfer.shared.registry import create_model

    m = {**MODEL_DEFAULTS, **(mcfg or {})}
    model = create_model(m["arch"], image_size=int(m["image_size"]), extra_overrides=list(m["overrides"] or []))
    if m["checkpoint"]:
        load_sam2_checkpoint(model, m["checkpoint"])
    report = configure_peft(
        model,
        m["adapter"],
        n_blocks=int(m["adapter_blocks"]),
        dilations=tuple(m["dilations"]),
        lora_r=int(m["lora_r"]),
        train_decoder=bool(m["train_decoder"]),
        train_memory=bool(m["train_memory"]),
    )
    return model, report


# --------------------------------------------------------------------------------------------
# training forward
# --------------------------------------------------------------------------------------------
def clip_forward(
    sam: nn.Module, frames: torch.Tensor, box: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Track one object through a clip the way SAM2's ``track_step`` does (differentiable).

    Args:
        sam: the SAM2Base model.
        frames: (T, 3, S, S) normalised frames; frame 0 is prompted.
        box: (4,) ``x0,y0,x1,y1`` in S-pixel coordinates, or
        mask: (S, S) 0/1 prompt mask for frame 0.

    Returns:
        ``(logits (T, 1, S, S), object_scores (T, 1))``.
    """
    T = frames.shape[0]
    backbone_out = sam.forward_image(frames)
    _, feats, pos, sizes = sam._prepare_backbone_features(backbone_out)
    out_dict: dict[str, dict[int, Any]] = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
    logits, scores = [], []
    for t in range(T):
        f_t = [x[:, t : t + 1] for x in feats]
        p_t = [x[:, t : t + 1] for x in pos]
        pts = mk = None
        if t == 0:
            if box is not None:
                # prompts live where the frames live (a CUDA run must not mix devices)
                pts = {
                    "point_coords": box.view(1, 2, 2).float().to(frames.device),
                    "point_labels": torch.tensor([[2, 3]], dtype=torch.int32, device=frames.device),
                }
            else:
                mk = mask.view(1, 1, *mask.shape[-2:]).float().to(frames.device)
        # the steps of SAM2Base.track_step, keeping the object score in training mode too
        out, sam_outputs, _, _ = sam._track_step(t, t == 0, f_t, p_t, sizes, pts, mk, out_dict, T, False, None)
        _, _, _, low, high, obj_ptr, score = sam_outputs
        out.update(pred_masks=low, pred_masks_high_res=high, obj_ptr=obj_ptr)
        sam._encode_memory_in_output(f_t, sizes, pts, True, high, score, out)
        out_dict["cond_frame_outputs" if t == 0 else "non_cond_frame_outputs"][t] = out
        logits.append(high)
        scores.append(score)
    return torch.cat(logits, 0), torch.cat(scores, 0)


# --------------------------------------------------------------------------------------------
# exportable parts
# --------------------------------------------------------------------------------------------
class EncoderPart(nn.Module):
    """image (1,3,S,S) -> vision feature (1,256,g,g), its position encoding, high-res feats 0/1."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.sam.forward_image(image)
        fpn, pos = out["backbone_fpn"], out["vision_pos_enc"]
        return fpn[-1], pos[-1], fpn[0], fpn[1]


class DecoderPart(nn.Module):
    """Prompt encoder + mask decoder + object pointer on (memory-conditioned) features.

    Args:
        sam: the SAM2Base model.
        multimask: pick the best of 3 masks (tracking frames) or output one (box prompt).
    """

    def __init__(self, sam: nn.Module, multimask: bool) -> None:
        super().__init__()
        self.sam = sam
        self.multimask = multimask

    def forward(
        self, pix: torch.Tensor, hr0: torch.Tensor, hr1: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.sam._forward_sam_heads(
            pix,
            point_inputs={"point_coords": coords, "point_labels": labels},
            high_res_features=[hr0, hr1],
            multimask_output=self.multimask,
        )
        return out[3], out[4], out[5], out[6]


class MaskPromptPart(nn.Module):
    """Mask prompt on the first frame: the mask is the output; the decoder gives the pointer."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(
        self, pix: torch.Tensor, hr0: torch.Tensor, hr1: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        out = self.sam._use_mask_as_output(pix, [hr0, hr1], mask)
        return out[3], out[4], out[5], out[6]


class MemoryEncoderPart(nn.Module):
    """(raw feature, high-res mask logits, object score) -> memory feature and its position enc."""

    def __init__(self, sam: nn.Module) -> None:
        super().__init__()
        self.sam = sam

    def forward(
        self, feat: torch.Tensor, mask_logits: torch.Tensor, score: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        g = (feat.shape[2], feat.shape[3])
        mf, mp = self.sam._encode_new_memory(
            [feat.flatten(2).permute(2, 0, 1)], [g], mask_logits, score, is_mask_from_pts=False
        )
        return mf, mp[-1]


def query_groups(n_queries: int, most: int = 8) -> int:
    """Query groups for single-head attention: the largest of 8, 4, 2 that divides ``n_queries``
    (8: enough parallel work for an 8-core CPU; 2 cores measured 26 vs 28 ms at 4 vs 8 groups)."""
    return next((g for g in (most, 4, 2) if n_queries % g == 0), 1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Real-valued rotary encoding: pairs (x0, x1) rotated by the angle of (cos, sin)."""
    xr = x.reshape(*x.shape[:-1], -1, 2)
    x0, x1 = xr[..., 0], xr[..., 1]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1).flatten(-2)


class MemoryAttentionPart(nn.Module):
    """SAM2 memory attention with a real-valued RoPE (exportable); same weights, same maths.

    Inputs are sequence-first like SAM2's: ``curr``/``curr_pos`` (HW,1,256); spatial memory
    ``mem``/``mem_pos`` (n_mem*HW,1,64) (rotary-encoded); pointer tokens ``ptr``/``ptr_pos``
    (n_ptr,1,64) (not rotary-encoded).  Output: (HW,1,256).

    With one head per attention (SAM2's memory attention) the rotary encoding is folded into the
    projections: RoPE(W x + b) = (W x + b) * cos + (P W x + P b) * sin', P swapping each pair (done
    once here on the weights), the tables broadcast over the memories; a few elementwise passes
    over the 7 x HW memory keys per layer instead of slicing, gathering and stacking them.  The
    swapped copies are taken from the weights when the part is built (export and evaluation build
    it from a loaded model), so build it after any change to the weights.
    """

    def __init__(self, sam: nn.Module, grid: int) -> None:
        super().__init__()
        self.ma = sam.memory_attention
        layer0 = self.ma.layers[0]
        for name, attn in (("sa", layer0.self_attn), ("ca", layer0.cross_attn_image)):
            cis = attn.compute_cis(end_x=grid, end_y=grid)
            self.register_buffer(f"{name}_cos", cis.real.float().contiguous(), persistent=False)
            self.register_buffer(f"{name}_sin", cis.imag.float().contiguous(), persistent=False)
            # the same rotation as pairs-interleaved tables: x * cos2 + swap(x) * sin2
            sign = torch.tensor([-1.0, 1.0]).repeat(cis.shape[-1])
            self.register_buffer(f"{name}_cos2", cis.real.float().repeat_interleave(2, -1), persistent=False)
            self.register_buffer(f"{name}_sin2", cis.imag.float().repeat_interleave(2, -1) * sign, persistent=False)
        self.hw = grid * grid
        self.q_groups = query_groups(self.hw)
        attns = [m for layer in self.ma.layers for m in (layer.self_attn, layer.cross_attn_image)]
        self.folded = all(m.num_heads == 1 for m in attns)
        if self.folded:  # the pair-swapped copies of the rotary projections, made once
            for i, layer in enumerate(self.ma.layers):
                for tag, lin in (
                    ("sq", layer.self_attn.q_proj),
                    ("sk", layer.self_attn.k_proj),
                    ("cq", layer.cross_attn_image.q_proj),
                    ("ck", layer.cross_attn_image.k_proj),
                ):
                    d = lin.weight.shape[0]
                    swap = torch.arange(d).view(-1, 2).flip(-1).reshape(-1)
                    w, bias = lin.weight.detach(), lin.bias.detach()
                    self.register_buffer(f"l{i}_{tag}_ws", w[swap].clone(), persistent=False)
                    self.register_buffer(f"l{i}_{tag}_bs", bias[swap].clone(), persistent=False)

    def _rope_proj(
        self, lin: nn.Module, x: torch.Tensor, key: str, cos2: torch.Tensor, sin2: torch.Tensor
    ) -> torch.Tensor:
        """RoPE(lin(x)) for (B, N, C) with N a multiple of HW (positions repeat every HW tokens)."""
        ws, bs = getattr(self, f"{key}_ws"), getattr(self, f"{key}_bs")
        a, s = lin(x), F.linear(x, ws, bs)
        b, n, d = a.shape
        return (a.reshape(b, -1, self.hw, d) * cos2 + s.reshape(b, -1, self.hw, d) * sin2).reshape(b, n, d)

    def _attend(self, attn: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """SDPA of (B, H, N, D) queries over keys / values, then the value and output projections."""
        # one head over a memory narrower than the head (cross attention: 64-d memory, 256-d head):
        # softmax rows sum to 1, so A (M W^T + b) = (A M) W^T + b; attending over M and projecting
        # after does ~37% fewer multiply-adds than projecting the 7 x HW memory tokens first
        heads = attn.num_heads
        late_v = heads == 1 and v.shape[-1] < q.shape[-1]
        v = v.unsqueeze(1) if late_v else attn._separate_heads(attn.v_proj(v), heads)
        b, h, n, d = q.shape
        g = self.q_groups if h == 1 else 1
        # ONNX Runtime's CPU ``Attention`` kernel spreads batch x heads over its threads, so one
        # head runs on one core: the queries are cut into ``g`` groups that share the one key/value
        # head (grouped-query attention; query rows are independent, so the result is the same)
        out = F.scaled_dot_product_attention(q.reshape(b, g, n // g, d), k, v, enable_gqa=g > 1)
        out = out.reshape(b, 1, n, out.shape[-1]) if g > 1 else out
        if late_v:
            out = attn.v_proj(out)
        return attn.out_proj(attn._recombine_heads(out))

    def _attn(
        self,
        attn: nn.Module,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        n_rope_k: int | None,
    ) -> torch.Tensor:
        """The general path (any number of heads): project, rotate, attend."""
        heads = attn.num_heads
        q = attn._separate_heads(attn.q_proj(q), heads)
        k = attn._separate_heads(attn.k_proj(k), heads)
        q = _rotate(q, cos, sin)
        if n_rope_k is None:
            k = _rotate(k, cos, sin)
        else:
            idx = torch.arange(n_rope_k, device=k.device) % self.hw
            k = torch.cat([_rotate(k[:, :, :n_rope_k], cos[idx], sin[idx]), k[:, :, n_rope_k:]], dim=2)
        return self._attend(attn, q, k, v)

    def forward(
        self,
        curr: torch.Tensor,
        curr_pos: torch.Tensor,
        mem: torch.Tensor,
        mem_pos: torch.Tensor,
        ptr: torch.Tensor,
        ptr_pos: torch.Tensor,
    ) -> torch.Tensor:
        ma = self.ma
        n_rope = mem.shape[0]
        memory = torch.cat([mem, ptr], 0).transpose(0, 1)
        memory_pos = torch.cat([mem_pos, ptr_pos], 0).transpose(0, 1)
        out = curr + 0.1 * curr_pos if ma.pos_enc_at_input else curr
        out = out.transpose(0, 1)
        qpos = curr_pos.transpose(0, 1)
        if self.folded:  # keys of the memories (rotary) and of the pointers (not), split once
            mem_b, ptr_b = mem.transpose(0, 1), ptr.transpose(0, 1)
            mem_k, ptr_k = mem_b + mem_pos.transpose(0, 1), ptr_b + ptr_pos.transpose(0, 1)
        for i, layer in enumerate(ma.layers):
            t2 = layer.norm1(out)
            qk = t2 + qpos if layer.pos_enc_at_attn else t2
            if self.folded:
                sa = layer.self_attn
                q1 = self._rope_proj(sa.q_proj, qk, f"l{i}_sq", self.sa_cos2, self.sa_sin2).unsqueeze(1)
                k1 = self._rope_proj(sa.k_proj, qk, f"l{i}_sk", self.sa_cos2, self.sa_sin2).unsqueeze(1)
                out = out + self._attend(sa, q1, k1, t2)
            else:
                out = out + self._attn(layer.self_attn, qk, qk, t2, self.sa_cos, self.sa_sin, None)
            t2 = layer.norm2(out)
            q = t2 + qpos if layer.pos_enc_at_cross_attn_queries else t2
            if self.folded:
                ca = layer.cross_attn_image
                km, kp = (mem_k, ptr_k) if layer.pos_enc_at_cross_attn_keys else (mem_b, ptr_b)
                q1 = self._rope_proj(ca.q_proj, q, f"l{i}_cq", self.ca_cos2, self.ca_sin2).unsqueeze(1)
                k1 = torch.cat(
                    [self._rope_proj(ca.k_proj, km, f"l{i}_ck", self.ca_cos2, self.ca_sin2), ca.k_proj(kp)], 1
                )
                out = out + self._attend(ca, q1, k1.unsqueeze(1), memory)
            else:
                k = memory + memory_pos if layer.pos_enc_at_cross_attn_keys else memory
                out = out + self._attn(layer.cross_attn_image, q, k, memory, self.ca_cos, self.ca_sin, n_rope)
            t2 = layer.norm3(out)
            out = out + layer.linear2(layer.activation(layer.linear1(t2)))
        return ma.norm(out).transpose(0, 1)


def model_constants(sam: nn.Module) -> dict[str, np.ndarray]:
    """The small tensors and settings the numpy loop needs (saved as ``constants.npz``)."""
    return {
        "image_size": np.array(sam.image_size),
        "num_maskmem": np.array(sam.num_maskmem),
        "max_obj_ptrs": np.array(sam.max_obj_ptrs_in_encoder),
        "mem_dim": np.array(sam.mem_dim),
        "no_mem_embed": sam.no_mem_embed.detach().float().numpy().reshape(-1),
        "maskmem_tpos_enc": sam.maskmem_tpos_enc.detach().float().numpy(),
        "obj_ptr_tpos_w": sam.obj_ptr_tpos_proj.weight.detach().float().numpy(),
        "obj_ptr_tpos_b": sam.obj_ptr_tpos_proj.bias.detach().float().numpy(),
    }


class TorchBackend:
    """The PyTorch parts behind the numpy interface of :class:`~.propagate.StreamingPropagator`."""

    def __init__(self, sam: nn.Module) -> None:
        sam.eval()
        g = sam.image_size // 16
        self.parts = {
            "encoder": EncoderPart(sam),
            "box": DecoderPart(sam, False),
            "track": DecoderPart(sam, True),
            "mask": MaskPromptPart(sam),
            "memory_encoder": MemoryEncoderPart(sam),
            "memory_attention": MemoryAttentionPart(sam, g),
        }
        self.consts = model_constants(sam)

    @staticmethod
    def _run(mod: nn.Module, *xs: np.ndarray) -> tuple[np.ndarray, ...]:
        with torch.inference_mode():
            out = mod(*[torch.from_numpy(np.ascontiguousarray(x)) for x in xs])
        out = out if isinstance(out, tuple) else (out,)
        return tuple(o.float().numpy() for o in out)

    def encode_image(self, image: np.ndarray) -> tuple[np.ndarray, ...]:
        return self._run(self.parts["encoder"], image)

    def decode(
        self, kind: str, pix: np.ndarray, hr0: np.ndarray, hr1: np.ndarray, *prompt: np.ndarray
    ) -> tuple[np.ndarray, ...]:
        if kind == "track":
            prompt = (np.zeros((1, 1, 2), np.float32), -np.ones((1, 1), np.int32))
        return self._run(self.parts[kind], pix, hr0, hr1, *prompt)

    def encode_memory(
        self, feat: np.ndarray, mask_logits: np.ndarray, score: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        a, b = self._run(self.parts["memory_encoder"], feat, mask_logits, score)
        return a, b

    def attend(self, *xs: np.ndarray) -> np.ndarray:
        return self._run(self.parts["memory_attention"], *xs)[0]
