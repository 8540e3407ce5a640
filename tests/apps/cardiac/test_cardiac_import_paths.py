"""Importers write manifest paths relative to the CSV's folder, whatever the working directory and
however ROOT / --out are spelled (relative ROOT and relative --out from another cwd)."""

from __future__ import annotations

import pytest

from medtransfer.shared.manifest import read_manifest


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    from medtransfer.apps.cardiac.synthetic import make_cactus_tree

    base = tmp_path_factory.mktemp("paths")
    make_cactus_tree(base / "data" / "ph", n_per_view=3, n_sessions=2, size=(64, 64), seed=3)
    (base / "work").mkdir()
    return base


@pytest.mark.parametrize("importer", ["cactus", "echo_folder"])
def test_relative_root_and_out_from_another_cwd(tree, monkeypatch, importer):
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    monkeypatch.chdir(tree / "work")
    out = f"ph_{importer}/m.csv"
    r = CliRunner().invoke(app, ["data", "import", importer, "../data/ph", "--out", out])
    assert r.exit_code == 0, r.output
    recs = read_manifest(tree / "work" / out)
    assert recs and all(r.path.is_file() for r in recs), [r.rel for r in recs if not r.path.is_file()][:3]
    # the CSV is movable with its data: paths do not depend on the cwd it was written from
    monkeypatch.chdir(tree)
    assert all(r.path.is_file() for r in read_manifest(tree / "work" / out))
    assert not any(r.rel.startswith("/") for r in recs)
