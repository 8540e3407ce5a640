"""``medtransfer audit``: how a bundle degrades under acquisition perturbations (torch-free).

Each labelled case of a manifest is answered by the bundle's own predictor, once plainly
(severity 0: the very code path of ``predict`` / ``score``, so its metric is the plain one) and
then under every perturbation of :mod:`medtransfer.shared.runtime.perturb` that fits the
predictor's decoded input (``Predictor.modalities``) at each severity of its ladder.  The
predictor applies the perturbation right after decoding, before its own preprocessing
(``Predictor.perturbed`` / ``input_hook``), so EEG noise is added in µV at the recording's rate
and the bundle's resampling / re-referencing still act on it, images are perturbed in 0-255
intensity units, videos as whole clips, wsi feature bags as bags.

Reported per perturbation and severity: the task metric (classification: balanced accuracy and
accuracy; segmentation bundles (``task`` track): mean Dice over the labelled frames after the
prompt; survival: Harrell's c-index, scikit-survival), the expected calibration error with a
reliability plot (classification), the share of answers that change versus severity 0 (label /
risk group; segmentation: Dice to the severity-0 masks below 0.9) and the share of cases the
predictor refused (an input gate turning a perturbed input into an error is itself a result).
Bad cases (severity 0 fails) are error rows in ``audit_cases.csv``; nothing else is lost.

Writes ``OUT/audit.json``, ``OUT/audit.md``, ``OUT/audit_cases.csv`` and plots
(``robustness.png``, ``reliability.png``).  Torch-free unless ``run_dir`` asks for the
adversarial part (``medtransfer.shared.audit.adversarial``).

Manifest columns: ``path,label`` (the class name; segmentation: the mask ``.npz`` of the labelled
frames, also the first-frame prompt unless a ``mask`` / ``box`` column is given); survival needs
``time`` and ``event`` columns (or SurvPath's ``survival_months`` and ``censorship``).
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime.perturb import PERTURBATIONS, Perturbation, ladder
from medtransfer.shared.utils.errors import InputError, MedTransferError

__all__ = [
    "AuditCase",
    "demo_section",
    "expected_calibration_error",
    "markdown",
    "metric_from_answers",
    "run_audit",
    "task_kind",
]

ECE_BINS = 10
SEG_CHANGED_BELOW = 0.9  # segmentation: an answer "changed" when its Dice to the severity-0 masks is below this


class AuditError(MedTransferError):
    """The audit cannot run (no labelled case, no perturbation for this predictor, ...)."""


@dataclass
class AuditCase:
    """One labelled case: id, input path, label (as written, resolved for mask files), extras."""

    case_id: str
    path: Path
    label: str
    extra: dict[str, str] = field(default_factory=dict)


#: every file an audit report may write into its folder (``medtransfer audit -o``)
REPORT_FILES = (
    "audit.json",
    "audit.md",
    "audit_cases.csv",
    "robustness.png",
    "reliability.png",
    "adversarial.png",
    "audit_errors.csv",
)
#: where the error rows go when every case failed (no report; an earlier one is kept)
ERRORS_FILE = "audit_errors.csv"


def task_kind(bundle: Any) -> str:
    """``classification``, ``segmentation`` (tracking bundles) or ``survival``, from the bundle's task."""
    task = str(getattr(bundle, "task", "") or "").lower()
    if task == "survival":
        return "survival"
    if task in ("track", "segmentation"):
        return "segmentation"
    return "classification"


# ------------------------------------------------------------------------------------------ answers -> outcomes
def _probs(res: dict[str, Any], labels: list[str]) -> dict[str, float] | None:
    d = res.get("probabilities") or res.get("probs")
    if isinstance(d, dict) and d:
        return {str(k): float(v) for k, v in d.items()}
    p = res.get("probability")
    if p is not None and len(labels) == 2:  # binary answers carry P(second label), e.g. P(abnormal)
        return {labels[0]: 1.0 - float(p), labels[1]: float(p)}
    return None


