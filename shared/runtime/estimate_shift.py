"""Checking ``medtransfer estimate`` on shifted data with known labels, and its demo report section.

A labelled split (a manifest's ``test`` rows) is copied with one acquisition shift at a time
(:mod:`medtransfer.shared.runtime.perturb`, plus an EEG channel swap defined here), ``estimate`` runs
on each copy without its labels, and the estimated accuracy is compared with the true accuracy
on the same shifted cases.  The mean absolute error across shift levels is what we report.

Files are shifted per modality, by suffix (no app is named here): EEG recordings (``.edf``/``.bdf``,
read with MNE, written with edfio with an anonymous header), images (``.png``/``.jpg``/``.bmp``/
``.tif``, OpenCV), feature bags (``.h5``, h5py; ``features`` perturbations plus ``scale_offset``
defined here) and videos (``.avi``/``.mp4``/... with OpenCV, ``.mha`` with SimpleITK; ``gain`` and
``noise`` on every frame).

Bundles without an accuracy estimator (segmentation, survival) get a drift-only check in the demo:
``estimate`` on the test split as it is and on one shifted copy (:data:`DRIFT_SHIFTS`), reporting
whether drift was flagged and which statistics drifted.  Torch-free.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtransfer.shared.runtime.estimate import INSUFFICIENT_DATA
from medtransfer.shared.utils.errors import MedTransferError
from medtransfer.shared.utils.video import open_capture

EEG_SUFFIXES = (".edf", ".bdf")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
H5_SUFFIXES = (".h5", ".hdf5")
VIDEO_SUFFIXES = (".avi", ".mp4", ".mov", ".mkv", ".mha", ".mhd")

#: modality -> [(shift name, severities)]; ``channel_swap`` is defined here, the rest in ``perturb``
SHIFTS: dict[str, list[tuple[str, tuple[float, ...]]]] = {
    "eeg": [
        ("gain", (3.0, 6.0, 12.0)),
        ("white_noise", (10.0, 20.0, 40.0)),
        ("line_noise_60hz", (20.0, 50.0)),
        ("channel_swap", (0.25, 0.5, 1.0)),
    ],
    "image": [("gain", (3.0, 6.0, 10.0)), ("speckle", (0.1, 0.25, 0.5)), ("depth_crop", (0.1, 0.2, 0.35))],
    "features": [("noise", (0.1, 0.25, 0.5)), ("scale_offset", (0.1, 0.25, 0.5))],
    "video": [("gain", (3.0, 6.0, 10.0)), ("noise", (5.0, 10.0, 25.0))],
}
#: modality -> the one shift of the drift-only check (non-classifier bundles): a stand-in for a site
#: whose acquisition differs (stain / scanner for feature bags, probe gain for videos)
DRIFT_SHIFTS: dict[str, tuple[str, float]] = {"features": ("scale_offset", 0.25), "video": ("gain", 6.0)}
#: the short ladder (``fast``): one mid-level severity per shift
FAST_SHIFTS: dict[str, list[tuple[str, tuple[float, ...]]]] = {
    m: [(n, (sev[len(sev) // 2],)) for n, sev in v] for m, v in SHIFTS.items()
}


def modality_of(path: str | Path) -> str:
    """``eeg``, ``image``, ``features`` or ``video`` from a file's suffix.

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
    if s in VIDEO_SUFFIXES:
        return "video"
    raise MedTransferError(f"{Path(path).name}: no shift defined for '{s}' files")


