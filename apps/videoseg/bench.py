"""``medtransfer bench --app videoseg``: our streaming ONNX predictor vs sam2's ``SAM2VideoPredictor``.

Both sides run the same SAM2 weights (random init, no adapters: one state dict loaded into both)
at the same config and resolution on CPU, prompted with the same first-frame mask.  By default
SAM2.1 hiera-tiny at 256 and 512 px on 48 and 192 frames; the 128-px "micro" model only with
``micro=True`` (``python -m medtransfer.apps.videoseg.bench --micro``).

Every timed run is a fresh process (so each side's peak RSS is its own): SAM2VideoPredictor timed
from ``init_state`` on a JPEG folder (which it requires) to the end of ``propagate_in_video``;
ours from opening the AVI to the last mask (fast backend; ONNX sessions are made before the clock
starts, as the official model is built and loaded before it).  Ours runs the bundle's default image
encoder (int8 when export found it agreeing with float32: ``int8_encoder`` per size gives that
Dice) and, at the shortest length, the float32 encoder too (``ours_fp32``).  Reported per run:
seconds, frames/s, peak RSS, the ratio (official seconds / ours), the per-frame Dice between the
two and the load average; per size, our per-graph milliseconds per frame on the previous path
(``fast=False``: each session its own thread pool) and the fast path (sequential, to attribute
time to graphs).  ``cpu_sets`` runs the child processes concurrently, each pinned to its own
cores (for a many-core machine; the default runs them one after another on this process's cores).

    python -m medtransfer.apps.videoseg.bench --sizes 256,512 --frames 48,192 --threads 2 --out vs.json
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.bench import load_average
from medtransfer.shared.utils.cliargs import at_least, int_list

#: ours with one setting changed (``ablation=True``): encoder prefetch (the encoder works on the next
#: frame in its own thread, the threads split with the tracker graphs), spinning within runs, the
#: shared pool, the previous sessions
ABLATIONS: dict[str, dict[str, Any]] = {
    "prefetch": {"prefetch": True},
    "spin": {"spin": True},
    "shared_pool": {"shared_pool": True},
    "previous_sessions": {"fast": False, "prefetch": False},
}
GRAPH_CALLS = ("encode_image", "attend", "decode", "encode_memory")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss it starts afresh at exec, so a
    child does not inherit its parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:  # pragma: no cover - no procfs
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Timed:
    """Wraps a backend; adds each network call's wall time to ``totals`` (seconds)."""

    def __init__(self, inner: Any, totals: dict[str, float]) -> None:
        self.inner, self.consts, self.totals = inner, inner.consts, totals

    def __getattr__(self, name: str) -> Any:
        fn = getattr(self.inner, name)
        if not callable(fn):  # plain attributes (e.g. ``prefetch``) as they are
            return fn

        def timed(*a: Any, **kw: Any) -> Any:
            t = time.perf_counter()
            out = fn(*a, **kw)
            self.totals[name] = self.totals.get(name, 0.0) + time.perf_counter() - t
            return out

        return timed


