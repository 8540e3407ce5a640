"""Resumable batch scoring: one CSV row per case, appended as soon as it is done.

- Every row is written with one ``write`` + ``flush`` + ``fsync``; on ``--resume`` a torn last
  line (the job was SIGKILLed mid-write) is cut off and every case already in the file is
  skipped, so a killed-and-restarted job scores each case exactly once.
- A bad case becomes an error row (``status=error``, one-line ``error``); the job goes on.
- Every row carries provenance: bundle name, version, sha256.
- ``engine="local"`` uses ``workers`` processes (each with its own ONNX Runtime session);
  ``engine="ray"`` uses a Ray Data actor pool (local Ray, or the cluster in ``RAY_ADDRESS``).
Torch-free.
"""
from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from medtransfer.shared.runtime.bundle import Bundle, load_bundle
from medtransfer.shared.runtime.predictor import build_predictor
from medtransfer.shared.utils.errors import InputError, MedTransferError

BASE_COLUMNS = ["case", "status", "error", "result", "bundle_name", "bundle_version", "bundle_sha256", "seconds"]


@dataclass
class Case:
    """One case to score: an id (as written in the manifest / relative path), a path, extras."""

    case_id: str
    path: str
    extra: dict[str, str]


def cases_from_manifest(csv_path: str | Path) -> list[Case]:
    """Cases from a generic manifest (labels are ignored)."""
    from medtransfer.shared.manifest import read_manifest

    return [Case(r.case_id, str(r.path), dict(r.extra)) for r in read_manifest(csv_path)]


