"""Export a videoseg run to an ONNX bundle: the whole video path.

Files: ``image_encoder.onnx`` (Hiera + adapters + FPN, dynamic batch), ``decoder_box.onnx``
(prompt encoder + mask decoder, box prompt), ``decoder_track.onnx`` (same weights, tracking
frames: best of 3 masks), ``mask_prompt.onnx`` (first-frame mask prompt), ``memory_encoder.onnx``,
``memory_attention.onnx`` (real-valued RoPE; dynamic memory length) and ``constants.npz`` (the
small tensors the torch-free loop needs).  Each graph is parity-checked against PyTorch by the
shared exporter; then a demo clip is propagated with both backends and the per-frame Dice
between the two is recorded (must be >= 0.99).

Beside the float32 image encoder the bundle carries ``image_encoder_int8.onnx`` (dynamic int8 on
its MatMuls only: ConvInteger is slower than float32 Conv on CPU); a synthetic cine is propagated
with each encoder (ONNX both) and the int8 one becomes the runtime's default encoder
(``encoder_default`` in metadata.json) only when every frame's Dice between the two is at least
:data:`INT8_DEFAULT_MIN_DICE`.  ``--opt encoder=fp32`` at predict time picks the float32 graph.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medtransfer.apps.videoseg.model import (
    DecoderPart,
    EncoderPart,
    MaskPromptPart,
    MemoryAttentionPart,
    MemoryEncoderPart,
    TorchBackend,
    model_constants,
)
from medtransfer.apps.videoseg.predict import ATTENTION_FILES, ENCODER_FILES
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.runtime.gates import limits_for

#: the least mean per-frame propagation Dice (int8 bundle vs PyTorch) an int8 export accepts
INT8_MIN_MEAN_DICE = 0.9

GRAPHS = ("image_encoder", "decoder_box", "decoder_track", "mask_prompt", "memory_encoder", "memory_attention")
#: opset of image_encoder.onnx and memory_attention.onnx: at 23 each SDPA is one ``Attention`` op
#: (ONNX Runtime's CPU kernel: memory attention 10-20% less CPU time than MatMul/Softmax/MatMul at
#: 256-512 px; the Hiera encoder's 12 window / global attentions ~5% less at 512 px int8, same masks)
ATTENTION_OPSET = 23
#: the int8 image encoder and memory attention shipped beside the float32 ones, and the op types
#: quantized (MatMul with a constant weight: the linear layers; ConvInteger is slow on CPU)
INT8_ENCODER = ENCODER_FILES["int8"]
INT8_ATTENTION = ATTENTION_FILES["int8"]
INT8_FILES = (INT8_ENCODER, INT8_ATTENTION)
INT8_OPS = ["MatMul"]
#: the least per-frame Dice (int8 vs float32 image encoder, same ONNX loop) for int8 to be the default
INT8_DEFAULT_MIN_DICE = 0.99
#: above this image size the export checks parity on smaller inputs (same graphs, same tolerances): the
#: image encoder on one image instead of its batch-2 trace example, the memory attention at 1 memory
#: (+4 pointers) beside the traced 3 (+12) instead of 7 (+64), and fewer propagated frames
#: (:func:`check_frames`).  At 1024 px the full checks took 3/4 of an export's CPU time (tracing: 1/4).
FULL_PARITY_MAX_SIZE = 512


def check_frames(image_size: int, n: int) -> int:
    """Frames of a propagation check at ``image_size``: ``n`` up to :data:`FULL_PARITY_MAX_SIZE`, then
    scaled down by the pixel count, at least 4 (the prompt frame and 3 tracked frames with memories)."""
    if image_size <= FULL_PARITY_MAX_SIZE:
        return n
    return max(4, round(n * (FULL_PARITY_MAX_SIZE / image_size) ** 2))


def export_model(sam: torch.nn.Module, out_dir: str | Path, atol: float = 1e-3) -> dict[str, Any]:
    """Write the six ONNX graphs and ``constants.npz`` into ``out_dir``.

    Returns:
        Per-graph parity reports from the shared exporter.
    """
    from medtransfer.shared.export import export_onnx
    from medtransfer.shared.export.onnx_passes import split_packed_qkv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sam = sam.eval()
    S = int(sam.image_size)
    g = S // 16
    C, M = int(sam.hidden_dim), int(sam.mem_dim)
    gen = torch.Generator().manual_seed(0)

    def rn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen)

    rep: dict[str, Any] = {}
    enc = EncoderPart(sam)
    big = S > FULL_PARITY_MAX_SIZE
    rep["image_encoder"] = export_onnx(
        enc,
        (rn(2, 3, S, S),),
        out / "image_encoder.onnx",
        ["image"],
        ["vision_feat", "vision_pos", "hr0", "hr1"],
        dynamic={"image": {0: "batch"}},
        atol=atol,
        opset=ATTENTION_OPSET,
        graph_passes=(split_packed_qkv,),  # per-block q/k/v MatMuls, 3-D Attention inputs: ~12 % off int8 at 512 px
        **({"parity_args": [(rn(1, 3, S, S),)], "check_example": False} if big else {}),
    )
    with torch.no_grad():
        feat, pos, hr0, hr1 = enc(rn(1, 3, S, S))
    box_pts = torch.tensor([[[S * 0.3, S * 0.3], [S * 0.7, S * 0.6]]])
    rep["decoder_box"] = export_onnx(
        DecoderPart(sam, False),
        (feat, hr0, hr1, box_pts, torch.tensor([[2, 3]], dtype=torch.int32)),
        out / "decoder_box.onnx",
        ["pix_feat", "hr0", "hr1", "coords", "labels"],
        ["low_res_mask", "high_res_mask", "obj_ptr", "object_score"],
        atol=atol,
    )
    rep["decoder_track"] = export_onnx(
        DecoderPart(sam, True),
        (feat, hr0, hr1, torch.zeros(1, 1, 2), -torch.ones(1, 1, dtype=torch.int32)),
        out / "decoder_track.onnx",
        ["pix_feat", "hr0", "hr1", "coords", "labels"],
        ["low_res_mask", "high_res_mask", "obj_ptr", "object_score"],
        atol=atol,
    )
    m = torch.zeros(1, 1, S, S)
    m[..., S // 4 : S // 2, S // 3 : S // 2] = 1
    rep["mask_prompt"] = export_onnx(
        MaskPromptPart(sam),
        (feat, hr0, hr1, m),
        out / "mask_prompt.onnx",
        ["pix_feat", "hr0", "hr1", "mask"],
        ["low_res_mask", "high_res_mask", "obj_ptr", "object_score"],
        atol=atol,
    )
    rep["memory_encoder"] = export_onnx(
        MemoryEncoderPart(sam),
        (feat, m * 20 - 10, torch.ones(1, 1)),
        out / "memory_encoder.onnx",
        ["vision_feat", "mask_logits", "object_score"],
        ["maskmem", "maskmem_pos"],
        atol=atol,
    )
    hw = g * g
    m, p = (1, 4) if big else (7, 64)  # memories and pointers of the second parity input
    rep["memory_attention"] = export_onnx(
        MemoryAttentionPart(sam, g),
        (rn(hw, 1, C), rn(hw, 1, C), rn(3 * hw, 1, M), rn(3 * hw, 1, M), rn(12, 1, M), rn(12, 1, M)),
        out / "memory_attention.onnx",
        ["curr", "curr_pos", "mem", "mem_pos", "ptr", "ptr_pos"],
        ["pix_feat"],
        dynamic={"mem": {0: "n_mem"}, "mem_pos": {0: "n_mem"}, "ptr": {0: "n_ptr"}, "ptr_pos": {0: "n_ptr"}},
        parity_args=[(rn(hw, 1, C), rn(hw, 1, C), rn(m * hw, 1, M), rn(m * hw, 1, M), rn(p, 1, M), rn(p, 1, M))],
        atol=atol,
        opset=ATTENTION_OPSET,
    )
    np.savez(out / "constants.npz", **model_constants(sam))
    return rep


def propagation_parity(
    sam: torch.nn.Module, bundle_dir: str | Path, frames: np.ndarray, box: np.ndarray
) -> dict[str, Any]:
    """Propagate one clip with the PyTorch parts and with the ONNX graphs (same numpy loop).

    Returns:
        ``{"per_frame_dice": [...], "min_dice": float, "max_abs_logit_diff": float}``.
    """
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.apps.videoseg.propagate import StreamingPropagator
    from medtransfer.shared.runtime.bundle import Bundle

    tb = StreamingPropagator(TorchBackend(sam))
    ob = StreamingPropagator(OnnxBackend(Bundle(bundle_dir, verify=False), encoder="fp32"))
    n = len(frames)
    pt = [m for _, m in tb.run(iter(frames), n, box=box)]
    ox = [m for _, m in ob.run(iter(frames), n, box=box)]
    dices = []
    for a, b in zip(pt, ox):
        s = int(a.sum()) + int(b.sum())
        dices.append(1.0 if s == 0 else 2.0 * int((a & b).sum()) / s)
    return {"per_frame_dice": [round(d, 5) for d in dices], "min_dice": float(min(dices)), "frames": n}


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def write_int8_encoder(bundle_dir: str | Path) -> list[str]:
    """Write :data:`INT8_FILES` (dynamic int8 on :data:`INT8_OPS`) beside their float32 graphs.

    Returns:
        The file names written (add them to the bundle's files).
    """
    from medtransfer.shared.export import quantize_int8

    d = Path(bundle_dir)
    quantize_int8(d / "image_encoder.onnx", d / INT8_ENCODER, op_types=INT8_OPS)
    # at 512 px the memory attention's linear layers took 75 of 293 ms per frame in float32, 37 in int8
    quantize_int8(d / "memory_attention.onnx", d / INT8_ATTENTION, op_types=INT8_OPS)
    return list(INT8_FILES)


def int8_encoder_agreement(bundle_dir: str | Path, frames: np.ndarray, mask: np.ndarray) -> dict[str, Any]:
    """Propagate one clip with the float32 and the int8 graphs (image encoder and, where the bundle
    has it, memory attention; all else equal, ONNX both).

    Args:
        bundle_dir: a bundle (metadata may be pending) listing both encoders.
        frames: grey uint8 frames.
        mask: first-frame mask prompt.

    Returns:
        ``{"mean_dice", "min_dice", "frames", "min_required", "default"}``: ``default`` is ``"int8"``
        when every frame's Dice is at least :data:`INT8_DEFAULT_MIN_DICE`, else ``"fp32"``.
    """
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.apps.videoseg.propagate import StreamingPropagator
    from medtransfer.shared.runtime.bundle import Bundle

    b = Bundle(bundle_dir, verify=False)
    n = len(frames)
    out = {
        enc: [m for _, m in StreamingPropagator(OnnxBackend(b, encoder=enc)).run(iter(frames), n, mask=mask)]
        for enc in ("fp32", "int8")
    }
    d = [_dice(x, y) for x, y in zip(out["fp32"], out["int8"])]
    return {
        "mean_dice": round(float(np.mean(d)), 5),
        "min_dice": round(float(np.min(d)), 5),
        "frames": n,
        "min_required": INT8_DEFAULT_MIN_DICE,
        "default": "int8" if min(d) >= INT8_DEFAULT_MIN_DICE else "fp32",
    }


def agreement_clip(n: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """The synthetic cine (112 px, ``n`` frames) and first-frame mask the int8 check propagates."""
    from medtransfer.apps.videoseg.synthetic import make_cine

    frames, masks, _ = make_cine(112, n, seed=321)
    return frames, masks[0]


def encoder_metadata(agreement: dict[str, Any] | None) -> dict[str, Any]:
    """metadata.json keys naming the encoders and the default one (none without an int8 encoder)."""
    if not agreement:
        return {}
    return {"encoders": dict(ENCODER_FILES), "encoder_default": agreement["default"]}


def export_run(
    run_dir: str | Path, out_dir: str | Path, quantize: str | None = None, overwrite: bool = True, force: bool = False
) -> Path:
    """``medtransfer export RUN_DIR --out B`` for videoseg runs.

    Args:
        run_dir: a run written by :func:`.train.train`.
        out_dir: bundle folder.
        quantize: ``"int8"``: dynamic int8 quantisation of the image encoder only (the graph that
            dominates the time per frame); the tracker graphs stay float32.  The propagation Dice
            against PyTorch before and after quantisation is recorded in the bundle's metrics
            (``int8_image_encoder``); the float32 graphs must still pass the 0.99 parity check and
            the int8 bundle must keep a mean Dice of at least ``INT8_MIN_MEAN_DICE``.
        overwrite: replace an existing bundle at ``out_dir`` (the CLI asks for ``--overwrite``).
        force: export even below the trivial baseline (the bundle is then marked unreliable).

    Returns:
        The bundle folder (absolute), written atomically (see ``shared.export.export_bundle``).
    """
    from medtransfer.shared.export import export_bundle

    return export_bundle(run_dir, out_dir, _write_bundle_files, quantize, overwrite, force)


def _write_bundle_files(run_dir: str | Path, out_dir: Path, quantize: str | None) -> Path:
    """Write the bundle into ``out_dir`` (the staging folder of :func:`export_run`)."""
    from medtransfer.apps.videoseg.propagate import mask_to_box, preprocessing_spec
    from medtransfer.apps.videoseg.synthetic import make_cine
    from medtransfer.apps.videoseg.train import load_run_model
    from medtransfer.shared.export import write_bundle
    from medtransfer.shared.utils.errors import MedTransferError

    if quantize not in (None, "", "int8"):
        raise MedTransferError(f"videoseg export: quantize must be int8 (the image encoder), not '{quantize}'")
    run_dir, out = Path(run_dir), Path(out_dir)
    sam, cfg = load_run_model(run_dir)
    rep = export_model(sam, out)
    files = [f"{n}.onnx" for n in GRAPHS] + ["constants.npz"]
    if quantize != "int8":  # float32 bundle: the int8 graphs beside it (the default if they agree)
        files += write_int8_encoder(out)
    write_bundle(
        out,
        name="videoseg-track",
        app="videoseg",
        task="track",
        files=files,
        inputs={},
        outputs={},
        preprocessing={},
        extra={"_pending": True},
    )
    frames, masks, _ = make_cine(112, check_frames(int(sam.image_size), 8), seed=123)
    par = propagation_parity(sam, out, frames, mask_to_box(masks[0]))
    int8: dict[str, Any] = {}
    agreement: dict[str, Any] = {}
    if quantize == "int8":
        int8 = quantize_image_encoder(sam, out, frames, mask_to_box(masks[0]), par)
    else:
        agreement = int8_encoder_agreement(out, *agreement_clip(check_frames(int(sam.image_size), 16)))
    summary = {}
    sj = run_dir / "summary.json"
    if sj.is_file():
        summary = json.loads(sj.read_text()).get("best", {})
    run = RunDir(run_dir).info()
    S = int(cfg["model"]["image_size"])
    write_bundle(
        out,
        name="videoseg-track",
        app="videoseg",
        task="track",
        files=files,
        inputs={
            "video": {"type": "video", "format": "AVI/MP4/.mha/frame folder", "channels": 1, "dtype": "uint8"},
            "prompt": {"type": "box x0,y0,x1,y1 or first-frame mask (H, W)"},
        },
        outputs={"masks": {"type": "mask stack", "shape": [-1, -1, -1], "dtype": "uint8", "file": "masks.npz"}},
        preprocessing=preprocessing_spec(S),  # from the constants training and the runtime use
        metrics={
            "validation": summary,
            "onnx_parity": {k: v["max_abs_diff"] for k, v in rep.items()},
            "graph_passes": {k: v["passes"] for k, v in rep.items() if v.get("passes")},
            "propagation_parity": par,
            **({"int8_image_encoder": int8} if int8 else {}),
            **({"int8_encoder_agreement": agreement} if agreement else {}),
        },
        data_card="data_cards/echonet_dynamic.md",
        description=(
            f"SAM2 ({cfg['model']['arch']}, {S} px) with {cfg['model']['adapter']} adapters; the video path "
            "(image encoder, prompt encoder + mask decoder, memory encoder, memory attention) as ONNX graphs "
            "driven by a torch-free streaming loop."
        ),
        extra={
            "params": run.get("params", {}),
            "graphs": list(GRAPHS),
            "arch": cfg["model"]["arch"],
            "gates": limits_for("image_", "video_", "decode_"),
            **({"quantized": {"image_encoder.onnx": "int8 (dynamic)"}} if int8 else {}),
            **encoder_metadata(agreement),
        },
    )
    if par["min_dice"] < 0.99:
        raise MedTransferError(
            f"{out}: ONNX propagation differs from PyTorch (min per-frame Dice {par['min_dice']:.3f} < 0.99)"
        )
    if int8 and int8["int8"]["mean_dice"] < INT8_MIN_MEAN_DICE:
        raise MedTransferError(
            f"{out}: the int8 image encoder changes the masks too much (mean Dice vs PyTorch "
            f"{int8['int8']['mean_dice']:.3f} < {INT8_MIN_MEAN_DICE}); export without --quantize"
        )
    return out


def quantize_image_encoder(
    sam: torch.nn.Module, bundle_dir: Path, frames: np.ndarray, box: np.ndarray, fp32: dict[str, Any]
) -> dict[str, Any]:
    """Replace ``image_encoder.onnx`` by its dynamic-int8 version; measure the propagation change.

    Args:
        sam: the PyTorch model (the parity reference).
        bundle_dir: the (staged) bundle with the float32 graphs.
        frames, box: the parity clip and its first-frame box.
        fp32: :func:`propagation_parity` of the float32 bundle.

    Returns:
        ``{"float32": {...}, "int8": {...}, "mean_dice_change", "min_dice_change", "size_mb"}``.
    """
    from medtransfer.shared.export import quantize_int8

    src = bundle_dir / "image_encoder.onnx"
    tmp = bundle_dir / "image_encoder.int8.onnx"
    size32 = src.stat().st_size
    quantize_int8(src, tmp, op_types=INT8_OPS)
    tmp.replace(src)
    q = propagation_parity(sam, bundle_dir, frames, box)

    def summary(p: dict[str, Any]) -> dict[str, float]:
        return {"mean_dice": round(float(np.mean(p["per_frame_dice"])), 5), "min_dice": p["min_dice"]}

    a, b = summary(fp32), summary(q)
    return {
        "graph": "image_encoder.onnx",
        "float32": a,
        "int8": b,
        "mean_dice_change": round(b["mean_dice"] - a["mean_dice"], 5),
        "min_dice_change": round(b["min_dice"] - a["min_dice"], 5),
        "size_mb": {"float32": round(size32 / 2**20, 1), "int8": round(src.stat().st_size / 2**20, 1)},
        "frames": q["frames"],
    }
