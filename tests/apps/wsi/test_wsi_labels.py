import csv
from pathlib import Path

import h5py
import numpy as np
import pytest

from medtransfer.apps.wsi.labels import find_studies, import_tcga, read_splits, read_table, slide_stem
from medtransfer.apps.wsi.synthetic import make_survpath_tables
from medtransfer.shared.manifest import read_manifest
from medtransfer.shared.utils.errors import InputError


@pytest.mark.realdata
def test_real_tcga_tables_and_splits(labels_root: Path) -> None:
    studies = find_studies(labels_root)
    assert set(studies) >= {"tcga_blca", "tcga_brca", "tcga_coadread", "tcga_hnsc", "tcga_stad"}
    cases, errors = read_table(studies["tcga_blca"], "dss")
    assert not errors
    assert len(cases) == 359 and sum(len(c.slides) for c in cases) == 423  # patients with several slides
    assert any(len(c.slides) > 1 for c in cases)
    assert all(c.censored in (0, 1) and c.time >= 0 for c in cases)
    assert all(c.age is not None and 10 < c.age < 100 for c in cases)  # age: the age-only Cox baseline
    folds = read_splits(labels_root, "tcga_blca")
    assert len(folds) == 5
    ids = {c.case_id for c in cases}
    for tr, te in folds:
        assert not set(tr) & set(te) and set(te) <= ids
    assert set().union(*[set(te) for _, te in folds]) == ids  # every patient held out once
    os_cases, _ = read_table(studies["tcga_blca"], "os")
    assert [c.time for c in os_cases] != [c.time for c in cases] or [c.censored for c in os_cases] != [
        c.censored for c in cases
    ]


def test_import_with_error_rows(tmp_path: Path) -> None:
    root = make_survpath_tables(tmp_path / "labels", studies=("tcga_aaa",), n_cases=12)
    cases, _ = read_table(find_studies(root)["tcga_aaa"], "dss")
    feats = tmp_path / "feats"
    feats.mkdir()
    slides = [s for c in cases for s in c.slides]
    for sid in slides[1:]:  # the first labelled slide has no bag
        with h5py.File(feats / f"{slide_stem(sid)}.h5", "w") as f:
            f.create_dataset("features", data=np.zeros((4, 8), np.float32))
            f.create_dataset("coords", data=np.zeros((4, 2), np.int64))
    with h5py.File(feats / "TCGA-XX-UNLABELLED.h5", "w") as f:  # a bag with no label row
        f.create_dataset("features", data=np.zeros((4, 8), np.float32))
    out = import_tcga(root, tmp_path / "m.csv", features=str(feats))
    recs = read_manifest(out)
    assert len(recs) == len(slides) - 1
    assert all(r.path.is_file() and r.split in ("train", "test") and r.group == r.extra["case_id"] for r in recs)
    with open(tmp_path / "m.errors.csv") as fh:
        errs = list(csv.DictReader(fh))
    assert {e["error"] for e in errs} == {
        "label row has no feature bag (slide not extracted)",
        "feature bag has no label row",
    }
    with pytest.raises(InputError, match="unknown study"):
        import_tcga(root, tmp_path / "m2.csv", studies="tcga_zzz")


def test_bad_label_rows_become_errors(tmp_path: Path) -> None:
    p = tmp_path / "tcga_x.csv"
    p.write_text("case_id,slide_id,survival_months_dss,censorship_dss\nA,A.svs,10,0\nB,B.svs,,1\nC,C.svs,5,7\n")
    cases, errors = read_table(p, "dss")
    assert [c.case_id for c in cases] == ["A"] and len(errors) == 2
    (tmp_path / "tcga_y.csv").write_text("case_id,slide_id\nA,A.svs\n")
    with pytest.raises(InputError, match="missing column"):
        read_table(tmp_path / "tcga_y.csv", "dss")


def test_age_column_garbage_becomes_none(tmp_path: Path) -> None:
    root = make_survpath_tables(tmp_path / "labels", studies=("tcga_aaa",), n_cases=6)
    table = find_studies(root)["tcga_aaa"]
    rows = list(csv.DictReader(open(table, newline="")))
    ids = list(dict.fromkeys(r["case_id"] for r in rows))  # a patient may have several slide rows
    garbage = dict(zip(ids, ["63", "abc", "", "-4", "nan", "250"]))
    for r in rows:
        r["age"] = garbage[r["case_id"]]
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    ages = {c.case_id: c.age for c in read_table(table, "dss")[0]}
    assert ages[ids[0]] == 63.0
    assert [ages[i] for i in ids[1:]] == [None] * (len(ids) - 1) and len(ids) >= 4
