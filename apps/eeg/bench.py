"""``medtransfer bench`` for eeg: our whole preprocessing (``data import tuab`` + ``eeg preprocess``)
vs braindecode's TUH path (``TUHAbnormal`` + ``preprocess`` + fixed-length windows) on the same
generated TUAB-layout set, peak RSS of preprocess + one pass over every window at 1x and Nx the
dataset size, and the predict cold start of an EEG bundle when one is given.

Each measurement runs in a fresh Python process (so peak RSS is its own); timings exclude the
interpreter start and imports.  Every result carries the load average (this machine is shared).
Run directly: ``python -m medtransfer.apps.eeg.bench [N_RECORDINGS] [--out bench.json]``.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from medtransfer.apps.eeg.io import PAPER_CHANNELS
from medtransfer.shared.bench import load_average

#: the paper recipe at full length: 60-360 s, 100 Hz, 60 s windows
BENCH_DATA = {"crop_start_s": 60.0, "crop_max_s": 300.0, "window_seconds": 60.0, "sfreq": 100.0}


def _rss_mib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"peak_rss_mib": round(own, 1), "peak_rss_workers_mib": round(kids, 1)}


def _child_ours(root: Path, cache: Path, workers: int) -> dict[str, Any]:
    """``data import tuab`` (header checks) then ``eeg preprocess`` (every split) on ``root``."""
    import numpy as np

    from medtransfer.apps.eeg.data import WindowDataset, data_cfg, import_tuab, load_split
    from medtransfer.apps.eeg.io import warm_imports

    warm_imports()  # imports happen before timing, as for braindecode

    cache.mkdir(parents=True, exist_ok=True)
    manifest = cache / "eeg.csv"
    cfg = data_cfg({**BENCH_DATA, "workers": workers, "cache_dir": str(cache / "windows")})
    t = time.perf_counter()
    import_tuab(root, manifest, **BENCH_DATA)
    t_import = time.perf_counter() - t
    splits = ["train", "val", "test"]
    t = time.perf_counter()
    got, errors = load_split(manifest, cfg, splits, workers=workers, progress=False)
    t_pre = time.perf_counter() - t
    cached = [r for s in splits for r in got[s]]
    ds = WindowDataset(cached)
    t = time.perf_counter()
    s = 0.0
    for i in range(len(ds)):
        x, _ = ds[i]
        s += float(np.abs(x).mean())
    t_iter = time.perf_counter() - t
    files = sorted((cache / "windows").rglob("*.npy"))
    before = {f: f.stat().st_mtime_ns for f in files}
    t = time.perf_counter()
    load_split(manifest, cfg, splits, workers=workers, progress=False)
    t_again = time.perf_counter() - t
    rewritten = sum(1 for f, m in before.items() if not f.is_file() or f.stat().st_mtime_ns != m)
    return {
        "recordings": len(cached) + len(errors),
        "windows": len(ds),
        "errors": len(errors),
        "workers": workers,
        "import_s": round(t_import, 3),
        "cache_s": round(t_pre, 3),
        "preprocess_s": round(t_import + t_pre, 3),  # the whole process: import + preprocess
        "iterate_s": round(t_iter, 3),
        "cached_files": len(before),
        "cached_rerun_rewrote": rewritten,
        "cached_rerun_s": round(t_again, 3),
        "load_avg": load_average(),
        **_rss_mib(),
    }


def _child_braindecode(root: Path) -> dict[str, Any]:
    import warnings

    import numpy as np

    warnings.filterwarnings("ignore")
    import mne

    mne.set_log_level("ERROR")
    from braindecode.datasets import TUHAbnormal
    from braindecode.preprocessing import Preprocessor, create_fixed_length_windows, preprocess

    from medtransfer.apps.eeg.io import warm_imports

    warm_imports()

    t = time.perf_counter()
    ds = TUHAbnormal(str(root), on_missing_files="warn", n_jobs=1, version="v3.0.1")
    chs = [f"{c}-REF" for c in PAPER_CHANNELS]
    start, stop = BENCH_DATA["crop_start_s"], BENCH_DATA["crop_start_s"] + BENCH_DATA["crop_max_s"]
    pre = [
        Preprocessor("pick_channels", ch_names=chs, ordered=True),
        Preprocessor("crop", tmin=start, tmax=stop, include_tmax=False),
        Preprocessor(lambda x: np.multiply(x, 1e6), apply_on_array=True),
        Preprocessor(lambda x: np.clip(x, -800, 800), apply_on_array=True),
        Preprocessor("resample", sfreq=BENCH_DATA["sfreq"]),
        Preprocessor("set_eeg_reference", ref_channels="average"),
    ]
    preprocess(ds, pre, n_jobs=1)
    n = int(BENCH_DATA["window_seconds"] * BENCH_DATA["sfreq"])
    win = create_fixed_length_windows(
        ds, window_size_samples=n, window_stride_samples=n, drop_last_window=True, preload=False
    )
    t_pre = time.perf_counter() - t
    t = time.perf_counter()
    s = 0.0
    for i in range(len(win)):
        x = win[i][0]
        s += float(np.abs(x).mean())
    t_iter = time.perf_counter() - t
    return {
        "recordings": len(ds.datasets),
        "windows": len(win),
        "preprocess_s": round(t_pre, 3),
        "iterate_s": round(t_iter, 3),
        "load_avg": load_average(),
        **_rss_mib(),
    }


def _run_child(*args: str, timeout: float = 900) -> dict[str, Any]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "medtransfer.apps.eeg.bench", "--child", *args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    line = next((ln for ln in reversed(r.stdout.splitlines()) if ln.startswith("{")), None)
    if r.returncode != 0 or line is None:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    return json.loads(line)


def make_bench_set(root: Path, n_recordings: int, copies: int = 1, duration_s: float = 400.0) -> Path:
    """A TUAB v3 tree with ``n_recordings`` recordings (x ``copies`` as renamed file copies)."""
    from medtransfer.apps.eeg.synthetic import make_tuab

    base = root / "base"
    if not (base / "v3.0.1").is_dir():
        per = max(1, n_recordings // 4)
        make_tuab(base, n_per_class=per, eval_per_class=max(1, (n_recordings - 2 * per) // 2), duration_s=duration_s)
    if copies == 1:
        return base
    dst = root / f"x{copies}"
    if not dst.is_dir():
        for f in sorted(base.rglob("*.edf")):
            for k in range(copies):
                rel = f.relative_to(base)
                g = dst / rel.parent / f"{chr(ord('a') + k)}{f.stem[1:]}{f.suffix}"
                g.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(f, g)
    return dst


def cold_start(bundle: str | Path, sample: str | Path, repeats: int = 5) -> dict[str, Any]:
    """``medtransfer predict BUNDLE SAMPLE`` in fresh processes, hyperfine-style: wall time (min,
    median) and the child's CPU time (user + sys, less sensitive to a busy machine), plus whether
    MNE / SciPy's signal package / torch were imported on that path.

    Args:
        bundle: an exported bundle folder.
        sample: one input file.
        repeats: runs (the first warms the file cache and is kept).

    Returns:
        JSON-serialisable numbers.
    """
    import statistics

    exe = Path(sys.executable).with_name("medtransfer")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "medtransfer.shared.cli.main"]
    walls, cpus = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t = time.perf_counter()
        r = subprocess.run([*cmd, "predict", str(bundle), str(sample)], capture_output=True, text=True)
        walls.append(time.perf_counter() - t)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1][:300]}
    probe = (
        "import runpy, sys; sys.argv = ['medtransfer', 'predict', sys.argv[1], sys.argv[2]]\n"
        "try:\n    runpy.run_module('medtransfer.shared.cli.main', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
        "print('MODULES', ' '.join(m for m in ('mne', 'scipy.signal', 'torch') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", probe, str(bundle), str(sample)], capture_output=True, text=True)
    line = next((ln for ln in r.stdout.splitlines() if ln.startswith("MODULES")), "MODULES")
    return {
        "wall_min_s": round(min(walls), 3),
        "wall_median_s": round(statistics.median(walls), 3),
        "cpu_min_s": round(min(cpus), 3),
        "runs_s": [round(w, 3) for w in walls],
        "heavy_modules_imported": line.split()[1:],
        "load_avg": load_average(),
    }


def bench(
    n_recordings: int = 16,
    workers: int = 2,
    braindecode: bool = True,
    scale: int = 4,
    workdir: str | None = None,
    duration_s: float = 400.0,
    out: str | None = None,
    bundle: str | None = None,
    sample: str | None = None,
    **_: Any,
) -> dict[str, Any]:
    """Measure the whole EEG preprocessing (import + preprocess) against braindecode's TUH path,
    peak RSS at 1x and ``scale``x, and (given ``bundle`` and ``sample``) the predict cold start.

    Args:
        n_recordings: recordings in the 1x set (``duration_s`` each, 250 Hz, 23 channels).
        workers: our preprocessing processes.
        braindecode: also run braindecode's TUH path.
        scale: the larger set's size factor (peak RSS should stay flat).
        workdir: keep data here (default: a temporary folder, removed afterwards).
        duration_s: length of each generated recording.
        out: also write the JSON here.
        bundle: an EEG bundle for the cold-start measurement.
        sample: an EDF for the cold-start measurement.

    Returns:
        JSON-serialisable numbers (also printed as a summary on stderr).
    """
    tmp = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="eeg_bench_"))
    try:
        t = time.perf_counter()
        one = make_bench_set(tmp, n_recordings, duration_s=duration_s)
        big = make_bench_set(tmp, n_recordings, copies=scale, duration_s=duration_s)
        gen_s = time.perf_counter() - t
        res: dict[str, Any] = {
            "dataset": {
                "recordings_1x": len(list(one.rglob("*.edf"))),
                "recordings_big": len(list(big.rglob("*.edf"))),
                "scale": scale,
                "recording_s": duration_s,
                "sfreq_in": 250,
                "channels_in": 23,
                "recipe": BENCH_DATA,
                "generate_s": round(gen_s, 1),
            },
            "load_avg_start": load_average(),
        }
        for d in ("cache1", "cache1w", "cache_big"):
            shutil.rmtree(tmp / d, ignore_errors=True)  # a kept workdir must not start warm
        ours1 = _run_child("ours", str(one), str(tmp / "cache1"), str(workers))
        ours_1w = _run_child("ours", str(one), str(tmp / "cache1w"), "1")
        ours_big = _run_child("ours", str(big), str(tmp / "cache_big"), str(workers))
        res["ours"] = {"1x": ours1, "1x_one_process": ours_1w, f"{scale}x": ours_big}
        if braindecode:
            bd1 = _run_child("braindecode", str(one))
            bd_big = _run_child("braindecode", str(big))
            res["braindecode"] = {"1x": bd1, f"{scale}x": bd_big}
            if "preprocess_s" in bd1 and "preprocess_s" in ours1:
                res["speedup_vs_braindecode"] = round(bd1["preprocess_s"] / max(ours1["preprocess_s"], 1e-9), 2)
                res["speedup_vs_braindecode_one_process"] = round(
                    bd1["preprocess_s"] / max(ours_1w.get("preprocess_s", float("inf")), 1e-9), 2
                )
                res["recordings_per_s"] = {
                    "ours": round(ours1["recordings"] / ours1["preprocess_s"], 2),
                    "ours_one_process": round(ours_1w["recordings"] / ours_1w["preprocess_s"], 2),
                    "braindecode": round(bd1["recordings"] / bd1["preprocess_s"], 2),
                }
            if "preprocess_s" in bd_big and "preprocess_s" in ours_big:
                res[f"speedup_vs_braindecode_{scale}x"] = round(
                    bd_big["preprocess_s"] / max(ours_big["preprocess_s"], 1e-9), 2
                )
            if "peak_rss_mib" in bd1 and "peak_rss_mib" in bd_big:
                res["braindecode_peak_rss_growth"] = round(bd_big["peak_rss_mib"] / bd1["peak_rss_mib"], 2)
        if "peak_rss_mib" in ours1 and "peak_rss_mib" in ours_big:
            res["ours_peak_rss_growth"] = round(ours_big["peak_rss_mib"] / ours1["peak_rss_mib"], 2)
        if bundle and sample:
            res["predict_cold_start"] = cold_start(bundle, sample)
        res["load_avg_end"] = load_average()
        res["notes"] = (
            "ours = data import tuab (header checks) + eeg preprocess (window cache); braindecode = "
            "TUHAbnormal + preprocess + create_fixed_length_windows; timings exclude process start and "
            "imports; peak RSS is the main process (workers reported separately); both pipelines end "
            "with every window read once"
        )
        _summary(res, scale)
        if out:
            Path(out).write_text(json.dumps(res, indent=2), encoding="utf-8")
        return res
    finally:
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)


def _summary(res: dict[str, Any], scale: int) -> None:
    """Both sides, the ratio, RSS and the load average, as a few lines on stderr."""
    o, bd = res.get("ours", {}), res.get("braindecode", {})
    lines = [f"eeg bench (load average {res.get('load_avg_start')} -> {res.get('load_avg_end')})"]
    for name, r in (
        ("ours, workers", o.get("1x", {})),
        ("ours, 1 process", o.get("1x_one_process", {})),
        (f"ours {scale}x", o.get(f"{scale}x", {})),
        ("braindecode", bd.get("1x", {})),
        (f"braindecode {scale}x", bd.get(f"{scale}x", {})),
    ):
        if r:
            lines.append(
                f"  {name:<18} {r.get('preprocess_s', r.get('error', '?'))!s:>8} s  "
                f"{r.get('recordings', '?')} recordings  peak RSS {r.get('peak_rss_mib', '?')} MiB"
                f" (+workers {r.get('peak_rss_workers_mib', '?')} MiB)"
            )
    for k in ("speedup_vs_braindecode", "speedup_vs_braindecode_one_process", f"speedup_vs_braindecode_{scale}x"):
        if k in res:
            lines.append(f"  {k}: {res[k]}x")
    if "predict_cold_start" in res:
        lines.append(f"  predict cold start: {res['predict_cold_start']}")
    print("\n".join(lines), file=sys.stderr)


def _main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        kind = argv[1]
        if kind == "ours":
            res = _child_ours(Path(argv[2]), Path(argv[3]), int(argv[4]))
        else:
            res = _child_braindecode(Path(argv[2]))
        print(json.dumps(res))
        return
    import argparse

    from medtransfer.shared.utils.cliargs import at_least, positive_float

    ap = argparse.ArgumentParser(prog="python -m medtransfer.apps.eeg.bench")
    ap.add_argument("n_recordings", nargs="?", type=at_least(4), default=16)
    ap.add_argument("--workers", type=at_least(1), default=2)
    ap.add_argument("--scale", type=at_least(1), default=4)
    ap.add_argument("--duration", type=positive_float, default=400.0)
    ap.add_argument("--no-braindecode", action="store_true")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--bundle", default=None, help="EEG bundle for the predict cold start")
    ap.add_argument("--sample", default=None, help="EDF for the predict cold start")
    a = ap.parse_args(argv)
    res = bench(
        n_recordings=a.n_recordings,
        workers=a.workers,
        braindecode=not a.no_braindecode,
        scale=a.scale,
        workdir=a.workdir,
        duration_s=a.duration,
        out=a.out,
        bundle=a.bundle,
        sample=a.sample,
    )
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    _main(sys.argv[1:])
