"""``medtransfer bench`` for eeg: our preprocessing vs braindecode's TUH path (``TUHAbnormal`` +
``preprocess`` + fixed-length windows) on the same generated TUAB-layout set, and peak RSS of
preprocess + one pass over every window at 1x and 4x the dataset size.

Each measurement runs in a fresh Python process (so peak RSS is its own); timings exclude the
interpreter start and imports.  Run directly: ``python -m medtransfer.apps.eeg.bench``.
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

#: the paper recipe at full length: 60-360 s, 100 Hz, 60 s windows
BENCH_DATA = {"crop_start_s": 60.0, "crop_max_s": 300.0, "window_seconds": 60.0, "sfreq": 100.0}


def _rss_mib() -> dict[str, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0
    return {"peak_rss_mib": round(own, 1), "peak_rss_workers_mib": round(kids, 1)}


def _child_ours(root: Path, cache: Path, workers: int) -> dict[str, Any]:
    import numpy as np

    from medtransfer.apps.eeg.data import WindowDataset, build_cache, data_cfg
    from medtransfer.apps.eeg.io import warm_imports
    from medtransfer.shared.manifest import Record

    warm_imports()  # imports happen before timing, as for braindecode

    files = sorted(root.rglob("*.edf"))
    recs = [Record(path=f, label="abnormal" if "/abnormal/" in f.as_posix() else "normal", rel=str(f)) for f in files]
    cfg = data_cfg({**BENCH_DATA, "workers": workers})
    t = time.perf_counter()
    cached, errors = build_cache(recs, cfg, cache, workers=workers, progress=False)
    t_pre = time.perf_counter() - t
    ds = WindowDataset(cached)
    t = time.perf_counter()
    s = 0.0
    for i in range(len(ds)):
        x, _ = ds[i]
        s += float(np.abs(x).mean())
    t_iter = time.perf_counter() - t
    before = {f: f.stat().st_mtime_ns for f in cache.glob("*.npy")}
    t = time.perf_counter()
    build_cache(recs, cfg, cache, workers=workers, progress=False)
    t_again = time.perf_counter() - t
    rewritten = sum(1 for f, m in before.items() if not f.is_file() or f.stat().st_mtime_ns != m)
    return {
        "recordings": len(recs),
        "windows": len(ds),
        "errors": len(errors),
        "preprocess_s": round(t_pre, 3),
        "iterate_s": round(t_iter, 3),
        "cached_files": len(before),
        "cached_rerun_rewrote": rewritten,
        "cached_rerun_s": round(t_again, 3),
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


def bench(
    n_recordings: int = 16,
    workers: int = 2,
    braindecode: bool = True,
    scale: int = 4,
    workdir: str | None = None,
    duration_s: float = 400.0,
    **_: Any,
) -> dict[str, Any]:
    """Measure preprocessing speed against braindecode and peak RSS at 1x and ``scale``x.

    Args:
        n_recordings: recordings in the 1x set (400 s each, 250 Hz, 23 channels).
        workers: our preprocessing processes.
        braindecode: also run braindecode's TUH path.
        scale: the larger set's size factor (peak RSS should stay flat).
        duration_s: length of each generated recording.
        workdir: keep data here (default: a temporary folder, removed afterwards).

    Returns:
        JSON-serialisable numbers.
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
            }
        }
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
            if "peak_rss_mib" in bd1 and "peak_rss_mib" in bd_big:
                res["braindecode_peak_rss_growth"] = round(bd_big["peak_rss_mib"] / bd1["peak_rss_mib"], 2)
        if "peak_rss_mib" in ours1 and "peak_rss_mib" in ours_big:
            res["ours_peak_rss_growth"] = round(ours_big["peak_rss_mib"] / ours1["peak_rss_mib"], 2)
        res["notes"] = (
            "timings exclude process start and imports; peak RSS is the main process (workers "
            "reported separately); both pipelines end with every window read once"
        )
        return res
    finally:
        if not workdir:
            shutil.rmtree(tmp, ignore_errors=True)


def _main(argv: list[str]) -> None:
    if argv and argv[0] == "--child":
        kind = argv[1]
        if kind == "ours":
            out = _child_ours(Path(argv[2]), Path(argv[3]), int(argv[4]))
        else:
            out = _child_braindecode(Path(argv[2]))
        print(json.dumps(out))
        return
    n = int(argv[0]) if argv else 16
    print(json.dumps(bench(n_recordings=n), indent=2))


if __name__ == "__main__":
    _main(sys.argv[1:])