def cases_from_dir(folder: str | Path, bundle: Bundle) -> list[Case]:
    """Cases from a folder, filtered by the predictor's accepted suffixes."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "input folder not found")
    pred = build_predictor(bundle)
    return [Case(p.relative_to(folder).as_posix(), str(p), {}) for p in pred.list_inputs(folder)]


def _one_line(e: BaseException) -> str:
    msg = str(e) if isinstance(e, MedTransferError) else f"{type(e).__name__}: {e}"
    return " ".join(msg.split())[:500]


class CaseScorer:
    """Scores cases with one predictor (one per process / actor)."""

    def __init__(self, bundle_dir: str, options: dict[str, Any] | None = None, threads: int = 0) -> None:
        self.bundle = load_bundle(bundle_dir, threads=threads)
        self.predictor = build_predictor(self.bundle, **(options or {}))
        self.prov = self.bundle.provenance()

    def __call__(self, case: Case) -> dict[str, Any]:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"case": case.case_id, **self.prov}
        try:
            res = self.predictor.predict(Path(case.path), **case.extra)
            row.update(status="ok", error="", result=json.dumps(res, sort_keys=True, default=_jsonable))
        except Exception as e:  # noqa: BLE001 - every failure is a row, never a crash
            row.update(status="error", error=_one_line(e), result="")
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def read_done(out_csv: Path) -> set[str]:
    """Cases already in a results file; cuts off a torn last line first."""
    if not out_csv.is_file() or out_csv.stat().st_size == 0:
        return set()
    with open(out_csv, "rb+") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            f.truncate(cut)
            data = data[:cut]
    done = set()
    reader = csv.DictReader(io.StringIO(data.decode("utf-8")))
    for row in reader:
        if row.get("case"):
            done.add(row["case"])
    return done


class RowWriter:
    """Appends rows durably (one write + fsync per row)."""

    def __init__(self, out_csv: Path, fresh: bool) -> None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        new = fresh or not out_csv.is_file() or out_csv.stat().st_size == 0
        self.f = open(out_csv, "w" if new else "a", newline="", encoding="utf-8")
        if new:
            self._write(BASE_COLUMNS)

    def _write(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(values)
        self.f.write(buf.getvalue())
        self.f.flush()
        os.fsync(self.f.fileno())

    def write(self, row: dict[str, Any]) -> None:
        self._write([row.get(c, "") for c in BASE_COLUMNS])

    def close(self) -> None:
        self.f.close()


def _local_results(bundle_dir: str, todo: list[Case], workers: int, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if workers <= 1:
        scorer = CaseScorer(bundle_dir, options)
        for c in todo:
            yield scorer(c)
        return
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_init_worker, initargs=(bundle_dir, options)) as pool:
        yield from pool.imap_unordered(_work, todo, chunksize=1)


_WORKER: CaseScorer | None = None


def _init_worker(bundle_dir: str, options: dict[str, Any]) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    _WORKER = CaseScorer(bundle_dir, options, threads=1)


def _work(case: Case) -> dict[str, Any]:
    assert _WORKER is not None
    return _WORKER(case)


def _ray_results(bundle_dir: str, todo: list[Case], workers: int, options: dict[str, Any]) -> Iterator[dict[str, Any]]:
    try:
        import ray
    except ImportError:
        raise MedTransferError("--engine ray needs Ray: pip install 'medtransfer[distributed]'") from None
    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or None, include_dashboard=False,
                 log_to_driver=False, configure_logging=False, num_cpus=None if os.environ.get("RAY_ADDRESS") else max(workers, 1))
    import ray.data

    class _Actor:
        def __init__(self) -> None:
            self.scorer = CaseScorer(bundle_dir, options, threads=1)

        def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
            rows = [self.scorer(Case(cid, p, json.loads(ex))) for cid, p, ex in
                    zip(batch["case_id"], batch["path"], batch["extra"])]
            return {c: [r.get(c, "") for r in rows] for c in BASE_COLUMNS}

    items = [{"case_id": c.case_id, "path": c.path, "extra": json.dumps(c.extra)} for c in todo]
    ds = ray.data.from_items(items).map_batches(_Actor, batch_size=4, concurrency=max(workers, 1), batch_format="numpy")
    for batch in ds.iter_batches(batch_size=1, batch_format="numpy"):
        yield {c: (v[0].item() if hasattr(v[0], "item") else v[0]) for c, v in batch.items()}


def score(
    bundle_dir: str | Path,
    cases: Iterable[Case],
    out_csv: str | Path,
    resume: bool = False,
    workers: int = 1,
    engine: str = "local",
    options: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score cases into ``out_csv``.

    Args:
        bundle_dir: the bundle (verified before anything is scored).
        cases: the cases.
        out_csv: results CSV (appended to with ``resume``, else overwritten).
        resume: skip cases already in ``out_csv``.
        workers: processes (local) or actors (ray).
        engine: ``local`` or ``ray``.
        options: predictor options.
        progress: show a progress bar.

    Returns:
        Summary: total, skipped, ok, error, seconds, cases_per_s, out.
    """
    bundle_dir = str(bundle_dir)
    load_bundle(bundle_dir)  # refuse a bad bundle before touching the output
    out_csv = Path(out_csv)
    cases = list(cases)
    done = read_done(out_csv) if resume else set()
    todo = [c for c in cases if c.case_id not in done]
    seen: set[str] = set()
    todo = [c for c in todo if not (c.case_id in seen or seen.add(c.case_id))]
    writer = RowWriter(out_csv, fresh=not resume)
    counts = {"ok": 0, "error": 0}
    t0 = time.perf_counter()
    if engine == "local":
        results = _local_results(bundle_dir, todo, workers, options or {})
    elif engine == "ray":
        results = _ray_results(bundle_dir, todo, workers, options or {})
    else:
        raise MedTransferError(f"unknown engine '{engine}' (local or ray)")
    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("scoring", total=len(todo))
        try:
            for row in results:
                writer.write(row)
                counts[row["status"]] = counts.get(row["status"], 0) + 1
                bar.update(task, advance=1)
        finally:
            writer.close()
    secs = time.perf_counter() - t0
    return {"total": len(cases), "skipped": len(cases) - len(todo), "ok": counts.get("ok", 0),
            "error": counts.get("error", 0), "seconds": round(secs, 3),
            "cases_per_s": round(len(todo) / secs, 3) if secs > 0 and todo else 0.0, "out": str(out_csv),
            "engine": engine, "workers": workers}
