"""Reference statistics for ``medtransfer estimate``, written once at export by the shared export path.

:func:`attach_reference` runs inside :func:`medtransfer.shared.export.export_bundle`, after the app
has written its bundle into the staging folder: it opens the staged bundle with the torch-free
runtime, runs the app's predictor over the run's VALIDATION cases (the app's ``reference_cases``
hook; never the test split) and the app's ``input_stats`` hook over the same inputs, and writes
``reference.json`` (schema ``medtransfer-reference/1``, see
:class:`medtransfer.shared.runtime.schema.ReferenceStats`):

- classifiers: per validation case the predicted and true class and two confidence scores
  (max-softmax and negative entropy; no paths), validation accuracy and balanced accuracy, the ATC
  thresholds fitted on each score (share of cases above = validation accuracy; negative entropy is
  the primary one), and the confidence distributions (sorted samples, <= 1000 quantiles);
- every bundle: reference samples of each input statistic (``stats``) and, for non-classifiers, of
  each numeric output (``outputs``: risk, mask areas...).

The file is listed in the metadata's ``files`` and in ``checksums.sha256``; the metadata gains a short
``reference`` summary (or ``{"available": false, "reason"}`` when the app or the run gives no
validation cases, which ``estimate`` reports).  Torch-free.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime.schema import CARD, METADATA, REFERENCE_SCHEMA, validate_metadata, validate_reference

REFERENCE_FILE = "reference.json"
#: most validation cases the reference is built from (a seeded sample beyond): export stays bounded on
#: a large validation split (EchoNet-Dynamic has 1288 validation videos); drift tests need >= 10
MAX_REFERENCE_CASES = 300


def manifest_val_cases(manifest: str | Path) -> list[dict[str, Any]]:
    """The ``val`` rows of a generic manifest as reference cases (``path``, ``label``, ``extra``).

    For apps' ``reference_cases`` hooks whose runs record the manifest they were trained on.
    """
    from medtransfer.shared.manifest import read_manifest

    return [
        {"path": str(r.path), "label": str(r.label), "extra": dict(r.extra)}
        for r in read_manifest(manifest)
        if r.split == "val"
    ]


def _kind(task: str, app: str) -> str:
    t = f"{app} {task}".lower()
    if "surv" in t or "prognos" in t:
        return "survival"
    if "seg" in t or "track" in t:
        return "segmentation"
    return "other"


def build_reference(
    bundle: Any, cases: list[dict[str, Any]], progress: bool = False
) -> tuple[dict[str, Any] | None, str]:
    """Run the bundle over reference cases and summarise them.

    Args:
        bundle: the staged bundle (a verified :class:`Bundle`).
        cases: ``{"path", "label", "extra"}`` validation cases.
        progress: show a progress bar.

    Returns:
        (the reference dict, "") or (None, the reason there is none).
    """
    from rich.progress import Progress

    from medtransfer.shared.runtime import estimate as est
    from medtransfer.shared.runtime.predictor import build_predictor

    predictor = build_predictor(bundle)
    stats_fn = est.stats_hook(bundle.app)
    labels = list(bundle.labels)
    obs: list[tuple[str, dict[str, Any]]] = []
    n_err = 0
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("reference statistics (validation split)", total=len(cases))
        for c in cases:
            try:
                obs.append(
                    (str(c.get("label") or ""), est.observe(predictor, stats_fn, Path(c["path"]), c.get("extra") or {}))
                )
            except Exception:  # noqa: BLE001 - a bad validation case is counted, not fatal
                n_err += 1
            bar.update(task, advance=1)
    if not obs:
        return None, f"none of the {len(cases)} validation cases could be read"
    classifier = labels and all(o["kind"] == "classifier" for _, o in obs)
    ref: dict[str, Any] = {
        "schema": REFERENCE_SCHEMA,
        "kind": "classifier" if classifier else _kind(bundle.task, bundle.app),
        "split": "val",
        "n_cases": len(obs),
        "n_errors": n_err,
        "labels": labels,
    }
    stat_names = sorted({k for _, o in obs for k in (o.get("stats") or {})})
    ref["stats"] = {k: est.reference_sample(o["stats"].get(k, np.nan) for _, o in obs) for k in stat_names}
    if classifier:
        lab = [(labels.index(y), o) for y, o in obs if y in labels]
        if not lab:
            return None, "the validation cases carry none of the bundle's labels"
        y = np.array([t for t, _ in lab])
        pred = np.array([o["pred"] for _, o in lab])
        acc = float(np.mean(y == pred))
        scores = {sf: np.array([o[sf] for _, o in lab]) for sf in est.SCORE_FUNCTIONS}
        keep = slice(0, est.MAX_VAL_CASES)
        ref.update(
            accuracy=round(acc, 6),
            balanced_accuracy=round(est.balanced_accuracy(y, pred, len(labels)), 6),
            score_functions={
                sf: {
                    "atc_threshold": est.atc_threshold(scores[sf], acc),
                    "primary": sf == est.PRIMARY_SCORE,
                    "definition": "max_c p_c" if sf == "max_softmax" else "sum_c p_c log p_c (negative entropy)",
                }
                for sf in est.SCORE_FUNCTIONS
            },
            val_cases={
                "pred": [int(v) for v in pred[keep]],
                "label": [int(v) for v in y[keep]],
                **{sf: [round(float(v), 6) for v in scores[sf][keep]] for sf in est.SCORE_FUNCTIONS},
            },
            confidence={sf: est.reference_sample(scores[sf]) for sf in est.SCORE_FUNCTIONS},
            confidence_quantiles={
                sf: {str(q): round(float(np.quantile(scores[sf], q)), 6) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
                for sf in est.SCORE_FUNCTIONS
            },
            confidence_histogram={
                "max_softmax": {
                    "edges": [round(float(e), 2) for e in np.linspace(0, 1, 11)],
                    "counts": [int(v) for v in np.histogram(scores["max_softmax"], bins=np.linspace(0, 1, 11))[0]],
                }
            },
            n_labelled=len(lab),
        )
    else:
        out_names = sorted({k for _, o in obs for k in (o.get("outputs") or {})})
        ref["outputs"] = {k: est.reference_sample(o["outputs"].get(k, np.nan) for _, o in obs) for k in out_names}
    return ref, ""


def attach_reference(run_dir: str | Path, bundle_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Add ``reference.json`` to a staged bundle (or record why there is none) and re-seal it.

    Args:
        run_dir: the run folder (given to the app's ``reference_cases`` hook).
        bundle_dir: the staged bundle folder, complete and sealed by ``write_bundle``.
        progress: show a progress bar.

    Returns:
        The metadata's ``reference`` summary.
    """
    from medtransfer.shared.export.bundle_writer import _card, write_checksums
    from medtransfer.shared.plugins import get_app, load_object
    from medtransfer.shared.runtime.bundle import Bundle

    bundle_dir = Path(bundle_dir)
    bundle = Bundle(bundle_dir)
    spec = get_app(bundle.app)
    ref: dict[str, Any] | None = None
    if not spec.reference_cases:
        reason = f"app '{bundle.app}' gives no validation cases for reference statistics"
    else:
        try:
            cases = list(load_object(spec.reference_cases)(Path(run_dir)) or [])
        except Exception as e:  # noqa: BLE001 - the bundle is still exported, without reference
            cases, reason = [], f"validation cases unavailable ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
        else:
            reason = "the run has no validation cases"
        n_available = len(cases)
        if n_available > MAX_REFERENCE_CASES:  # seeded, in the split's order: the same bundle every export
            keep = set(np.random.default_rng(0).permutation(n_available)[:MAX_REFERENCE_CASES].tolist())
            cases = [c for i, c in enumerate(cases) if i in keep]
        if cases:
            try:
                ref, reason = build_reference(bundle, cases, progress=progress)
                if ref is not None:
                    ref["n_validation_cases"] = n_available  # the sample's population (n_cases: used)
            except Exception as e:  # noqa: BLE001 - the bundle is still exported, without reference
                ref, reason = (
                    None,
                    f"reference statistics failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})",
                )
    meta = json.loads((bundle_dir / METADATA).read_text(encoding="utf-8"))
    if ref is None:
        print(f"warning: {bundle_dir.name}: no reference statistics for `estimate`: {reason}", file=sys.stderr)
        summary: dict[str, Any] = {"available": False, "reason": reason}
    else:
        validate_reference(ref, f"{bundle_dir / REFERENCE_FILE} (being written)")
        (bundle_dir / REFERENCE_FILE).write_text(json.dumps(ref, separators=(",", ":")) + "\n", encoding="utf-8")
        from medtransfer.shared.utils.hashing import sha256_file

        meta["files"][REFERENCE_FILE] = sha256_file(bundle_dir / REFERENCE_FILE)
        summary = {
            "available": True,
            "file": REFERENCE_FILE,
            "kind": ref["kind"],
            "split": "val",
            "n_cases": ref["n_cases"],
            "primary_score": "neg_entropy" if ref["kind"] == "classifier" else None,
            "accuracy": ref.get("accuracy"),
            "balanced_accuracy": ref.get("balanced_accuracy"),
            "statistics": sorted(ref["stats"]),
        }
    meta["reference"] = summary
    meta.setdefault("run_dir", str(Path(run_dir).resolve()))  # every app's bundle names the run it came from
    desc = validate_metadata(meta, f"{bundle_dir / METADATA} (being written)")
    (bundle_dir / METADATA).write_text(desc.to_json(), encoding="utf-8")
    (bundle_dir / CARD).write_text(_card(desc.to_dict()), encoding="utf-8")
    write_checksums(bundle_dir, list(desc.files))
    return summary
