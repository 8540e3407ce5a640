"""Resumable batch scoring: one CSV row per case, appended as soon as it is done.

- One job per results file: ``score`` holds an exclusive ``flock`` on ``<out>.lock`` for its whole
  life (pid and host written inside); a second job on the same ``--out`` is refused with one line
  naming the holder.  The kernel drops the lock when the holder dies, so a SIGKILLed job never
  blocks its restart.
- Nothing is lost by accident: an existing ``--out`` needs ``resume`` (continue it) or ``overwrite``
  (replace it, atomically, once scoring starts); ``--out`` that is the manifest, an input, inside
  the input folder or inside the bundle is refused; ``resume`` against rows of another bundle
  (their ``bundle_sha256``) is refused unless ``overwrite``.  An unwritable ``--out`` is one line
  before any work starts.
- Every row is written with one ``write`` + ``flush`` + ``fsync``; on ``resume`` a torn last line
  (the job was SIGKILLed mid-write) is cut off under the lock and every case already in the file
  is skipped, so a killed-and-restarted job scores each case exactly once.
- Paths are normalised before de-duplication: ``a.edf``, ``./a.edf`` and its absolute path (or a
  symlink to it) are one case.  Every listed case gets exactly one row; a bad case (missing file,
  folder, symlink loop, unreadable content) becomes an error row (``status=error``, one-line
  ``error``) and the job goes on.
- Every row carries provenance: bundle name, version, sha256.
- Cases go through the shared engine (:mod:`medtransfer.shared.runtime.engines`):
  ``engine="local"`` with ``workers`` processes (started by fork where safe, each opening the
  bundle once with ``cores // workers`` ONNX Runtime threads, fed chunks of cases), or
  ``engine="ray"`` with long-lived Ray actors (local Ray, or the cluster in ``RAY_ADDRESS``).
  Only the results file is written by this process; a case whose worker died is an error row.
Torch-free.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import functools
import hashlib
import io
import json
import os
import stat
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medtransfer.shared.runtime.bundle import Bundle, load_bundle
from medtransfer.shared.runtime.engines import ENGINES, run_map, worker_threads
from medtransfer.shared.runtime.outputs import artefact_lock
from medtransfer.shared.runtime.predictor import build_predictor, check_bundle_options
from medtransfer.shared.utils.errors import InputError, MedTransferError

BASE_COLUMNS = [
    "case",
    "status",
    "error",
    "result",
    "bundle_name",
    "bundle_version",
    "bundle_sha256",
    "seconds",
    "input_id",
    "options_sha256",
]
#: the columns of results files written before rows recorded their input's identity and the options
LEGACY_COLUMNS = BASE_COLUMNS[:8]


def input_id(case: "Case") -> str:
    """What a row records of its input: a short digest of its resolved path, size and modification
    time, and of the case's other columns (a prompt box, a mask file: its path, size and time), so a
    resumed job redoes nothing for an unchanged case and refuses to mix in another one.  Neither a
    path nor any of the file's bytes appear in it."""
    ident: list[Any] = [_file_identity(case.path)]
    for k, v in sorted((case.extra or {}).items()):  # the case's prompt (box, mask file), as the row was made
        is_file = isinstance(v, str) and v and os.path.isfile(v)
        ident.append([k, _file_identity(v) if is_file else str(v)])
    return hashlib.sha256(json.dumps(ident).encode()).hexdigest()[:16]


def _file_identity(path: str | Path) -> list[Any]:
    p = os.path.realpath(os.path.abspath(path))
    try:
        st = os.stat(p)
        return [p, st.st_size, st.st_mtime_ns]
    except OSError:
        return [p, None, None]


