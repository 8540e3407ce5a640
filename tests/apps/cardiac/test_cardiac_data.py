"""CACTUS importer: layout, splits, and mismatch messages."""

from __future__ import annotations

import csv
import shutil

import pytest

from medtransfer.apps.cardiac.data import import_cactus, import_folder
from medtransfer.apps.cardiac.synthetic import VIEWS, make_cactus_tree
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError


def test_import_manifest(manifest):
    recs = read_manifest(manifest)
    assert {r.label for r in recs} == set(VIEWS)
    assert all(r.path.is_file() for r in recs)
    assert {r.split for r in recs} == {"train", "val", "test"}
    # acquisition groups never straddle splits
    by_group = {}
    for r in recs:
        by_group.setdefault(r.group, set()).add(r.split)
    assert all(len(s) == 1 for s in by_group.values())
    assert all(0 <= float(r.extra["grade"]) <= 10 for r in recs)
    assert all(float(r.extra["grade"]) == 0 for r in recs if r.label == "Random")


@pytest.fixture()
def small(tmp_path):
    make_cactus_tree(tmp_path, n_per_view=3, size=(64, 80), n_sessions=2)
    return tmp_path


def test_not_cactus(tmp_path):
    with pytest.raises(InputError, match="Grades"):
        import_cactus(tmp_path, tmp_path / "m.csv")


def test_wrong_columns(small):
    g = small / "Cactus Dataset" / "Grades" / "A4C_grades.csv"
    g.write_text("file,score\nx.png,3\n")
    with pytest.raises(InputError, match="Image Name"):
        import_cactus(small, small / "m.csv")


def test_missing_images_named(small):
    shutil.rmtree(small / "Cactus Dataset" / "Images Dataset" / "PL")
    with pytest.raises(InputError, match="3 of 18 graded images not found"):
        import_cactus(small, small / "m.csv")
    out = import_cactus(small, small / "m.csv", allow_missing=0.5)
    assert len(read_manifest(out)) == 15


def test_bad_grade(small):
    g = small / "Cactus Dataset" / "Grades" / "SC_grades.csv"
    rows = list(csv.reader(open(g)))
    rows[1][2] = "eleven"
    with open(g, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(InputError, match="not a number"):
        import_cactus(small, small / "m.csv")


def test_import_folder(small):
    out = import_folder(small / "Cactus Dataset" / "Images Dataset", small / "f.csv")
    recs = read_manifest(out)
    assert len(recs) == 18 and {r.label for r in recs} == set(VIEWS)


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda r: {**r, "grade": "abc"}, "grade 'abc' is not a number"),
        (lambda r: {**r, "grade": "nan"}, "grade nan is outside 0.0-10.0"),
        (lambda r: {**r, "grade": "50"}, "grade 50 is outside"),
        (lambda r: {**r, "label": r["label"].lower() + " "}, "is written differently from"),
    ],
)
def test_grades_and_labels_a_training_cannot_use_are_one_line(manifest, tmp_path, edit, words):
    """A grade 'abc' or inf was a traceback, nan became grade 0, 50 was accepted, 'a4c ' rows vanished."""
    import csv

    from medtransfer.apps.cardiac.preprocess import DEFAULT_PREPROC
    from medtransfer.apps.cardiac.train import load_split
    from medtransfer.shared.utils.errors import InputError

    rows = list(csv.DictReader(open(manifest, newline="")))
    k = next(i for i, r in enumerate(rows) if r["split"] == "train" and r.get("grade"))
    rows[k] = edit(rows[k])
    m = tmp_path / "m.csv"
    with open(m, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows({**r, "path": str((manifest.parent / r["path"]).resolve())} for r in rows)
    with pytest.raises(InputError, match=words):
        load_split(m, "train", dict(DEFAULT_PREPROC), need_grade=True)
