"""Per-input output paths: keyed by the path relative to the input root, clashes refused."""

from __future__ import annotations

import pytest

from medtransfer.shared.runtime.outputs import input_root, output_dir, output_key, unique_keys
from medtransfer.shared.utils.errors import MedTransferError


def _touch(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"x")
    return p


def test_same_name_in_two_folders_gets_two_outputs(tmp_path):
    a, b = _touch(tmp_path / "a" / "s1.svs"), _touch(tmp_path / "b" / "s1.tif")
    keys = unique_keys([a, b])
    assert set(keys) == {"a/s1", "b/s1"}
    assert output_dir(tmp_path / "out", a, tmp_path) == tmp_path / "out" / "a" / "s1"


def test_dotted_names_keep_all_but_the_last_suffix(tmp_path):
    v1, v2 = _touch(tmp_path / "pt.v1.mha"), _touch(tmp_path / "pt.v2.mha")
    assert set(unique_keys([v1, v2])) == {"pt.v1", "pt.v2"}


def test_clash_in_one_folder_is_refused_naming_both(tmp_path):
    a, b = _touch(tmp_path / "s1.svs"), _touch(tmp_path / "s1.tif")
    with pytest.raises(MedTransferError, match=r"s1\.svs and .*s1\.tif would write the same output 's1'"):
        unique_keys([a, b])


def test_same_file_spelled_twice_is_not_a_clash(tmp_path, monkeypatch):
    a = _touch(tmp_path / "x.png")
    monkeypatch.chdir(tmp_path)
    assert list(unique_keys(["x.png", "./x.png", a])) == ["x"]


def test_symlinked_input_is_keyed_by_its_link(tmp_path):
    real = _touch(tmp_path / "store" / "deep" / "s.tif")
    link = tmp_path / "in" / "s.tif"
    link.parent.mkdir()
    link.symlink_to(real)
    assert input_root([link]) == tmp_path / "in"
    assert output_key(link, tmp_path / "in") == "s"


def test_input_outside_root_is_an_input_error(tmp_path):
    a = _touch(tmp_path / "a" / "x.png")
    with pytest.raises(MedTransferError, match="not inside the input root"):
        output_key(a, tmp_path / "b")
