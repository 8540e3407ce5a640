"""CLI level: `medtransfer data import cactus`, `cardiac` group (train / evaluate), `predict`, `export`."""

from __future__ import annotations

import json

import pytest
from cliutil import run_main

typer_testing = pytest.importorskip("typer.testing")


def _app():
    from medtransfer.shared.cli.main import app

    return app


def test_data_import_and_predict(cactus_copy, bundle, tmp_path):
    r = typer_testing.CliRunner().invoke(
        _app(), ["data", "import", "cactus", str(cactus_copy), "--out", str(tmp_path / "m.csv")]
    )
    assert r.exit_code == 0, r.output
    assert (tmp_path / "m.csv").read_text().startswith("path,label,split,group,grade")
    from medtransfer.apps.cardiac.synthetic import cine, write_dicom

    dcm = write_dicom(tmp_path / "c.dcm", cine("SC", 8, 3, size=(96, 128)), "jpeg_ybr")
    (tmp_path / "junk.dcm").write_text("junk")
    r = typer_testing.CliRunner().invoke(
        _app(), ["predict", str(bundle), str(dcm), str(tmp_path / "junk.dcm"), "--out", str(tmp_path / "o"), "--plot"]
    )
    lines = [json.loads(x) for x in r.output.splitlines() if x.startswith("{")]
    assert lines[0]["status"] == "ok" and lines[0]["n_frames"] == 3
    assert lines[1]["status"] == "error" and "junk.dcm" in lines[1]["error"]
    assert (tmp_path / "o" / "c" / "crops.png").is_file()  # OUT/<input key>/crops.png
    assert r.exit_code == 1


def test_cardiac_group_help():
    r = typer_testing.CliRunner().invoke(_app(), ["cardiac", "--help"])
    assert r.exit_code == 0 and "train" in r.output and "evaluate" in r.output and "compare" in r.output
    assert "train-view" not in r.output and "train-grade" not in r.output  # old verbs: hidden, answer with a hint


def _main(args: list[str], capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of the console entry point run in-process."""
    return run_main(args, capsys)


@pytest.mark.parametrize("stage", ["view", "grade"])
def test_evaluate_matches_the_runs_test_metrics(runs, manifest, stage, capsys):
    """`medtransfer cardiac evaluate RUN -m M` recomputes what training recorded on the test split."""
    code, out, err = _main(["cardiac", "evaluate", str(runs["dir"] / stage), "-m", str(manifest)], capsys)
    assert code == 0, err
    got = json.loads(out)
    want = runs[stage]["test"]
    assert got["stage"] == stage and got["split"] == "test" and got["n"] == want["n_test"]
    assert got["accuracy"] == pytest.approx(want["accuracy"]) and got["macro_f1"] == pytest.approx(want["macro_f1"])
    assert ("mse" in got) == (stage == "grade")
    if stage == "grade":
        assert got["mse"] == pytest.approx(want["mse"], rel=1e-5)
    code, out, err = _main(
        ["cardiac", "evaluate", str(runs["dir"] / stage), "-m", str(manifest), "--split", "val"], capsys
    )
    assert code == 0 and json.loads(out)["split"] == "val", err


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--stage", "grade"], "grade.init=view needs the stage-1 run"),
        (["--stage", "view", "--init", "somewhere"], "--init is the stage-1 run for --stage grade"),
        (["--stage", "bogus"], "--stage must be view or grade"),
    ],
)
def test_train_stage_errors_are_one_line(manifest, tmp_path, args, needle, capsys):
    code, _, err = _main(["cardiac", "train", "-m", str(manifest), "-o", str(tmp_path / "r"), *args], capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_evaluate_refuses_a_bad_split_and_a_missing_run(manifest, tmp_path, capsys):
    code, _, err = _main(["cardiac", "evaluate", str(tmp_path), "-m", str(manifest), "--split", "bogus"], capsys)
    assert code == 2 and "--split must be one of train, val, test" in err
    code, _, err = _main(["cardiac", "evaluate", str(tmp_path), "-m", str(manifest)], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a run folder" in err, err


@pytest.mark.parametrize("view,needle", [("PSMV", "already a class"), ("Apical2", "--view must be one of")])
def test_add_view_errors_are_one_line(runs, manifest, tmp_path, view, needle, capsys):
    """`cardiac add-view` on a 6-view run: the view is already there / unknown -> one line, nothing written."""
    code, _, err = _main(
        ["cardiac", "add-view", "-m", manifest, "-o", tmp_path / "r", "--init", runs["dir"] / "view", "--view", view],
        capsys,
    )
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1 and needle in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r").exists()


def test_evaluate_cli_prints_baseline_beside_model(runs, manifest, capsys):
    code, out, err = _main(["cardiac", "evaluate", str(runs["dir"] / "grade"), "-m", str(manifest)], capsys)
    got = json.loads(out)
    assert code == 0, err
    assert got["baseline"]["grade"]["name"].startswith("mean training grade") and "mse" in got["baseline"]["grade"]
    assert got["baseline"]["view"]["name"].startswith("majority view") and got["val_baseline_record"]["split"] == "val"


def test_another_apps_run_and_implausible_settings_are_one_line(tmp_path):
    import json

    import pytest

    from medtransfer.apps.cardiac.export import load_run_model
    from medtransfer.apps.cardiac.train import make_config
    from medtransfer.shared.utils.errors import ConfigError, InputError

    (tmp_path / "runA").mkdir()
    (tmp_path / "runA" / "run.json").write_text(json.dumps({"app": "eeg", "task": "pathology"}))
    with pytest.raises(InputError, match="runA: a run of app 'eeg', not of app 'cardiac'"):
        load_run_model(tmp_path / "runA")  # `cardiac evaluate <an eeg run>` was KeyError 'preprocessing'
    for bad, words in (
        (["preprocessing.size=0"], ">= 16"),
        (["preprocessing.size=100000"], "<= 1024"),
        (["ood.quantile=2"], "< 0.5"),
    ):
        with pytest.raises(ConfigError, match=words):
            make_config(overrides=bad)