def child_ours(args: dict[str, Any]) -> dict[str, Any]:
    """One timed run of our torch-free predictor loop (runs in a fresh process).

    Args:
        args: ``bundle``, ``video`` (AVI), ``frames``, ``mask`` (.npy first-frame mask), ``masks_out``
            (.npy written), ``fast``, ``prefetch``, ``threads``, ``profile`` (time each graph call).

    Returns:
        ``seconds``, ``fps``, ``peak_rss_mb``, ``torch_loaded`` and, when profiled, ``ms_per_frame``.
    """
    from medtransfer.apps.videoseg.io import open_video
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.apps.videoseg.propagate import StreamingPropagator
    from medtransfer.shared.runtime.bundle import Bundle

    n = int(args["frames"])
    bundle = Bundle(args["bundle"], verify=False, threads=int(args.get("threads") or 0))
    t0 = time.perf_counter()
    backend: Any = OnnxBackend(
        bundle,
        fast=bool(args["fast"]),
        threads=int(args.get("threads") or 0),
        shared_pool=bool(args.get("shared_pool", False)),
        encoder=str(args.get("encoder") or "auto"),
        spin=bool(args.get("spin", False)),
        prefetch=bool(args.get("prefetch")) and not args.get("profile"),
    )
    session_seconds = time.perf_counter() - t0
    totals: dict[str, float] = {}
    if args.get("profile"):
        backend = _Timed(backend, totals)
    prop = StreamingPropagator(backend)
    mask = np.load(args["mask"])
    t = time.perf_counter()
    rd = open_video(args["video"])
    # profiled runs go one graph at a time (so time is attributed to graphs)
    out = np.stack([m for _, m in prop.run(rd.frames(0, n), n, mask=mask)])
    dt = time.perf_counter() - t
    np.save(args["masks_out"], out)
    inner = getattr(backend, "inner", backend)
    res = {
        "seconds": round(dt, 2),
        "fps": round(n / dt, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "torch_loaded": "torch" in sys.modules,
        "encoder": inner.encoder_file,
        "attention": inner.attention_file,
        "prefetch": bool(inner.prefetch) and not totals,
        "threads": inner.threads,
        "session_seconds": round(session_seconds, 2),
    }
    if totals:
        res["ms_per_frame"] = {k: round(1000 * totals.get(k, 0.0) / n, 1) for k in GRAPH_CALLS}
    return res


def child_official(args: dict[str, Any]) -> dict[str, Any]:
    """One timed run of sam2's ``SAM2VideoPredictor`` (fresh process), mask prompt on frame 0.

    Args:
        args: ``state_dict`` (.pt), ``arch``, ``image_size``, ``overrides``, ``jpg_dir``, ``mask``,
            ``masks_out``, ``threads``.
    """
    import torch

    from medtransfer.shared.models.sam2_builder import build_sam2

    torch.set_num_threads(int(args.get("threads") or 0) or len(os.sched_getaffinity(0)))
    ref = build_sam2(
        args["arch"], image_size=int(args["image_size"]), video_predictor=True, extra_overrides=args["overrides"]
    )
    ref.load_state_dict(torch.load(args["state_dict"], weights_only=True), strict=True)
    ref.eval()
    mask = np.load(args["mask"]).astype(bool)
    masks: dict[int, np.ndarray] = {}
    t = time.perf_counter()
    with torch.inference_mode():
        state = ref.init_state(args["jpg_dir"], offload_video_to_cpu=True, offload_state_to_cpu=True)
        ref.add_new_mask(state, frame_idx=0, obj_id=1, mask=mask)
        for fi, _, logits in ref.propagate_in_video(state):
            masks[fi] = (logits[0, 0] > 0).numpy().astype(np.uint8)
    dt = time.perf_counter() - t
    n = len(masks)
    np.save(args["masks_out"], np.stack([masks[i] for i in range(n)]))
    return {
        "seconds": round(dt, 2),
        "fps": round(n / dt, 3),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "torch_threads": torch.get_num_threads(),
    }


def _spawn(kind: str, args: dict[str, Any], cpus: list[int] | None) -> dict[str, Any]:
    """Run :func:`child_ours` / :func:`child_official` in a fresh interpreter (pinned to ``cpus``)."""
    env = dict(os.environ)
    if args.get("threads"):
        env["OMP_NUM_THREADS"] = str(args["threads"])
    args = {**args, "cpus": cpus or []}
    cmd = [sys.executable, "-m", "medtransfer.apps.videoseg.bench", "--child", kind, json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        tail = (out.stderr or out.stdout).strip().splitlines()[-3:]
        return {"error": f"{kind} child failed: {' | '.join(tail)}"}
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["load_average"] = load_average()
    if cpus:
        res["cpus"] = cpus
    return res


def _run_jobs(jobs: list[tuple[str, str, dict[str, Any]]], cpu_sets: list[list[int]]) -> dict[str, dict[str, Any]]:
    """Run ``(key, kind, args)`` jobs one after another, or concurrently with one CPU set each."""
    from rich.console import Console

    con = Console(stderr=True)
    results: dict[str, dict[str, Any]] = {}
    if not cpu_sets:
        for key, kind, args in jobs:
            with con.status(f"videoseg bench: {key}"):
                results[key] = _spawn(kind, args, None)
            con.print(f"videoseg bench {key}: {json.dumps(results[key])}")
        return results
    free = list(cpu_sets)
    lock = threading.Condition()
    todo = sorted(jobs, key=lambda j: -int(j[2].get("frames", 0)) * int(j[2].get("image_size", 0) or 1))

    def work(job: tuple[str, str, dict[str, Any]]) -> None:
        with lock:
            while not free:
                lock.wait()
            cpus = free.pop(0)
        try:
            results[job[0]] = _spawn(job[1], job[2], cpus)
            con.print(f"videoseg bench {job[0]}: {json.dumps(results[job[0]])}")
        finally:
            with lock:
                free.append(cpus)
                lock.notify()

    threads = [threading.Thread(target=work, args=(j,)) for j in todo]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


def _dice(a: np.ndarray, b: np.ndarray) -> list[float]:
    out = []
    for x, y in zip(a, b):
        s = int(x.sum()) + int(y.sum())
        out.append(1.0 if s == 0 else 2.0 * int((x & y).sum()) / s)
    return out


def _ints(v: str | int | list[int] | tuple[int, ...]) -> list[int]:
    if isinstance(v, int):
        return [v]
    if isinstance(v, str):
        return [int(x) for x in v.split(",") if x.strip()]
    return [int(x) for x in v]


def _cpu_sets(text: str) -> list[list[int]]:
    """``"0,1;2,3"`` -> ``[[0, 1], [2, 3]]``: CPU sets this process may use.

    Raises:
        ValueError: not that form, or a CPU this process may not run on.
    """
    allowed = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    sets = []
    for part in (s for s in text.split(";") if s.strip()):
        try:
            cpus = [int(c) for c in part.split(",") if c.strip()]
        except ValueError:
            raise ValueError(f"'{text}': expected CPU sets such as 0,1;2,3") from None
        if not cpus or not set(cpus) <= allowed:
            raise ValueError(f"'{part}': not CPUs this process may use ({sorted(allowed)})")
        sets.append(cpus)
    return sets


def _cpu_sets_arg(text: str) -> str:
    """``--cpu-sets`` as argparse checks it (:func:`_cpu_sets`); the text is kept for :func:`bench`."""
    import argparse

    try:
        _cpu_sets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def child_export(args: dict[str, Any]) -> dict[str, Any]:
    """:func:`make_bundle` in a fresh process (``arch``, ``image_size``, ``overrides``, ``work``)."""
    bundle, sd, sec = make_bundle(args["arch"], int(args["image_size"]), args["overrides"], Path(args["work"]))
    meta = json.loads((bundle / "metadata.json").read_text())
    return {
        "bundle": str(bundle),
        "state_dict": str(sd),
        "export_seconds": round(sec, 1),
        "int8_encoder": meta["metrics"].get("int8_encoder_agreement"),
    }


def make_bundle(arch: str, size: int, overrides: list[str], work: Path) -> tuple[Path, Path, float]:
    """Random-init SAM2 (seed 0) exported as a bundle (with the int8 encoder beside the float32 one,
    default as export decides it); its state dict saved for the official side.

    Returns:
        The bundle folder, the state-dict file and the export seconds.
    """
    import torch

    from medtransfer.apps.videoseg.export import (
        INT8_FILES,
        agreement_clip,
        check_frames,
        encoder_metadata,
        export_model,
        int8_encoder_agreement,
        write_int8_encoder,
    )
    from medtransfer.apps.videoseg.model import build_model
    from medtransfer.shared.export import write_bundle

    torch.manual_seed(0)
    ours, _ = build_model({"arch": arch, "image_size": size, "adapter": "none", "overrides": overrides})
    sd = work / f"sam2_{size}.pt"
    torch.save(ours.state_dict(), sd)
    bundle = work / f"bundle_{size}"
    t = time.time()
    export_model(ours, bundle)
    write_int8_encoder(bundle)
    files = sorted({p.name for p in bundle.glob("*.onnx")} | set(INT8_FILES)) + ["constants.npz"]
    kw: dict[str, Any] = {
        "name": "bench",
        "app": "videoseg",
        "task": "track",
        "files": files,
        "inputs": {},
        "outputs": {},
        "preprocessing": {"image_size": size},
    }
    write_bundle(bundle, **kw)
    agreement = int8_encoder_agreement(bundle, *agreement_clip(check_frames(size, 16)))
    write_bundle(bundle, **kw, metrics={"int8_encoder_agreement": agreement}, extra=encoder_metadata(agreement))
    return bundle, sd, time.time() - t


def bench(
    sizes: str | list[int] = "256,512",
    frames: str | list[int] = "48,192",
    micro: bool = False,
    arch: str = "sam2.1_hiera_tiny",
    threads: int = 0,
    profile_frames: int = 16,
    prefetch: bool = False,
    cpu_sets: str = "",
    ablation: bool = False,
    repeats: int = 1,
    out: str | None = None,
    work_dir: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Run the comparison.

    Args:
        sizes: SAM2 input sizes (comma-separated), each run by both predictors.
        frames: video lengths (comma-separated); the longest shows whether memory stays flat.
        micro: the 128-px micro SAM2 config (fewer blocks) instead of the full ``arch`` (smoke runs).
        arch: SAM2 variant.
        threads: torch / ONNX Runtime threads in each run (0 = the cores the run may use).
        profile_frames: frames for the per-graph profile of the previous and the fast path (0 = skip).
        prefetch: ours encodes frame t+1 in a second thread while tracking frame t, threads split
            (off, as the predictor's default; see the ``prefetch`` ablation).
        cpu_sets: ``"0,1;2,3"``: run the timed processes concurrently, one CPU set each ("" = one
            after another on this process's cores).
        ablation: also time ours at the shortest length with each of :data:`ABLATIONS`.
        repeats: time each ours / official pair this many times, alternating (ours, official, ours,
            ...), so that a drift in the machine's speed reaches both sides; seconds and the speed-up
            are medians over the repeats, each repeat's ratio is kept (``speedup_per_repeat``).
        out: also write the JSON here.
        work_dir: keep bundles, videos and masks here (default: a temporary folder, removed).

    Returns:
        Measured numbers (JSON-serialisable).
    """
    import shutil

    import cv2

    from medtransfer.apps.videoseg.io import write_avi
    from medtransfer.apps.videoseg.model import MICRO_OVERRIDES
    from medtransfer.apps.videoseg.synthetic import make_cine

    size_list = [128] if micro and sizes == "256,512" else _ints(sizes)
    frame_list = _ints(frames)
    overrides = list(MICRO_OVERRIDES) if micro else []
    sets = _cpu_sets(cpu_sets)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="videoseg_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    n_max = max(frame_list + [profile_frames])
    vid, gt, _ = make_cine(112, n_max, seed=7)
    mask_path = work / "mask0.npy"
    np.save(mask_path, gt[0])
    videos: dict[int, tuple[Path, Path]] = {}
    for n in sorted(set(frame_list + ([profile_frames] if profile_frames else []))):
        jdir = work / f"jpg_{n}"
        jdir.mkdir(exist_ok=True)
        for i, fr in enumerate(vid[:n]):
            cv2.imwrite(str(jdir / f"{i:05d}.jpg"), fr, [cv2.IMWRITE_JPEG_QUALITY, 100])
        videos[n] = (write_avi(work / f"clip_{n}.avi", vid[:n]), jdir)

    res: dict[str, Any] = {
        "config": {
            "arch": arch,
            "micro": micro,
            "sizes": size_list,
            "frames": frame_list,
            "prompt": "first-frame mask",
            "video": "112x112 synthetic cine (AVI for ours, JPEG q100 folder for SAM2VideoPredictor)",
            "device": "cpu",
            "threads": threads or "all cores of each run",
            "prefetch": prefetch,
            "cpu_sets": sets or None,
            "cpu_count": os.cpu_count(),
            "repeats": max(1, repeats),
        },
        "load_average_start": load_average(),
        "sizes": {},
    }
    exports = _run_jobs(
        [
            (
                f"{size}px/export",
                "export",
                {"arch": arch, "image_size": size, "overrides": overrides, "work": str(work)},
            )
            for size in size_list
        ],
        sets,
    )
    jobs: list[tuple[str, str, dict[str, Any]]] = []
    for size in size_list:
        ex = exports[f"{size}px/export"]
        if "error" in ex:
            raise RuntimeError(f"videoseg bench: export at {size} px failed: {ex['error']}")
        bundle, sd = Path(ex["bundle"]), Path(ex["state_dict"])
        res["sizes"][str(size)] = {"export_seconds": ex["export_seconds"], "int8_encoder": ex.get("int8_encoder")}
        common = {"bundle": str(bundle), "mask": str(mask_path), "threads": threads, "image_size": size}
        for n in frame_list:
            avi, jdir = videos[n]
            ours = {**common, "video": str(avi), "frames": n, "fast": True, "prefetch": prefetch, "profile": False,
                    "masks_out": str(work / f"ours_{size}_{n}.npy")}  # fmt: skip
            jobs.append((f"{size}px/{n}f/ours", "ours", ours))
            if n == min(frame_list):  # the float32 encoder too (the default may be int8)
                fp32 = {**ours, "encoder": "fp32", "masks_out": str(work / f"ours_fp32_{size}_{n}.npy")}
                jobs.append((f"{size}px/{n}f/ours_fp32", "ours", fp32))
            official = {"state_dict": str(sd), "arch": arch, "image_size": size, "overrides": overrides,
                        "jpg_dir": str(jdir), "mask": str(mask_path), "threads": threads, "frames": n,
                        "masks_out": str(work / f"official_{size}_{n}.npy")}  # fmt: skip
            jobs.append((f"{size}px/{n}f/official", "official", official))
            for rep in range(1, max(1, repeats)):  # the pair again, alternating
                jobs.append((f"{size}px/{n}f/ours#{rep}", "ours", ours))
                jobs.append((f"{size}px/{n}f/official#{rep}", "official", official))
        if ablation:  # ours at the shortest length with one setting changed at a time
            n = min(frame_list)
            for name, change in ABLATIONS.items():
                jobs.append(
                    (
                        f"{size}px/{n}f/ours_{name}",
                        "ours",
                        {**common, "video": str(videos[n][0]), "frames": n, "fast": True, "prefetch": prefetch,
                         "profile": False, "masks_out": str(work / f"ablation_{name}_{size}.npy"), **change},
                    )
                )  # fmt: skip
        if profile_frames:
            avi, _ = videos[profile_frames]
            for name, fast in (("previous", False), ("fast", True)):
                jobs.append(
                    (
                        f"{size}px/{profile_frames}f/profile_{name}",
                        "ours",
                        {**common, "video": str(avi), "frames": profile_frames, "fast": fast, "prefetch": False,
                         "profile": True, "masks_out": str(work / f"profile_{name}_{size}.npy")},
                    )
                )  # fmt: skip
    runs = _run_jobs(jobs, sets)
    for size in size_list:
        row = res["sizes"][str(size)]
        for n in frame_list:
            o, r = (_median_run(runs, f"{size}px/{n}f/{side}", repeats) for side in ("ours", "official"))
            entry: dict[str, Any] = {"ours": o, "official": r}
            if "error" not in o and "error" not in r:
                entry["speedup"] = round(r["seconds"] / o["seconds"], 3)
                if repeats > 1:
                    entry["speedup_per_repeat"] = [
                        round(b / a, 3) for a, b in zip(o["seconds_repeats"], r["seconds_repeats"])
                    ]
                d = _dice(np.load(work / f"ours_{size}_{n}.npy"), np.load(work / f"official_{size}_{n}.npy"))
                entry["agreement_dice_mean"] = round(float(np.mean(d)), 4)
                entry["agreement_dice_min"] = round(float(np.min(d)), 4)
            f32 = runs.get(f"{size}px/{n}f/ours_fp32")
            if f32 is not None:
                entry["ours_fp32"] = f32
                if "error" not in f32 and "error" not in r:
                    entry["speedup_fp32"] = round(r["seconds"] / f32["seconds"], 3)
            row[f"{n}_frames"] = entry
        if ablation:
            n = min(frame_list)
            row["ablation"] = {"frames": n, **{k: runs[f"{size}px/{n}f/ours_{k}"] for k in ABLATIONS}}
        if profile_frames:
            prev, fast = (runs[f"{size}px/{profile_frames}f/profile_{k}"] for k in ("previous", "fast"))
            row["profile"] = {"frames": profile_frames, "previous": prev, "fast": fast}
            if "error" not in prev and "error" not in fast:
                a = np.load(work / f"profile_previous_{size}.npy")
                b = np.load(work / f"profile_fast_{size}.npy")
                row["profile"]["fast_equals_previous"] = bool(np.array_equal(a, b))
        if len(frame_list) > 1:
            lo, hi = f"{min(frame_list)}_frames", f"{max(frame_list)}_frames"
            for side in ("ours", "official"):
                a, b = row[lo][side].get("peak_rss_mb"), row[hi][side].get("peak_rss_mb")
                if a is not None and b is not None:
                    row[f"{side}_rss_growth_mb"] = round(b - a, 1)
    res["load_average_end"] = load_average()
    _print_table(res)
    if out:
        Path(out).write_text(json.dumps(res, indent=2))
        res["json"] = str(out)
    if not work_dir:
        shutil.rmtree(work, ignore_errors=True)
    return res


def _median_run(runs: dict[str, dict[str, Any]], key: str, repeats: int) -> dict[str, Any]:
    """The median run of ``key`` over its repeats (``key``, ``key#1``, ...): the middle run's fields
    (the lower middle one for an even count) with ``seconds`` the median and every repeat's seconds
    in ``seconds_repeats``; the first error instead if any repeat failed."""
    all_runs = [runs[key]] + [runs[f"{key}#{r}"] for r in range(1, max(1, repeats))]
    bad = next((r for r in all_runs if "error" in r), None)
    if bad is not None or len(all_runs) == 1:
        return bad or all_runs[0]
    ranked = sorted(all_runs, key=lambda r: r["seconds"])
    med = dict(ranked[(len(ranked) - 1) // 2])
    med["seconds"] = round(float(np.median([r["seconds"] for r in all_runs])), 3)
    med["seconds_repeats"] = [r["seconds"] for r in all_runs]
    return med


def _print_table(res: dict[str, Any]) -> None:
    """Both sides, the ratio, peak RSS and the load average, as a table on stderr."""
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"videoseg: ours (ONNX) vs SAM2VideoPredictor, {res['config']['arch']}")
    cols = ("size", "frames", "ours s", "official s", "speedup", "ours fp32 s", "speedup fp32", "ours RSS MiB")
    for c in (*cols, "official RSS MiB", "Dice", "load"):
        t.add_column(c)
    for size, row in res["sizes"].items():
        for key, e in row.items():
            if not key.endswith("_frames"):
                continue
            o, r = e["ours"], e["official"]
            t.add_row(
                size,
                key.split("_")[0],
                str(o.get("seconds", o.get("error"))),
                str(r.get("seconds", r.get("error"))),
                str(e.get("speedup", "-")),
                str(e.get("ours_fp32", {}).get("seconds", "-")),
                str(e.get("speedup_fp32", "-")),
                str(o.get("peak_rss_mb", "-")),
                str(r.get("peak_rss_mb", "-")),
                str(e.get("agreement_dice_mean", "-")),
                " ".join(map(str, o.get("load_average", []))),
            )
    Console(stderr=True).print(t)


def main(argv: list[str] | None = None) -> int:
    """``python -m medtransfer.apps.videoseg.bench [--micro] [--sizes 256,512] [--frames 48,192] ...``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m medtransfer.apps.videoseg.bench", description=__doc__.split("\n")[0])
    p.add_argument("--child", choices=("ours", "official", "export"), help=argparse.SUPPRESS)
    p.add_argument("child_args", nargs="?", help=argparse.SUPPRESS)
    p.add_argument("--sizes", default="256,512", type=int_list(32, multiple_of=32), help="SAM2 input sizes")
    p.add_argument("--frames", default="48,192", type=int_list(2), help="video lengths")
    p.add_argument("--micro", action="store_true", help="the 128-px micro model (smoke runs)")
    p.add_argument("--arch", default="sam2.1_hiera_tiny")
    p.add_argument("--threads", type=at_least(0), default=0)
    p.add_argument("--profile-frames", type=at_least(0), default=16)
    p.add_argument("--prefetch", action="store_true", help="ours encodes the next frame in a second thread")
    p.add_argument("--cpu-sets", default="", type=_cpu_sets_arg)
    p.add_argument("--ablation", action="store_true", help="also time ours with each fast setting switched off")
    p.add_argument("--repeats", type=at_least(1), default=1, help="time each ours/official pair N times, alternating")
    p.add_argument("--out", default="videoseg_bench.json")
    p.add_argument("--work-dir", default=None)
    a = p.parse_args(argv)
    if a.child:
        cargs = json.loads(a.child_args)
        if cargs.get("cpus"):  # pin before any library starts its threads
            os.sched_setaffinity(0, cargs["cpus"])
        fn = {"ours": child_ours, "official": child_official, "export": child_export}[a.child]
        print(json.dumps(fn(cargs)))
        return 0
    res = bench(
        sizes="256,512" if a.micro and a.sizes == [256, 512] else a.sizes,
        frames=a.frames,
        micro=a.micro,
        arch=a.arch,
        threads=a.threads,
        profile_frames=a.profile_frames,
        prefetch=a.prefetch,
        cpu_sets=a.cpu_sets,
        ablation=a.ablation,
        repeats=a.repeats,
        out=a.out,
        work_dir=a.work_dir,
    )
    print(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
