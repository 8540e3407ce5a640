"""Export a torch module to ONNX and check it."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medtransfer.shared.export.onnx_passes import GraphPass
from medtransfer.shared.utils.errors import MedTransferError


class ParityError(MedTransferError):
    """ONNX outputs differ from PyTorch by more than the tolerance."""


def _dyn_shapes(args: tuple[torch.Tensor, ...], input_names: list[str], dynamic: dict[str, dict[int, str]] | None):
    if not dynamic:
        return None
    dims: dict[str, Any] = {}
    shapes = []
    for name, _ in zip(input_names, args):
        spec = {}
        for idx, dname in (dynamic.get(name) or {}).items():
            if dname not in dims:
                dims[dname] = torch.export.Dim(dname, min=1)
            spec[int(idx)] = dims[dname]
        shapes.append(spec or None)
    return tuple(shapes)


def export_onnx(
    module: nn.Module,
    example_args: tuple[torch.Tensor, ...],
    path: str | Path,
    input_names: list[str],
    output_names: list[str],
    dynamic: dict[str, dict[int, str]] | None = None,
    atol: float = 1e-4,
    parity_args: list[tuple[torch.Tensor, ...]] | None = None,
    check_example: bool = True,
    opset: int | None = None,
    graph_passes: Sequence[GraphPass] = (),
) -> dict[str, Any]:
    """Export with ``torch.onnx.export(dynamo=True)``, run ``onnx.checker`` and check parity.

    Args:
        module: the model (exported in eval mode).
        example_args: example inputs (batch >= 2 so a dynamic batch dim is not specialised).
        path: output ``.onnx`` file (weights embedded in the file).
        input_names: ONNX input names, one per argument.
        output_names: ONNX output names.
        dynamic: input name -> {dim index: dim name}, e.g. ``{"image": {0: "batch"}}``.
        atol: max abs difference allowed between ONNX Runtime and PyTorch.
        parity_args: other inputs to check (e.g. another batch size).
        check_example: also check ``example_args`` (False: only ``parity_args``, which must then be
            given; for big models whose trace example is costly to run twice, e.g. a batch of 2 at 1024 px).
        opset: ONNX opset (None: the exporter's default; 23 turns SDPA into one ``Attention`` op).
        graph_passes: rewrites of the saved graph (:mod:`~medtransfer.shared.export.onnx_passes`),
            applied before ``onnx.checker`` and the parity check, which therefore cover them.

    Returns:
        ``{"max_abs_diff": float, "checked_inputs": int, "opset": int}``, plus ``"passes"``
        (pass name -> places rewritten) when ``graph_passes`` were given.

    Raises:
        ParityError: a difference above ``atol``.
    """
    import onnx
    import onnxruntime as ort

    path = Path(path)
    if not check_example and not parity_args:
        raise ParityError(f"{path}: no inputs to check parity on (check_example=False needs parity_args)")
    path.parent.mkdir(parents=True, exist_ok=True)
    module = module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            module,
            tuple(example_args),
            dynamo=True,
            input_names=input_names,
            output_names=output_names,
            dynamic_shapes=_dyn_shapes(tuple(example_args), input_names, dynamic),
            verbose=False,
            optimize=True,
            external_data=False,
            opset_version=int(opset) if opset else None,
        )
        if prog is None:  # the dynamo exporter returns a program unless it raised
            raise ParityError(f"{path}: torch.onnx.export returned no program")
        prog.save(str(path), external_data=False)
    model = onnx.load(str(path))
    passes = {}
    for gp in graph_passes:
        passes[getattr(gp, "__name__", type(gp).__name__)] = int(gp(model))
    if any(passes.values()):
        onnx.save(model, str(path))
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    cases = ([tuple(example_args)] if check_example else []) + [tuple(a) for a in (parity_args or [])]
    for args in cases:
        with torch.no_grad():
            ref = module(*args)
        refs = [ref] if torch.is_tensor(ref) else list(ref.values()) if isinstance(ref, dict) else list(ref)
        feeds = {n: a.detach().cpu().numpy() for n, a in zip(input_names, args)}
        got = sess.run(None, feeds)
        for r, o in zip(refs, got):
            d = (
                float(np.max(np.abs(r.detach().cpu().numpy().astype(np.float64) - o.astype(np.float64))))
                if o.size
                else 0.0
            )
            worst = max(worst, d)
    if worst > atol:
        raise ParityError(f"{path}: ONNX differs from PyTorch by {worst:.3g} (> {atol:g})")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), -1)
    rep: dict[str, Any] = {"max_abs_diff": worst, "checked_inputs": len(cases), "opset": int(opset)}
    if graph_passes:
        rep["passes"] = passes
    return rep


def quantize_int8(src: str | Path, dst: str | Path, op_types: list[str] | None = None) -> Path:
    """onnxruntime dynamic int8 quantization (weights int8, activations quantized on the fly).

    ``op_types``: only these op types (e.g. ``["MatMul"]``: ConvInteger is slow on CPU); None = all.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    src, dst = Path(src), Path(dst)
    pre = dst.with_suffix(".pre.onnx")
    try:
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        base = pre
    except Exception:
        base = src
    quantize_dynamic(str(base), str(dst), weight_type=QuantType.QInt8, op_types_to_quantize=op_types)
    pre.unlink(missing_ok=True)
    return dst
