"""The trivial-baseline guard: a model that does not beat doing nothing is not exported as if it did.

Every app's evaluation records, in ``run.json["baseline"]``, the task's trivial baseline beside
the model on the validation split (:func:`baseline_record`): copy-first-mask for tracking,
majority class for classifiers, C-index 0.5 for survival, mean grade for regression.

:func:`export_bundle` (the one way apps export) reads it: a run below its baseline is refused
unless ``force``; a forced export writes ``metadata["baseline"]`` and ``metadata["unreliable"]``
(the reason), the model card opens with a warning, and every ``predict`` / ``score`` answer of
that bundle carries ``unreliable: true`` with the reason (see ``Predictor.answer``).
Torch-free.
"""

from __future__ import annotations

import contextvars
import math
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from medtransfer.shared.utils.errors import MedTransferError


class BelowBaselineError(MedTransferError):
    """A run whose validation metric does not beat the task's trivial baseline."""


_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("medtransfer_baseline", default=None)


def baseline_record(
    metric: str, model: float, baseline: float, baseline_name: str, higher_is_better: bool = True, split: str = "val"
) -> dict[str, Any]:
    """What an evaluation stores as ``run.json["baseline"]``.

    Args:
        metric: the task metric (``accuracy``, ``dice``, ``c_index``, ``mse`` ...).
        model: the model's value on ``split``.
        baseline: the trivial baseline's value on the same cases.
        baseline_name: what the baseline is (``majority class``, ``copy first mask`` ...).
        higher_is_better: direction of the metric.
        split: where both were measured (never the test split for export decisions).

    Returns:
        A plain dict with ``beats_baseline`` filled in.
    """
    m, b = float(model), float(baseline)
    beats = math.isfinite(m) and (m > b if higher_is_better else m < b)
    return {
        "metric": metric,
        "model": m,
        "baseline": b,
        "baseline_name": baseline_name,
        "higher_is_better": bool(higher_is_better),
        "split": split,
        "beats_baseline": bool(beats),
    }


def baseline_verdict(rec: Mapping[str, Any] | None, run_dir: str | Path, force: bool) -> dict[str, Any] | None:
    """Check a run's baseline record before export.

    Returns:
        The record (with ``unreliable`` set to the reason when forced below baseline, or when forced
        without one).

    Raises:
        BelowBaselineError: below baseline, or no baseline recorded (the training stopped before it
            compared the model with its trivial baseline, or had no validation split), and not ``force``.
    """
    if rec and rec.get("no_validation") and "metric" not in rec:  # by design (e.g. a PKT source model)
        sys.stderr.write(f"export: {run_dir}: no baseline comparison: {rec['no_validation']}\n")
        return None
    if not rec:
        reason = (
            "records no comparison with a trivial baseline (its training did not finish, or it had no validation split)"
        )
        if not force:
            raise BelowBaselineError(f"{run_dir}: {reason}; export refused (--force exports it marked unreliable)")
        return {"unreliable": f"the run {reason}"}
    rec = dict(rec)
    if rec.get("beats_baseline", True):
        return rec
    reason = (
        f"validation {rec.get('metric')} {float(rec.get('model', float('nan'))):.4g} does not beat the trivial "
        f"baseline ({rec.get('baseline_name')}: {float(rec.get('baseline', float('nan'))):.4g})"
    )
    if not force:
        raise BelowBaselineError(f"{run_dir}: {reason}; export refused (--force exports it marked unreliable)")
    rec["unreliable"] = reason
    return rec


@contextmanager
def exporting(verdict: dict[str, Any] | None) -> Iterator[None]:
    """Make ``verdict`` visible to :func:`write_bundle` for the duration of one export."""
    token = _CURRENT.set(verdict)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_verdict() -> dict[str, Any] | None:
    """The baseline verdict of the export in progress (None outside :func:`export_bundle`)."""
    return _CURRENT.get()


def export_bundle(
    run_dir: str | Path,
    out_dir: str | Path,
    write: Callable[[Path, Path, Any], Any],
    quantize: str | None = None,
    overwrite: bool = True,
    force: bool = False,
) -> Path:
    """The one export path every app uses: baseline guard, staged (atomic) output, then rename.

    Args:
        run_dir: the run folder (its ``run.json["baseline"]`` is checked first).
        out_dir: the bundle folder (relative, absolute, empty, or a bundle to replace).
        write: ``write(run_dir, staging_dir, quantize)`` writes the bundle files into the staging folder.
        quantize: passed to ``write``.
        overwrite: replace an existing bundle at ``out_dir``.
        force: export a run below its baseline, marked unreliable.

    Returns:
        The bundle folder (absolute).
    """
    from medtransfer.shared.export.atomic import check_output, staged_output
    from medtransfer.shared.rundir import RunDir

    run = RunDir(run_dir)
    check_output(out_dir, overwrite)  # refuse before the (slow) export
    verdict = baseline_verdict(run.info().get("baseline"), run_dir, force)
    with staged_output(out_dir, overwrite=overwrite) as tmp, exporting(verdict):
        write(run.path, tmp, quantize)
        _reference_step(run.path, Path(tmp))
        if _AUDIT.get() is not None:  # `export --audit MANIFEST`: the audit summary goes into the model card
            from medtransfer.shared.runtime.audit import attach_audit

            attach_audit(Path(tmp), _AUDIT.get())
    return Path(out_dir).absolute()


_AUDIT: contextvars.ContextVar[Path | None] = contextvars.ContextVar("medtransfer_export_audit", default=None)


@contextmanager
def auditing(manifest: str | Path | None) -> Iterator[None]:
    """Exports inside this block audit the bundle on ``manifest`` (``shared.runtime.audit.attach_audit``)."""
    token = _AUDIT.set(Path(manifest) if manifest else None)
    try:
        yield
    finally:
        _AUDIT.reset(token)


def _reference_step(run_dir: Path, staged: Path) -> None:
    """Reference statistics for ``medtransfer estimate`` (``shared.export.reference``), when the app
    wrote a bundle into the staging folder."""
    from medtransfer.shared.export.reference import attach_reference
    from medtransfer.shared.runtime.schema import METADATA

    if (staged / METADATA).is_file():
        attach_reference(run_dir, staged)
