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
