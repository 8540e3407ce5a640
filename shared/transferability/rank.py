"""``medtransfer rank``: which pretrained source to fine-tune from, without training (app-agnostic core).

A *candidate* is a registry backbone name (``NAME`` with its local weights, or ``NAME=WEIGHTS``;
random initialisation only with ``allow_random_init`` and then marked), a run folder, or a bundle
(ranked through the run folder it records).  For each candidate the app's ``rank_features`` hook
yields ``(features, target)`` batches of the target manifest's labelled TRAINING split; the
features are cached on disk keyed by the candidate's sha256 and the manifest's, then scored:

* ``logme``  LogME (:mod:`.logme`); classification: one-hot targets averaged over classes,
  regression: the standardised scalar target;
* ``tmi``    intra-class feature variance (:mod:`.tmi`); regression: quantile-binned target;
* ``knn``, ``linear``  cross-validated probes on the training split (:mod:`.probe`); regression:
  Spearman of out-of-fold predictions (a ranking score).

Integer targets mean classification, float targets regression (a grade, a survival risk).
Writes ``ranking.csv`` (one row per candidate: scores, the rank per score, ``rank_combined`` =
order of the mean rank) and ``ranking.png``.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from medtransfer.shared.utils.errors import InputError, MedTransferError
from medtransfer.shared.utils.hashing import sha256_file, sha256_text

SCORES = ("logme", "tmi", "knn", "linear")


@dataclass(frozen=True)
class Candidate:
    """One resolved candidate.

    Attributes:
        name: as given (``--candidate``).
        kind: ``backbone``, ``run`` or ``bundle``.
        app: the app it is ranked for.
        path: the run folder (``run``; ``bundle``: the run folder the bundle records), else None.
        backbone: registry name (``backbone``), else None.
        weights: local weight file of a backbone (None with ``random_init``).
        random_init: a backbone ranked with random weights (asked for explicitly; marked).
        sha: sha256 identity (checkpoint, weight file, bundle), part of the cache key.
    """

    name: str
    kind: str
    app: str
    path: Path | None = None
    backbone: str | None = None
    weights: Path | None = None
    random_init: bool = False
    sha: str = ""


class CandidateError(MedTransferError):
    """A candidate that cannot be ranked (one line naming it)."""

    def __init__(self, candidate: str, problem: str) -> None:
        super().__init__(f"candidate '{candidate}': {' '.join(str(problem).split())}")


def _run_candidate(spec: str, path: Path, app: str, kind: str = "run", sha: str | None = None) -> Candidate:
    from medtransfer.shared.rundir import RunDir

    run = RunDir(path)
    got = run.info().get("app")
    if got != app:
        raise CandidateError(spec, f"a run of app '{got}', not '{app}'")
    want = run.expected_sha256("best")
    ckpt = run.checkpoint_path("best")
    if not ckpt.is_file():
        raise CandidateError(spec, f"{ckpt}: checkpoint not found (unfinished run?)")
    digest = sha256_file(ckpt)
    if want is None or digest not in want:
        raise CandidateError(spec, f"{ckpt}: sha256 does not match run.json (altered, corrupt or unrecorded)")
    return Candidate(spec, kind, app, path=path, sha=sha or digest)


def resolve_candidate(spec: str, app: str, allow_random_init: bool = False) -> Candidate:
    """Turn a ``--candidate`` value into a :class:`Candidate` (checked before any feature is extracted).

    Args:
        spec: a run folder, a bundle folder, a registry name, or ``NAME=WEIGHTS_FILE``.
        app: the app ranked for (runs and bundles must belong to it).
        allow_random_init: a backbone without local weights is ranked randomly initialised.

    Raises:
        CandidateError: missing file, wrong app, altered/corrupt checkpoint, unknown backbone,
            missing weights (one line naming the candidate).
    """
    spec = str(spec).strip()
    p = Path(spec)
    if p.is_dir():
        if (p / "run.json").is_file():
            return _run_candidate(spec, p, app)
        if (p / "metadata.json").is_file():
            from medtransfer.shared.runtime.bundle import load_bundle

            try:
                b = load_bundle(p)
            except MedTransferError as e:
                raise CandidateError(spec, str(e)) from None
            if b.app != app:
                raise CandidateError(spec, f"a bundle of app '{b.app}', not '{app}'")
            rd = b.meta.get("run_dir")
            if not rd or not (Path(str(rd)) / "run.json").is_file():
                raise CandidateError(
                    spec, "the bundle records no run folder present here to extract features from; give the run folder"
                )
            return _run_candidate(spec, Path(str(rd)), app, kind="bundle", sha=b.sha256)
        raise CandidateError(spec, "not a run folder (no run.json) nor a bundle (no metadata.json)")
    name, _, wfile = spec.partition("=")
    if not wfile and ("/" in spec or p.suffix in (".pt", ".pth", ".safetensors", ".bin")):
        raise CandidateError(spec, "not found")
    from medtransfer.shared.registry.core import get_entry
    from medtransfer.shared.registry.weights import resolve_weights

    try:
        entry = get_entry(name)
    except MedTransferError as e:
        raise CandidateError(spec, str(e)) from None
    try:
        w = resolve_weights(name, Path(wfile) if wfile else True, entry.pretrained_cfg)
    except MedTransferError as e:
        if wfile or not allow_random_init:
            hint = "" if wfile else " (--allow-random-init ranks it randomly initialised, marked)"
            raise CandidateError(spec, f"{e}{hint}") from None
        return Candidate(spec, "backbone", app, backbone=name, random_init=True, sha=sha256_text(f"random:{name}"))
    return Candidate(spec, "backbone", app, backbone=name, weights=Path(w), sha=sha256_file(w))


def target_sha(target: Path) -> str:
    """sha256 of what a target is: a manifest file's bytes and the files it lists (resolved path, size,
    modification time), or a target folder's (wsi labels) files' names, sizes and times.

    Two byte-identical manifests in different folders list different files (their paths are relative
    to the manifest): they are different targets.
    """
    target = Path(target)
    if target.is_file():
        from medtransfer.shared.manifest import read_manifest

        try:
            listed = [_stat_key(Path(r.path)) for r in read_manifest(target)]
        except MedTransferError:
            listed = []  # not a generic manifest (the app's hook reads it): its bytes and place
        return sha256_text(json.dumps([sha256_file(target), str(target.resolve()), listed]))
    listing = sorted(
        (str(p.relative_to(target)), p.stat().st_size, p.stat().st_mtime_ns) for p in target.rglob("*") if p.is_file()
    )
    return sha256_text(json.dumps([str(target.resolve()), listing]))


def _stat_key(p: Path) -> list[Any]:
    try:
        st = p.stat()
    except OSError:
        return [str(p.resolve()), None]
    return [str(p.resolve()), st.st_size, st.st_mtime_ns]


def cache_key(cand: Candidate, manifest: Path, opts: Mapping[str, Any]) -> str:
    """sha256 of (app, candidate sha, target sha, hook options)."""
    msha = target_sha(manifest)
    return sha256_text(json.dumps([cand.app, cand.sha, msha, dict(opts)], sort_keys=True, default=str))


def extract(
    cand: Candidate,
    manifest: Path,
    hook: Callable[..., Iterable[tuple[np.ndarray, np.ndarray]]],
    cache_dir: Path,
    opts: Mapping[str, Any] | None = None,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, bool]:
    """Features and targets of the target's training split for one candidate (cached).

    Returns:
        ``(features (n, D) float32, target (n,), from_cache)``.

    Raises:
        CandidateError: the app's hook fails on this candidate (one line naming it).
    """
    opts = dict(opts or {})
    cache_dir.mkdir(parents=True, exist_ok=True)
    f = cache_dir / f"{cand.app}_{cache_key(cand, manifest, opts)[:32]}.npz"
    if f.is_file():
        with np.load(f, allow_pickle=False) as z:
            return z["features"], z["target"], True
    feats, tgts = [], []
    try:
        with _bar(progress, f"features: {cand.name}") as advance:
            for x, y in hook(candidate=cand, manifest=Path(manifest), **opts):
                feats.append(np.asarray(x, np.float32).reshape(len(x), -1))
                tgts.append(np.asarray(y))
                advance(len(x))
    except CandidateError:
        raise
    except MedTransferError as e:
        raise CandidateError(cand.name, str(e)) from None
    if not feats or sum(len(x) for x in feats) < 4:
        raise CandidateError(cand.name, f"{manifest}: fewer than 4 labelled training samples to rank on")
    x, y = np.concatenate(feats), np.concatenate(tgts)
    if not np.isfinite(x).all():
        raise CandidateError(cand.name, "features hold NaN or inf")
    tmp = f.with_name(f".{f.stem}.tmp.npz")
    np.savez(tmp, features=x, target=y)
    tmp.replace(f)
    return x, y, False


class _bar:
    """A rich progress bar counting samples (silent when disabled)."""

    def __init__(self, show: bool, text: str) -> None:
        self.show, self.text = show, text
        self.p: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.show:
            return lambda n: None
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self.p = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TextColumn("{task.completed} samples"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
        )
        self.p.start()
        tid = self.p.add_task(self.text, total=None)
        p = self.p
        return lambda n: p.advance(tid, n)

    def __exit__(self, *exc: Any) -> None:
        if self.p is not None:
            self.p.stop()


def is_regression(target: np.ndarray) -> bool:
    """Float targets are regression; integer / string labels classification."""
    return np.asarray(target).dtype.kind == "f"


def score_features(features: np.ndarray, target: np.ndarray, regression: bool | None = None) -> dict[str, float]:
    """Every score of one candidate's features (see module docstring)."""
    from medtransfer.shared.transferability.logme import logme
    from medtransfer.shared.transferability.probe import probe_scores
    from medtransfer.shared.transferability.tmi import tmi

    reg = is_regression(target) if regression is None else regression
    y = np.asarray(target)
    if not reg:
        y = np.unique(y, return_inverse=True)[1]
    out = {"logme": logme(features, y, regression=reg), "tmi": tmi(features, y, regression=reg)}
    out.update(probe_scores(features, y, regression=reg))
    return out


