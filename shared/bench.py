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
import shutil
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


def _bundle_meta(bundle_dir: Path) -> dict[str, Any]:
    """A bundle's metadata, checked as ``predict`` checks it (BundleError: one line naming the problem)."""
    from medtransfer.shared.runtime.bundle import Bundle

    return Bundle(bundle_dir).meta


def onnx_vs_eager(bundle_dir: Path, batch: int = 16, threads: int = 0) -> dict[str, Any]:
    """Throughput of the bundle's ``model.onnx`` vs the same network in PyTorch eager (same threads,
    same batch).  The eager model comes from the bundle's app's ``bench_eager`` hook, given the run
    folder the bundle was exported from (``metadata.run_dir``)."""
    bundle_dir = Path(bundle_dir)
    meta = _bundle_meta(bundle_dir)
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


def _predict_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("medtransfer")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "medtransfer.shared.cli.main"]


def _timed_predict(
    bundle_dir: Path, sample: Path, env: dict[str, str] | None = None, options: dict[str, Any] | None = None
) -> tuple[float, float]:
    """One ``medtransfer predict BUNDLE SAMPLE`` in a fresh process: (wall s, child CPU user+sys s; NaN
    where the OS does not say).

    Raises:
        MedTransferError: the predict failed (its last error line).
    """
    try:
        import resource
    except ImportError:  # Windows
        resource = None  # type: ignore[assignment]

    def cpu() -> float:
        if resource is None:
            return float("nan")
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return ru.ru_utime + ru.ru_stime

    c0, t0 = cpu(), time.perf_counter()
    # parsed values go back as YAML the command parses to the same value (JSON is YAML)
    opts = [
        a for k, v in (options or {}).items() for a in ("--opt", f"{k}={v if isinstance(v, str) else json.dumps(v)}")
    ]
    r = subprocess.run(
        [*_predict_cmd(), "predict", str(bundle_dir), str(sample), *opts], capture_output=True, text=True, env=env
    )
    wall, used = time.perf_counter() - t0, cpu() - c0
    if r.returncode != 0:  # the command's own one-line error, after the bench's context
        why = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1].removeprefix("error: ")
        raise MedTransferError(f"cold start: predict {bundle_dir} {sample} failed: {why[:300]}")
    return wall, used


