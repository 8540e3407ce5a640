"""Importers (TUAB v2/v3, NMT, generic EDF/BDF/EEGLAB/BrainVision manifests, Bonn), the import
report, and the memory-mapped window cache built in parallel.  Torch-free.

Importers follow the core contract ``func(root, out_csv, **opts) -> Path``: they write the generic
manifest (``path,label,split,group`` + extra columns) with the recordings that pass the header
checks, and ``<out_csv stem>_report.csv`` listing every file found with ``status`` and
``reason`` (e.g. ``missing required channel(s): A1, A2``).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from medtransfer.apps.eeg.io import (
    DATA_DEFAULTS,
    SUFFIXES,
    header_info,
    not_a_file,
    pp_config,
    pp_hash,
    preprocess_recording,
    window_samples,
)
from medtransfer.shared.manifest import Record, assign_splits, csv_relative, read_manifest, write_manifest
from medtransfer.shared.utils.errors import ConfigError, InputError

LABELS = ("normal", "abnormal")
REPORT_COLS = [
    "path",
    "label",
    "split",
    "status",
    "reason",
    "sfreq",
    "duration_s",
    "n_windows",
    "channels_mapped",
    "channels_missing",
    "mapping",
]


def data_cfg(opts: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``data`` config: defaults updated by the given keys (unknown keys refused)."""
    cfg = dict(DATA_DEFAULTS)
    for k, v in (opts or {}).items():
        if v is None:
            continue
        if k not in cfg:
            raise InputError("config", f"unknown data option '{k}' (allowed: {', '.join(sorted(cfg))})")
        cfg[k] = v
    if isinstance(cfg["channels"], str):
        cfg["channels"] = [c.strip() for c in cfg["channels"].split(",") if c.strip()]
    return cfg


# ---------------------------------------------------------------------------------------------
# import report
# ---------------------------------------------------------------------------------------------


def _check_records(
    records: list[Record], cfg: Mapping[str, Any], check: bool, out_csv: Path | None = None
) -> tuple[list[Record], list[dict]]:
    """Header-check each record; return the kept ones and one report row per record (paths
    relative to ``out_csv``'s folder when given)."""
    kept, report = [], []
    for r in records:
        row = {
            "path": csv_relative(r.path, out_csv) if out_csv is not None else (r.rel or str(r.path)),
            "label": r.label,
            "split": r.split,
        }
        if r.label and r.label not in LABELS:
            row.update(status="skipped", reason=f"label '{r.label}' is not normal/abnormal")
            report.append(row)
            continue
        if not check:
            row.update(status="ok", reason="")
            kept.append(r)
            report.append(row)
            continue
        info = header_info(r.path, cfg)
        row.update(
            status="ok" if info["ok"] else "skipped",
            reason=info["reason"],
            sfreq=info["sfreq"],
            duration_s=info["duration_s"],
            n_windows=info["n_windows"],
            channels_mapped=len(info["mapped"]),
            channels_missing=" ".join(info["missing"]),
            mapping=json.dumps(info["mapped"]),
        )
        report.append(row)
        if info["ok"]:
            kept.append(r)
    return kept, report