def channel_swap(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Swapped electrode leads: ``round(s * channels / 2)`` random channel pairs exchanged (s = fraction)."""
    y = x.copy()
    n_pairs = min(x.shape[0] // 2, max(1, int(round(s * x.shape[0] / 2))))
    idx = rng.permutation(x.shape[0])[: 2 * n_pairs]
    for a, b in zip(idx[0::2], idx[1::2]):
        y[[a, b]] = x[[b, a]]
    return y


def scale_offset(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """A site-wide feature shift (the stand-in for a stain / scanner change on feature bags):
    ``(1 + s) * x + s * sd * d``, ``sd`` each dimension's standard deviation over the bag and ``d`` one
    fixed standard-normal direction (the same for every bag of the site, hence a fixed seed)."""
    x = np.asarray(x, dtype=np.float32)
    d = np.asarray(np.random.default_rng(1234).standard_normal(x.shape[-1]), dtype=np.float32)
    sd = x.std(axis=0) if len(x) > 1 else np.abs(x).mean(axis=0)
    return np.asarray((1.0 + s) * x + s * sd * d, dtype=np.float32)


def video_gain(x: np.ndarray, s: float, rng: np.random.Generator) -> np.ndarray:
    """Probe / amplifier gain on every frame: ``x * 10**(s/20)`` clipped to the frames' range (s in dB)."""
    top = 255.0 if x.dtype == np.uint8 or float(np.max(x, initial=0)) > 1.0 else 1.0
    y = np.clip(x.astype(np.float64) * 10 ** (s / 20.0), 0.0, top)
    return np.asarray(np.rint(y) if np.issubdtype(x.dtype, np.integer) else y).astype(x.dtype)


#: shifts defined here (modality, name) -> fn(x, severity, rng); the rest come from ``perturb``
_LOCAL_SHIFTS = {
    ("eeg", "channel_swap"): channel_swap,
    ("features", "scale_offset"): scale_offset,
    ("video", "gain"): video_gain,
}


def _shift_array(x: np.ndarray, modality: str, name: str, severity: float, rng: np.random.Generator, **meta: Any):
    if severity == 0:
        return x.copy()
    if (modality, name) in _LOCAL_SHIFTS:
        return _LOCAL_SHIFTS[(modality, name)](x, severity, rng)
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


def _shift_video(src: Path, dst: Path, name: str, severity: float, rng: np.random.Generator) -> Path:
    """A shifted copy of a video (the unshifted copy is the file itself, byte for byte)."""
    import shutil

    if not severity:
        shutil.copyfile(src, dst)
        return dst
    if src.suffix.lower() in (".mha", ".mhd"):
        import SimpleITK as sitk

        from medtransfer.shared.runtime.gates import check_metaimage_data_file

        check_metaimage_data_file(src)
        img = sitk.ReadImage(str(src))
        arr = sitk.GetArrayFromImage(img)
        out = sitk.GetImageFromArray(_shift_array(arr, "video", name, severity, rng))
        out.CopyInformation(img)
        dst = dst.with_suffix(".mha")
        sitk.WriteImage(out, str(dst))
        return dst
    import cv2

    cap = open_capture(src)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, fr = cap.read()
        if not ok:
            break
        frames.append(fr)
    cap.release()
    if not frames:
        raise MedTransferError(f"{src.name}: not a readable video")
    x = _shift_array(np.stack(frames), "video", name, severity, rng)
    dst = dst.with_suffix(".avi")
    h, w = x.shape[1:3]
    vw = cv2.VideoWriter(str(dst), cv2.VideoWriter.fourcc(*"MJPG"), float(fps), (w, h), x.ndim == 4)
    for fr in x:
        vw.write(np.ascontiguousarray(fr))
    vw.release()
    return dst


_WRITERS = {"eeg": _shift_eeg, "image": _shift_image, "features": _shift_h5, "video": _shift_video}


def shifted_manifest(
    rows: Sequence[Mapping[str, Any]], out_dir: Path, name: str, severity: float, seed: int = 0
) -> Path:
    """Shifted copies of labelled cases and their manifest (``path,label,split``).

    Args:
        rows: ``{"path" (absolute), "label"}`` cases, optionally ``extra`` (more columns, e.g. prompts).
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
    extra_cols = sorted({k for r in rows for k in (r.get("extra") or {}) if k not in ("path", "label", "split")})
    with open(man, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split", *extra_cols])
        for i, r in enumerate(rows):
            src = Path(r["path"])
            dst = shift_file(src, out_dir / f"case{i:05d}{src.suffix.lower()}", name, severity, rng)
            extra: Mapping[str, Any] = r.get("extra") or {}
            w.writerow([dst.name, r["label"], "test", *(extra.get(k, "") for k in extra_cols)])
    return man


def _subset(rows: list[Any], limit: int) -> list[Any]:
    """At most ``limit`` rows (0 = all), drawn at random (seed 0) in manifest order: the first rows of a
    manifest sorted by class are not a sample of the split (their input statistics drift; issue 13)."""
    if not limit or len(rows) <= limit:
        return rows
    return [rows[i] for i in sorted(np.random.default_rng(0).choice(len(rows), limit, replace=False))]


def split_rows(manifest: str | Path, split: str = "test", limit: int = 0) -> list[dict[str, str]]:
    """Labelled rows of one split of a manifest (``path`` absolute), at most ``limit`` (0 = all)."""
    from medtransfer.shared.manifest import read_manifest

    rows = [
        {"path": str(r.path), "label": str(r.label)} for r in read_manifest(manifest) if r.split == split and r.label
    ]
    return _subset(rows, limit)


def split_cases(manifest: str | Path, split: str = "test", limit: int = 0) -> list[dict[str, Any]]:
    """Rows of one split with their extra columns (labelled or not), every file reference made absolute.

    Label and extra values naming a file relative to the manifest's folder (a mask, a prompt) are
    resolved, so the rows can be written into a manifest elsewhere (:func:`shifted_manifest`).

    Returns:
        ``{"path", "label", "extra"}`` rows, at most ``limit`` (0 = all).
    """
    from medtransfer.shared.manifest import read_manifest

    base = Path(manifest).resolve().parent

    def absolute(v: str) -> str:
        return str((base / v).resolve()) if v and not Path(v).is_absolute() and (base / v).is_file() else v

    rows = [
        {
            "path": str(r.path),
            "label": absolute(str(r.label)),
            "extra": {k: absolute(str(v)) for k, v in r.extra.items()},
        }
        for r in read_manifest(manifest)
        if r.split == split
    ]
    return _subset(rows, limit)


def drift_check(
    bundle_dir: str | Path,
    rows: Sequence[dict[str, Any]],
    work_dir: str | Path,
    shift: tuple[str, float] | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """``estimate``'s drift report on cases as they are and on one shifted copy (any bundle with a reference).

    Args:
        bundle_dir: a bundle with reference statistics.
        rows: cases (``path``, ``label``, ``extra``), e.g. :func:`split_cases` of the test split.
        work_dir: folder for the copies, rows and estimates.
        shift: ``(name, severity)`` (default: :data:`DRIFT_SHIFTS` of the cases' modality).
        progress: progress bars.

    Returns:
        One row per level (``none`` first): ``shift``, ``severity``, ``n_cases``, ``n_errors``, ``flag``,
        ``drifted`` (statistic names), ``status``, ``summary``.
    """
    from medtransfer.shared.runtime.estimate import estimate

    if not rows:
        raise MedTransferError(f"{bundle_dir}: no cases to check drift on")
    work = Path(work_dir)
    modality = modality_of(rows[0]["path"])
    if shift is None and modality not in DRIFT_SHIFTS:
        raise MedTransferError(f"{bundle_dir}: no drift-check shift defined for {modality} inputs")
    name, sev = shift or DRIFT_SHIFTS[modality]
    out = []
    for k, (n, s) in enumerate([("none", 0.0), (name, float(sev))]):
        tag = f"{n}_{s:g}"
        man = shifted_manifest(rows, work / tag, n, s, seed=k)
        res = estimate(bundle_dir, work / f"{tag}.json", manifest=man, overwrite=True, progress=progress, n_boot=0)
        d = res["drift"]
        out.append(
            {
                "shift": n,
                "severity": s,
                "n_cases": res["n_cases"],
                "n_errors": res["n_errors"],
                "flag": bool(d["flag"]),
                "drifted": list(d.get("drifted") or []),
                "status": d.get("status", ""),
                "summary": d.get("summary", ""),
            }
        )
    return out


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
                "drift_status": res["drift"].get("status", ""),
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
def bundles_under(demo_out: Path) -> list[Path]:
    """Bundles with reference statistics under a folder (any depth; one per distinct bundle)."""
    from medtransfer.shared.export.reference import REFERENCE_FILE

    seen: dict[bytes, Path] = {}
    for p in sorted(demo_out.rglob(REFERENCE_FILE), key=lambda p: (len(p.parts), str(p))):
        sums = p.parent / "checksums.sha256"
        if (p.parent / "metadata.json").is_file() and sums.is_file():
            seen.setdefault(sums.read_bytes(), p.parent)  # the same bundle copied twice is run once
    return sorted(seen.values())


def _run_manifest(bundle_dir: Path) -> Path | None:
    """The manifest recorded by the bundle's run (``metadata.run_dir`` -> ``run.json["manifest"]``)."""
    from medtransfer.shared.rundir import RunDir

    meta = json.loads((bundle_dir / "metadata.json").read_text(encoding="utf-8"))
    run_dir = meta.get("run_dir")
    if not run_dir or not Path(run_dir).is_dir():
        return None
    manifest = RunDir(run_dir).info().get("manifest")
    return Path(manifest) if manifest and Path(manifest).is_file() else None


def _test_rows(bundle_dir: Path, limit: int) -> list[dict[str, str]]:
    """The labelled test split of the manifest the bundle's run was trained on."""
    manifest = _run_manifest(bundle_dir)
    return split_rows(manifest, "test", limit) if manifest else []


def demo_section(demo_out: Path, fast: bool = True) -> str:
    """The "New site without labels" section of the demo report.

    For each classifier bundle with reference statistics under ``demo_out`` whose run's manifest has a
    labelled test split, ``estimate`` runs on shifted copies of the test cases (:data:`FAST_SHIFTS` when
    ``fast``) and the table compares true and estimated accuracy.  Segmentation and survival bundles
    get the drift-only check (:func:`drift_check`: the test split as it is and one shifted copy) in a
    second table: shift, drift flagged, which statistics drifted, cases.

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
        "statistics and confidences (two-sample KS per statistic, Holm-corrected at 0.01, KS distance >= 0.2, "
        "at least 10 cases a side).  Below: the test split copied with one acquisition shift at a "
        "time; true accuracy uses the labels, the estimate does not.  When input statistics drift, the estimate "
        "is marked unreliable: a shifted model can be confidently wrong.",
        "",
        "| app | shift | true accuracy | estimated (ATC-NE) | 95 % interval | DoC | drift | estimate reliable |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    notes: list[str] = []
    drift_lines: list[str] = []
    for b in bundles_under(demo_out):
        meta = json.loads((b / "metadata.json").read_text(encoding="utf-8"))
        app = meta.get("app", "?")
        if (meta.get("reference") or {}).get("kind") != "classifier":
            drift_lines += _drift_rows(b, app, meta, demo_out, 40 if fast else 0, notes)
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
            untested = r.get("drift_status") == INSUFFICIENT_DATA  # too few cases: never reported as "no drift"
            drift = "yes" if r["drift"] else ("untested (too few cases)" if untested else "no")
            reliable = "no (inputs drifted)" if not r["estimate_reliable"] else ("unchecked" if untested else "yes")
            lines.append(
                f"| {app} | {r['shift']} {r['severity']:g} | {r['true_accuracy']:.3f} | {r['estimated_accuracy']:.3f} "
                f"| {f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else 'n/a'} | {r['doc']:.3f} | {drift} | {reliable} |"
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
    if not any(line.startswith("| ") and not line.startswith(("| app ", "| ---")) for line in lines):
        lines = lines[:-3]  # no classifier bundle: no accuracy table (nor its blank line)
    if drift_lines:
        lines += [
            "",
            "Segmentation and survival bundles have no label-free accuracy estimate: `estimate` reports drift only "
            "(input statistics and output distributions against the validation split).  Below: the test split as "
            "it is, then one shifted copy (feature bags: features scaled and offset, a stand-in for a stain or "
            "scanner change; videos: gain on every frame).",
            "",
            "| app | shift | drift flagged | drifted statistics | n_cases |",
            "| --- | --- | --- | --- | --- |",
            *drift_lines,
        ]
    return "\n".join(lines + [""] + notes + [""])


def _drift_rows(b: Path, app: str, meta: dict[str, Any], demo_out: Path, limit: int, notes: list[str]) -> list[str]:
    """Table rows of the drift-only check of one non-classifier bundle (notes gain why there are none)."""
    ref = meta.get("reference") or {}
    kind = ref.get("kind") or "non-classifier"
    manifest = _run_manifest(b)
    rows = split_cases(manifest, "test", limit) if manifest else []
    if not rows:
        notes.append(f"- `{app}`: {kind} bundle, drift only: no test split recorded by its run, not checked")
        return []
    try:
        levels = drift_check(b, rows, demo_out / "estimate" / app)
    except MedTransferError as e:
        notes.append(f"- `{app}`: {kind} bundle, drift check failed: {e}")
        return []
    out = []
    for r in levels:
        names = ", ".join(d.removeprefix("input.") for d in r["drifted"][:5]) + (
            " ..." if len(r["drifted"]) > 5 else ""
        )
        flag = "yes" if r["flag"] else ("no (too few cases to test)" if r["status"] == INSUFFICIENT_DATA else "no")
        err = f" ({r['n_errors']} errors)" if r["n_errors"] else ""
        out.append(f"| {app} | {r['shift']} {r['severity']:g} | {flag} | {names or '-'} | {r['n_cases']}{err} |")
    n_ref = ref.get("n_cases")
    notes.append(
        f"- `{app}` ({kind}): reference from {n_ref} validation cases, {len(rows)} test cases per level"
        + (
            ""
            if levels[-1]["flag"]
            else "; too few cases to test drift (not a finding of no drift)"
            if levels[-1]["status"] == INSUFFICIENT_DATA
            else "; the shifted copy was NOT flagged (reported as measured)"
        )
    )
    return out
