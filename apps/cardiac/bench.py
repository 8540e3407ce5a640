"""Bench: the exported bundle (ONNX Runtime) vs PyTorch eager on CPU, same threads and batch."""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any


def bench(size: int = 112, batch: int = 8, threads: int = 2, iters: int = 10, backbone: str = "resnet18",
          bundle: str | None = None, **_: Any) -> dict[str, Any]:
    """Images/s of the two-head model through ONNX Runtime and through PyTorch eager.

    Args:
        size: input side.
        batch: batch size (both engines).
        threads: intra-op threads (both engines).
        iters: timed iterations after 2 warm-up runs.
        backbone: registry backbone when no bundle is given (random weights: speed only).
        bundle: an exported bundle to time instead (its run is not needed).
    """
    import numpy as np
    import onnxruntime as ort
    import torch

    from medtransfer.apps.cardiac.model import CardiacNet
    from medtransfer.shared.export import export_onnx

    if bundle:  # time the bundle's own graph: its input side and backbone, not the defaults
        import json

        meta = json.loads((Path(bundle) / "metadata.json").read_text())
        size = int(meta.get("preprocessing", {}).get("size", size))
        backbone = str(meta.get("backbone", backbone))
    torch.set_num_threads(threads)
    model = CardiacNet(backbone=backbone).eval()
    tmp = tempfile.TemporaryDirectory()
    onnx_path = Path(bundle) / "model.onnx" if bundle else Path(tmp.name) / "model.onnx"
    if not bundle:
        export_onnx(model, (torch.randn(2, 3, size, size),), onnx_path, ["image"], ["view_logits", "grade"],
                    dynamic={"image": {0: "batch"}})
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
    xt = torch.from_numpy(x)

    def t_ort() -> None:
        sess.run(None, {"image": x})

    @torch.inference_mode()
    def t_torch() -> None:
        model(xt)

    out: dict[str, Any] = {"size": size, "batch": batch, "threads": threads, "iters": iters, "backbone": backbone}
    for name, fn in (("onnxruntime", t_ort), ("torch_eager", t_torch)):
        for _ in range(2):
            fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        out[f"{name}_ms_per_batch"] = round(med * 1000, 2)
        out[f"{name}_images_per_s"] = round(batch / med, 1)
    out["speedup"] = round(out["torch_eager_ms_per_batch"] / out["onnxruntime_ms_per_batch"], 2)
    tmp.cleanup()
    return out
