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
    """Cases/s at 1 worker vs N workers on the same cases (in this process; start-up apart).

    Returns:
        ``cases``, ``score_cases_per_s_{w}w`` (start-up included), ``score_work_cases_per_s_{w}w``,
        ``score_startup_s_{w}w``, ``score_start_method_{w}w`` and ``score_speedup_{N}w`` (work only).
    """
    from medtransfer.shared.runtime.score import score

    out: dict[str, Any] = {"cases": len(cases)}
    with tempfile.TemporaryDirectory() as tmp:
        for w in sorted({1, workers}):
            s = score(bundle_dir, cases, Path(tmp) / f"s{w}.csv", workers=w, progress=False)
            out[f"score_cases_per_s_{w}w"] = s["cases_per_s"]
            out[f"score_work_cases_per_s_{w}w"] = s["work_cases_per_s"]
            out[f"score_startup_s_{w}w"] = s["startup_s"]
            out[f"score_start_method_{w}w"] = s["engine_stats"].get("start_method")
    if workers > 1 and out.get("score_work_cases_per_s_1w"):
        out[f"score_speedup_{workers}w"] = round(
            out[f"score_work_cases_per_s_{workers}w"] / out["score_work_cases_per_s_1w"], 2
        )
    return out


# ------------------------------------------------------------------ score at scale: local vs Ray
def load_average() -> list[float]:
    """The 1/5/15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def make_case_set(samples: list[Path], n: int, folder: Path) -> Path:
    """A manifest of ``n`` distinct case files cycled from ``samples`` (hard links, else copies).

    Distinct paths matter: ``score`` de-duplicates paths that resolve to one file, so symlinks
    would be one case.

    Returns:
        The manifest (``path,label``; paths relative to it).
    """
    import shutil

    if not samples:
        raise MedTransferError("the score bench needs at least one sample input (--sample)")
    folder.mkdir(parents=True, exist_ok=True)
    lines = ["path,label"]
    for k in range(n):
        src = Path(samples[k % len(samples)])
        dst = folder / f"case_{k:05d}{src.suffix}"
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        lines.append(f"{dst.name},")
    man = folder / "manifest.csv"
    man.write_text("\n".join(lines) + "\n")
    return man


def _tree_rss(proc: Any) -> int:
    """Resident bytes of a process and all its descendants (shared pages counted per process)."""
    import psutil

    total = 0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def score_run(
    bundle_dir: Path, manifest: Path, out_csv: Path, engine: str, workers: int, chunksize: int | None = None
) -> dict[str, Any]:
    """One ``score`` job in a fresh (torch-free) process, as a user runs it; peak memory sampled.

    Returns:
        ``score``'s summary plus ``cpu_s`` (this process and its local workers; not Ray's processes),
        ``wall_s`` (process start to exit), ``peak_rss_mib`` (the job's whole
        process tree, workers / Ray processes included, sampled every 0.1 s; shared pages counted per
        process) and ``loadavg`` before and after.
    """
    import psutil

    cmd = [sys.executable, "-m", "medtransfer.shared.bench", "--score-child", str(bundle_dir), str(manifest)]
    cmd += [str(out_csv), engine, str(workers), str(chunksize or 0)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    before = load_average()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = psutil.Process(p.pid)
    peak = 0
    while p.poll() is None:
        peak = max(peak, _tree_rss(proc))
        time.sleep(0.1)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
    if p.returncode != 0 or line is None:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:300], "engine": engine, "workers": workers}
    res = json.loads(line)
    res.update(wall_s=round(wall, 3), peak_rss_mib=round(peak / 2**20, 1), loadavg=[before, load_average()])
    return res


def _score_child(argv: list[str]) -> None:
    from medtransfer.shared.runtime.score import cases_from_manifest, score

    bundle, manifest, out, engine, workers, chunk = argv[:6]
    s = score(
        bundle,
        cases_from_manifest(manifest),
        out,
        workers=int(workers),
        engine=engine,
        progress=False,
        overwrite=True,
        manifest=manifest,
        chunksize=int(chunk) or None,
    )
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    s["cpu_s"] = round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2)  # local workers included
    print(json.dumps(s))


def score_bench(
    bundle_dir: Path,
    samples: list[Path],
    sizes: tuple[int, ...] = (200, 1000),
    setups: tuple[str, ...] = ("local:1", "local:2", "ray:2"),
    work_dir: Path | None = None,
    chunksize: int | None = None,
    out_json: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """``score`` at scale: each setup (``engine:workers``) on ``n`` cases for each size, each job a
    fresh process (what a user runs), with both sides, ratios, start-up, peak memory and load.

    Args:
        bundle_dir: the bundle.
        samples: input files for it, cycled into ``n`` distinct case files.
        sizes: case counts.
        setups: ``local:1``, ``local:2``, ``ray:2``, ...
        work_dir: keep case files and results here (default: a temporary folder).
        chunksize: cases per task (None: the engine's default).
        out_json: also write the result here.
        progress: print one line per job to stderr.

    Returns:
        ``runs`` (one summary per size and setup: seconds, work_s, startup_s, cases_per_s, peak_rss_mib,
        loadavg...) and ``ratios`` per size: ``local_2w_over_1w`` (speed-up, start-up included and
        work only), ``ray_over_local_1w`` and ``ray_over_local_2w`` (time ratios, >1 = Ray slower),
        ``ray_startup_s``.
    """
    tmp = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="score_bench_"))
    res: dict[str, Any] = {
        "bundle": str(bundle_dir),
        "cpu_count": os.cpu_count(),
        "samples": len(samples),
        "chunksize": chunksize,
        "loadavg_start": load_average(),
        "runs": {},
        "ratios": {},
    }
    try:
        for n in sizes:
            man = make_case_set(list(samples), n, tmp / f"cases_{n}")
            runs: dict[str, Any] = {}
            for setup in setups:
                engine, _, w = setup.partition(":")
                r = score_run(Path(bundle_dir), man, tmp / f"out_{n}_{engine}{w}.csv", engine, int(w or 1), chunksize)
                runs[setup] = r
                if progress:
                    keys = ("seconds", "work_s", "startup_s", "cpu_s", "ok", "error", "peak_rss_mib", "loadavg")
                    print(f"score bench n={n} {setup}: " + json.dumps({k: r.get(k) for k in keys}), file=sys.stderr)
            res["runs"][str(n)] = runs
            res["ratios"][str(n)] = _ratios(runs)
        res["loadavg_end"] = load_average()
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(res, indent=2))
        return res
    finally:
        if not work_dir:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)


def _ratios(runs: dict[str, Any]) -> dict[str, Any]:
    def get(setup: str, key: str) -> float | None:
        v = runs.get(setup, {}).get(key)
        return float(v) if isinstance(v, (int, float)) and v > 0 else None

    out: dict[str, Any] = {}
    one, two, ray = "local:1", "local:2", next((k for k in runs if k.startswith("ray")), "ray:2")
    for key, name in (("seconds", ""), ("work_s", "_work")):
        a, b, r = get(one, key), get(two, key), get(ray, key)
        if a and b:
            out[f"local_2w_over_1w{name}"] = round(a / b, 2)  # speed-up
        if r and a:
            out[f"ray_over_local_1w{name}"] = round(r / a, 2)  # time ratio: > 1 means Ray is slower
        if r and b:
            out[f"ray_over_local_2w{name}"] = round(r / b, 2)
    if ray in runs:
        out["ray_startup_s"] = runs[ray].get("startup_s")
        stats = runs[ray].get("engine_stats") or {}
        out["ray_init_s"] = stats.get("ray_init_s")
        out["ray_actors_s"] = stats.get("ray_actors_s")
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
    score_sizes: tuple[int, ...] = (),
    score_setups: tuple[str, ...] | None = None,
    score_json: Path | None = None,
) -> dict[str, Any]:
    """All core benchmarks on a bundle (default: one built by an app's ``bench_bundle`` hook).

    With ``score_sizes`` (e.g. ``(200, 1000)``), :func:`score_bench` also runs each of
    ``score_setups`` (default ``local:1``, ``local:N``, ``ray:N`` with N = ``workers``) on that many
    cases cycled from ``samples``, each job a fresh process (written to ``score_json`` too).

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
            if score_sizes:
                setups = score_setups or ("local:1", f"local:{workers}", f"ray:{workers}")
                res["score_bench"] = score_bench(bundle, samples, score_sizes, setups, out_json=score_json)
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


def _main(argv: list[str]) -> None:
    """``python -m medtransfer.shared.bench score BUNDLE SAMPLE... [--cases 200,1000] [--setups
    local:1,local:2,ray:2] [--chunksize N] [--work DIR] [--json OUT]``: the score bench."""
    if argv and argv[0] == "--score-child":
        _score_child(argv[1:])
        return
    import argparse

    ap = argparse.ArgumentParser(prog="python -m medtransfer.shared.bench")
    ap.add_argument("what", choices=["score"])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("samples", type=Path, nargs="+")
    ap.add_argument("--cases", default="200,1000")
    ap.add_argument("--setups", default="local:1,local:2,ray:2")
    ap.add_argument("--chunksize", type=int, default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    res = score_bench(
        a.bundle,
        a.samples,
        tuple(int(x) for x in a.cases.split(",")),
        tuple(a.setups.split(",")),
        work_dir=a.work,
        chunksize=a.chunksize,
        out_json=a.json,
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    _main(sys.argv[1:])