def cold_start(
    bundle_dir: Path, sample: Path, repeats: int = 3, uncached: bool = True, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Wall time of ``medtransfer predict BUNDLE SAMPLE [--opt k=v ...]`` in a fresh process (best of N);
    ``options`` are predictor options (e.g. a video bundle's ``box`` prompt).

    The runtime cache (:mod:`medtransfer.shared.runtime.cache`: verified digests, optimised ONNX
    graphs) is the user's, as in real use: the first run fills it, so the best of ``repeats`` is a
    repeated call's cold start.  With ``uncached``, one more run first uses an empty temporary cache
    (a first call ever, or ``MEDTRANSFER_CACHE=off``).

    Returns:
        ``predict_cold_start_s`` (best wall), ``predict_cold_start_runs_s``, ``predict_cold_start_cpu_s``
        (best child CPU user+sys: less sensitive to a busy machine), ``predict_cold_start_uncached_s``
        and ``..._uncached_cpu_s`` (with ``uncached``), and ``load_avg`` (1/5/15 min, at the end).
    """
    out: dict[str, Any] = {}
    if uncached:
        with tempfile.TemporaryDirectory(prefix="mt-cache-") as tmp:
            env = {**os.environ, "MEDTRANSFER_CACHE_DIR": tmp}
            wall, cpu = _timed_predict(bundle_dir, sample, env, options)
        out.update(predict_cold_start_uncached_s=round(wall, 3), predict_cold_start_uncached_cpu_s=round(cpu, 3))
    runs = [_timed_predict(bundle_dir, sample, None, options) for _ in range(repeats)]
    walls = [w for w, _ in runs]
    out.update(
        predict_cold_start_s=round(min(walls), 3),
        predict_cold_start_runs_s=[round(t, 3) for t in walls],
        predict_cold_start_cpu_s=round(min(c for _, c in runs), 3),
        load_avg=load_average(),
    )
    return out


def score_scaling(bundle_dir: Path, cases, workers: int, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """Cases/s at 1 worker vs N workers on the same cases (in this process; start-up apart), with
    these predictor ``options``.

    Returns:
        ``cases``, ``score_cases_per_s_{w}w`` (start-up included), ``score_work_cases_per_s_{w}w``,
        ``score_startup_s_{w}w``, ``score_start_method_{w}w``, ``score_errors_{w}w`` (error rows)
        and ``score_speedup_{N}w`` (work only).
    """
    from medtransfer.shared.runtime.score import score

    out: dict[str, Any] = {"cases": len(cases)}
    with tempfile.TemporaryDirectory() as tmp:
        for w in sorted({1, workers}):
            s = score(bundle_dir, cases, Path(tmp) / f"s{w}.csv", workers=w, progress=False, options=options)
            out[f"score_cases_per_s_{w}w"] = s["cases_per_s"]
            out[f"score_work_cases_per_s_{w}w"] = s["work_cases_per_s"]
            out[f"score_startup_s_{w}w"] = s["startup_s"]
            out[f"score_start_method_{w}w"] = s["engine_stats"].get("start_method")
            out[f"score_errors_{w}w"] = s["error"]  # error rows are timed too: a bench says how many
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


def _tree(proc: Any) -> list[Any]:
    """A process and all its descendants (empty once it is gone)."""
    import psutil

    try:
        return [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return []


def _sample(procs: list[Any], cpu: dict[int, float]) -> int:
    """Resident bytes of ``procs`` (shared pages counted per process); records each one's CPU seconds
    (user + system) so far in ``cpu`` by pid."""
    import psutil

    total = 0
    for p in procs:
        try:
            with p.oneshot():
                total += p.memory_info().rss
                t = p.cpu_times()
            cpu[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    return total


def _tree_rss(proc: Any) -> int:
    """Resident bytes of a process and all its descendants (shared pages counted per process)."""
    return _sample(_tree(proc), {})


class RayCluster:
    """A private Ray cluster for the bench, as a user's running cluster: ``ray start --head --block``
    in its own session (port, temporary folder and CPU count of its own), so jobs join it through
    ``RAY_ADDRESS`` and :meth:`stop` ends exactly its processes (never ``ray stop``, which stops
    every Ray on the machine).  Token authentication is off unless ``RAY_AUTH_MODE`` says otherwise
    (Ray 2.60 turns it on by default, and jobs then failed to join a cluster with its own
    ``--temp-dir`` here: "InvalidAuthToken").

    Args:
        cpus: CPUs the cluster offers.
        folder: its temporary folder (sockets, logs, spilled objects); keep the path short.
        object_store_mb: object store size.
        timeout_s: how long to wait for it to start.

    Raises:
        MedTransferError: Ray is missing or the cluster did not start in time (one line).
    """

    def __init__(self, cpus: int, folder: Path, object_store_mb: int = 200, timeout_s: float = 180.0) -> None:
        import collections
        import signal
        import socket
        import threading

        exe = Path(sys.executable).with_name("ray")
        if not exe.exists():
            raise MedTransferError("the ray-cluster setup needs Ray: pip install 'medtransfer[distributed]'")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")}
        self.env.pop("RAY_ADDRESS", None)
        cmd = [str(exe), "start", "--head", "--block", f"--port={port}", f"--num-cpus={cpus}"]
        cmd += [f"--object-store-memory={object_store_mb * 2**20}", "--include-dashboard=false"]
        cmd += ["--disable-usage-stats", f"--temp-dir={folder}"]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=self.env, start_new_session=True
        )
        self._signal = signal
        ready = threading.Event()
        tail: collections.deque[str] = collections.deque(maxlen=3)

        def pump() -> None:  # read its output to the end (a full pipe would block it)
            for line in self.proc.stdout:  # type: ignore[union-attr]
                tail.append(line.strip())
                if "Ray runtime started" in line:
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        while not ready.wait(1.0) and self.proc.poll() is None and time.perf_counter() - t0 < timeout_s:
            pass
        if not ready.is_set():
            self.stop()
            raise MedTransferError(f"the bench's Ray cluster did not start: {' | '.join(tail)[-300:]}")
        self.start_s = round(time.perf_counter() - t0, 3)
        self.address = f"127.0.0.1:{port}"
        self.env["RAY_ADDRESS"] = self.address
        self.first_connect_s = self._first_connect()

    def _first_connect(self) -> float | None:
        """Connect once and leave, as anything does on a cluster that is in use (``ray status``, an
        earlier job): the first driver a new cluster sees pays ~0.5 s more in ``ray.init`` than any
        later one (measured: 0.53-0.59 s, then 0.04-0.06 s, also after 15 s idle), once in the
        cluster's life, so the bench's first job measures a job on a running cluster, not that.

        Returns:
            That first ``ray.init``'s seconds (None if the probe failed; the jobs then pay it).
        """
        code = (
            "import time, ray; t = time.perf_counter(); ray.init(log_to_driver=False, configure_logging=False);"
            "print(round(time.perf_counter() - t, 3)); ray.shutdown()"
        )
        try:
            r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True, text=True, timeout=120)
            return float(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else None
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            return None

    def processes(self) -> list[Any]:
        """The cluster's processes now (raylet, GCS, agents, workers)."""
        import psutil

        return _tree(psutil.Process(self.proc.pid)) if self.proc.poll() is None else []

    def stop(self) -> None:
        """End the cluster's process group (SIGTERM, then SIGKILL after 2 s), then any of its
        processes still running outside the group (an idle Ray worker outlived the group here).
        Ray's graceful stop is slow and nothing of this throwaway cluster needs it: measured here,
        ``ray start --block`` ignored SIGTERM, its raylet took 10 s to end and its GCS never did,
        so every stop waited the whole grace time (it was 15 s)."""
        import psutil

        try:
            procs = self.processes()
        except psutil.Error:
            procs = []
        sig = self._signal
        for s, wait in ((sig.SIGTERM, 2), (sig.SIGKILL, 5)):
            try:
                os.killpg(self.proc.pid, s)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
                time.sleep(0.5)  # the rest of the group goes down with it
                os.killpg(self.proc.pid, 0)  # raises once no process of the group is left
            except subprocess.TimeoutExpired:
                continue
            except ProcessLookupError:
                break
        left = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    p.terminate()
                    left.append(p)
            except psutil.Error:
                pass
        for p in psutil.wait_procs(left, timeout=5)[1]:
            try:
                p.kill()
            except psutil.Error:
                pass


def score_run(
    bundle_dir: Path,
    manifest: Path,
    out_csv: Path,
    engine: str,
    workers: int,
    chunksize: int | None = None,
    cluster: RayCluster | None = None,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``score`` job in a fresh (torch-free) process, as a user runs it; memory and CPU sampled.

    Args:
        cluster: a running Ray cluster the job joins (``engine`` ``ray``); its processes are
            measured with the job's.
        options: predictor options (``score --opt``).

    Returns:
        ``score``'s summary plus ``cpu_s`` (this process and its local workers; not Ray's processes),
        ``total_cpu_s`` (the job process, every process under it, and the cluster's processes
        during the job: comparable across engines and less sensitive to a busy machine than wall
        times), ``wall_s`` (process start to exit), ``peak_rss_mib`` (the job's whole process tree
        and the cluster's processes, workers / Ray processes included; shared pages counted per
        process) and ``loadavg`` before and after.  Processes are listed every 0.5 s and sampled
        every 0.1 s (a process's last 0.1 s of CPU may be missed).
    """
    import psutil

    cmd = [sys.executable, "-m", "medtransfer.shared.bench", "--score-child", str(bundle_dir), str(manifest)]
    cmd += [str(out_csv), engine, str(workers), str(chunksize or 0), json.dumps(options or {})]
    env = {**(cluster.env if cluster else os.environ), "PYTHONWARNINGS": "ignore"}
    base: dict[int, float] = {}
    if cluster:
        _sample(cluster.processes(), base)  # the cluster's CPU before the job
    last = dict(base)
    before = load_average()
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    proc = psutil.Process(p.pid)
    peak, tick, procs = 0, 0, []
    while p.poll() is None:
        if tick % 5 == 0:  # listing processes walks /proc (milliseconds): every 0.5 s, sampling every 0.1 s
            procs = _tree(proc) + (cluster.processes() if cluster else [])
        peak = max(peak, _sample(procs, last))
        tick += 1
        time.sleep(0.1)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    line = next((ln for ln in reversed(out.splitlines()) if ln.startswith("{")), None)
    if p.returncode != 0 or line is None:
        return {"error": (err.strip().splitlines() or ["failed"])[-1][:300], "engine": engine, "workers": workers}
    res = json.loads(line)
    # the job process itself as it reported at its end; everything else as last sampled
    others = sum(c - base.get(pid, 0.0) for pid, c in last.items() if pid != p.pid)
    res["total_cpu_s"] = round(res.get("cpu_self_s", 0.0) + others, 2)
    res.update(wall_s=round(wall, 3), peak_rss_mib=round(peak / 2**20, 1), loadavg=[before, load_average()])
    return res


def _score_child(argv: list[str]) -> None:
    from medtransfer.shared.runtime.score import cases_from_manifest, score

    bundle, manifest, out, engine, workers, chunk, options = argv[:7]
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
        options=json.loads(options),
    )
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    s["cpu_s"] = round(me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime, 2)  # local workers included
    s["cpu_self_s"] = round(me.ru_utime + me.ru_stime, 2)
    print(json.dumps(s))
    from medtransfer.shared.runtime.engines import end_ray_driver

    end_ray_driver(0)  # the job ends as `medtransfer score` does (shared.cli.main.main)


#: engines of the score bench's setups (``engine:workers``)
SCORE_ENGINES = ("local", "ray", "ray-cluster", "ray-cluster-other")


def check_score_setups(setups: tuple[str, ...], sizes: tuple[int, ...] = ()) -> None:
    """Refuse a setup that is not ``local|ray|ray-cluster|ray-cluster-other:N`` (N >= 1) or a size
    below 1, in one line.

    Raises:
        MedTransferError: the first bad one, named.
    """
    for setup in setups:
        engine, _, w = setup.partition(":")
        if engine not in SCORE_ENGINES or not (w or "1").isdigit() or int(w or 1) < 1:
            raise MedTransferError(
                f"score setup '{setup}': expected local:N, ray:N, ray-cluster:N or ray-cluster-other:N with N >= 1"
            )
    for n in sizes:
        if n < 1:
            raise MedTransferError(f"score case count {n}: expected at least 1")


def score_bench(
    bundle_dir: Path,
    samples: list[Path],
    sizes: tuple[int, ...] = (200, 1000),
    setups: tuple[str, ...] = ("local:1", "local:2", "ray:2"),
    work_dir: Path | None = None,
    chunksize: int | None = None,
    out_json: Path | None = None,
    progress: bool = True,
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``score`` at scale: each setup (``engine:workers``) on ``n`` cases for each size, each job a
    fresh process (what a user runs), with both sides, ratios, start-up, peak memory, CPU and load.

    Args:
        bundle_dir: the bundle.
        samples: input files for it, cycled into ``n`` distinct case files.
        sizes: case counts.
        setups: ``local:1``, ``local:2``, ``ray:2`` (as ``score --engine ray`` runs here: the
            cluster at ``RAY_ADDRESS``, else one ``ray start`` left on this machine, else a Ray the
            job starts), ``ray-cluster:2`` (a private running cluster with that many CPUs, started
            once for the bench: :class:`RayCluster`), ...; a setup given twice runs
            twice (``ray-cluster:2#2``: the next job on the cluster, which finds the first job's
            warm actors); ``ray-cluster-other:2``: a job on the same cluster with a bundle its
            warm actors have not opened (a copy of the bundle at another path).
        work_dir: keep case files and results here (default: a temporary folder).
        chunksize: cases per task (None: the engine's default).
        out_json: also write the result here.
        progress: print one line per job to stderr.
        options: predictor options for every job (``score --opt``; e.g. a video bundle's ``box``).

    Returns:
        ``runs`` (one summary per size and setup: seconds, work_s, startup_s, cases_per_s, cpu_s,
        total_cpu_s, peak_rss_mib, loadavg...) and ``ratios`` per size: ``local_2w_over_1w``
        (speed-up, start-up included and work only), per Ray setup ``ray_over_local_1w``,
        ``ray_over_local_2w`` (``ray_cluster_...`` for ``ray-cluster``; time ratios, >1 = Ray
        slower), ``..._cpu_over_local_2w`` (total CPU ratio), ``ray_startup_s``; and
        ``ray_cluster_start_s`` and ``ray_cluster_first_connect_s`` (the cluster's first driver
        connection, made by the bench before the jobs: :meth:`RayCluster._first_connect`) when a
        cluster was started.
    """
    check_score_setups(setups, sizes)
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
    cluster: RayCluster | None = None
    try:
        for n in sizes:
            man = make_case_set(list(samples), n, tmp / f"cases_{n}")
            runs: dict[str, Any] = {}
            for k, setup in enumerate(setups):
                engine, _, w = setup.partition(":")
                label = setup if setup not in setups[:k] else f"{setup}#{setups[:k].count(setup) + 1}"
                if engine.startswith("ray-cluster") and cluster is None:
                    # short path: Ray's socket names must stay under ~107 characters
                    cluster = RayCluster(int(w or 1), Path(tempfile.mkdtemp(prefix="rc", dir="/tmp")))
                    res["ray_cluster_start_s"] = cluster.start_s
                    res["ray_cluster_first_connect_s"] = cluster.first_connect_s
                use = cluster if engine.startswith("ray-cluster") else None
                bundle = Path(bundle_dir)
                if engine == "ray-cluster-other":  # another bundle for the pool: same files, new path
                    bundle = tmp / f"bundle_other_{n}_{k}"
                    shutil.copytree(bundle_dir, bundle, dirs_exist_ok=True)
                r = score_run(
                    bundle,
                    man,
                    tmp / f"out_{n}_{engine}{w}.csv",
                    "ray" if use else engine,
                    int(w or 1),
                    chunksize,
                    cluster=use,
                    options=options,
                )
                runs[label] = r  # a repeated setup (e.g. a second job on the warm cluster): setup#2
                if progress:
                    keys = ("seconds", "work_s", "startup_s", "cpu_s", "total_cpu_s", "ok", "error", "peak_rss_mib")
                    print(
                        f"score bench n={n} {label}: " + json.dumps({k: r.get(k) for k in (*keys, "loadavg")}),
                        file=sys.stderr,
                    )
            res["runs"][str(n)] = runs
            res["ratios"][str(n)] = _ratios(runs)
        res["loadavg_end"] = load_average()
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(res, indent=2))
        return res
    finally:
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.folder, ignore_errors=True)
        if not work_dir:
            shutil.rmtree(tmp, ignore_errors=True)


def _ratios(runs: dict[str, Any]) -> dict[str, Any]:
    def get(setup: str, key: str) -> float | None:
        v = runs.get(setup, {}).get(key)
        return float(v) if isinstance(v, (int, float)) and v > 0 else None

    out: dict[str, Any] = {}
    one, two = "local:1", "local:2"
    a, b = get(one, "seconds"), get(two, "seconds")
    if a and b:
        out["local_2w_over_1w"] = round(a / b, 2)  # speed-up
    a, b = get(one, "work_s"), get(two, "work_s")
    if a and b:
        out["local_2w_over_1w_work"] = round(a / b, 2)
    for ray in (k for k in runs if k.startswith("ray")):
        rep = ray.partition("#")[2]
        tag = ray.partition(":")[0].replace("-", "_") + (f"_{rep}" if rep else "")  # ray, ray_cluster, ray_cluster_2
        for key, name in (("seconds", ""), ("work_s", "_work"), ("total_cpu_s", "_cpu")):
            a, b, r = get(one, key), get(two, key), get(ray, key)
            if r and a and key != "total_cpu_s":
                out[f"{tag}_over_local_1w{name}"] = round(r / a, 2)  # time ratio: > 1 means Ray is slower
            if r and b:
                out[f"{tag}_over_local_2w{name}"] = round(r / b, 2)
        out[f"{tag}_startup_s"] = runs[ray].get("startup_s")
        stats = runs[ray].get("engine_stats") or {}
        out[f"{tag}_init_s"] = stats.get("ray_init_s")
        out[f"{tag}_actors_s"] = stats.get("ray_actors_s")
        # which Ray the job used: "local" (it started one) or the cluster it joined (``ray:N`` joins
        # RAY_ADDRESS or a cluster ``ray start`` left on this machine)
        out[f"{tag}_address"] = stats.get("ray_address")
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


def default_score_setups(workers: int) -> tuple[str, ...]:
    """The score bench's default setups: ``local:1``, ``local:N``, then, with Ray installed,
    ``ray:N`` (a Ray the job starts itself, or the cluster it joins: ``RAY_ADDRESS``, or one
    ``ray start`` left on this machine) and two jobs on a
    private running cluster (``ray-cluster:N`` twice: a bundle's first job, then one that finds
    the first job's warm actors; then ``ray-cluster-other:N``, a job of another bundle on those
    warm actors), as a user meets each."""
    import importlib.util

    base = ("local:1", f"local:{workers}")
    if importlib.util.find_spec("ray") is None:
        return base
    return (*base, f"ray:{workers}", f"ray-cluster:{workers}", f"ray-cluster:{workers}", f"ray-cluster-other:{workers}")


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
    options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """All core benchmarks on a bundle (default: one built by an app's ``bench_bundle`` hook).

    With ``score_sizes`` (e.g. ``(200, 1000)``), :func:`score_bench` also runs each of
    ``score_setups`` (default: :func:`default_score_setups`) on that many cases cycled from
    ``samples``, each job a fresh process (written to ``score_json`` too).

    ONNX vs eager runs when the bundle's app declares ``bench_eager`` and the bundle's run is at
    hand, else the app's own ``bench`` hook is given ``bundle=`` (when it takes it); cold start and
    1-vs-N score scaling run on ``samples`` (inputs for that bundle), with the predictor
    ``options`` (``--opt``; e.g. a video bundle's ``box`` prompt).  With ``app``, that app's own
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
        meta = _bundle_meta(bundle)
        spec = get_app(meta["app"])
        if spec.bench_eager:
            res.update(_engines(bundle, batch, threads))
        if "onnx_over_eager" not in res and spec.bench:
            fn = hook(spec.name, "bench")
            if accepts(fn, "bundle"):
                res[f"{spec.name}_bundle_bench"] = fn(bundle=str(bundle))
        if samples:
            res.update(cold_start(bundle, samples[0], options=options))
            cases = [Case(str(p), str(p), {}) for p in samples[:60]]
            res.update(score_scaling(bundle, cases, workers, options))
            if score_sizes:
                setups = score_setups or default_score_setups(workers)
                res["score_bench"] = score_bench(
                    bundle, samples, score_sizes, setups, out_json=score_json, options=options
                )
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
    local:1,local:2,ray:2,ray-cluster:2,ray-cluster:2,ray-cluster-other:2] [--chunksize N] [--work DIR] [--json OUT]
    [--opt k=v ...]``: the score bench.
    ``python -m medtransfer.shared.bench cold BUNDLE SAMPLE [BUNDLE SAMPLE ...] [--repeats N]``:
    the predict cold start of each bundle (:func:`cold_start`); ``--opt k=v`` gives predictor options
    to each."""
    if argv and argv[0] == "--score-child":
        _score_child(argv[1:])
        return
    if argv and argv[0] == "cold":
        _cold_main(argv[1:])
        return
    import argparse

    from medtransfer.shared.utils.cliargs import at_least, int_list

    ap = argparse.ArgumentParser(prog="python -m medtransfer.shared.bench")
    ap.add_argument("what", choices=["score"])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("samples", type=Path, nargs="+")
    ap.add_argument("--cases", default="200,1000", type=int_list(1))
    ap.add_argument("--setups", default=",".join(default_score_setups(2)))
    ap.add_argument("--chunksize", type=at_least(1), default=None)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--opt", action="append", default=[], help="predictor option key=value for every job")
    a = ap.parse_args(argv)
    from medtransfer.shared.cli.main import parse_opts

    res = score_bench(
        a.bundle,
        a.samples,
        tuple(a.cases),
        tuple(a.setups.split(",")),
        work_dir=a.work,
        chunksize=a.chunksize,
        out_json=a.json,
        options=parse_opts(a.opt, raw=True),
    )
    print(json.dumps(res, indent=2))


def _cold_main(argv: list[str]) -> None:
    import argparse

    from medtransfer.shared.utils.cliargs import at_least

    ap = argparse.ArgumentParser(prog="python -m medtransfer.shared.bench cold")
    ap.add_argument("pairs", nargs="+", help="BUNDLE SAMPLE [BUNDLE SAMPLE ...]")
    ap.add_argument("--repeats", type=at_least(1), default=5)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--opt", action="append", default=[], help="predictor option key=value for every predict")
    a = ap.parse_args(argv)
    if len(a.pairs) % 2:
        ap.error("give BUNDLE SAMPLE pairs")
    from medtransfer.shared.cli.main import parse_opts

    options = parse_opts(a.opt, raw=True)
    res = {}
    for b, smp in zip(a.pairs[::2], a.pairs[1::2]):
        meta = _bundle_meta(Path(b))
        res[f"{meta.get('app')}:{b}"] = cold_start(Path(b), Path(smp), repeats=a.repeats, options=options)
    text = json.dumps({"cpu_count": os.cpu_count(), **res}, indent=2)
    if a.json:
        a.json.write_text(text)
    print(text)


if __name__ == "__main__":
    try:
        _main(sys.argv[1:])
    except MedTransferError as e:  # one line, as the CLI gives it
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