def write_report(rows: list[dict], path: Path) -> Path:
    """Write the import report CSV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=REPORT_COLS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in REPORT_COLS})
    return path


def report_path(out_csv: Path) -> Path:
    """Where an importer writes its report."""
    return Path(out_csv).with_name(Path(out_csv).stem + "_report.csv")


def _finish(records: list[Record], out_csv: Path, opts: Mapping[str, Any], check: bool = True) -> Path:
    unknown = sorted(k for k in opts if k not in DATA_DEFAULTS)
    if unknown:  # --opt window_second=8 was dropped silently (then every recording was too short)
        raise ConfigError(f"--opt {unknown[0]}: not an EEG data setting (settings: {', '.join(sorted(DATA_DEFAULTS))})")
    cfg = data_cfg(dict(opts))
    kept, rows = _check_records(records, cfg, check, Path(out_csv))
    # validation comes from training recordings only; eval/test stays untouched
    from_train = [r for r in kept if r.split == "train"]
    for r in from_train:
        r.split = ""
    assign_splits(from_train, val_fraction=float(cfg["val_fraction"]), test_fraction=0.0, seed=int(cfg["split_seed"]))
    assign_splits(
        kept,
        val_fraction=float(cfg["val_fraction"]),
        test_fraction=float(cfg["test_fraction"]),
        seed=int(cfg["split_seed"]),
    )
    by_path = {csv_relative(r.path, out_csv): r.split for r in kept}
    for row in rows:
        if row["path"] in by_path:
            row["split"] = by_path[row["path"]]
    # paths relative to the CSV's folder as the files were found (symlinks kept, not resolved),
    # whatever the working directory and however root / out_csv were given
    write_manifest(
        [
            {"path": csv_relative(r.path, out_csv), "label": r.label, "split": r.split, "group": r.group, **r.extra}
            for r in kept
        ],
        out_csv,
    )
    write_report(rows, report_path(out_csv))
    n_skip = sum(1 for r in rows if r["status"] != "ok")
    print(
        f"eeg import: {len(kept)} recordings kept, {n_skip} skipped -> {out_csv} (report: {report_path(out_csv).name})",
        file=sys.stderr,
    )
    return Path(out_csv)


# ---------------------------------------------------------------------------------------------
# importers
# ---------------------------------------------------------------------------------------------
def import_tuab(root: str | Path, out_csv: str | Path, check: bool = True, **opts: Any) -> Path:
    """TUAB (v2.0.x or v3.0.x): ``edf/{train,eval}/{normal,abnormal}/01_tcp_ar/.../*.edf``.

    ``eval`` becomes ``test``; validation recordings are drawn from ``train`` by subject.

    Args:
        root: any folder above ``edf/`` (e.g. the one holding ``v3.0.1``).
        out_csv: manifest to write.
        check: read headers and skip recordings failing the recipe (with reasons in the report).
        **opts: ``data`` config keys (channels, sfreq, window_seconds, crop_start_s ...).

    Returns:
        The manifest path.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "TUAB root folder not found")
    recs = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() != ".edf" or not p.is_file():
            continue
        parts = [q.lower() for q in p.relative_to(root).parts]
        if "edf" not in parts:
            continue
        tail = parts[parts.index("edf") + 1 :]
        split = "train" if "train" in tail else "test" if ("eval" in tail or "dev" in tail) else ""
        label = "abnormal" if "abnormal" in tail else "normal" if "normal" in tail else ""
        if not label:
            continue
        m = re.match(r"([a-z0-9]+)_s(\d+)_t(\d+)", p.stem, flags=re.IGNORECASE)
        group = m.group(1) if m else p.stem
        recs.append(
            Record(
                path=p.absolute(),
                label=label,
                split=split,
                group=group,
                extra={"dataset": "tuab", "session": f"s{m.group(2)}" if m else ""},
            )
        )
    if not recs:
        raise InputError(root, "no TUAB recordings found (expected edf/{train,eval}/{normal,abnormal}/01_tcp_ar/...)")
    return _finish(recs, Path(out_csv), opts, check)


def import_nmt(root: str | Path, out_csv: str | Path, check: bool = True, **opts: Any) -> Path:
    """NMT release: ``{normal,abnormal}/{train,eval}/NNNNNNN.edf`` and ``Labels.csv``
    (``recordname,label,age,gender,loc``).

    The label comes from ``Labels.csv``; a disagreement with the folder is reported and the
    recording skipped.  ``eval`` becomes ``test``.

    Args:
        root: the ``nmt_scalp_eeg_dataset`` folder.
        out_csv: manifest to write.
        check: header checks (see :func:`import_tuab`).
        **opts: ``data`` config keys.

    Returns:
        The manifest path.
    """
    root = Path(root)
    labels_csv = root / "Labels.csv"
    if not labels_csv.is_file():
        raise InputError(root, "not an NMT release folder (Labels.csv missing)")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        rd = csv.DictReader(f)
        need = {"recordname", "label"}
        if not need <= set(rd.fieldnames or []):
            raise InputError(labels_csv, f"needs columns recordname,label (found {', '.join(rd.fieldnames or [])})")
        table = {row["recordname"].strip().lower(): row for row in rd}  # 0000001.EDF is 0000001.edf
    recs, bad = [], []
    found = sorted(p for p in root.rglob("*") if p.suffix.lower() == ".edf" and p.is_file())  # .EDF too
    for p in found:
        parts = [q.lower() for q in p.relative_to(root).parts[:-1]]
        folder_label = "abnormal" if "abnormal" in parts else "normal" if "normal" in parts else ""
        split = "test" if "eval" in parts else "train" if "train" in parts else ""
        row = table.get(p.name.lower())
        if row is None:
            bad.append(
                {
                    "path": csv_relative(p, out_csv),
                    "label": folder_label,
                    "split": split,
                    "status": "skipped",
                    "reason": "not listed in Labels.csv",
                }
            )
            continue
        label = row["label"].strip().lower()
        if folder_label and label != folder_label:
            bad.append(
                {
                    "path": csv_relative(p, out_csv),
                    "label": label,
                    "split": split,
                    "status": "skipped",
                    "reason": f"Labels.csv says {label}, folder says {folder_label}",
                }
            )
            continue
        recs.append(
            Record(
                path=p.absolute(),
                label=label,
                split=split,
                group=p.stem,
                extra={
                    "dataset": "nmt",
                    "age": row.get("age", ""),
                    "gender": row.get("gender", ""),
                    "loc": row.get("loc", ""),
                },
            )
        )
    if not recs and not bad:
        raise InputError(root, "no NMT recordings found (expected {normal,abnormal}/{train,eval}/*.edf)")
    on_disk = {p.name.lower() for p in found}
    for name in sorted(set(table) - on_disk):  # listed, but no file: said in the report, not dropped silently
        bad.append(
            {
                "path": name,
                "label": table[name]["label"].strip().lower(),
                "split": "",
                "status": "skipped",
                "reason": "listed in Labels.csv, no such file under the release folder",
            }
        )
    out = _finish(recs, Path(out_csv), opts, check)
    if bad:
        rp = report_path(Path(out_csv))
        with open(rp, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        write_report(rows + bad, rp)
    return out


def import_generic(root: str | Path, out_csv: str | Path, check: bool = True, **opts: Any) -> Path:
    """A manifest CSV (``path,label[,split,group]``) or a folder of EDF/BDF/.set/.vhdr files under a
    ``normal`` or ``abnormal`` folder.  A folder gives each file its own group (a folder layout does
    not say which recordings are one patient's: ``01_tcp_ar/`` is a montage, ``patient3/`` a patient);
    give a manifest with a ``group`` column when patients have several recordings.

    Args:
        root: CSV manifest or folder.
        out_csv: manifest to write (checked rows only).
        check: header checks (see :func:`import_tuab`).
        **opts: ``data`` config keys.

    Returns:
        The manifest path.
    """
    root = Path(root)
    if root.is_file():
        recs = read_manifest(root)
        for r in recs:
            r.label = r.label.lower()
    elif root.is_dir():
        recs = []
        for p in sorted(root.rglob("*")):
            if p.suffix.lower() in SUFFIXES and p.is_file():
                lab = next((q.lower() for q in reversed(p.relative_to(root).parts[:-1]) if q.lower() in LABELS), "")
                recs.append(Record(path=p.absolute(), label=lab, group=p.stem))
    else:
        raise InputError(root, "neither a manifest CSV nor a folder")
    if not recs:
        raise InputError(root, f"no recordings found ({', '.join(SUFFIXES)})")
    return _finish(recs, Path(out_csv), opts, check)


#: the Bonn recipe: one channel, 20 s windows, no start crop, no CAR
BONN_DATA = {
    "channels": ["CH1"],
    "window_seconds": 20.0,
    "crop_start_s": 0.0,
    "crop_max_s": 0.0,
    "car": False,
    "clip_uv": 0.0,
    "val_fraction": 0.15,
    "test_fraction": 0.3,
}


def import_bonn(root: str | Path, out_csv: str | Path, limit_per_set: int | None = None, **opts: Any) -> Path:
    """Write the Bonn segments (``bonn_dev_int16.npz``) as EDF beside the manifest and import
    them through the generic path (Z,O normal; N,F,S abnormal; 30% test).

    Args:
        root: the ``bonn`` folder (or the npz itself).
        out_csv: manifest to write; EDFs go to ``<out_csv folder>/bonn_edf/``.
        limit_per_set: first N segments per set only.
        **opts: ``data`` config keys overriding :data:`BONN_DATA`.

    Returns:
        The manifest path.
    """
    from medtransfer.apps.eeg.synthetic import write_bonn_edfs

    root = Path(root)
    npz = root if root.suffix == ".npz" else root / "bonn_dev_int16.npz"
    out_csv = Path(out_csv)
    # absolute EDF paths: write_manifest only relativises absolute paths, so a relative --out
    # (e.g. bonn/bonn.csv) would otherwise be resolved twice against the manifest folder
    rows = write_bonn_edfs(npz, out_csv.absolute().parent / "bonn_edf", limit_per_set=limit_per_set)
    raw_csv = out_csv.with_name(out_csv.stem + "_all.csv")
    write_manifest(rows, raw_csv)
    return import_generic(raw_csv, out_csv, **{**BONN_DATA, **opts})


# ---------------------------------------------------------------------------------------------
# window cache
# ---------------------------------------------------------------------------------------------
@dataclass
class CachedRecording:
    """One preprocessed recording in the cache."""

    case_id: str
    label: str
    split: str
    file: Path
    n_windows: int


def _rec_key(path: Path) -> str:
    import hashlib

    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:20]


def _work(args: tuple[str, str, dict], data: bytes | None = None) -> dict[str, Any]:
    """Preprocess one recording into ``out`` (atomic write); returns a small dict.

    Args:
        args: (source path, output ``.npy`` path, preprocessing config).
        data: the source's bytes when already read (prefetched).
    """
    src, out, pp = args
    try:
        win, info = preprocess_recording(src, pp, data=data)
    except InputError as e:
        return {"ok": False, "reason": e.problem}
    tmp = out + f".{os.getpid()}.tmp.npy"
    np.save(tmp, win)
    os.replace(tmp, out)
    return {"ok": True, "n_windows": int(win.shape[0]), "filled": info["filled"]}


def _one_blas_thread() -> Any:
    """BLAS on one thread while building the cache: parallelism comes from the workers, and a
    threaded BLAS on a busy machine slows the resampling's small matrix products down."""
    import contextlib

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def _chunk_init() -> None:
    """Worker start: the readers imported once (nothing else to keep between chunks)."""
    from medtransfer.apps.eeg.io import warm_imports

    warm_imports()


def _cached_file_fits(path: Path, ent: Mapping[str, Any], pp: Mapping[str, Any]) -> bool:
    """Whether a cached ``.npy`` is what its index entry says (float32, ``n_windows`` x channels x
    window samples), read from its header only.  A file edited, truncated or swapped by hand is
    then made again: before, it was reused and training failed on an index past its windows."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return False
    want = (int(ent.get("n_windows", -1)), len(pp["channels"]), window_samples(pp))
    return arr.dtype == np.float32 and tuple(arr.shape) == want


def _work_many(state_or_jobs: Any, jobs: Any = None, advance: Any = None) -> list[dict[str, Any]]:
    """Preprocess recordings in order, reading the next file on a thread while this one is computed
    (I/O overlaps compute; at most two recordings in memory).

    Called as ``_work_many(jobs, advance=...)`` in this process, or as ``fn(state, jobs)`` by
    ``shared.runtime.engines.run_map`` in a worker.

    Args:
        state_or_jobs: the jobs (``_work`` arguments), or the worker state when ``jobs`` is given.
        jobs: the jobs when called by the engine.
        advance: called after each recording (progress), or None.

    Returns:
        One result per job, in order.
    """
    if jobs is None:
        jobs = state_or_jobs
    from concurrent.futures import ThreadPoolExecutor

    from medtransfer.apps.eeg.io import read_edf_bytes

    def fetch(src: str) -> bytes | None:
        return read_edf_bytes(src) if src.lower().endswith(".edf") else None

    out: list[dict[str, Any]] = []
    with _one_blas_thread(), ThreadPoolExecutor(max_workers=1) as pool:
        nxt = pool.submit(fetch, jobs[0][0]) if jobs else None
        for i, job in enumerate(jobs):
            assert nxt is not None
            data = nxt.result()
            nxt = pool.submit(fetch, jobs[i + 1][0]) if i + 1 < len(jobs) else None
            out.append(_work(job, data))
            del data
            if advance is not None:
                advance()
    return out


def cache_root(cfg: Mapping[str, Any], manifest: Path | None = None) -> Path:
    """The cache folder for a preprocessing config (``<cache_dir>/<config hash>``)."""
    base = (
        Path(cfg.get("cache_dir") or "")
        if cfg.get("cache_dir")
        else ((manifest.resolve().parent if manifest else Path.cwd()) / ".eeg_cache")
    )
    return base / pp_hash(cfg)


def _read_index(path: Path) -> dict[str, Any]:
    """A cache index (recording key -> entry); ``{}`` when missing or unreadable (an interrupted or
    edited index only costs recomputing its recordings)."""
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(index, dict):
        return {}
    return {k: v for k, v in index.items() if isinstance(v, dict)}


def build_cache(
    records: Sequence[Record],
    cfg: Mapping[str, Any],
    root: Path,
    workers: int | None = None,
    progress: bool = True,
    engine: str | None = None,
) -> tuple[list[CachedRecording], list[dict[str, Any]]]:
    """Preprocess recordings into ``root`` (one float32 ``.npy`` per recording), in parallel,
    skipping those already cached.  Each recording is read once (the next one prefetched on a
    thread while this one is computed).

    Args:
        records: manifest records.
        cfg: ``data`` config.
        root: cache folder (from :func:`cache_root`).
        workers: processes / Ray actors (default ``cfg["workers"]``; 1 = in this process).
        progress: show a rich progress bar.
        engine: ``local`` or ``ray`` (default ``cfg["engine"]``), through ``shared.runtime.engines``.

    Returns:
        (cached recordings in record order, error rows ``{path, reason}`` for refused ones).
    """
    pp = pp_config(cfg)
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(pp, indent=1), encoding="utf-8")
    index_path = root / "index.json"
    index = _read_index(index_path)
    todo, keys = [], []
    for r in records:
        if not r.path.is_file():
            keys.append(None)
            continue
        k = _rec_key(r.path)
        keys.append(k)
        ent = index.get(k)
        if ent is None or (ent.get("ok") and not _cached_file_fits(root / f"{k}.npy", ent, pp)):
            todo.append((k, str(r.path)))
    todo = list(dict(todo).items())
    n_workers = int(workers if workers is not None else cfg.get("workers", 1) or 1)
    engine = str(engine or cfg.get("engine") or "local")
    if todo:
        jobs = [(src, str(root / f"{k}.npy"), pp) for k, src in todo]
        results: dict[str, dict] = {}
        if engine == "local" and (n_workers <= 1 or len(jobs) == 1):
            with _progress(progress, len(jobs), "preprocessing EEG") as advance:
                for (k, _), res in zip(todo, _work_many(jobs, advance=advance)):
                    results[k] = res
        else:
            from medtransfer.shared.runtime.engines import run_map

            # chunks of a few recordings: each worker prefetches the next file of its chunk
            size = max(1, min(8, len(jobs) // (4 * max(1, n_workers))))
            chunks = [list(range(i, min(i + size, len(jobs)))) for i in range(0, len(jobs), size)]
            run = run_map(  # workers start here, before the progress bar's thread (fork stays safe)
                _chunk_init,
                _work_many,
                [[jobs[i] for i in ch] for ch in chunks],
                engine=engine,
                workers=n_workers,
                chunksize=1,
                preload=("medtransfer.apps.eeg.data",),
            )
            with _progress(progress, len(jobs), f"preprocessing EEG ({engine}, {n_workers} workers)") as advance:
                for idx, res in run:
                    for n, i in enumerate(chunks[idx]):
                        if isinstance(res, BaseException):  # a worker died: the chunk's recordings get error rows
                            results[todo[i][0]] = {"ok": False, "reason": f"worker failed ({type(res).__name__})"}
                        else:
                            results[todo[i][0]] = res[n]
                        advance()
        # another job on this cache (two trainings of one config) may have written the index
        # meanwhile: merge under the index lock, so that neither job's entries are lost
        from medtransfer.shared.utils.locks import waiting

        with waiting(root / ".index.lock"):
            index = _read_index(index_path)
            index.update(results)
            tmp = index_path.with_name(f".index.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(index), encoding="utf-8")
            os.replace(tmp, index_path)
    cached, errors = [], []
    for r, k in zip(records, keys):
        if k is None:
            errors.append({"path": r.case_id, "reason": not_a_file(r.path)})
            continue
        ent = index[k]
        if not ent.get("ok"):
            errors.append({"path": r.case_id, "reason": ent.get("reason", "failed")})
            continue
        cached.append(CachedRecording(r.case_id, r.label, r.split, root / f"{k}.npy", int(ent["n_windows"])))
    return cached, errors


class _progress:
    """A rich progress bar as a context manager yielding ``advance()`` (silent when disabled)."""

    def __init__(self, show: bool, total: int, text: str) -> None:
        self.show, self.total, self.text = show, total, text
        self.bar: Any = None

    def __enter__(self):
        if self.show:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self.bar.start()
            tid = self.bar.add_task(self.text, total=self.total)
            return lambda: self.bar.advance(tid)
        return lambda: None

    def __exit__(self, *exc: Any) -> None:
        if self.bar is not None:
            self.bar.stop()


class WindowDataset:
    """Windows of cached recordings, read through memory maps one window at a time (flat memory).

    Items are ``(x float32 (C, T), y int64)``; ``index[i] = (recording idx, start sample)``.

    Args:
        recordings: cached recordings.
        max_windows_per_recording: keep at most this many windows per recording (0 = all).
        stride: samples between window starts (0 = the window length: the cached, non-overlapping
            windows).  A smaller stride gives overlapping windows cut from the same contiguous
            signal (the cached windows are consecutive); used for training windows only.
    """

    def __init__(
        self, recordings: Sequence[CachedRecording], max_windows_per_recording: int = 0, stride: int = 0
    ) -> None:
        self.recordings = list(recordings)
        self.index: list[tuple[int, int]] = []
        self.win = int(self.shape[1]) if self.recordings else 0
        self.stride = int(stride) if stride and 0 < int(stride) < self.win else self.win
        for i, r in enumerate(self.recordings):
            starts = list(range(0, (r.n_windows - 1) * self.win + 1, self.stride)) if self.win else []
            if max_windows_per_recording:
                starts = starts[:max_windows_per_recording]
            self.index += [(i, st) for st in starts]
        self.targets = np.array(
            [
                LABELS.index(self.recordings[i].label) if self.recordings[i].label in LABELS else -1
                for i, _ in self.index
            ],
            dtype=np.int64,
        )
        self._open: tuple[int, Any] | None = None

    def __len__(self) -> int:
        return len(self.index)

    def _mm(self, i: int) -> np.ndarray:
        if self._open is None or self._open[0] != i:
            self._open = (i, np.load(self.recordings[i].file, mmap_mode="r"))
        return self._open[1]

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.int64]:
        i, st = self.index[k]
        w, off = divmod(st, self.win)
        mm = self._mm(i)
        if off == 0:
            return np.array(mm[w], dtype=np.float32), self.targets[k]
        x = np.concatenate([mm[w][:, off:], mm[w + 1][:, :off]], axis=1)
        return np.asarray(x, dtype=np.float32), self.targets[k]

    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_open"] = None
        return d

    @property
    def shape(self) -> tuple[int, int]:
        """(channels, samples) of one window."""
        return tuple(np.load(self.recordings[0].file, mmap_mode="r").shape[1:])  # type: ignore[return-value]

    def recording_ids(self) -> np.ndarray:
        """Recording index of every window."""
        return np.array([i for i, _ in self.index], dtype=np.int64)


def aggregate(window_probs: np.ndarray, rec_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean window probability per recording.

    Returns:
        (recording ids in ascending order, mean probability per recording).
    """
    ids = np.unique(rec_ids)
    return ids, np.array([float(window_probs[rec_ids == i].mean()) for i in ids])


def recording_metrics(y_true: np.ndarray, prob: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Balanced accuracy, AUROC, accuracy, sensitivity, specificity at the recording level."""
    y = np.asarray(y_true).astype(int)
    pred = (np.asarray(prob) >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    sens = tp / max(1, int((y == 1).sum()))
    spec = tn / max(1, int((y == 0).sum()))
    out = {
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "accuracy": float((pred == y).mean()) if len(y) else float("nan"),
        "n_recordings": int(len(y)),
    }
    out["auroc"] = _auroc(y, np.asarray(prob, dtype=float))
    return out


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """Mann-Whitney AUROC (ties count half); NaN with a single class."""
    pos, neg = s[y == 1], s[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def load_split(
    manifest: Path,
    cfg: Mapping[str, Any],
    splits: Iterable[str],
    workers: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, list[CachedRecording]], list[dict]]:
    """Read a manifest, assign missing splits, build / reuse the cache and return recordings per split."""
    recs = [r for r in read_manifest(manifest, require_label=True)]
    for r in recs:
        r.label = r.label.lower()
        if r.label not in LABELS:
            raise InputError(manifest, f"label '{r.label}' of {r.case_id} is not normal/abnormal")
    assign_splits(
        recs,
        val_fraction=float(cfg["val_fraction"]),
        test_fraction=float(cfg["test_fraction"]),
        seed=int(cfg["split_seed"]),
    )
    want = set(splits)
    recs = [r for r in recs if r.split in want]
    cached, errors = build_cache(recs, cfg, cache_root(cfg, manifest), workers=workers, progress=progress)
    out: dict[str, list[CachedRecording]] = {s: [] for s in splits}
    for c in cached:
        out[c.split].append(c)
    return out, errors