def outcome(kind: str, res: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """What the audit keeps of one answer: ``pred`` (+ ``conf`` / ``risk`` / ``masks``)."""
    if kind == "classification":
        pred = res.get("label", res.get("view"))
        probs = _probs(res, labels)
        conf = None
        if probs is not None and pred in probs:
            conf = probs[str(pred)]
        elif res.get("probability") is not None:
            conf = float(res["probability"])
        return {"pred": str(pred), "conf": conf}
    if kind == "survival":
        return {"pred": str(res.get("risk_group", "")), "risk": float(res["risk"])}
    masks_path = res.get("masks")
    if not masks_path:
        raise AuditError("the predictor wrote no masks (segmentation audits need out_dir)")
    with np.load(masks_path) as z:
        return {"pred": "", "masks": z["masks"].astype(bool)}


def _labelled_masks(label: Path) -> tuple[dict[int, np.ndarray], int]:
    with np.load(label) as z:
        ms = z["masks"].astype(bool)
        frames = [int(v) for v in z["frames"]] if "frames" in z.files else list(range(len(ms)))
    return dict(zip(frames, ms)), min(frames)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * float(np.logical_and(a, b).sum()) / s


def case_dice(masks: np.ndarray, label: Path) -> float:
    """Mean Dice of predicted masks (T, H, W) on the labelled frames after the prompt frame."""
    lab, first = _labelled_masks(label)
    ks = [k for k in lab if k != first and k < len(masks)] or [k for k in lab if k < len(masks)]
    if not ks:
        raise InputError(label, "no labelled frame inside the predicted clip")
    return float(np.mean([_dice(masks[k], lab[k]) for k in ks]))


def _survival_truth(case: AuditCase) -> tuple[float, bool]:
    ex = case.extra
    try:
        if ex.get("time", "") != "":  # no event column is no truth: every case an event gave a c-index
            t, flag, event_is = float(ex["time"]), float(ex["event"]), True
        elif ex.get("survival_months", "") != "":
            t, flag, event_is = float(ex["survival_months"]), float(ex["censorship"]), False
        else:
            raise ValueError
    except (ValueError, KeyError):
        raise InputError(case.path, "survival audits need time,event (or survival_months,censorship) values") from None
    if not math.isfinite(t) or t < 0:
        raise InputError(case.path, f"survival time {t:g} is not a finite time >= 0")
    if flag not in (0.0, 1.0):
        raise InputError(case.path, f"{'event' if event_is else 'censorship'} must be 0 or 1 (got {flag:g})")
    return t, bool(flag) == event_is


def expected_calibration_error(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the bin-size-weighted gap between accuracy and mean confidence over equal-width bins.

    Args:
        conf: confidence of each answer (probability of the predicted label), in [0, 1].
        correct: whether each answer is right.
        bins: number of equal-width confidence bins.

    Returns:
        The ECE in [0, 1] (nan for no answers).
    """
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    if not len(conf):
        return float("nan")
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_curve(conf: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS) -> list[list[float]]:
    """``[[mean confidence, accuracy, count], ...]`` per non-empty bin."""
    conf = np.asarray(conf, float)
    correct = np.asarray(correct, float)
    idx = np.minimum((conf * bins).astype(int), bins - 1)
    return [
        [float(conf[idx == b].mean()), float(correct[idx == b].mean()), int((idx == b).sum())]
        for b in range(bins)
        if (idx == b).any()
    ]


def metric_from_answers(kind: str, outcomes: list[dict[str, Any]], cases: list[AuditCase]) -> dict[str, Any]:
    """The task metric over answered cases.

    Args:
        kind: :func:`task_kind`.
        outcomes: :func:`outcome` of each answer (same order as ``cases``).
        cases: the labelled cases.

    Returns:
        ``{"metric", "metric_name", ...}``: classification ``balanced_accuracy`` (+ ``accuracy``,
        ``ece``, ``reliability``), segmentation ``dice``, survival ``c_index``.
    """
    n = len(outcomes)
    if kind == "classification":
        pred = np.array([o["pred"] for o in outcomes], dtype=object)
        truth = np.array([c.label for c in cases], dtype=object)
        right = pred == truth
        recalls = [float(right[truth == t].mean()) for t in sorted(set(truth.tolist()))]
        conf = [o["conf"] for o in outcomes]
        out: dict[str, Any] = {
            "metric_name": "balanced_accuracy",
            "metric": float(np.mean(recalls)) if n else float("nan"),
            "accuracy": float(right.mean()) if n else float("nan"),
        }
        if n and all(c is not None for c in conf):
            out["ece"] = expected_calibration_error(np.array(conf, float), right)
            out["reliability"] = reliability_curve(np.array(conf, float), right)
        return out
    if kind == "segmentation":
        d = [case_dice(o["masks"], Path(c.label)) for o, c in zip(outcomes, cases)]
        return {"metric_name": "dice", "metric": float(np.mean(d)) if d else float("nan")}
    from medtransfer.shared.metrics import c_index

    times, events = zip(*[_survival_truth(c) for c in cases]) if n else ((), ())
    risk = [o["risk"] for o in outcomes]
    return {
        "metric_name": "c_index",
        "metric": c_index(np.array(times, float), np.array(events, bool), np.array(risk, float)),
    }


def _changed(kind: str, o: dict[str, Any], base: dict[str, Any], risk_cut: float) -> bool:
    if kind == "classification":
        return bool(o["pred"] != base["pred"])
    if kind == "survival":
        if base["pred"]:
            return bool(o["pred"] != base["pred"])
        return bool((o["risk"] > risk_cut) != (base["risk"] > risk_cut))
    a, b = o["masks"], base["masks"]
    t = min(len(a), len(b))
    return bool(np.mean([_dice(a[k], b[k]) for k in range(t)]) < SEG_CHANGED_BELOW) if t else True


# ------------------------------------------------------------------------------------------ running
def load_cases(manifest: str | Path, kind: str, max_cases: int = 0, split: str | None = None) -> list[AuditCase]:
    """Labelled cases of a manifest (segmentation labels resolved against the CSV folder).

    ``split`` keeps only that split's rows (e.g. ``test``).

    ``max_cases`` > 0 keeps that many, taken round-robin over the labels so every class stays in.
    """
    from medtransfer.shared.manifest import read_manifest

    manifest = Path(manifest)
    recs = [r for r in read_manifest(manifest) if str(r.label).strip() != "" or kind == "survival"]
    if split:
        recs = [r for r in recs if r.split == split]
    if not recs:
        where = f" of split '{split}'" if split else ""
        raise AuditError(f"{manifest}: no labelled case{where} (the audit needs a label per case)")
    cases = []
    seen: dict[str, str] = {}
    for r in recs:
        # one file listed twice (or spelled two ways) is one case; a video with two masks is two
        key = os.path.realpath(r.path) + ("\0" + str(r.label) if kind == "segmentation" else "")
        if key in seen:
            if kind == "classification" and seen[key] != str(r.label):
                raise AuditError(f"{manifest}: {r.rel} is listed with label '{seen[key]}' and '{r.label}'")
            continue
        seen[key] = str(r.label)
        label = str(r.label)
        if kind == "segmentation":
            lp = Path(label)
            label = str(lp if lp.is_absolute() else (manifest.parent / lp).resolve())
        cases.append(AuditCase(r.case_id, Path(r.path), label, dict(r.extra)))
    if max_cases and len(cases) > max_cases:
        by: dict[str, list[AuditCase]] = {}
        for c in cases:
            by.setdefault(c.label if kind == "classification" else "", []).append(c)
        queues = list(by.values())
        picked: list[AuditCase] = []
        while len(picked) < max_cases:
            for q in queues:
                if q and len(picked) < max_cases:
                    picked.append(q.pop(0))
        cases = picked
    return cases


def check_labels(cases: list[AuditCase], kind: str, labels: list[str], manifest: str | Path) -> None:
    """Refuse, before any work, labels the bundle cannot answer and survival truths that cannot be
    scored (a classification label outside the bundle's classes scored every answer wrong; NaN or
    negative times, or no event at all, gave a traceback or a meaningless c-index).

    Raises:
        AuditError / InputError: one line naming the manifest (or the case) and the problem.
    """
    if kind == "classification" and labels:
        bad = sorted({c.label for c in cases} - set(labels))
        if bad:
            raise AuditError(f"{manifest}: label {bad[0]!r} is not one of the bundle's classes ({', '.join(labels)})")
    if kind == "survival":
        truth = [_survival_truth(c) for c in cases]
        if not any(e for _, e in truth):
            raise AuditError(f"{manifest}: no case has an event; a c-index needs at least one")


def _one_line(e: BaseException) -> str:
    msg = str(e) if isinstance(e, MedTransferError) else f"{type(e).__name__}: {e}"
    return " ".join(msg.split())[:300]


def _factory(p: Perturbation | None, severity: float, seed: tuple[int, ...]) -> Any:
    """``predictor.perturbation``: modality -> fn(x, **meta) (None outside ``p``'s modality or at 0)."""
    if p is None or severity == 0:
        return None
    rng = np.random.default_rng(list(seed))

    def hook(modality: str) -> Any:
        if modality != p.modality:
            return None
        return lambda x, **meta: p(x, severity, rng, **meta)

    return hook


def select_perturbations(modalities: tuple[str, ...], names: list[str] | None = None) -> list[Perturbation]:
    """The registry's perturbations for these modalities, optionally only ``names`` (``name`` or
    ``modality/name``).

    Raises:
        AuditError: an unknown name, or nothing left.
    """
    avail = [p for m in modalities for p in PERTURBATIONS.get(m, {}).values()]
    if names:
        want = {n.strip() for n in names if n.strip()}
        known = {p.name for p in avail} | {f"{p.modality}/{p.name}" for p in avail}
        bad = sorted(want - known)
        if bad:
            raise AuditError(
                f"unknown perturbation(s) {', '.join(bad)} for this bundle (known: {', '.join(sorted(known))})"
            )
        avail = [p for p in avail if p.name in want or f"{p.modality}/{p.name}" in want]
    if not avail:
        raise AuditError(f"no perturbation registered for this predictor's input ({', '.join(modalities) or 'none'})")
    return avail


def run_audit(
    bundle_dir: str | Path,
    manifest: str | Path,
    out_dir: str | Path,
    perturbations: list[str] | None = None,
    severities: int | None = None,
    max_cases: int = 0,
    split: str | None = None,
    seed: int = 0,
    options: dict[str, Any] | None = None,
    run_dir: str | Path | None = None,
    epsilons: list[float] | None = None,
    pgd_steps: int = 10,
    progress: bool = True,
) -> dict[str, Any]:
    """Audit a bundle on a labelled manifest; write ``audit.json``, ``audit.md``, ``audit_cases.csv`` and plots.

    Args:
        bundle_dir: the bundle (verified on load).
        manifest: labelled manifest (see the module docstring for columns).
        out_dir: output folder (created).
        perturbations: only these (``name`` or ``modality/name``); default all that fit.
        severities: severities per perturbation, 0 included (default: the whole ladder).
        max_cases: audit at most this many cases (0 = all).
        split: only manifest rows of this split.
        seed: the perturbations' random seed.
        options: predictor options (``--opt``).
        run_dir: also run the adversarial audit (FGSM / PGD, torch) on this run's model.
        epsilons: adversarial budgets in input units (default per modality).
        pgd_steps: PGD iterations per budget.
        progress: show a rich progress bar.

    Returns:
        The ``audit.json`` content.
    """
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.outputs import report_folder

    t0 = time.perf_counter()
    out = Path(out_dir)
    if seed < 0:
        raise AuditError(f"--seed must be >= 0 (got {seed})")
    if epsilons is not None and not all(math.isfinite(e) and e >= 0 for e in epsilons):
        raise AuditError(f"--epsilon must be finite and >= 0 (got {', '.join(f'{e:g}' for e in epsilons)})")
    bundle = load_bundle(bundle_dir)
    kind = task_kind(bundle)
    cases = load_cases(manifest, kind, max_cases, split)
    check_labels(cases, kind, list(bundle.labels or []), manifest)
    with report_folder(out, REPORT_FILES, "audit", [manifest, *(c.path for c in cases)]) as stage:
        return _run_audit(
            bundle,
            kind,
            cases,
            manifest,
            out,
            stage,
            perturbations,
            severities,
            seed,
            options,
            run_dir,
            epsilons,
            pgd_steps,
            progress,
            t0,
        )


def _run_audit(
    bundle: Any,
    kind: str,
    cases: list[AuditCase],
    manifest: str | Path,
    out: Path,
    stage: Path,
    perturbations: list[str] | None,
    severities: int | None,
    seed: int,
    options: dict[str, Any] | None,
    run_dir: str | Path | None,
    epsilons: list[float] | None,
    pgd_steps: int,
    progress: bool,
    t0: float,
) -> dict[str, Any]:
    from medtransfer.shared.runtime.predictor import build_predictor
    from medtransfer.shared.runtime.score import path_problem

    if run_dir is not None:  # refuse a wrong --run before any work
        from medtransfer.shared.rundir import RunDir

        run_app = RunDir(run_dir).info().get("app")
        if run_app != bundle.app:
            raise AuditError(f"{run_dir}: a run of app '{run_app}', but the bundle is of app '{bundle.app}'")
    opts = dict(options or {})
    if kind == "segmentation":  # the predictor writes masks.npz under out_dir: a scratch folder
        opts.setdefault("out_dir", str(stage / "scratch"))
        opts.setdefault("gif", "false")
    opts.pop("plot", None)
    predictor = build_predictor(bundle, **opts)
    perts = select_perturbations(tuple(getattr(predictor, "modalities", ()) or ()), perturbations)
    labels = list(bundle.labels or [])
    folders_ok = bool(getattr(predictor, "accepts_folders", False))
    capture: list[tuple[int, dict[str, np.ndarray]]] = []

    def answer(c: AuditCase) -> dict[str, Any]:
        problem = path_problem(c.path, folders_ok)
        if problem:
            raise InputError(c.path, problem)
        extra = dict(c.extra)
        if kind == "segmentation" and not (extra.get("mask") or extra.get("box")):
            extra["mask"] = c.label
        return outcome(kind, predictor.answer(c.path, **extra), labels)

    rows: list[dict[str, Any]] = []
    plan = [(p, s) for p in perts for s in ladder(p, severities)[1:]]
    from rich.progress import Progress

    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("audit", total=len(cases) * (1 + len(plan)))
        base: dict[str, dict[str, Any]] = {}
        ok_cases: list[AuditCase] = []
        real_run = None
        if run_dir is not None:  # record the model inputs of the plain answers for the adversarial part
            real_run = bundle.run

            def recording_run(feeds: dict[str, np.ndarray], *a: Any, **k: Any) -> dict[str, np.ndarray]:
                capture.append((len(ok_cases), {n: np.array(v) for n, v in feeds.items()}))
                return real_run(feeds, *a, **k)

            bundle.run = recording_run
        for c in cases:
            predictor.perturbation = None
            try:
                base[c.case_id] = answer(c)
                ok_cases.append(c)
                rows.append(_row(c, "", 0.0, "ok", "", base[c.case_id]))
            except Exception as e:  # noqa: BLE001 - a bad case is an error row, the audit goes on
                capture[:] = [cap for cap in capture if cap[0] != len(ok_cases)]
                rows.append(_row(c, "", 0.0, "error", _one_line(e), None))
            bar.advance(task)
        if real_run is not None:
            bundle.run = real_run
        if not ok_cases:  # the error rows are kept; an earlier report in -o is left as it was
            _write_rows(out / ERRORS_FILE, rows)
            raise AuditError(
                f"{manifest}: every case failed at severity 0 (error rows: {out / ERRORS_FILE}); nothing to audit"
            )
        sev0 = metric_from_answers(kind, [base[c.case_id] for c in ok_cases], ok_cases)
        risk_cut = float(np.median([base[c.case_id]["risk"] for c in ok_cases])) if kind == "survival" else 0.0
        results: list[dict[str, Any]] = []
        for pi, p in enumerate(perts):
            for si, s in enumerate(ladder(p, severities)):
                if s == 0:
                    results.append(_result(p, s, sev0, len(ok_cases), len(ok_cases), 0.0))
                    continue
                got, got_cases, changed = [], [], 0
                for ci, c in enumerate(ok_cases):
                    predictor.perturbation = _factory(p, s, (seed, pi, si, ci))
                    try:
                        o = answer(c)
                        got.append(o)
                        got_cases.append(c)
                        changed += _changed(kind, o, base[c.case_id], risk_cut)
                        rows.append(_row(c, f"{p.modality}/{p.name}", s, "ok", "", o))
                    except Exception as e:  # noqa: BLE001 - refused under perturbation: counted, kept as a row
                        rows.append(_row(c, f"{p.modality}/{p.name}", s, "error", _one_line(e), None))
                    bar.advance(task)
                m = metric_from_answers(kind, got, got_cases) if got else {"metric": float("nan")}
                results.append(
                    _result(p, s, m, len(got), len(ok_cases), changed / max(len(got), 1), len(ok_cases) - len(got))
                )
        predictor.perturbation = None
    report: dict[str, Any] = {
        "bundle": bundle.provenance(),
        "app": bundle.app,
        "task": bundle.task,
        "kind": kind,
        "manifest": str(manifest),
        "seed": seed,
        "n_cases": len(cases),
        "n_ok": len(ok_cases),
        "n_error": len(cases) - len(ok_cases),
        "metric_name": sev0["metric_name"],
        "severity0": {k: v for k, v in sev0.items() if k != "reliability"},
        "results": results,
        "seconds": 0.0,
    }
    if run_dir is not None:
        from medtransfer.shared.audit.adversarial import adversarial_audit

        report["adversarial"] = adversarial_audit(
            run_dir, bundle, capture, [ok_cases[i].label for i, _ in capture], epsilons=epsilons, steps=pgd_steps
        )
    report["seconds"] = round(time.perf_counter() - t0, 2)
    _write_rows(stage / "audit_cases.csv", rows)
    report["plots"] = [str(out / Path(p).name) for p in _plots(stage, report, sev0)]
    (stage / "audit.json").write_text(json.dumps(_finite(report), indent=2, default=_jsonable))
    (stage / "audit.md").write_text(markdown(report))
    return report


def _finite(x: Any) -> Any:
    """NaN / inf -> None, recursively (audit.json stays strict JSON)."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, (float, np.floating)) and not np.isfinite(x):
        return None
    return x


def _jsonable(x: Any) -> Any:
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _row(c: AuditCase, pert: str, s: float, status: str, err: str, o: dict[str, Any] | None) -> dict[str, Any]:
    r: dict[str, Any] = {"case": c.case_id, "perturbation": pert, "severity": s, "status": status, "error": err}
    r["prediction"] = "" if o is None else o.get("pred", "")
    r["confidence"] = "" if o is None or o.get("conf") is None else round(float(o["conf"]), 5)
    r["risk"] = "" if o is None or o.get("risk") is None else round(float(o["risk"]), 5)
    return r


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = ["case", "perturbation", "severity", "status", "error", "prediction", "confidence", "risk"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def _result(
    p: Perturbation, s: float, m: dict[str, Any], n: int, n_total: int, flips: float, rejected: int = 0
) -> dict[str, Any]:
    r = {
        "perturbation": f"{p.modality}/{p.name}",
        "unit": p.unit,
        "severity": s,
        "n": n,
        "metric": m.get("metric"),
        "flip_share": round(flips, 4),
        "rejected_share": round(rejected / max(n_total, 1), 4),
    }
    for k in ("accuracy", "ece", "reliability"):
        if k in m:
            r[k] = m[k]
    return r


# ------------------------------------------------------------------------------------------ report
def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(report: dict[str, Any], plot_prefix: str = "") -> str:
    """The audit as Markdown: a summary line, one table row per perturbation and severity, plot links.

    Args:
        report: :func:`run_audit`'s result.
        plot_prefix: prepended to the plot file names (relative links from another folder).
    """
    mname = report["metric_name"]
    s0 = report["severity0"]
    lines = [
        f"**{report['app']}** bundle `{report['bundle'].get('bundle_name', '')}` on {report['n_ok']} labelled cases"
        f" ({report['n_error']} error rows): {mname} at severity 0 = {_fmt(s0.get('metric'))}"
        + (f", ECE {_fmt(s0.get('ece'))}" if "ece" in s0 else ""),
        "",
        f"| perturbation | severity | unit | n | {mname} | ECE | answers changed | refused |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in report["results"]:
        if r["severity"] == 0:
            continue
        lines.append(
            f"| {r['perturbation']} | {r['severity']:g} | {r['unit']} | {r['n']} | {_fmt(r['metric'])} | "
            f"{_fmt(r.get('ece'))} | {r['flip_share']:.0%} | {r['rejected_share']:.0%} |"
        )
    worst = _worst(report)
    if worst:
        lines += ["", f"Largest drop: {worst}."]
    adv = report.get("adversarial")
    if adv:
        lines += ["", adversarial_markdown(adv)]
    plots = report.get("plots") or []
    if plots:
        lines += ["", " ".join(f"![{Path(p).stem}]({plot_prefix}{Path(p).name})" for p in plots)]
    return "\n".join(lines) + "\n"


def adversarial_markdown(adv: dict[str, Any]) -> str:
    """The adversarial part as a Markdown table (or its note when it did not run)."""
    if adv.get("note"):
        return f"Adversarial: {adv['note']}"
    head = f"Adversarial ({adv['n_samples']} model inputs, epsilon in {adv['unit']}):"
    lines = [head, "", "| epsilon | FGSM accuracy | PGD accuracy |", "| --- | --- | --- |"]
    for r in adv["results"]:
        lines.append(f"| {r['epsilon']:g} | {r['fgsm_accuracy']:.3f} | {r['pgd_accuracy']:.3f} |")
    return "\n".join(lines)


def _worst(report: dict[str, Any]) -> str:
    base = report["severity0"].get("metric")
    rs = [r for r in report["results"] if r["severity"] and r["metric"] is not None and np.isfinite(r["metric"])]
    if base is None or not rs:
        return ""
    r = min(rs, key=lambda r: r["metric"])
    if r["metric"] >= base:
        return f"none: no perturbation lowered {report['metric_name']} below {_fmt(base)}"
    return (
        f"{r['perturbation']} at {r['severity']:g} {r['unit']}: {report['metric_name']} "
        f"{_fmt(base)} -> {_fmt(r['metric'])}"
    )


def _plots(out: Path, report: dict[str, Any], sev0: dict[str, Any]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by: dict[str, list[dict[str, Any]]] = {}
    for r in report["results"]:
        by.setdefault(r["perturbation"], []).append(r)
    n = len(by)
    cols = min(4, n)
    rows_ = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows_, cols, figsize=(3.2 * cols, 2.6 * rows_), squeeze=False)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    for ax, (name, rs) in zip(axes.ravel(), by.items()):
        sev = [r["severity"] for r in rs]
        ax.plot(sev, [r["metric"] for r in rs], "o-", color="tab:blue", label=report["metric_name"])
        ax.plot(sev, [r["flip_share"] for r in rs], "s--", color="tab:red", label="answers changed")
        if any(r["rejected_share"] for r in rs):
            ax.plot(sev, [r["rejected_share"] for r in rs], "x:", color="grey", label="refused")
        ax.set_ylim(-0.03, 1.03)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel(rs[0]["unit"], fontsize=8)
        ax.tick_params(labelsize=7)
    axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{report['app']}: robustness to acquisition perturbations", fontsize=10)
    fig.tight_layout()
    f1 = out / "robustness.png"
    fig.savefig(f1, dpi=100)
    plt.close(fig)
    plots = [str(f1)]
    if "reliability" in sev0:
        fig, ax = plt.subplots(figsize=(4.2, 4.0))
        ax.plot([0, 1], [0, 1], ":", color="grey", lw=1)
        rel = np.array(sev0["reliability"])
        ax.plot(rel[:, 0], rel[:, 1], "o-", color="k", lw=2, label=f"severity 0 (ECE {sev0.get('ece', 0):.3f})")
        for name, rs in by.items():
            top = rs[-1]
            if top["severity"] and top.get("reliability"):
                rr = np.array(top["reliability"])
                ax.plot(rr[:, 0], rr[:, 1], ".-", lw=0.8, alpha=0.7, label=f"{name} {top['severity']:g}")
        ax.set_xlabel("confidence")
        ax.set_ylabel("accuracy")
        ax.set_xlim(0, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=6, loc="upper left")
        ax.set_title("reliability (strongest severity per perturbation)", fontsize=8)
        fig.tight_layout()
        f2 = out / "reliability.png"
        fig.savefig(f2, dpi=100)
        plt.close(fig)
        plots.append(str(f2))
    adv = report.get("adversarial") or {}
    if adv.get("results"):
        fig, ax = plt.subplots(figsize=(4.2, 3.2))
        eps = [r["epsilon"] for r in adv["results"]]
        ax.plot(eps, [r["fgsm_accuracy"] for r in adv["results"]], "o-", label="FGSM")
        ax.plot(eps, [r["pgd_accuracy"] for r in adv["results"]], "s--", label=f"PGD ({adv.get('pgd_steps')} steps)")
        ax.set_xlabel(f"epsilon ({adv['unit']})")
        ax.set_ylabel("accuracy (model inputs)")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8)
        ax.set_title(f"{report['app']}: adversarial robustness", fontsize=9)
        fig.tight_layout()
        f3 = out / "adversarial.png"
        fig.savefig(f3, dpi=100)
        plt.close(fig)
        plots.append(str(f3))
    return plots


# ------------------------------------------------------------------------------------------ demo
def find_manifest(work: Path, bundle: Any, predictor: Any) -> Path | None:
    """The labelled manifest under an app's demo folder that fits its bundle best: the one named after
    the bundle's data card if it has usable rows, else the one with the most usable rows.

    A row is usable when its input has one of the predictor's suffixes (or is a folder it reads) and
    its label fits the task: a bundle label (classification), a mask ``.npz`` (segmentation), or
    ``time`` / ``event`` columns (survival).
    """
    import csv as _csv

    kind = task_kind(bundle)
    labels = set(bundle.labels or [])
    sfx = tuple(s.lower() for s in getattr(predictor, "suffixes", ()) or ())
    card = Path(str((getattr(bundle, "meta", None) or {}).get("data_card") or "")).stem.lower()
    best: tuple[tuple[bool, int], Path | None] = ((False, 0), None)
    for f in sorted(work.rglob("*.csv")):
        try:
            with open(f, newline="", encoding="utf-8-sig") as fh:
                rows = list(_csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, _csv.Error):
            continue
        if not rows or "path" not in rows[0] or "label" not in rows[0]:
            continue
        n = 0
        for r in rows:
            p = str(r.get("path") or "")
            if sfx and not p.lower().endswith(sfx) and not getattr(predictor, "accepts_folders", False):
                continue
            lab = str(r.get("label") or "")
            if kind == "classification":
                n += lab in labels
            elif kind == "segmentation":
                n += lab.endswith(".npz")
            else:
                n += bool(r.get("time") or r.get("survival_months"))
        key = (bool(card) and card in f.stem.lower() and n > 0, n)  # the bundle's own dataset first
        if n and key > best[0]:
            best = (key, f)
    return best[1]


def demo_section(demo_out: Path, fast: bool) -> str:
    """One audit per app bundle of a finished ``medtransfer demo`` folder, as a report section.

    Looks for ``demo_out/bundles/<app>`` and, under ``demo_out/work/<app>``, the labelled manifest
    that fits the bundle (:func:`find_manifest`; its ``test`` split when it has one), audits it into
    ``demo_out/audit/<app>/`` and returns the Markdown (tables, plot links relative to ``demo_out``).

    Args:
        demo_out: the demo's output folder.
        fast: few cases (8) and 3 severities per perturbation (0, mild, strongest).

    Returns:
        The section's Markdown (an app without a usable manifest gets a one-line note).
    """
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    demo_out = Path(demo_out)
    parts = [
        "## Robustness audit",
        "",
        "`medtransfer audit BUNDLE -m MANIFEST -o DIR` per app: the task metric, calibration and the share of "
        "answers that change under acquisition perturbations (`shared.runtime.perturb`), severity 0 = plain `score`.",
        "",
    ]
    bundles = sorted(p for p in (demo_out / "bundles").glob("*") if (p / "metadata.json").is_file())
    if not bundles:
        return "\n".join(parts + ["_No bundle in this demo folder._", ""])
    for b in bundles:
        app = b.name
        parts.append(f"### {app}\n")
        try:
            bundle = load_bundle(b)
            man = find_manifest(demo_out / "work" / app, bundle, build_predictor(bundle))
            if man is None:
                parts.append(f"_No labelled manifest for this bundle under `work/{app}/`; not audited._\n")
                continue
            from medtransfer.shared.manifest import read_manifest

            split = "test" if any(r.split == "test" for r in read_manifest(man)) else None
            rep = run_audit(
                b,
                man,
                demo_out / "audit" / app,
                severities=3 if fast else None,
                max_cases=8 if fast else 0,
                split=split,
                progress=False,
            )
            rel = man.relative_to(demo_out) if man.is_relative_to(demo_out) else man
            parts.append(f"_manifest `{rel}`{f' (split {split})' if split else ''}; {rep['seconds']:.0f} s_\n")
            parts.append(markdown(rep, plot_prefix=f"audit/{app}/"))
        except MedTransferError as e:
            parts.append(f"_Audit failed: {_one_line(e)}_\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------------ model card
def audit_summary(report: dict[str, Any], manifest_name: str = "") -> dict[str, Any]:
    """The compact audit record a bundle's metadata keeps (``metadata["audit"]``; no paths, no case ids)."""
    return {
        "manifest": manifest_name,
        "n_cases": report["n_ok"],
        "metric_name": report["metric_name"],
        "severity0": {
            k: _num(report["severity0"].get(k)) for k in ("metric", "accuracy", "ece") if k in report["severity0"]
        },
        "rows": [
            {
                k: _num(r.get(k)) if k in ("metric", "ece") else r.get(k)
                for k in ("perturbation", "severity", "unit", "n", "metric", "ece", "flip_share", "rejected_share")
            }
            for r in report["results"]
            if r["severity"]
        ],
    }


def _num(v: Any) -> float | None:
    return float(v) if v is not None and np.isfinite(float(v)) else None


def card_section(summary: dict[str, Any]) -> str:
    """The model card's "Robustness audit" section from :func:`audit_summary`."""
    m = summary.get("metric_name", "metric")
    s0 = summary.get("severity0") or {}
    lines = [
        "## Robustness audit",
        "",
        f"`medtransfer audit` on {summary.get('n_cases')} labelled cases"
        f"{' of `' + summary['manifest'] + '`' if summary.get('manifest') else ''}: {m} {_fmt(s0.get('metric'))}"
        + (f", ECE {_fmt(s0.get('ece'))}" if s0.get("ece") is not None else "")
        + " unperturbed.",
        "",
        f"| perturbation | severity | unit | {m} | answers changed | refused |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary.get("rows") or []:
        lines.append(
            f"| {r['perturbation']} | {r['severity']:g} | {r['unit']} | {_fmt(r.get('metric'))} | "
            f"{r['flip_share']:.0%} | {r['rejected_share']:.0%} |"
        )
    return "\n".join(lines) + "\n"


def attach_audit(bundle_dir: str | Path, manifest: str | Path, severities: int | None = None) -> dict[str, Any]:
    """Audit a staged bundle on ``manifest`` and put the summary into its metadata and model card; re-seal.

    Called by the export path (``medtransfer export --audit MANIFEST``) after the bundle is complete.

    Returns:
        The metadata's ``audit`` summary.
    """
    from medtransfer.shared.export.bundle_writer import _card, write_checksums
    from medtransfer.shared.runtime.schema import CARD, METADATA, validate_metadata

    bundle_dir = Path(bundle_dir)
    with tempfile.TemporaryDirectory(prefix="medtransfer_audit_") as tmp:
        rep = run_audit(bundle_dir, manifest, tmp, severities=severities, progress=False)
    summary = audit_summary(rep, Path(manifest).name)
    meta = json.loads((bundle_dir / METADATA).read_text(encoding="utf-8"))
    meta["audit"] = summary
    desc = validate_metadata(meta, f"{bundle_dir / METADATA} (being written)")
    (bundle_dir / METADATA).write_text(desc.to_json(), encoding="utf-8")
    (bundle_dir / CARD).write_text(_card(desc.to_dict()), encoding="utf-8")
    write_checksums(bundle_dir, list(desc.files))
    return summary