def rank_table(names: Sequence[str], scores: Sequence[Mapping[str, float]]) -> list[dict[str, Any]]:
    """Rows with every score, its rank (1 = best) and the combined rank (order of the mean rank)."""
    from medtransfer.shared.transferability.select import combined_rank, rank_scores

    ranks = {s: rank_scores([sc[s] for sc in scores]) for s in SCORES}
    comb = combined_rank([ranks[s] for s in SCORES])
    rows = []
    for i, n in enumerate(names):
        row: dict[str, Any] = {"candidate": n}
        row.update({s: float(scores[i][s]) for s in SCORES})
        row.update({f"rank_{s}": float(ranks[s][i]) for s in SCORES})
        row["rank_combined"] = float(comb[i])
        rows.append(row)
    return rows


def rank(
    app: str,
    target: str | Path,
    candidates: Sequence[str],
    out: str | Path,
    allow_random_init: bool = False,
    opts: Mapping[str, Any] | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Rank candidates for a target without training.

    Args:
        app: the app whose ``rank_features`` hook extracts features.
        target: the target manifest (the app's own target description, e.g. wsi's labels folder).
        candidates: ``--candidate`` values (see :func:`resolve_candidate`).
        out: output folder (``ranking.csv``, ``ranking.png``).
        allow_random_init: rank backbones without local weights randomly initialised (marked).
        opts: extra options for the app's hook (``--opt key=value``).
        cache_dir: feature cache (default ``<out>/feature_cache``).
        progress: rich progress bars.

    Returns:
        ``{"rows", "csv", "png", "task", "cached"}``.
    """
    from medtransfer.shared.plugins import hook as app_hook

    target, out = Path(target), Path(out)
    if not target.exists():
        raise InputError(target, "target not found")
    if not candidates:
        raise MedTransferError("give at least one --candidate")
    seen: dict[str, str] = {}
    for spec in candidates:  # a path spelled twice (runs/a, runs/a/, ./runs/a) is one candidate
        k = os.path.realpath(spec) if os.path.exists(spec) else spec
        if k in seen:
            raise MedTransferError(f"a --candidate is given twice ({seen[k]} and {spec})")
        seen[k] = spec
    fn = app_hook(app, "rank_features")
    cands = [resolve_candidate(c, app, allow_random_init) for c in candidates]  # all checked before any work
    cache = Path(cache_dir) if cache_dir else out / "feature_cache"
    names, scores, meta, cached = [], [], [], []
    task = ""
    for c in cands:
        x, y, hit = extract(c, target, fn, cache, opts, progress)
        reg = is_regression(y)
        if not reg and np.unique(y).size < 2:
            raise InputError(target, "its training split holds one class only; ranking needs two or more")
        task = "regression" if reg else "classification"
        scores.append(score_features(x, y, reg))
        names.append(c.name)
        meta.append({"kind": c.kind, "random_init": c.random_init, "n": len(x), "dim": x.shape[1], "task": task})
        cached.append(hit)
    rows = rank_table(names, scores)
    for r, m, c in zip(rows, meta, cands):
        r.update(m)
        r["sha256"] = c.sha[:16]
    out.mkdir(parents=True, exist_ok=True)
    csv_path = write_csv(rows, out / "ranking.csv")
    png = plot_ranking(rows, out / "ranking.png", f"{app}: {target.name} ({task})")
    return {"rows": rows, "csv": csv_path, "png": png, "task": task, "cached": cached}


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``ranking.csv`` (atomic)."""
    cols = ["candidate", *SCORES, *(f"rank_{s}" for s in SCORES), "rank_combined"]
    cols += [k for k in rows[0] if k not in cols] if rows else []
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in sorted(rows, key=lambda r: r["rank_combined"]):
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    tmp.replace(path)
    return path


def _short(spec: str) -> str:
    """A plot label: the last folder / file name of a path (``NAME=file`` for a backbone with weights)."""
    name, eq, w = spec.partition("=")
    if eq:
        return f"{name}={Path(w).name}"[:32]
    return (Path(spec).name if "/" in spec else spec)[:32]


def plot_ranking(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """One panel per score, one bar per candidate (best first by combined rank; random-init hatched)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(rows, key=lambda r: r["rank_combined"])
    names = [_short(str(r["candidate"])) + (" (random)" if r.get("random_init") else "") for r in rows]
    fig, axes = plt.subplots(1, len(SCORES), figsize=(3.2 * len(SCORES), 0.5 * len(rows) + 1.6), sharey=True)
    for ax, s in zip(np.atleast_1d(axes), SCORES):
        vals = [float(r[s]) for r in rows]
        bars = ax.barh(
            range(len(rows)),
            vals,
            color=["C0" if r["rank_" + s] == min(q["rank_" + s] for q in rows) else "C7" for r in rows],
        )
        for b, r in zip(bars, rows):
            if r.get("random_init"):
                b.set_hatch("//")
        ax.set_title(s)
        ax.set_yticks(range(len(rows)), names, fontsize=8)
    np.atleast_1d(axes)[0].invert_yaxis()  # shared y: invert once
    fig.suptitle(f"{title}: higher is better; top = best combined rank", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
