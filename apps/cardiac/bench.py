"""Bench: the exported bundle (ONNX Runtime) vs PyTorch eager on CPU, same threads and batch."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any


def bench(
    size: int = 112,
    batch: int = 8,
    threads: int = 2,
    seconds: float = 2.0,
    backbone: str = "resnet18",
    bundle: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Images/s of the two-head model through ONNX Runtime and through PyTorch eager.

    Args:
        size: input side.
        batch: batch size (both engines).
        threads: intra-op threads (both engines).
        seconds: timing time per engine (after one warm-up call).
        backbone: registry backbone when no bundle is given (random weights: speed only).
        bundle: an exported bundle to time instead (its run is not needed: same graph, random weights).

    Returns:
        ``size``, ``backbone`` and the figures of :func:`medtransfer.shared.bench.compare_engines`.
    """
    import numpy as np
    import torch

    from medtransfer.apps.cardiac.model import CardiacNet
    from medtransfer.shared.bench import compare_engines
    from medtransfer.shared.export import export_onnx

    if bundle:  # time the bundle's own graph: its input side and backbone, not the defaults
        meta = json.loads((Path(bundle) / "metadata.json").read_text())
        size = int(meta.get("preprocessing", {}).get("size", size))
        backbone = str(meta.get("backbone", backbone))
    model = CardiacNet(backbone=backbone).eval()
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = Path(bundle) / "model.onnx" if bundle else Path(tmp) / "model.onnx"
        if not bundle:
            export_onnx(
                model,
                (torch.randn(2, 3, size, size),),
                onnx_path,
                ["image"],
                ["view_logits", "grade"],
                dynamic={"image": {0: "batch"}},
            )
        x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
        res = compare_engines(onnx_path, model, x, threads, min_seconds=seconds)
    return {"size": size, "backbone": backbone, **res}
