"""Checking ``medtransfer estimate`` on shifted data with known labels, and its demo report section.

A labelled split (a manifest's ``test`` rows) is copied with one acquisition shift at a time
(:mod:`medtransfer.shared.runtime.perturb`, plus an EEG channel swap defined here), ``estimate`` runs
on each copy without its labels, and the estimated accuracy is compared with the true accuracy
on the same shifted cases.  The mean absolute error across shift levels is what we report.

Files are shifted per modality, by suffix (no app is named here): EEG recordings (``.edf``/``.bdf``,
read with MNE, written with edfio with an anonymous header), images (``.png``/``.jpg``/``.bmp``/
``.tif``, OpenCV), feature bags (``.h5``, h5py; ``features`` perturbations).  Torch-free.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.utils.errors import MedTransferError

EEG_SUFFIXES = (".edf", ".bdf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
H5_SUFFIXES = (".h5", ".hdf5")

#: modality -> [(shift name, severities)]; ``channel_swap`` is defined here, the rest in ``perturb``
SHIFTS: dict[str, list[tuple[str, tuple[float, ...]]]] = {
    "eeg": [
        ("gain", (3.0, 6.0, 12.0)),
        ("white_noise", (10.0, 20.0, 40.0)),
        ("line_noise_60hz", (20.0, 50.0)),
        ("channel_swap", (0.25, 0.5, 1.0)),
    ],
    "image": [("gain", (3.0, 6.0, 10.0)), ("speckle", (0.1, 0.25, 0.5)), ("depth_crop", (0.1, 0.2, 0.35))],
    "features": [("noise", (0.1, 0.25, 0.5))],
}
#: the short ladder (``fast``): one mid-level severity per shift
FAST_SHIFTS: dict[str, list[tuple[str, tuple[float, ...]]]] = {
    m: [(n, (sev[len(sev) // 2],)) for n, sev in v] for m, v in SHIFTS.items()
}


def modality_of(path: str | Path) -> str:
    """``eeg``, ``image`` or ``features`` from a file's suffix.

    Raises:
        MedTransferError: a suffix no shift is defined for.
    """
    s = Path(path).suffix.lower()
    if s in EEG_SUFFIXES:
        return "eeg"
    if s in IMAGE_SUFFIXES:
        return "image"
    if s in H5_SUFFIXES:
        return "features"
    raise MedTransferError(f"{Path(path).name}: no shift defined for '{s}' files")


def channel_swap(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Swapped electrode leads: ``round(s * channels / 2)`` random channel pairs exchanged (s = fraction)."""
    y = x.copy()
    n_pairs = min(x.shape[0] // 2, max(1, int(round(s * x.shape[0] / 2))))
    idx = rng.permutation(x.shape[0])[: 2 * n_pairs]
    for a, b in zip(idx[0::2], idx[1::2]):
        y[[a, b]] = x[[b, a]]
    return y


def _shift_array(x: np.ndarray, modality: str, name: str, severity: float, rng: np.random.Generator, **meta: Any):
    if severity == 0:
        return x.copy()
    if name == "channel_swap":
        return channel_swap(x, severity, rng)
    from medtransfer.shared.runtime.perturb import get

    return get(modality, name)(x, severity, rng, **meta)


def shift_file(src: Path, dst: Path, name: str, severity: float, rng: np.random.Generator) -> Path:
    """Write a shifted copy of one input file.

    Args:
        src: the input (EEG, image or feature bag).
        dst: where the copy goes (same suffix).
        name: the shift (a ``perturb`` name of the file's modality, or ``channel_swap`` for EEG).
        severity: in the shift's unit (0 = an unchanged copy).
        rng: random generator.

    Returns:
        The written copy.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    return _WRITERS[modality_of(src)](src, dst, name, severity, rng)


def _shift_eeg(src: Path, dst: Path, name: str, severity: float, rng: np.random.Generator) -> Path:
    import edfio
    import mne

    reader = mne.io.read_raw_bdf if src.suffix.lower() == ".bdf" else mne.io.read_raw_edf
    raw = reader(str(src), preload=True, verbose="error")
    sf = float(raw.info["sfreq"])
    x = _shift_array(raw.get_data() * 1e6, "eeg", name, severity, rng, sfreq=sf)
    lim = float(np.ceil(max(np.abs(x).max(), 1.0) * 1.05))
    sigs = [
        edfio.EdfSignal(row.astype(np.float64), sampling_frequency=sf, label=lab, physical_dimension="uV",
                        physical_range=(-lim, lim))
        for row, lab in zip(x, raw.ch_names)
    ]  # fmt: skip
    out = dst.with_suffix(".edf")
    edfio.Edf(sigs).write(out)  # anonymous header: no identifier is copied
    return out


def _shift_image(src: Path, dst: Path, name: str, severity: float, rng: np.random.Generator) -> Path:
    import cv2

    img = cv2.imread(str(src), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise MedTransferError(f"{src.name}: not a readable image")
    cv2.imwrite(str(dst), _shift_array(img, "image", name, severity, rng))
    return dst


def _shift_h5(src: Path, dst: Path, name: str, severity: float, rng: np.random.Generator) -> Path:
    import h5py

    with h5py.File(src, "r") as f, h5py.File(dst, "w") as g:
        for key in f:
            a = f[key][()]
            if key == "features" and severity:
                a = _shift_array(np.asarray(a, np.float32), "features", name, severity, rng)
            g.create_dataset(key, data=a)
    return dst


_WRITERS = {"eeg": _shift_eeg, "image": _shift_image, "features": _shift_h5}


def shifted_manifest(rows: Sequence[dict[str, str]], out_dir: Path, name: str, severity: float, seed: int = 0) -> Path:
    """Shifted copies of labelled cases and their manifest (``path,label,split``).

    Args:
        rows: ``{"path" (absolute), "label"}`` cases.
        out_dir: folder for the copies and ``manifest.csv``.
        name: the shift.
        severity: its severity.
        seed: random seed (one generator for the whole set).

    Returns:
        The manifest.
    """
    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    man = out_dir / "manifest.csv"
    with open(man, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        for i, r in enumerate(rows):
            src = Path(r["path"])
            dst = shift_file(src, out_dir / f"case{i:05d}{src.suffix.lower()}", name, severity, rng)
            w.writerow([dst.name, r["label"], "test"])
    return man


def split_rows(manifest: str | Path, split: str = "test", limit: int = 0) -> list[dict[str, str]]:
    """Labelled rows of one split of a manifest (``path`` absolute), at most ``limit`` (0 = all)."""
    from medtransfer.shared.manifest import read_manifest

    rows = [
        {"path": str(r.path), "label": str(r.label)} for r in read_manifest(manifest) if r.split == split and r.label
    ]
    return rows[:limit] if limit else rows


def validate(
    bundle_dir: str | Path,
    rows: Sequence[dict[str, str]],
    work_dir: str | Path,
    shifts: Sequence[tuple[str, Sequence[float]]] | None = None,
    n_boot: int = 100,
    progress: bool = False,
) -> dict[str, Any]:
    """Estimated vs true accuracy on shifted copies of labelled cases.

    Args:
        bundle_dir: a classifier bundle with reference statistics.
        rows: labelled cases (``path``, ``label``), e.g. :func:`split_rows` of the test split.
        work_dir: folder for the shifted copies, rows and estimates.
        shifts: ``[(name, severities)]`` (default: :data:`SHIFTS` of the cases' modality); the
            unshifted set is always included.
        n_boot: bootstrap resamples per estimate.
        progress: progress bars.

    Returns:
        ``levels`` (one per shift level: shift, severity, true / estimated accuracy, DoC, interval,
        drift flag), ``mae`` (overall and per shift, ATC-NE and DoC), ``plot``.
    """
    from medtransfer.shared.runtime.estimate import estimate

    if not rows:
        raise MedTransferError(f"{bundle_dir}: no labelled cases to validate the estimate on")
    work = Path(work_dir)
    modality = modality_of(rows[0]["path"])
    plan = [("none", 0.0)] + [(n, float(s)) for n, sev in (shifts or SHIFTS[modality]) for s in sev]
    levels = []
    for k, (name, sev) in enumerate(plan):
        tag = f"{name}_{sev:g}"
        man = shifted_manifest(rows, work / tag, name, sev, seed=k)
        res = estimate(bundle_dir, work / f"{tag}.json", manifest=man, overwrite=True, progress=progress,
                       n_boot=n_boot)  # fmt: skip
        if res.get("true_accuracy") is None or res.get("estimated_accuracy") is None:
            continue
        levels.append(
            {
                "shift": name,
                "severity": sev,
                "n_cases": res["n_cases"],
                "true_accuracy": res["true_accuracy"],
                "estimated_accuracy": res["estimated_accuracy"],
                "doc": res["methods"]["doc"],
                "atc_max_softmax": res["methods"]["atc_max_softmax"],
                "true_balanced_accuracy": res["true_balanced_accuracy"],
                "estimated_balanced_accuracy": res["estimated_balanced_accuracy"],
                "interval": res["interval"]["accuracy"],
                "drift": res["drift"]["flag"],
                "estimate_reliable": res.get("estimate_reliable", True),
                "drift_summary": res["drift"]["summary"],
            }
        )
    out: dict[str, Any] = {"levels": levels, "mae": mae_table(levels)}
    if levels:
        out["plot"] = str(plot_levels(levels, work / "estimate_vs_true.png"))
    (work / "validation.json").write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


def mae_table(levels: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean absolute error of each estimator against true accuracy, overall and per shift."""

    def mae(sel: Sequence[dict[str, Any]], key: str) -> float | None:
        return round(float(np.mean([abs(r[key] - r["true_accuracy"]) for r in sel])), 4) if sel else None

    out: dict[str, Any] = {
        "atc_neg_entropy": mae(levels, "estimated_accuracy"),
        "atc_max_softmax": mae(levels, "atc_max_softmax"),
        "doc": mae(levels, "doc"),
        "balanced_accuracy": round(
            float(np.mean([abs(r["estimated_balanced_accuracy"] - r["true_balanced_accuracy"]) for r in levels])), 4
        )
        if levels
        else None,
        "n_levels": len(levels),
        "atc_neg_entropy_where_reliable": mae(
            [r for r in levels if r.get("estimate_reliable", True)], "estimated_accuracy"
        ),
        "n_levels_reliable": sum(1 for r in levels if r.get("estimate_reliable", True)),
        "per_shift": {},
    }
    for name in dict.fromkeys(r["shift"] for r in levels):
        sel = [r for r in levels if r["shift"] == name]
        out["per_shift"][name] = {"atc_neg_entropy": mae(sel, "estimated_accuracy"), "doc": mae(sel, "doc")}
    return out


def plot_levels(levels: Sequence[dict[str, Any]], path: Path) -> Path:
    """Estimated vs true accuracy, one point per shift level (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name in dict.fromkeys(r["shift"] for r in levels):
        sel = [r for r in levels if r["shift"] == name]
        t = [r["true_accuracy"] for r in sel]
        e = [r["estimated_accuracy"] for r in sel]
        lo = [r["estimated_accuracy"] - (r["interval"] or [r["estimated_accuracy"]] * 2)[0] for r in sel]
        hi = [(r["interval"] or [r["estimated_accuracy"]] * 2)[1] - r["estimated_accuracy"] for r in sel]
        ax.errorbar(t, e, yerr=[lo, hi], fmt="o", ms=4, capsize=2, label=name)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true accuracy (shifted test cases)")
    ax.set_ylabel("estimated accuracy (ATC-NE, no labels)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ demo
def _bundles(demo_out: Path) -> list[Path]:
    """Bundles with reference statistics under a demo output folder (any depth)."""
    from medtransfer.shared.export.reference import REFERENCE_FILE

    seen: dict[bytes, Path] = {}
    for p in sorted(demo_out.rglob(REFERENCE_FILE), key=lambda p: (len(p.parts), str(p))):
        sums = p.parent / "checksums.sha256"
        if (p.parent / "metadata.json").is_file() and sums.is_file():
            seen.setdefault(sums.read_bytes(), p.parent)  # the same bundle copied twice is run once
    return sorted(seen.values())


def _test_rows(bundle_dir: Path, limit: int) -> list[dict[str, str]]:
    """The test split of the manifest the bundle's run was trained on (``metadata.run_dir`` -> run.json)."""
    from medtransfer.shared.rundir import RunDir

    meta = json.loads((bundle_dir / "metadata.json").read_text(encoding="utf-8"))
    run_dir = meta.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return []
    manifest = RunDir(run_dir).info().get("manifest")
    return split_rows(manifest, "test", limit) if manifest and Path(manifest).is_file() else []


def demo_section(demo_out: Path, fast: bool = True) -> str:
    """The "New site without labels" section of the demo report.

    For each bundle with reference statistics under ``demo_out`` whose run's manifest has a labelled
    test split, ``estimate`` runs on shifted copies of the test cases (:data:`FAST_SHIFTS` when
    ``fast``) and the table compares true and estimated accuracy.

    Args:
        demo_out: the finished demo output folder.
        fast: one severity per shift and at most 40 test cases.

    Returns:
        Markdown.
    """
    demo_out = Path(demo_out)
    lines = [
        "## New site without labels",
        "",
        "`medtransfer estimate BUNDLE --input-dir SITE -o estimate.json` estimates accuracy without labels "
        "(ATC with negative entropy, fitted on the validation split at export) and flags drift of input "
        "statistics and confidences (KS + PSI).  Below: the test split copied with one acquisition shift at a "
        "time; true accuracy uses the labels, the estimate does not.  When input statistics drift, the estimate "
        "is marked unreliable: a shifted model can be confidently wrong.",
        "",
        "| app | shift | true accuracy | estimated (ATC-NE) | 95 % interval | DoC | drift | estimate reliable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    for b in _bundles(demo_out):
        meta = json.loads((b / "metadata.json").read_text(encoding="utf-8"))
        app = meta.get("app", "?")
        if (meta.get("reference") or {}).get("kind") != "classifier":
            notes.append(f"- `{app}`: {meta.get('reference', {}).get('kind', 'non-classifier')} bundle: drift only")
            continue
        rows = _test_rows(b, 40 if fast else 0)
        if not rows:
            notes.append(f"- `{app}`: no labelled test split found for {b.name}")
            continue
        try:
            modality = modality_of(rows[0]["path"])
            res = validate(b, rows, demo_out / "estimate" / app, (FAST_SHIFTS if fast else SHIFTS)[modality],
                           n_boot=100 if fast else 300)  # fmt: skip
        except MedTransferError as e:
            notes.append(f"- `{app}`: {e}")
            continue
        for r in res["levels"]:
            ci = r["interval"]
            lines.append(
                f"| {app} | {r['shift']} {r['severity']:g} | {r['true_accuracy']:.3f} | {r['estimated_accuracy']:.3f} "
                f"| {f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else 'n/a'} | {r['doc']:.3f} | {'yes' if r['drift'] else 'no'} "
                f"| {'yes' if r['estimate_reliable'] else 'no (inputs drifted)'} |"
            )
        m = res["mae"]
        n_ref = (meta.get("reference") or {}).get("n_cases")
        plot = Path(res["plot"])
        notes.append(
            f"- `{app}`: mean absolute error over {m['n_levels']} shift levels: ATC-NE {m['atc_neg_entropy']:.3f}, "
            f"DoC {m['doc']:.3f}; reference from {n_ref} validation cases, {len(rows)} test cases per level "
            f"(plot: `{plot.relative_to(demo_out) if plot.is_relative_to(demo_out) else plot}`)"
        )
        if n_ref is not None and n_ref < 10:
            notes.append(f"  - `{app}`: with under 10 validation cases the estimate and drift test have little power")
    return "\n".join(lines + [""] + notes + [""])
