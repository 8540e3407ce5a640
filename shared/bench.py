"""``medtransfer bench``: ONNX vs PyTorch eager, predict cold start, score 1 vs N workers.

The core names no app: the bundle's app is looked up in the plugin specs and only its declared
hooks are used (``bench_eager`` for the eager model, ``bench`` for the app's own benchmark,
``bench_bundle`` to build a bundle when none is given).  The timing pieces here
(:func:`ort_session`, :func:`seconds_per_call`, :func:`compare_engines`) are what the apps'
benchmarks use too.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from medtransfer.shared.utils.errors import BundleError, MedTransferError


def seconds_per_call(fn: Callable[[], Any], min_seconds: float = 2.0, min_runs: int = 5, warmup: int = 1) -> float:
    """Mean wall time of ``fn()`` after ``warmup`` calls, over at least ``min_runs`` calls and ``min_seconds``.

    Args:
        fn: the call to time.
        min_seconds: keep calling until this much time has passed.
        min_runs: and at least this many timed calls.
        warmup: untimed calls first.

    Returns:
        Seconds per call.
    """
    for _ in range(warmup):
        fn()
    n, t0 = 0, time.perf_counter()
    while n < min_runs or time.perf_counter() - t0 < min_seconds:
        fn()
        n += 1
    return (time.perf_counter() - t0) / n


def ort_session(onnx_path: str | Path, threads: int):
    """A CPU ONNX Runtime session with ``threads`` intra-op threads (one inter-op), full graph optimisation."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])


def compare_engines(
    onnx_path: str | Path, model: Any, x: np.ndarray, threads: int = 0, min_seconds: float = 2.0
) -> dict[str, Any]:
    """Items/s of one ONNX graph (first input fed ``x``) vs a PyTorch module on the same batch and threads.

    Args:
        onnx_path: the ONNX file.
        model: the ``torch.nn.Module`` it was exported from (put in eval mode here).
        x: the batch (float32, the graph's first input).
        threads: threads for both engines (0 = all cores).
        min_seconds: timing time per engine.

    Returns:
        ``batch``, ``threads``, ``onnx_items_per_s``, ``eager_items_per_s``, ``onnx_over_eager``.
    """
    import torch

    threads = threads or os.cpu_count() or 1
    sess = ort_session(onnx_path, threads)
    name = sess.get_inputs()[0].name
    t_onnx = seconds_per_call(lambda: sess.run(None, {name: x}), min_seconds)
    torch.set_num_threads(threads)
    model = model.eval()
    xt = torch.from_numpy(x)

    def eager() -> None:
        with torch.inference_mode():
            model(xt)

    t_eager = seconds_per_call(eager, min_seconds)
    batch = int(x.shape[0])
    return {
        "batch": batch,
        "threads": threads,
        "onnx_items_per_s": round(batch / t_onnx, 1),
        "eager_items_per_s": round(batch / t_eager, 1),
        "onnx_over_eager": round(t_eager / t_onnx, 2),
    }


def onnx_vs_eager(bundle_dir: Path, batch: int = 16, threads: int = 0) -> dict[str, Any]:
    """Throughput of the bundle's ``model.onnx`` vs the same network in PyTorch eager (same threads,
    same batch).  The eager model comes from the bundle's app's ``bench_eager`` hook, given the run
    folder the bundle was exported from (``metadata.run_dir``)."""
    bundle_dir = Path(bundle_dir)
    meta = json.loads((bundle_dir / "metadata.json").read_text())
    spec = next(iter(meta["inputs"].values()))
    shape = [batch if d in (-1, None) or isinstance(d, str) else int(d) for d in spec["shape"]]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return compare_engines(bundle_dir / "model.onnx", eager_model(bundle_dir, meta), x, threads)


def eager_model(bundle_dir: Path, meta: dict[str, Any]) -> Any:
    """The PyTorch model behind a bundle, from its app's declared ``bench_eager`` hook (the app's
    run loader, given the bundle's run folder; of a tuple, the first item).

    Raises:
        MedTransferError: the app declares no ``bench_eager`` hook.
        BundleError: the bundle's run folder is not available.
    """
    from medtransfer.shared.plugins import hook

    fn = hook(meta["app"], "bench_eager")
    run = meta.get("run_dir")
    if not run or not Path(run).is_dir():
        raise BundleError(f"{bundle_dir}: the run folder of this bundle is not available")
    model = fn(Path(run))
    return model[0] if isinstance(model, tuple) else model


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


def default_bundle_app(app: str | None = None) -> str:
    """The app whose ``bench_bundle`` hook builds the bundle when none is given: ``app`` when it
    declares one, else the first app (by name) that does.

    Raises:
        MedTransferError: no installed app declares ``bench_bundle``.
    """
    from medtransfer.shared.plugins import discover_apps

    apps = discover_apps()
    if app and app in apps and apps[app].bench_bundle:
        return app
    makers = [n for n, s in apps.items() if s.bench_bundle]
    if not makers:
        raise MedTransferError("no installed app can build a bench bundle: give --bundle")
    return makers[0]


def run_bench(
    bundle: Path | None = None,
    app: str | None = None,
    workers: int = 2,
    batch: int = 16,
    threads: int = 0,
    samples: list[Path] | None = None,
) -> dict[str, Any]:
    """All core benchmarks on a bundle (default: one built by an app's ``bench_bundle`` hook).

    ONNX vs eager runs when the bundle's app declares ``bench_eager`` and the bundle's run is at
    hand, else the app's own ``bench`` hook is given ``bundle=`` (when it takes it); cold start and
    1-vs-N score scaling run on ``samples`` (inputs for that bundle).  With ``app``, that app's own
    benchmark is added.
    """
    from medtransfer.shared.plugins import accepts, get_app, hook
    from medtransfer.shared.runtime.score import Case

    res: dict[str, Any] = {"cpu_count": os.cpu_count()}
    samples = list(samples or [])
    with tempfile.TemporaryDirectory() as tmp:
        if bundle is None:
            maker = default_bundle_app(app)
            bundle, built = hook(maker, "bench_bundle")(Path(tmp))
            samples = samples or list(built)
            res["bundle"] = f"built by the {maker} app's bench_bundle hook"
        else:
            res["bundle"] = str(bundle)
        bundle = Path(bundle)
        meta = json.loads((bundle / "metadata.json").read_text())
        spec = get_app(meta["app"])
        if spec.bench_eager:
            res.update(_engines(bundle, batch, threads))
        if "onnx_over_eager" not in res and spec.bench:
            fn = hook(spec.name, "bench")
            if accepts(fn, "bundle"):
                res[f"{spec.name}_bundle_bench"] = fn(bundle=str(bundle))
        if samples:
            res.update(cold_start(bundle, samples[0]))
            cases = [Case(str(p), str(p), {}) for p in samples[:60]]
            res.update(score_scaling(bundle, cases, workers))
        if app:
            res[app] = hook(app, "bench")()
    return res


def _engines(bundle: Path, batch: int, threads: int) -> dict[str, Any]:
    """ONNX vs eager at batch 1 (what predict / score run per case) and at ``batch``."""
    try:
        rows = [onnx_vs_eager(bundle, b, threads) for b in sorted({1, batch})]
    except MedTransferError as e:
        return {"onnx_vs_eager_error": str(e)}
    out: dict[str, Any] = {"onnx_vs_eager": rows}
    out.update(rows[-1])  # headline keys at the requested batch
    out["onnx_over_eager_batch1"] = rows[0]["onnx_over_eager"]
    return out
