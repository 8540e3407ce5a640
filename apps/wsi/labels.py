"""TCGA / SurvPath survival tables, official k-fold splits, patients with several slides.  Torch-free.

Layout read (``mahmoodlab/SurvPath`` style)::

    ROOT/datasets_csv/metadata/tcga_<study>.csv   one row per diagnostic slide: case_id, slide_id,
        survival_months[_dss|_pfi], censorship[_dss|_pfi] (1 = censored), oncotree_code, ...
    ROOT/splits/5foldcv/tcga_<study>/splits_<k>.csv   columns train, val (case ids)

Labels are per patient (case); a patient's slides are pooled into one bag.  The official
``val`` lists are the held-out folds (reported as test: no model selection on them).
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from medtransfer.shared.manifest import csv_relative
from medtransfer.shared.utils.errors import InputError

ENDPOINTS = {"os": "", "dss": "_dss", "pfi": "_pfi"}
REQUIRED = ("case_id", "slide_id")


@dataclass
class Case:
    """One patient: survival label and diagnostic slides.

    Attributes:
        case_id: TCGA patient barcode (e.g. TCGA-2F-A9KO).
        study: cohort name (e.g. tcga_blca).
        time: survival time in months for the chosen endpoint.
        censored: 1 = censored, 0 = event.
        slides: slide ids (TCGA .svs file names).
        oncotree: oncotree code.
        age: age at diagnosis in years when the table has a plausible ``age`` (else None).
    """

    case_id: str
    study: str
    time: float
    censored: int
    slides: list[str] = field(default_factory=list)
    oncotree: str = ""
    age: Optional[float] = None

    @property
    def event(self) -> int:
        return 1 - int(self.censored)


def find_studies(root: str | Path) -> dict[str, Path]:
    """Study name -> metadata CSV under ``ROOT/datasets_csv/metadata`` (or ROOT itself)."""
    root = Path(root)
    if root.is_file():
        return {root.stem: root}
    for d in (root / "datasets_csv" / "metadata", root / "metadata", root):
        found = {p.stem: p for p in sorted(d.glob("tcga_*.csv")) if not p.stem.endswith("_clinical")}
        if found:
            return found
    raise InputError(root, "no tcga_<study>.csv survival tables found (expected datasets_csv/metadata/tcga_*.csv)")


def read_table(
    csv_path: str | Path, endpoint: str = "dss", study: Optional[str] = None
) -> tuple[list[Case], list[dict[str, str]]]:
    """Read one SurvPath table into cases (slides grouped by patient).

    Args:
        csv_path: the metadata CSV.
        endpoint: ``os``, ``dss`` or ``pfi``.
        study: cohort name (default: file stem).

    Returns:
        ``(cases, error rows)``; a row with a missing / bad time or censorship becomes an error row.

    Raises:
        InputError: missing file or missing required columns.
    """
    csv_path = Path(csv_path)
    if endpoint not in ENDPOINTS:
        raise InputError(csv_path, f"unknown endpoint '{endpoint}' (os, dss or pfi)")
    if not csv_path.is_file():
        raise InputError(csv_path, "survival table not found")
    sfx = ENDPOINTS[endpoint]
    tcol, ccol = f"survival_months{sfx}", f"censorship{sfx}"
    study = study or csv_path.stem
    cases: dict[str, Case] = {}
    errors: list[dict[str, str]] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        missing = [c for c in (*REQUIRED, tcol, ccol) if c not in cols]
        if missing:
            raise InputError(csv_path, f"missing column(s) {', '.join(missing)}")
        for i, row in enumerate(reader, start=2):
            cid, sid = (row.get("case_id") or "").strip(), (row.get("slide_id") or "").strip()
            try:
                t, c = float(row[tcol]), int(float(row[ccol]))
                if not t >= 0 or c not in (0, 1):
                    raise ValueError
            except (TypeError, ValueError):
                errors.append(
                    {"study": study, "case_id": cid, "slide_id": sid, "error": f"line {i}: bad {tcol}/{ccol}"}
                )
                continue
            if not cid or not sid:
                errors.append(
                    {"study": study, "case_id": cid, "slide_id": sid, "error": f"line {i}: empty case_id or slide_id"}
                )
                continue
            case = cases.setdefault(
                cid, Case(cid, study, t, c, [], (row.get("oncotree_code") or "").strip(), _age(row.get("age")))
            )
            case.slides.append(sid)
    return list(cases.values()), errors


def read_splits(root: str | Path, study: str, k: Optional[int] = None) -> list[tuple[list[str], list[str]]]:
    """Official k-fold splits: one (train case ids, held-out case ids) per fold.

    Args:
        root: the labels root (holding ``splits/``) or the study's split folder.
        study: cohort name (tcga_blca ...).
        k: folds to read (default: every ``splits_<i>.csv``).

    Raises:
        InputError: no split files.
    """
    root = Path(root)
    cands = [root / "splits" / "5foldcv" / study, root / "5foldcv" / study, root / study, root]
    d = next((c for c in cands if list(c.glob("splits_*.csv"))), None)
    if d is None:
        raise InputError(root, f"no splits_<k>.csv for {study}")
    files = sorted(d.glob("splits_*.csv"), key=lambda p: int(p.stem.split("_")[-1]))
    if k is not None:
        files = files[:k]
    out = []
    for p in files:
        train, val = [], []
        with open(p, newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if (row.get("train") or "").strip():
                    train.append(row["train"].strip())
                if (row.get("val") or "").strip():
                    val.append(row["val"].strip())
        out.append((train, val))
    return out


def slide_stem(slide_id: str) -> str:
    """``TCGA-...-DX1.<uuid>.svs`` -> ``TCGA-...-DX1.<uuid>`` (the h5 name)."""
    return slide_id[:-4] if slide_id.lower().endswith((".svs", ".tif")) else slide_id


def import_tcga(
    root: Path,
    out_csv: Path,
    features: Optional[str] = None,
    endpoint: str = "dss",
    studies: Optional[str] = None,
    fold: int = 0,
    **_: Any,
) -> Path:
    """Importer (``medtransfer data import tcga ROOT --out m.csv``): one manifest row per slide.

    Columns: path (features h5, or the slide id when no features folder is given), label (the
    survival time), split (official fold ``fold``: train / test), group (case id), case_id,
    slide_id, study, time, censored, oncotree_code.  A label row whose slide has no h5 and an
    h5 with no label row are written to ``<out>.errors.csv``; the rest are imported.

    Args:
        root: SurvPath labels root.
        out_csv: manifest to write.
        features: folder of ``<slide>.h5`` bags (optional; searched recursively, as ``wsi extract``
            lays them out; two bags of one slide name are refused).
        endpoint: os / dss / pfi.
        studies: comma-separated subset (e.g. ``tcga_blca,tcga_brca``).
        fold: official fold giving the split column.

    Returns:
        The manifest path.
    """
    from medtransfer.apps.wsi.features import find_bags
    from medtransfer.shared.manifest import write_manifest

    root, out_csv = Path(root), Path(out_csv)
    tables = find_studies(root)
    if studies:
        want = [s.strip() for s in str(studies).split(",") if s.strip()]
        unknown = [s for s in want if s not in tables]
        if unknown:
            raise InputError(root, f"unknown study {', '.join(unknown)} (found: {', '.join(tables)})")
        tables = {s: tables[s] for s in want}
    feat_dir = Path(features) if features else None
    if feat_dir is not None and not feat_dir.is_dir():
        raise InputError(feat_dir, "features folder not found")
    have = find_bags(feat_dir) if feat_dir is not None else {}
    rows, errors, used = [], [], set()
    for study, path in tables.items():
        cases, errs = read_table(path, endpoint, study)
        errors += errs
        try:
            folds = read_splits(root, study)
            train = set(folds[fold][0]) if fold < len(folds) else set()
            test = set(folds[fold][1]) if fold < len(folds) else set()
        except InputError:
            train, test = set(), set()
        for c in cases:
            split = "train" if c.case_id in train else "test" if c.case_id in test else ""
            for sid in c.slides:
                stem = slide_stem(sid)
                if feat_dir is not None:
                    if stem not in have:
                        errors.append(
                            {
                                "study": study,
                                "case_id": c.case_id,
                                "slide_id": sid,
                                "error": "label row has no feature bag (slide not extracted)",
                            }
                        )
                        continue
                    p = csv_relative(have[stem], out_csv)
                    used.add(stem)
                else:
                    p = sid
                rows.append(
                    {
                        "path": p,
                        "label": f"{c.time:.4f}",
                        "split": split,
                        "group": c.case_id,
                        "case_id": c.case_id,
                        "slide_id": sid,
                        "study": study,
                        "time": f"{c.time:.4f}",
                        "censored": str(c.censored),
                        "oncotree_code": c.oncotree,
                    }
                )
    for stem in sorted(set(have) - used):
        errors.append({"study": "", "case_id": "", "slide_id": stem, "error": "feature bag has no label row"})
    err_path = out_csv.with_suffix(".errors.csv")
    if errors:
        err_path.parent.mkdir(parents=True, exist_ok=True)
        with open(err_path, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["study", "case_id", "slide_id", "error"])
            w.writeheader()
            w.writerows(errors)
    elif err_path.exists():
        err_path.unlink()
    if not rows:
        raise InputError(root, f"no labelled slide left after matching labels to feature bags (see {err_path.name})")
    write_manifest(rows, out_csv, relative=False)  # bag paths are already relative to the CSV's folder
    return out_csv


def _age(value: Any) -> Optional[float]:
    """A plausible age in years (0-120) from a table cell, else None (missing or garbage)."""
    try:
        a = float(str(value).strip())
    except (TypeError, ValueError):
        return None
    return a if math.isfinite(a) and 0 <= a <= 120 else None