def options_sha256(options: Mapping[str, Any] | None) -> str:
    """A short digest of the predictor options (``--opt``, as the predictor converted them) a row was
    scored with; the input root (how the input folder was spelled) and options not given are left out."""
    kept = {k: v for k, v in (options or {}).items() if v is not None and k != "input_root"}
    text = json.dumps(kept, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Case:
    """One case to score: an id (as written in the manifest / relative path), a path, extras."""

    case_id: str
    path: str
    extra: dict[str, str]


def cases_from_manifest(csv_path: str | Path, bundle: Bundle | None = None) -> list[Case]:
    """Cases from a generic manifest.

    Labels are ignored, except where the bundle's predictor class names a ``label_prompt`` case key
    (videoseg: the label is the masks file whose first labelled frame prompts the tracker): given the
    bundle, each labelled row gets its label, resolved against the CSV's folder, under that key.
    """
    from medtransfer.shared.manifest import read_manifest

    key = label_prompt_key(bundle) if bundle is not None else None
    base = Path(csv_path).resolve().parent
    cases = []
    for r in read_manifest(csv_path):
        extra = dict(r.extra)
        if key and str(r.label).strip() and not extra.get(key):
            extra[key] = str(base / r.label)  # an absolute label stays as it is
        cases.append(Case(r.case_id, str(r.path), extra))
    return cases


def label_prompt_key(bundle: Bundle) -> str | None:
    """The case key under which the bundle's predictor takes a manifest's label as its prompt, or None."""
    from medtransfer.shared.plugins import get_app, load_object

    spec = get_app(bundle.app)
    return getattr(load_object(spec.predictor), "label_prompt", None) if spec.predictor else None


def cases_from_dir(folder: str | Path, bundle: Bundle) -> list[Case]:
    """Cases from a folder, filtered by the predictor's accepted suffixes.

    Entries whose name looks like an input but that are no readable file (a folder named
    ``x.png``, a symlink loop, a dangling symlink) are cases too, so they get an error row
    instead of vanishing from the results.

    Args:
        folder: the input folder (walked recursively).
        bundle: the bundle whose predictor decides which suffixes are inputs.

    Returns:
        The cases, ids relative to ``folder`` (posix), sorted.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(folder, "is a file, not an input folder" if folder.exists() else "input folder not found")
    pred = build_predictor(bundle)
    found = list(pred.list_inputs(folder))
    sfx = tuple(s.lower() for s in pred.suffixes)
    if sfx:
        have = set(found)
        found += [p for p in folder.rglob("*") if p not in have and p.suffix.lower() in sfx and not p.is_file()]
    return [Case(p.relative_to(folder).as_posix(), str(p), {}) for p in sorted(found)]


def path_problem(path: str | Path, folders_ok: bool = False) -> str | None:
    """What makes ``path`` unusable as an input, in a few words, or None when it is a readable file.

    Args:
        path: the input.
        folders_ok: the predictor reads folders (frame folders) too.

    Returns:
        e.g. ``"file not found"``, ``"is a folder, expected a file"``, ``"symlink loop"``, or None.
    """
    try:
        st = os.lstat(path)
    except OSError as e:
        return _stat_problem(e)
    if stat.S_ISLNK(st.st_mode):
        try:
            st = os.stat(path)
        except OSError as e:
            if e.errno == errno.ENOENT:
                return "broken symlink (its target does not exist)"
            return _stat_problem(e)
    if stat.S_ISDIR(st.st_mode):
        return None if folders_ok else "is a folder, expected a file"
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file (a pipe, socket or device)"
    return None


def _stat_problem(e: OSError) -> str:
    if e.errno == errno.ELOOP:
        return "symlink loop"
    if e.errno in (errno.ENOENT, errno.ENOTDIR):
        return "file not found"
    return (e.strerror or type(e).__name__).lower()


def case_key(case: Case) -> str:
    """The identity of a case for de-duplication: its resolved path (symlinks followed)."""
    return os.path.realpath(os.path.abspath(case.path))


def unique_cases(cases: Iterable[Case]) -> tuple[list[Case], dict[str, list[str]]]:
    """Cases with duplicates of one resolved file dropped (the first listed one is kept).

    Returns:
        The unique cases, and for each kept case id every id listed for the same file.
    """
    first: dict[str, Case] = {}
    aliases: dict[str, list[str]] = {}
    for c in cases:
        k = case_key(c)
        if k not in first:
            first[k] = c
            aliases[c.case_id] = [c.case_id]
        elif c.case_id not in aliases[first[k].case_id]:
            aliases[first[k].case_id].append(c.case_id)
    return list(first.values()), aliases


def _one_line(e: BaseException) -> str:
    msg = str(e) if isinstance(e, MedTransferError) else f"{type(e).__name__}: {e}"
    return " ".join(msg.split())[:500]


class CaseScorer:
    """Scores cases with one predictor (one per process / actor)."""

    def __init__(self, bundle_dir: str, options: dict[str, Any] | None = None, threads: int = 0) -> None:
        self.bundle = load_bundle(bundle_dir, threads=threads)
        self.predictor = build_predictor(self.bundle, **(options or {}))
        self.prov = self.bundle.provenance()
        self.folders_ok = bool(getattr(self.predictor, "accepts_folders", False))

    def __call__(self, case: Case) -> dict[str, Any]:
        t0 = time.perf_counter()
        row: dict[str, Any] = {"case": case.case_id, **self.prov}
        try:
            problem = path_problem(case.path, self.folders_ok)
            if problem:
                raise InputError(case.path, problem)
            res = self.predictor.answer(Path(case.path), **case.extra)
            row.update(status="ok", error="", result=json.dumps(res, sort_keys=True, default=_jsonable))
        except Exception as e:  # noqa: BLE001 - every failure is a row, never a crash
            row.update(status="error", error=_one_line(e), result="")
        row["seconds"] = round(time.perf_counter() - t0, 4)
        return row


def _jsonable(x: Any) -> Any:
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


# ------------------------------------------------------------------------------ the results file
def lock_path(out_csv: str | Path) -> Path:
    """The lock file of a results file: ``<out>.lock`` beside it."""
    out_csv = Path(out_csv)
    return out_csv.with_name(out_csv.name + ".lock")


def check_writable(out_csv: str | Path) -> None:
    """Refuse, with one line, a results path that cannot be written (before any work starts).

    Creates the parent folder if needed; writes nothing else.

    Raises:
        MedTransferError: ``out_csv`` is a folder, its folder cannot be created, or it (or its
            lock file) cannot be written.
    """
    out_csv = Path(out_csv)
    if out_csv.is_dir():
        raise MedTransferError(f"{out_csv}: --out is a folder, expected a file path")
    try:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise MedTransferError(f"{out_csv}: cannot create its folder ({e.strerror or type(e).__name__})") from None
    if not os.access(out_csv.parent, os.W_OK | os.X_OK):
        raise MedTransferError(f"{out_csv}: cannot write there (permission denied on {out_csv.parent})")
    if out_csv.exists() and not os.access(out_csv, os.W_OK):
        raise MedTransferError(f"{out_csv}: cannot write it (permission denied)")


@contextmanager
def lock_output(out_csv: str | Path) -> Iterator[Path]:
    """Hold the exclusive lock on a results file for the ``with`` block (re-entrant in one process):
    ``<out>.lock`` beside it (:func:`medtransfer.shared.utils.locks.exclusive`: kernel-held, so a
    killed job never blocks a restart; removed on a clean exit).

    Raises:
        MedTransferError: another process holds the lock ("already being written by pid N on HOST"),
            or the lock file cannot be created.
    """
    from medtransfer.shared.utils.locks import exclusive

    check_writable(out_csv)
    with exclusive(lock_path(out_csv), out_csv) as lp:
        yield lp


def bundle_above(path: str | Path) -> Path | None:
    """The bundle folder (``metadata.json`` and ``checksums.sha256``) that holds ``path``, if any."""
    p = Path(os.path.realpath(path))
    for d in (p, *p.parents):
        if (d / "checksums.sha256").is_file() and (d / "metadata.json").is_file():
            return d
    return None


def check_out_path(
    out_csv: str | Path,
    manifest: str | Path | None = None,
    input_dir: str | Path | None = None,
    bundle_dir: str | Path | None = None,
    cases: Iterable[Case] = (),
) -> None:
    """Refuse a results path that would destroy or feed back into the job's own inputs.

    Args:
        out_csv: the results file.
        manifest: the manifest (``--out`` must not be it).
        input_dir: the input folder (``--out`` must not be inside it: it would be scored).
        bundle_dir: the bundle (``--out`` must not be inside it).
        cases: the cases (``--out`` and its lock file must not be any of them).

    Raises:
        MedTransferError: one line naming ``--out`` and what it collides with.
    """
    out = Path(os.path.realpath(out_csv))
    lock = Path(os.path.realpath(lock_path(out_csv)))
    inside = bundle_above(out)
    if inside is not None:  # any bundle, not only this job's: an unlisted file makes it refused
        raise MedTransferError(f"{out_csv}: --out is inside the bundle {inside} (choose a path outside it)")
    if manifest is not None and out == Path(os.path.realpath(manifest)):
        raise MedTransferError(f"{out_csv}: --out is the manifest; it would be overwritten (choose another --out)")
    for folder, what in ((input_dir, "the input folder"), (bundle_dir, "the bundle")):
        if folder is not None:
            d = Path(os.path.realpath(folder))
            if out == d or d in out.parents:
                raise MedTransferError(f"{out_csv}: --out is inside {what} {folder} (choose a path outside it)")
    for c in cases:
        if Path(case_key(c)) in (out, lock):
            raise MedTransferError(
                f"{out_csv}: --out is the input of case '{c.case_id}'; it would be overwritten (choose another --out)"
            )


def read_header(out_csv: Path) -> list[str] | None:
    """The column names of an existing results file (None when it is missing or empty)."""
    if not out_csv.is_file() or out_csv.stat().st_size == 0:
        return None
    with open(out_csv, newline="", encoding="utf-8", errors="replace") as f:
        line = f.readline()
    if not line.endswith("\n") and any((",".join(c) + "\r\n").startswith(line) for c in (BASE_COLUMNS, LEGACY_COLUMNS)):
        return None  # torn header: the job died writing it, nothing was scored
    return next(csv.reader([line.rstrip("\r\n")]), [])


def read_rows(out_csv: Path, repair: bool = True) -> list[dict[str, str]]:
    """The rows of a results file; with ``repair`` a torn last line is cut off first (hold the lock)."""
    if not out_csv.is_file() or out_csv.stat().st_size == 0:
        return []
    with open(out_csv, "rb+" if repair else "rb") as f:
        data = f.read()
        if not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            if repair:
                f.truncate(cut)
            data = data[:cut]
    return list(csv.DictReader(io.StringIO(data.decode("utf-8", errors="replace"))))


def read_done(out_csv: Path) -> set[str]:
    """Cases already in a results file; cuts off a torn last line first."""
    return {r["case"] for r in read_rows(Path(out_csv)) if r.get("case")}


class RowWriter:
    """Appends rows durably (one write + fsync per row).

    Args:
        out_csv: the results file.
        fresh: start a new file: written to a temporary file beside it and renamed over
            ``out_csv`` (atomic), so an existing file is replaced only when this is constructed.
    """

    def __init__(self, out_csv: Path, fresh: bool) -> None:
        out_csv.parent.mkdir(parents=True, exist_ok=True)
        new = fresh or not out_csv.is_file() or out_csv.stat().st_size == 0
        self.columns = BASE_COLUMNS if new else (read_header(out_csv) or BASE_COLUMNS)  # a legacy file keeps its own
        if new:
            tmp = out_csv.with_name(f".{out_csv.name}.{os.getpid()}.tmp")
            self.f = open(tmp, "w", newline="", encoding="utf-8")  # noqa: SIM115 - open for the job
            self._write(BASE_COLUMNS)
            os.replace(tmp, out_csv)
            _fsync_dir(out_csv.parent)
        else:
            self.f = open(out_csv, "a", newline="", encoding="utf-8")  # noqa: SIM115 - open for the job

    def _write(self, values: list[Any]) -> None:
        buf = io.StringIO()
        csv.writer(buf).writerow(values)
        self.f.write(buf.getvalue())
        self.f.flush()
        os.fsync(self.f.fileno())

    def write(self, row: dict[str, Any]) -> None:
        self._write([row.get(c, "") for c in self.columns])

    def close(self) -> None:
        self.f.close()


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def plan_resume(
    out_csv: Path,
    sha256: str,
    resume: bool,
    overwrite: bool,
    inputs: Mapping[str, str] | None = None,
    options_sha: str | None = None,
) -> tuple[set[str], bool]:
    """Decide what happens to an existing results file (call while holding its lock).

    Args:
        out_csv: the results file.
        sha256: the bundle's sha256.
        resume: continue the file.
        overwrite: replace the file.
        inputs: case id -> :func:`input_id` of this job's cases: a row of the same case id made from
            another file (another folder, or the file changed since) is not resumed over.
        options_sha: :func:`options_sha256` of this job's options: rows scored with other options
            are not resumed over.

    Returns:
        The case ids already done, and whether the file is started afresh.

    Raises:
        MedTransferError: the file exists and neither flag is given; it is not a ``score`` results
            file; or (``resume`` without ``overwrite``) its rows come from another bundle.
    """
    header = read_header(out_csv)
    if header is None:
        return set(), True
    ours = header in (BASE_COLUMNS, LEGACY_COLUMNS)
    if not resume and not overwrite:
        what = (
            f"{sum(1 for r in read_rows(out_csv, repair=False) if r.get('case'))} rows"
            if ours
            else "and is not a results file of `score`"
        )
        raise MedTransferError(
            f"{out_csv}: already exists ({what}); add --resume to continue it or --overwrite to replace it"
        )
    if overwrite and not resume:
        return set(), True
    if not ours:
        if overwrite:
            return set(), True
        raise MedTransferError(
            f"{out_csv}: is not a results file of `score` (its columns differ); choose another "
            "--out, or add --overwrite to replace it"
        )
    rows = read_rows(out_csv)  # under the lock: cut a torn last line
    problem = _resume_problem(rows, sha256, inputs, options_sha)
    if problem:
        if overwrite:
            return set(), True
        raise MedTransferError(
            f"{out_csv}: {problem}; --resume would mix them: choose another --out or add --overwrite"
        )
    return {r["case"] for r in rows if r.get("case")}, False


def _resume_problem(
    rows: list[dict[str, str]], sha256: str, inputs: Mapping[str, str] | None, options_sha: str | None
) -> str:
    """Why this job's rows may not join ``rows`` ('' when they may): another bundle, other options,
    or a case scored from another input."""
    other = sorted({r.get("bundle_sha256") or "" for r in rows} - {sha256, ""})
    if other:
        return f"holds rows from another bundle (sha256 {other[0][:12]}...), not this one ({sha256[:12]}...)"
    if options_sha is not None and {r.get("options_sha256") or "" for r in rows} - {options_sha, ""}:
        return "holds rows scored with other --opt values (give the same options)"
    for r in rows if inputs else ():
        was, now = r.get("input_id") or "", (inputs or {}).get(r.get("case") or "")
        if was and now and was != now:
            return (
                f"its row of case '{r['case']}' was scored from another input (another folder, the file "
                "changed since, or another prompt column)"
            )
    return ""


# ----------------------------------------------------------------------------------- engines
def _scorer(bundle_dir: str, options: dict[str, Any]) -> CaseScorer:
    """A worker's scorer: the bundle opened once; ONNX Runtime threads from the engine's budget
    (``MEDTRANSFER_THREADS``, set per worker so workers x threads <= cores)."""
    return CaseScorer(bundle_dir, options, threads=worker_threads())


def _predictor_module(bundle: Bundle) -> tuple[str, ...]:
    """The module of the bundle's predictor (imported once before local workers fork)."""
    from medtransfer.shared.plugins import get_app

    try:
        target = get_app(bundle.app).predictor or ""
    except MedTransferError:
        return ()
    return (target.split(":")[0],) if target else ()


def _score_one(scorer: CaseScorer, case: Case) -> dict[str, Any]:
    return scorer(case)


def _error_row(case: Case, prov: dict[str, Any], e: BaseException) -> dict[str, Any]:
    """The row of a case whose worker failed it (died, or could not be started)."""
    return {"case": case.case_id, **prov, "status": "error", "error": _one_line(e), "result": "", "seconds": ""}


def score(
    bundle_dir: str | Path,
    cases: Iterable[Case],
    out_csv: str | Path,
    resume: bool = False,
    workers: int = 1,
    engine: str = "local",
    options: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
    manifest: str | Path | None = None,
    input_dir: str | Path | None = None,
    chunksize: int | None = None,
) -> dict[str, Any]:
    """Score cases into ``out_csv`` under an exclusive lock on it.

    Args:
        bundle_dir: the bundle (verified before anything is scored).
        cases: the cases (the same resolved file listed twice is one case).
        out_csv: results CSV; if it already holds rows, ``resume`` or ``overwrite`` is required.
        resume: skip cases already in ``out_csv`` (refused when its rows come from another bundle,
            unless ``overwrite``).
        workers: processes (local) or actors (ray).
        engine: ``local`` or ``ray``.
        options: predictor options.
        progress: show a progress bar.
        overwrite: replace ``out_csv`` (atomically, when scoring starts); with ``resume``: resume
            when the rows come from this bundle, else replace.
        manifest: the manifest the cases come from (``out_csv`` must not be it).
        input_dir: the folder the cases come from (``out_csv`` must not be inside it).
        chunksize: cases per task handed to a worker (``None``: the engine's default).

    Returns:
        Summary: total, duplicates, skipped, ok, error, seconds (start-up included), cases_per_s,
        out, engine, workers, startup_s (workers up, bundle opened in each), work_s,
        work_cases_per_s, engine_stats (:class:`~medtransfer.shared.runtime.engines.MapRun` stats).

    Raises:
        MedTransferError: bad bundle or engine, ``out_csv`` locked by another job, unwritable,
            colliding with an input, or existing without ``resume`` / ``overwrite``.
    """
    if engine not in ENGINES:
        raise MedTransferError(f"unknown engine '{engine}' (local or ray)")
    bundle_dir = str(bundle_dir)
    out_csv = Path(out_csv)
    cases = list(cases)
    check_out_path(out_csv, manifest=manifest, input_dir=input_dir, bundle_dir=bundle_dir, cases=cases)
    with lock_output(out_csv), contextlib.ExitStack() as held:
        verified = load_bundle(bundle_dir)  # refuse a bad bundle before touching the output
        converted = check_bundle_options(verified, options or {})  # and an --opt its predictor does not take
        held.enter_context(artefact_lock(converted.get("out_dir")))  # one job per artefact folder
        sha, prov = verified.sha256, verified.provenance()
        unique, aliases = unique_cases(cases)
        ids = {a: input_id(c) for c in unique for a in aliases[c.case_id]}
        opt_sha = options_sha256(converted)
        done, fresh = plan_resume(out_csv, sha, resume, overwrite, ids, opt_sha)
        todo = [c for c in unique if not any(a in done for a in aliases[c.case_id])]
        counts = {"ok": 0, "error": 0}
        t0 = time.perf_counter()
        # workers start (each opens the bundle once) before the results file is touched; none
        # beyond one per case, and no Ray at all when nothing is left to score
        run = run_map(
            # absolute: a warm Ray actor keeps the opened bundle for jobs run from other folders
            functools.partial(_scorer, os.path.abspath(bundle_dir), dict(options or {})),
            _score_one,
            todo,
            engine=engine if todo else "local",
            workers=max(1, min(workers, len(todo))),
            chunksize=chunksize,
            ordered=True,  # the results file in manifest order whatever the workers (a row waits for those before it)
            progress="scoring" if progress else False,
            preload=_predictor_module(verified),
            # a running Ray cluster keeps the actors (bundle open) warm for the next job on this
            # very bundle (verified digest) with these options
            reuse_key=json.dumps(
                [sha, str(Path(bundle_dir).resolve()), dict(options or {})], sort_keys=True, default=str
            ),
        )
        writer = RowWriter(out_csv, fresh=fresh)
        try:
            for i, res in run:
                row = res if isinstance(res, dict) else _error_row(todo[i], prov, res)
                writer.write({**row, "input_id": ids.get(todo[i].case_id, ""), "options_sha256": opt_sha})
                counts[row["status"]] = counts.get(row["status"], 0) + 1
        finally:
            run.close()
            writer.close()
        secs = time.perf_counter() - t0
    return {
        "total": len(cases),
        "duplicates": len(cases) - len(unique),
        "skipped": len(unique) - len(todo),
        "ok": counts.get("ok", 0),
        "error": counts.get("error", 0),
        "seconds": round(secs, 3),
        "cases_per_s": round(len(todo) / secs, 3) if secs > 0 and todo else 0.0,
        "out": str(out_csv),
        "engine": engine,
        "workers": workers,
        "startup_s": run.stats.get("startup_s", 0.0),
        "work_s": run.stats.get("seconds", 0.0),
        "work_cases_per_s": round(len(todo) / run.stats["seconds"], 3) if run.stats.get("seconds") and todo else 0.0,
        "engine_stats": dict(run.stats),
    }
