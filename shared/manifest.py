"""The generic CSV manifest every app's train / evaluate and ``score`` accept.

Columns: ``path,label[,split,group]`` plus any extra columns an app needs (kept as strings).
``path`` is relative to the CSV's folder (absolute paths are kept).  ``split`` is one of
``train``, ``val``, ``test`` (empty = unassigned); ``group`` keeps recordings of one patient
together when splits are made.  Torch-free.
"""

from __future__ import annotations

import csv
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from medtransfer.shared.utils.errors import ConfigError, InputError

REQUIRED = ("path", "label")
SPLITS = ("train", "val", "test")


@dataclass
class Record:
    """One manifest row.

    Attributes:
        path: absolute path of the input file (resolved against the CSV folder).
        label: label as written (class name, number, or empty for unlabelled inputs).
        split: train / val / test or "" when unassigned.
        group: grouping key (patient / subject) or "".
        extra: any other columns, as strings.
        rel: the path as written in the CSV.
    """

    path: Path
    label: str = ""
    split: str = ""
    group: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    rel: str = ""

    @property
    def case_id(self) -> str:
        """Stable identifier of the case (the path as written in the manifest)."""
        return self.rel or str(self.path)


def read_manifest(csv_path: str | Path, require_label: bool = False) -> list[Record]:
    """Read a manifest CSV.

    Args:
        csv_path: the CSV file.
        require_label: raise when a row has an empty label.

    Returns:
        The records, in file order.

    Raises:
        InputError: missing file, missing ``path`` column, bad split value.
    """
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise InputError(csv_path, "manifest not found")
    base = csv_path.resolve().parent
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM is accepted
            return _read_rows(csv.DictReader(f, strict=True), csv_path, base, require_label)
    except UnicodeDecodeError as e:
        raise InputError(csv_path, f"not UTF-8 text (byte {e.start}); save the manifest as CSV UTF-8") from None
    except csv.Error as e:
        raise InputError(csv_path, f"CSV syntax error near line {_line(e)}: {e}") from None


def _line(e: csv.Error) -> str:
    import re

    m = re.search(r"line (\d+)", str(e))
    return m.group(1) if m else "?"


def _read_rows(reader: "csv.DictReader[str]", csv_path: Path, base: Path, require_label: bool) -> list[Record]:
    """Parse the rows of an opened manifest (see :func:`read_manifest`)."""
    cols = [c.strip() for c in (reader.fieldnames or [])]
    if "path" not in cols:
        raise InputError(csv_path, f"manifest needs a 'path' column (found: {', '.join(cols) or 'none'})")
    if len(set(cols)) != len(cols):
        raise InputError(csv_path, "duplicate column names in the header")
    out: list[Record] = []
    for row in reader:
        i = reader.line_num
        if None in row:  # more fields than header columns: an unquoted comma
            raise InputError(
                csv_path,
                f"line {i}: {len(cols) + len(row[None])} fields for {len(cols)} columns "
                "(a comma inside a value must be quoted)",
            )
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        rel = row.pop("path")
        if not rel:
            raise InputError(csv_path, f"line {i}: empty path")
        rel = normalise_rel(rel)
        label = row.pop("label", "")
        split = row.pop("split", "").lower()
        group = row.pop("group", "")
        if split and split not in SPLITS:
            raise InputError(csv_path, f"line {i}: split '{split}' is not one of {', '.join(SPLITS)}")
        if require_label and not label:
            raise InputError(csv_path, f"line {i}: empty label for {rel}")
        p = Path(rel)
        p = p if p.is_absolute() else (base / p)
        out.append(Record(path=p, label=label, split=split, group=group, extra=row, rel=rel))
    check_no_leak(out, csv_path)
    return out


def check_no_leak(records: Sequence[Record], csv_path: str | Path) -> None:
    """Refuse a manifest in which one patient (group) or one file reaches two splits: a model would be
    validated or tested on what it trained on.  (One file may be listed twice in one split: a video
    with two objects to track is two cases.)

    Args:
        records: the manifest's records.
        csv_path: the manifest, for the message.

    Raises:
        InputError: one line naming the group or the file and the two splits.
    """
    group_split: dict[str, str] = {}
    file_row: dict[str, Record] = {}
    for r in records:
        if r.group and r.split:
            was = group_split.setdefault(r.group, r.split)
            if was != r.split:
                raise InputError(
                    csv_path, f"group '{r.group}' (one patient) is in split '{was}' and '{r.split}'; keep it in one"
                )
        key = os.path.normpath(os.path.abspath(r.path))  # no file system access: a manifest is only text here
        prev = file_row.setdefault(key, r)
        if prev is not r:
            if prev.split and r.split and prev.split != r.split:
                raise InputError(csv_path, f"{r.rel} is listed in split '{prev.split}' and '{r.split}'")


