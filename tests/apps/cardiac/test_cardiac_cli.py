"""CLI level: `medtransfer data import cactus`, `cardiac` group, `predict`, `export`."""
from __future__ import annotations

import json

import pytest

typer_testing = pytest.importorskip("typer.testing")


def _app():
    from medtransfer.shared.cli.main import app

    return app


def test_data_import_and_predict(cactus_copy, bundle, tmp_path):
    r = typer_testing.CliRunner().invoke(_app(), ["data", "import", "cactus", str(cactus_copy), "--out", str(tmp_path / "m.csv")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.csv").read_text().startswith("path,label,split,group,grade")
    from medtransfer.apps.cardiac.synthetic import cine, write_dicom

    dcm = write_dicom(tmp_path / "c.dcm", cine("SC", 8, 3, size=(96, 128)), "jpeg_ybr")
    (tmp_path / "junk.dcm").write_text("junk")
    r = typer_testing.CliRunner().invoke(_app(), ["predict", str(bundle), str(dcm), str(tmp_path / "junk.dcm"),
                                                  "--out", str(tmp_path / "o"), "--plot"])
    lines = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert lines[0]["status"] == "ok" and lines[0]["n_frames"] == 3
    assert lines[1]["status"] == "error" and "junk.dcm" in lines[1]["error"]
    assert (tmp_path / "o" / "c" / "crops.png").is_file()  # OUT/<input key>/crops.png
    assert r.exit_code == 1


def test_cardiac_group_help():
    r = typer_testing.CliRunner().invoke(_app(), ["cardiac", "--help"])
    assert r.exit_code == 0 and "train-view" in r.output and "compare" in r.output
