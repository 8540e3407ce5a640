"""``medtransfer bench``: ONNX vs PyTorch eager, predict cold start, score 1 vs N workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def _timeit(fn, min_seconds: float = 2.0, min_runs: int = 5) -> float:
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def onnx_vs_eager(bundle_dir: Path, batch: int = 16, threads: int = 0) -> dict[str, Any]:
    """Throughput of the bundle's model.onnx vs the same network in PyTorch eager (same threads,
    same batch).  Needs the run the bundle came from (``metadata.run_dir``) or a torch module
    rebuilt by the app's ``bench_eager`` hook."""
    import onnxruntime as ort
    import torch

    threads = threads or os.cpu_count() or 1
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    spec = next(iter(meta["inputs"].values()))
    shape = [batch if d in (-1, None) or isinstance(d, str) else int(d) for d in spec["shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(bundle_dir / "model.onnx"), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    t_onnx = _timeit(lambda: sess.run(None, {name: x}))
    model = _eager_model(bundle_dir, meta)
    torch.set_num_threads(threads)
    xt = torch.from_numpy(x)

    def eager():
        with torch.inference_mode():
            model(xt)

    t_eager = _timeit(eager)
    return {"batch": batch, "threads": threads, "onnx_items_per_s": round(batch / t_onnx, 1),
            "eager_items_per_s": round(batch / t_eager, 1), "onnx_over_eager": round(t_eager / t_onnx, 2)}


def _eager_model(bundle_dir: Path, meta: dict[str, Any]):
    """The PyTorch model behind a bundle: the image task's run, or the app exporter's ``eager_model``."""
    import importlib

    from medtransfer.shared.plugins import get_app

    run_dir = meta.get("run_dir")
    if meta["app"] == "image" and run_dir:
        from medtransfer.shared.imagetask.task import load_run

        return load_run(run_dir)[0].eval()
    spec = get_app(meta["app"])
    m = importlib.import_module(spec.exporter.partition(":")[0]) if spec.exporter else None
    if m is None or not hasattr(m, "eager_model"):
        raise RuntimeError(f"app '{meta['app']}' has no eager_model(bundle_dir) hook for the ONNX-vs-eager bench")
    return m.eager_model(bundle_dir).eval()


def cold_start(bundle_dir: Path, sample: Path, repeats: int = 3) -> dict[str, Any]:
    """Wall time of ``medtransfer predict BUNDLE SAMPLE`` in a fresh process (best of N)."""
    exe = Path(sys.executable).with_name("medtransfer")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medtransfer.shared.cli.main"]
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        r = subprocess.run(cmd + ["predict", str(bundle_dir), str(sample)], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if r.returncode != 0:
            raise RuntimeError(f"predict failed: {r.stderr.strip()[-300:]}")
    return {"predict_cold_start_s": round(min(times), 3), "predict_cold_start_runs_s": [round(t, 3) for t in times]}


def score_scaling(bundle_dir: Path, cases, workers: int) -> dict[str, Any]:
    """Cases/s at 1 worker vs N workers on the same cases."""
    from medtransfer.shared.runtime.score import score

    out: dict[str, Any] = {"cases": len(cases)}
    with tempfile.TemporaryDirectory() as tmp:
        for w in sorted({1, workers}):
            s = score(bundle_dir, cases, Path(tmp) / f"s{w}.csv", workers=w, progress=False)
            out[f"score_cases_per_s_{w}w"] = s["cases_per_s"]
    return out


def run_bench(bundle: Path | None = None, app: str | None = None, workers: int = 2, batch: int = 16,
              threads: int = 0, samples: list[Path] | None = None) -> dict[str, Any]:
    """All core benchmarks on a bundle (default: a freshly built demo image bundle).

    ONNX vs eager uses the bundle's run (image, or an app exporter's ``eager_model`` hook), else
    the app's own bench hook with ``bundle=``; cold start and 1-vs-N score scaling run on
    ``samples`` (inputs for that bundle).  With ``app``, that app's own benchmark is added.
    """
    import inspect

    from medtransfer.shared.runtime.score import Case

    res: dict[str, Any] = {"cpu_count": os.cpu_count()}
    tmp = tempfile.TemporaryDirectory()
    samples = list(samples or [])
    if bundle is None:
        from medtransfer.shared.imagetask.data import import_image_folder, make_shapes
        from medtransfer.shared.imagetask.task import export_run, train

        work = Path(tmp.name)
        root = make_shapes(work / "shapes", n_per_class=30)
        man = import_image_folder(root, work / "m.csv")
        train(man, work / "run", overrides=["train.epochs=1", "train.progress=false"])
        bundle = export_run(work / "run", work / "bundle")
        samples = samples or sorted(root.rglob("*.png"))
        res["bundle"] = "demo image bundle (resnet18, 1x64x64)"
    else:
        res["bundle"] = str(bundle)
    bundle = Path(bundle)
    meta = json.loads((bundle / "metadata.json").read_text())
    if meta["app"] == "image" or meta.get("run_dir"):
        res.update(_with_run(bundle, meta, batch, threads))
    if "onnx_over_eager" not in res and meta["app"] != "image":
        from medtransfer.shared.plugins import hook

        fn = hook(meta["app"], "bench")
        if "bundle" in inspect.signature(fn).parameters:
            res[f"{meta['app']}_bundle_bench"] = fn(bundle=str(bundle))
    if samples:
        res.update(cold_start(bundle, samples[0]))
        cases = [Case(str(p), str(p), {}) for p in samples[:60]]
        res.update(score_scaling(bundle, cases, workers))
    if app:
        from medtransfer.shared.plugins import hook

        res[app] = hook(app, "bench")()
    tmp.cleanup()
    return res


def _with_run(bundle: Path, meta: dict[str, Any], batch: int, threads: int) -> dict[str, Any]:
    """ONNX vs eager at batch 1 (what predict / score run per case) and at ``batch``."""
    try:
        rows = [onnx_vs_eager(bundle, b, threads) for b in sorted({1, batch})]
    except Exception as e:  # noqa: BLE001
        return {"onnx_vs_eager_error": str(e)}
    out: dict[str, Any] = {"onnx_vs_eager": rows}
    out.update(rows[-1])  # headline keys at the requested batch
    out["onnx_over_eager_batch1"] = rows[0]["onnx_over_eager"]
    return out
