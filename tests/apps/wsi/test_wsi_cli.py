"""CLI-level checks through the top-level `medtransfer` typer app."""

import json
import shutil
from pathlib import Path

from cliutil import run_main
from typer.testing import CliRunner

from medtransfer.shared.cli.main import app

runner = CliRunner()


def test_wsi_extract_cli_resumes_and_reports_errors(slide_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for n in ("good_a.tif", "no_mpp.tif"):
        shutil.copy(slide_dir / n, src / n)
    out = tmp_path / "out"
    args = [
        "wsi",
        "extract",
        str(src),
        "--out",
        str(out),
        "--target-mpp",
        "2",
        "--patch-size",
        "64",
        "--encoder",
        "resnet18",
    ]
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
    for cmd in ("synth", "extract", "train", "evaluate", "cv", "pkt"):
        assert cmd in r.output


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console entry point run in-process."""
    return run_main(args, capsys)


def test_wsi_synth_train_evaluate_cli(tmp_path: Path, capsys) -> None:
    """`wsi synth -o L`, `wsi train ... --synthetic`, then `wsi evaluate RUN` recomputes the run's held-out metrics."""
    import json
    import math

    labels, run = tmp_path / "labels", tmp_path / "run"
    code, _, err = _main(["wsi", "synth", "-o", str(labels), "--n-cases", "30", "--studies", "tcga_aaa"], capsys)
    assert code == 0 and (labels / "datasets_csv" / "metadata" / "tcga_aaa.csv").is_file(), err
    code, out, err = _main(
        [
            "wsi",
            "train",
            "--labels",
            str(labels),
            "--study",
            "tcga_aaa",
            "--synthetic",
            "--dim",
            "16",
            "-o",
            str(run),
            "--set",
            "train.epochs=1",
            "--set",
            "min_steps=0",
        ],
        capsys,
    )
    assert code == 0, err
    trained = json.loads(out.strip().splitlines()[-1].replace("NaN", "null"))
    code, out, err = _main(["wsi", "evaluate", str(run), "--labels", str(labels), "--synthetic"], capsys)
    assert code == 0, err
    ev = json.loads(out.strip().splitlines()[-1].replace("NaN", "null"))
    assert ev["study"] == "tcga_aaa" and ev["fold"] == 0 and ev["n"] == trained["n_test"]
    assert math.isclose(ev["c_index"], trained["test_c_index"])
    code, out, _ = _main(
        ["wsi", "evaluate", str(run), "--labels", str(labels), "--synthetic", "--split", "train"], capsys
    )
    assert code == 0 and math.isclose(json.loads(out.replace("NaN", "null"))["c_index"], trained["train_c_index"])
    # the validation split (training patients not fitted) gives the recorded baseline, reported beside the model
    base = trained["baseline"]
    assert base["split"] == "val" and base["metric"] == "c_index" and base["n"] == trained["n_val"] >= 2
    assert base["baselines"]["constant risk (C-index 0.5)"] == 0.5 and base["baseline"] >= 0.5
    code, out, _ = _main(
        ["wsi", "evaluate", str(run), "--labels", str(labels), "--synthetic", "--split", "val"], capsys
    )
    ev = json.loads(out.replace("NaN", "null"))
    assert code == 0 and math.isclose(ev["c_index"], base["model"]) and ev["n"] == base["n"]
    assert ev["baseline_c_index"] == base["baseline"] and ev["beats_baseline"] == base["beats_baseline"]
    # no bag source, or a bad split: one line, exit 2
    code, _, err = _main(["wsi", "evaluate", str(run), "--labels", str(labels)], capsys)
    assert code == 2 and err == "error: give --features DIR or --synthetic\n", err
    code, _, err = _main(["wsi", "evaluate", str(run), "--labels", str(labels), "--synthetic", "--split", "x"], capsys)
    assert code == 2 and err.startswith("error: --split must be test, val, train or all"), err


def test_bench_module_parses_its_flags_before_measuring(tmp_path, monkeypatch, capsys):
    """``python -m medtransfer.apps.wsi.bench --help`` prints usage: it once ran the whole bench and
    wrote the JSON to a file named ``--help``; flags reach ``bench`` as given."""
    import pytest

    from medtransfer.apps.wsi import bench as wb

    monkeypatch.chdir(tmp_path)
    got: dict = {}
    monkeypatch.setattr(wb, "bench", lambda **kw: got.update(kw) or {"ok": True})
    with pytest.raises(SystemExit) as e:
        wb._main(["--help"])
    assert e.value.code == 0 and "--big-side" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == [] and not got
    with pytest.raises(SystemExit) as e:
        wb._main(["--bogus"])
    assert e.value.code == 2 and not got
    wb._main(["--out", "b.json", "--big-side", "0", "--devices", "cpu"])
    assert got["out"] == "b.json" and got["big_side"] == 0 and got["devices"] == "cpu"


def test_bench_says_when_the_asked_device_is_absent(tmp_path, monkeypatch, capsys):
    """``--devices cuda`` on a machine without CUDA printed a JSON with no slide and exited 0, after
    generating a 20k-px slide for nothing: now it says so and fails, before generating anything."""
    import pytest
    import torch

    from medtransfer.apps.wsi import bench as wb

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(wb, "make_big_slide", lambda *a, **k: pytest.fail("generated a slide nobody measures"))
    with pytest.raises(SystemExit) as e:
        wb._main(["--devices", "cuda", "--out", "b.json"])
    assert "nothing measured (not measured: torch sees no CUDA device" in str(e.value.code)
    res = json.loads((tmp_path / "b.json").read_text())
    assert res["slides"] == [] and "no CUDA device" in res["cuda"]
    assert "wsi bench [cuda]: not measured" in capsys.readouterr().err
