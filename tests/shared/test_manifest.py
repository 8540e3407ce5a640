from pathlib import Path

import pytest

from medtransfer.shared.manifest import Record, assign_splits, read_manifest, write_manifest
from medtransfer.shared.utils.errors import InputError


def test_paths_relative_to_csv_round_trip(tmp_path: Path):
    (tmp_path / "d").mkdir()
    f = tmp_path / "d" / "a.png"
    f.write_bytes(b"x")
    out = write_manifest([Record(path=f, label="A", group="p1", extra={"grade": "7"})], tmp_path / "sub" / "m.csv")
    text = out.read_text()
    assert "../d/a.png" in text and str(tmp_path) not in text
    (r,) = read_manifest(out)
    assert r.path.resolve() == f.resolve() and r.label == "A" and r.group == "p1" and r.extra == {"grade": "7"}


def test_bad_split_and_missing_path_column(tmp_path: Path):
    m = tmp_path / "m.csv"
    m.write_text("path,label,split\na.png,A,training\n")
    with pytest.raises(InputError, match="split 'training'"):
        read_manifest(m)
    m.write_text("file,label\na.png,A\n")
    with pytest.raises(InputError, match="'path' column"):
        read_manifest(m)


def test_splits_keep_groups_together_and_are_deterministic():
    recs = [Record(path=Path(f"/x/{i}.png"), label=str(i % 2), group=f"p{i // 3}") for i in range(60)]
    a = [r.split for r in assign_splits([Record(**vars(r)) for r in recs], seed=1)]
    b = [r.split for r in assign_splits([Record(**vars(r)) for r in recs], seed=1)]
    assert a == b and set(a) == {"train", "val", "test"}
    by_group: dict[str, set] = {}
    for r, s in zip(recs, a):
        by_group.setdefault(r.group, set()).add(s)
    assert all(len(s) == 1 for s in by_group.values())


def test_existing_split_is_kept():
    recs = [Record(path=Path(f"/x/{i}"), label="a", split="test" if i == 0 else "") for i in range(10)]
    assign_splits(recs, seed=0)
    assert recs[0].split == "test"


# ------------------------------------------------------------------------------- hardening (issue 9)
def test_bom_prefixed_manifest_is_read(tmp_path):
    """Excel writes 'CSV UTF-8' with a BOM; the 'path' column must still be found."""
    from medtransfer.shared.manifest import read_manifest

    m = tmp_path / "m.csv"
    m.write_bytes("\ufeffpath,label\na.png,x\n".encode("utf-8"))
    recs = read_manifest(m)
    assert [r.rel for r in recs] == ["a.png"] and recs[0].label == "x"


def test_paths_normalised_to_one_case_id(tmp_path):
    from medtransfer.shared.manifest import read_manifest

    m = tmp_path / "m.csv"
    m.write_text("path,label\na.edf,x\n./a.edf,x\nsub/../a.edf,x\n")
    assert {r.case_id for r in read_manifest(m)} == {"a.edf"}


def test_non_utf8_and_duplicate_columns_are_input_errors(tmp_path):
    import pytest

    from medtransfer.shared.manifest import read_manifest
    from medtransfer.shared.utils.errors import InputError

    m = tmp_path / "m.csv"
    m.write_bytes(b"path,label\n\xff\xfe.png,x\n")
    with pytest.raises(InputError, match="not UTF-8"):
        read_manifest(m)
    m.write_text("path,label,label\na.png,x,y\n")
    with pytest.raises(InputError, match="duplicate column"):
        read_manifest(m)


def test_require_classes(tmp_path):
    import pytest

    from medtransfer.shared.manifest import Record, require_classes
    from medtransfer.shared.utils.errors import InputError

    recs = [Record(path=tmp_path / f"{i}", label=lab, split="train") for i, lab in enumerate("aab")]
    assert require_classes(recs, "m.csv") == ["a", "b"]
    with pytest.raises(InputError, match="only class 'a'"):
        require_classes(recs[:2], "m.csv")
    recs[0].label = ""
    with pytest.raises(InputError, match="no label"):
        require_classes(recs, "m.csv")


@pytest.mark.fuzz
def test_fuzz_manifest_csv(fuzz, tmp_path):
    """Mutated manifests: records or one-line InputError, never another exception."""
    from medtransfer.shared.manifest import read_manifest

    seed = (
        '\ufeffpath,label,split,group,grade\n"a b.png",A4C,train,p1,7\n./x/y.png,PL,val,p2,\n'
        "/abs/z.png,SC,test,,3\nq.png,,,,\n"
    ).encode("utf-8")
    fuzz.run(seed, ".csv", read_manifest, tmp_path)


def test_a_patient_or_a_file_in_two_splits_is_refused(tmp_path):
    from medtransfer.shared.utils.errors import InputError

    m = tmp_path / "m.csv"
    m.write_text("path,label,split,group\na.edf,normal,train,P1\nb.edf,normal,test,P1\n")
    with pytest.raises(InputError, match="group 'P1' \\(one patient\\) is in split 'train' and 'test'"):
        read_manifest(m)
    m.write_text("path,label,split\na.edf,normal,train\n./a.edf,abnormal,val\n")
    with pytest.raises(InputError, match="a.edf is listed in split 'train' and 'val'"):
        read_manifest(m)
    m.write_text("path,label,split\nv.avi,m1.npz,train\nv.avi,m2.npz,train\n")  # two objects of one video
    assert len(read_manifest(m)) == 2


def test_assign_splits_keeps_a_placed_patients_other_rows_with_it():
    from medtransfer.shared.manifest import Record, assign_splits
    from medtransfer.shared.utils.errors import ConfigError

    recs = [
        Record(Path(f"p{i}_{k}.edf"), "normal", "train" if k == 0 else "", f"P{i}") for i in range(8) for k in (0, 1)
    ]
    assign_splits(recs, 0.25, 0.25)
    assert all(r.split == "train" for r in recs)  # every patient already had a row in train
    with pytest.raises(ConfigError, match="split fractions"):
        assign_splits(recs, float("nan"), 0.1)
    with pytest.raises(ConfigError, match="split fractions"):
        assign_splits(recs, 0.9, 0.9)
