import json
import subprocess
import sys

from typer.testing import CliRunner

from medtransfer.shared.cli.main import app

runner = CliRunner()


def test_help_lists_core_commands_and_apps():
    r = runner.invoke(app, ["--help"])
    assert r.exit_code == 0
    for cmd in ("data", "export", "predict", "score", "demo", "bench", "image"):
        assert cmd in r.output
    from medtransfer.shared.plugins import discover_apps

    for name in discover_apps():
        assert name in r.output


def test_every_command_has_help():
    for args in (
        ["data", "--help"],
        ["data", "import", "--help"],
        ["export", "--help"],
        ["predict", "--help"],
        ["score", "--help"],
        ["demo", "--help"],
        ["bench", "--help"],
        ["image", "train", "--help"],
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 0, (args, r.output)


def test_predict_bad_input_one_line_nonzero(image_run, tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    r = subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.cli.main", "predict", str(image_run["bundle"]), str(bad)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1
    line = json.loads(r.stdout.strip())
    assert line["status"] == "error" and str(bad) in line["error"]
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and str(bad) in errors[0] and "Traceback" not in r.stderr


def test_unknown_dataset_and_bad_bundle(tmp_path):
    r = runner.invoke(app, ["data", "import", "nosuch", str(tmp_path), "--out", str(tmp_path / "m.csv")])
    assert r.exit_code == 2 and "unknown dataset 'nosuch'" in r.output
    r = runner.invoke(app, ["predict", str(tmp_path), str(tmp_path / "a.png")])
    assert r.exit_code == 2 and "not a bundle" in r.output


def test_train_evaluate_export_via_cli(image_run, tmp_path):
    r = runner.invoke(app, ["image", "evaluate", str(image_run["run"]), "--manifest", str(image_run["manifest"])])
    assert r.exit_code == 0, r.output
    assert 0.0 <= json.loads(r.output.strip().splitlines()[-1])["accuracy"] <= 1.0
    r = runner.invoke(
        app,
        [
            "image",
            "train",
            "--manifest",
            str(image_run["manifest"]),
            "--out",
            str(tmp_path / "x"),
            "--set",
            "train.epochz=1",
        ],
    )
    assert r.exit_code == 2 and "train.epochz" in r.output