def csv_relative(path: str | Path, out_csv: str | Path) -> str:
    """``path`` as the manifest contract writes it: relative to the CSV's folder (posix), whatever
    the working directory; kept absolute only when no relative path exists (another drive).

    Args:
        path: a file (absolute, or relative to the working directory).
        out_csv: the CSV the path is written into.

    Returns:
        The path text for the CSV.
    """
    p = Path(path).absolute()
    base = Path(out_csv).absolute().parent
    try:
        rel = os.path.relpath(p, base)
    except ValueError:
        return str(p)
    if rel.startswith(".."):  # one side may be spelled through a symlink: prefer a path inside the folder
        try:
            rel = str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            pass
    return Path(rel).as_posix()


def normalise_rel(rel: str) -> str:
    """``./a.edf``, ``a//b.edf`` and ``a/../a.edf`` -> one spelling (absolute paths stay absolute)."""
    import os

    return Path(os.path.normpath(rel.replace("\\", "/"))).as_posix()


def require_classes(
    records: Sequence[Record], csv_path: str | Path, split: str = "train", min_classes: int = 2
) -> list[str]:
    """Refuse training on label-less or single-class data; returns the sorted class names.

    Args:
        records: manifest records (already split).
        csv_path: the manifest, for the message.
        split: the split that is trained on ("" = all records).
        min_classes: classes needed.

    Raises:
        InputError: naming the manifest, the split and what is missing.
    """
    sel = [r for r in records if not split or r.split == split]
    if not sel:
        raise InputError(csv_path, f"no rows in split '{split}' to train on")
    unlabelled = sum(not r.label for r in sel)
    if unlabelled:
        raise InputError(
            csv_path, f"{unlabelled} of {len(sel)} {split or ''} rows have no label; training needs labels"
        )
    classes = sorted({r.label for r in sel})
    if len(classes) < min_classes:
        raise InputError(
            csv_path, f"split '{split}' has only class {classes[0]!r}; training needs at least {min_classes} classes"
        )
    return classes


def write_manifest(records: Iterable[Record | dict], csv_path: str | Path, relative: bool = True) -> Path:
    """Write records as a manifest CSV, paths relative to the CSV folder when possible.

    Args:
        records: Record objects or dicts with at least ``path``.
        csv_path: output CSV.
        relative: write paths relative to the CSV folder.

    Returns:
        The CSV path.
    """
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    base = csv_path.resolve().parent
    rows: list[dict[str, str]] = []
    extra_cols: list[str] = []
    for r in records:
        if isinstance(r, Record):
            d = {"path": str(r.path), "label": r.label, "split": r.split, "group": r.group, **r.extra}
        else:
            d = {k: ("" if v is None else str(v)) for k, v in r.items()}
        p = Path(d["path"])
        if relative and p.is_absolute():
            try:
                d["path"] = str(p.resolve().relative_to(base))
            except ValueError:
                import os

                d["path"] = os.path.relpath(p.resolve(), base)
        for k in d:
            if k not in ("path", "label", "split", "group") and k not in extra_cols:
                extra_cols.append(k)
        rows.append(d)
    cols = ["path", "label", "split", "group", *extra_cols]
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for d in rows:
            w.writerow({c: d.get(c, "") for c in cols})
    return csv_path


def _bucket(key: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(h[:12], 16) / float(1 << 48)


def assign_splits(
    records: Sequence[Record],
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    stratify: bool = True,
) -> list[Record]:
    """Give records without a split one, deterministically, keeping groups together.

    Records that already carry a split keep it.  Groups (or single records without a group)
    are hashed with the seed, then cut per label (stratified) into train / val / test.

    Args:
        records: the records.
        val_fraction: fraction of groups for validation.
        test_fraction: fraction of groups for test.
        seed: split seed.
        stratify: cut each label's groups separately.

    Returns:
        The same records, with ``split`` filled in.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ConfigError(
            f"split fractions must be >= 0 and leave a training share (got val {val_fraction}, test {test_fraction})"
        )
    placed = {r.group: r.split for r in records if r.split and r.group}
    for r in records:  # a group already placed keeps all its rows in that split (no patient in two)
        if not r.split and r.group in placed:
            r.split = placed[r.group]
    todo = [r for r in records if not r.split]
    units: dict[str, list[Record]] = {}
    for r in todo:
        units.setdefault(r.group or r.case_id, []).append(r)
    strata: dict[str, list[str]] = {}
    for key, rs in units.items():
        strata.setdefault(rs[0].label if stratify else "", []).append(key)
    for keys in strata.values():
        keys.sort(key=lambda k: _bucket(k, seed))
        n = len(keys)
        n_test = int(round(n * test_fraction))
        n_val = int(round(n * val_fraction))
        if n >= 3:
            n_test = max(n_test, 1 if test_fraction > 0 else 0)
            n_val = max(n_val, 1 if val_fraction > 0 else 0)
        for i, k in enumerate(keys):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            for r in units[k]:
                r.split = split
    return list(records)


def by_split(records: Sequence[Record], split: str) -> list[Record]:
    """Records of one split."""
    return [r for r in records if r.split == split]
