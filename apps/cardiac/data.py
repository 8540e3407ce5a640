"""Importers: the CACTUS release and a generic folder of echo files -> the generic manifest.

Manifest columns: ``path,label,split,group,grade`` (label = view name; grade 0-10 or empty).
Torch-free.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path
from typing import Any

from medtransfer.apps.cardiac.io import ALL_SUFFIXES, IMAGE_SUFFIXES
from medtransfer.apps.cardiac.synthetic import GRADE_COLUMNS, GRADES_DIR, VIEWS
from medtransfer.shared.manifest import Record, assign_splits, write_manifest
from medtransfer.shared.utils.errors import InputError

#: published per-view image counts of the full release (37,736 images)
CACTUS_COUNTS = {"A4C": 7422, "SC": 6345, "PL": 6102, "PSAV": 5832, "PSMV": 6014, "Random": 6021}
#: acquisition group in a file name (e.g. ``12_D3``); frames of one group stay in one split
GROUP_PATTERN = re.compile(r"(\d+_(?:D\d+|V\d+|DR\d+|Folder\d+))", re.IGNORECASE)


def _find_base(root: Path) -> Path:
    """The folder holding ``Grades/`` (ROOT itself, ``ROOT/Cactus Dataset`` or one level below)."""
    for cand in (root, root / "Cactus Dataset", *sorted(p for p in root.glob("*") if p.is_dir())):
        if (cand / GRADES_DIR).is_dir():
            return cand
    raise InputError(
        root,
        f"not a CACTUS copy: no '{GRADES_DIR}/' folder in ROOT or 'ROOT/Cactus Dataset' "
        f"(expected 'Cactus Dataset/{GRADES_DIR}/<VIEW>_grades.csv' and view folders {', '.join(VIEWS)}; "
        "see data_cards/cactus.md)",
    )


def import_cactus(
    root: str | Path,
    out_csv: str | Path,
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    allow_missing: float = 0.0,
    **_: Any,
) -> Path:
    """Import a CACTUS copy into the generic manifest.

    Expected layout (data_cards/cactus.md)::

        Cactus Dataset/Grades/<VIEW>_grades.csv   columns 'Image Name', 'Subfolder Name', 'Grade'
        Cactus Dataset/<any folder>/<VIEW>/<Image Name>

    Args:
        root: the extracted release (or its ``Cactus Dataset`` folder).
        out_csv: manifest to write.
        val_fraction: fraction of acquisition groups for validation.
        test_fraction: fraction of acquisition groups for test.
        seed: split seed.
        allow_missing: fraction of graded rows whose image may be missing before the import fails.

    Returns:
        The manifest path.

    Raises:
        InputError: a layout that does not match, naming what differs.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "CACTUS root folder not found")
    base = _find_base(root)
    grade_files = {p.name[: -len("_grades.csv")]: p for p in sorted((base / GRADES_DIR).glob("*_grades.csv"))}
    problems: list[str] = []
    if not grade_files:
        raise InputError(
            base / GRADES_DIR,
            "no '<VIEW>_grades.csv' files (expected one per view: " + ", ".join(f"{v}_grades.csv" for v in VIEWS) + ")",
        )
    unknown = sorted(set(grade_files) - set(VIEWS))
    missing_views = sorted(set(VIEWS) - set(grade_files))
    if unknown:
        problems.append(f"unexpected grade files for views {unknown}")
    # index images once: (view folder, file name) and file name alone
    by_pair: dict[tuple[str, str], Path] = {}
    by_name: dict[str, list[Path]] = {}
    for p in base.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            by_pair[(p.parent.name, p.name)] = p
            by_name.setdefault(p.name, []).append(p)
    records: list[Record] = []
    n_missing = 0
    n_rows = 0
    for view, gf in grade_files.items():
        if view not in VIEWS:
            continue
        with open(gf, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            lack = [c for c in GRADE_COLUMNS if c not in cols]
            if lack:
                raise InputError(gf, f"columns {lack} missing (found {cols}; expected {list(GRADE_COLUMNS)})")
            for i, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                n_rows += 1
                name, sub, grade = row["Image Name"], row["Subfolder Name"] or view, row["Grade"]
                try:
                    g = float(grade)
                except ValueError:
                    raise InputError(gf, f"line {i}: grade '{grade}' is not a number") from None
                if not 0 <= g <= 10:
                    raise InputError(gf, f"line {i}: grade {g} outside 0-10")
                if sub != view:
                    problems.append(f"{gf.name} line {i}: Subfolder Name '{sub}' differs from the file's view '{view}'")
                p = by_pair.get((sub, name)) or by_pair.get((view, name))
                if p is None and len(by_name.get(name, [])) == 1:
                    p = by_name[name][0]
                if p is None:
                    n_missing += 1
                    continue
                m = GROUP_PATTERN.search(name)
                group = f"{view}/{m.group(1)}" if m else ""
                # absolute: write_manifest then writes it relative to the CSV's folder, not the cwd
                records.append(
                    Record(path=p.resolve(), label=view, group=group, extra={"grade": f"{g:g}", "source": "cactus"})
                )
    if n_rows and n_missing / n_rows > allow_missing:
        problems.append(f"{n_missing} of {n_rows} graded images not found under {base}")
    if problems:
        raise InputError(
            root,
            "CACTUS layout mismatch: "
            + "; ".join(problems[:5])
            + (f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""),
        )
    if not records:
        raise InputError(root, "no images imported")
    assign_splits(records, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    out = write_manifest(records, out_csv)
    counts = Counter(r.label for r in records)
    note = [f"{v}: {counts.get(v, 0)}/{CACTUS_COUNTS[v]}" for v in VIEWS if v in counts]
    if missing_views:
        note.append(f"views without a grades file: {missing_views}")
    _log(f"imported {len(records)} CACTUS images ({', '.join(note)}) -> {out}")
    return out


def import_folder(root: str | Path, out_csv: str | Path, *, seed: int = 0, **_: Any) -> Path:
    """Import a folder of echo files; sub-folder names that are CACTUS views become labels.

    Args:
        root: folder walked recursively for images, DICOM and clips.
        out_csv: manifest to write (splits assigned for labelled rows).
        seed: split seed.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "folder not found")
    recs = []
    for p in sorted(root.rglob("*")):
        if p.is_file() and (p.suffix.lower() in ALL_SUFFIXES):
            lab = p.parent.name if p.parent.name in VIEWS else ""
            recs.append(Record(path=p.resolve(), label=lab, extra={"grade": "", "source": "folder"}))
    if not recs:
        raise InputError(root, f"no images found (looked for {', '.join(ALL_SUFFIXES)})")
    labelled = [r for r in recs if r.label]
    if labelled:
        assign_splits(labelled, seed=seed)
    return write_manifest(recs, out_csv)


def _log(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(msg)
