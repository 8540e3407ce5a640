"""Where a videoseg export's time goes, per graph and per phase (wall and CPU seconds), at one image size.

    nice -n 5 .venv/bin/python tests/gpu/videoseg_export_profile.py --size 1024 --out /tmp/vs_prof

Builds SAM2.1 hiera-tiny with the DD adapters at ``--size`` (random init: the graphs and their cost do
not depend on the weights), then runs the steps of ``export.py``'s ``_write_bundle_files`` except the
reference statistics: ``export_model`` (six dynamo exports, each with its onnx.checker run and parity
check), the PyTorch-vs-ONNX propagation check, the int8 image encoder and its agreement clip.  Prints
one JSON line per phase and a total; the load average is printed with it (timings on a shared machine).
Not a test (pytest does not collect it).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

_WALL: dict[tuple[str, str], float] = defaultdict(float)
_CPU: dict[tuple[str, str], float] = defaultdict(float)
_GRAPH = ["-"]


def _timed(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    def wrapper(*a: Any, **k: Any) -> Any:
        t, c = time.perf_counter(), time.process_time()
        try:
            return fn(*a, **k)
        finally:
            _WALL[(_GRAPH[0], key)] += time.perf_counter() - t
            _CPU[(_GRAPH[0], key)] += time.process_time() - c

    return wrapper


def _instrument() -> None:
    """Wrap the phases of ``shared.export.export_onnx`` (and ONNX Runtime runs) with timers."""
    import onnx
    import onnxruntime as ort
    import torch
    import torch.onnx._internal.exporter._onnx_program as onnx_program

    import medtransfer.shared.export as shared_export

    torch.onnx.export = _timed("trace+translate+optimize", torch.onnx.export)
    onnx_program.ONNXProgram.optimize = _timed("  of which optimize", onnx_program.ONNXProgram.optimize)
    onnx.checker.check_model = _timed("checker", onnx.checker.check_model)
    ort.InferenceSession.__init__ = _timed("ort session", ort.InferenceSession.__init__)
    ort.InferenceSession.run = _timed("ort run", ort.InferenceSession.run)
    original = shared_export.export_onnx

    def export_onnx(module: Any, args: Any, path: Any, *a: Any, **k: Any) -> Any:
        _GRAPH[0] = Path(path).stem
        return _timed("export_onnx total", original)(module, args, path, *a, **k)

    shared_export.export_onnx = export_onnx


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, required=True, help="scratch folder for the graphs (deleted by you)")
    ap.add_argument("--micro", action="store_true", help="the tests' micro SAM2 (a quick smoke run of this script)")
    a = ap.parse_args()
    _instrument()
    from medtransfer.apps.videoseg import export as vx
    from medtransfer.apps.videoseg.model import MICRO_OVERRIDES, build_model
    from medtransfer.apps.videoseg.propagate import mask_to_box
    from medtransfer.apps.videoseg.synthetic import make_cine
    from medtransfer.shared.export import write_bundle

    load0 = os.getloadavg()
    mcfg = {"arch": "sam2.1_hiera_tiny", "image_size": a.size, "train_prompt_encoder": False}
    sam, _ = build_model({**mcfg, **({"overrides": list(MICRO_OVERRIDES)} if a.micro else {})})
    sam.eval()
    steps: list[tuple[str, Callable[[], Any]]] = [("export_model", lambda: vx.export_model(sam, a.out))]
    files = [f"{n}.onnx" for n in vx.GRAPHS] + ["constants.npz"]
    n_par = vx.check_frames(a.size, 8) if hasattr(vx, "check_frames") else 8
    frames, masks, _ = make_cine(112, n_par, seed=123)

    def pending() -> None:
        meta = {"inputs": {}, "outputs": {}, "preprocessing": {}, "extra": {"_pending": True}}
        present = [f for f in files if (a.out / f).is_file()]
        write_bundle(a.out, name="p", app="videoseg", task="track", files=present, **meta)

    def parity() -> Any:
        pending()
        return vx.propagation_parity(sam, a.out, frames, mask_to_box(masks[0]))

    steps.append(("propagation_parity", parity))
    if hasattr(vx, "write_int8_encoder"):  # the int8 encoder shipped beside the float32 one
        n_agr = vx.check_frames(a.size, 16) if hasattr(vx, "check_frames") else 16

        def agreement() -> Any:
            pending()
            return vx.int8_encoder_agreement(a.out, *vx.agreement_clip(n_agr))

        files += list(getattr(vx, "INT8_FILES", [vx.INT8_ENCODER]))
        steps.append(("int8 encoder", lambda: vx.write_int8_encoder(a.out)))
        steps.append(("int8 agreement", agreement))
    total_w, total_c = time.perf_counter(), time.process_time()
    for name, fn in steps:
        _GRAPH[0] = name
        t, c = time.perf_counter(), time.process_time()
        fn()
        _WALL[(name, "step total")] += time.perf_counter() - t
        _CPU[(name, "step total")] += time.process_time() - c
    for (graph, phase), w in sorted(_WALL.items()):
        print(
            json.dumps({"graph": graph, "phase": phase, "wall_s": round(w, 1), "cpu_s": round(_CPU[(graph, phase)], 1)})
        )
    print(
        json.dumps(
            {
                "size": a.size,
                "total_wall_s": round(time.perf_counter() - total_w, 1),
                "total_cpu_s": round(time.process_time() - total_c, 1),
                "parity_frames": n_par,
                "loadavg_start": load0,
                "loadavg_end": os.getloadavg(),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
