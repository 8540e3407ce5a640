"""CLI-level checks through the top-level `medtransfer` typer app."""
import shutil
from pathlib import Path

from typer.testing import CliRunner

from medtransfer.shared.cli.main import app

runner = CliRunner()


def test_wsi_extract_cli_resumes_and_reports_errors(slide_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for n in ("good_a.tif", "no_mpp.tif"):
        shutil.copy(slide_dir / n, src / n)
    out = tmp_path / "out"
    args = ["wsi", "extract", str(src), "--out", str(out), "--target-mpp", "2", "--patch-size", "64", "--encoder", "resnet18"]
    r = runner.invoke(app, args)
    assert r.exit_code == 1, r.output  # one slide lacks MPP: error row, the other is done
    assert "no MPP" in r.output and '"done": 1' in r.output
    assert (out / "good_a.h5").is_file() and not (out / "no_mpp.h5").exists()
    r2 = runner.invoke(app, args + ["--mpp", "0.5"])
    assert r2.exit_code == 0, r2.output
    assert '"done": 1, "skipped": 1, "error": 0' in r2.output


def test_wsi_commands_listed() -> None:
    r = runner.invoke(app, ["wsi", "--help"])
    assert r.exit_code == 0
    for cmd in ("extract", "train", "cv", "pkt"):
        assert cmd in r.output
