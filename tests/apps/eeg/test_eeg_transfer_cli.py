"""Transfer sweep and the `medtransfer eeg` CLI."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from cliutil import run_main
from typer.testing import CliRunner

from medtransfer.apps.eeg.cli import app
from medtransfer.apps.eeg.transfer import subsample
from medtransfer.shared.manifest import read_manifest


def test_subsample_stratified_min_one(tuab_csv):
    tr = [r for r in read_manifest(tuab_csv) if r.split == "train"]
    one = subsample(tr, 0.01, seed=0)
    assert sorted(r.label for r in one) == ["abnormal", "normal"]
    full = subsample(tr, 1.0, seed=0)
    assert len(full) == len(tr)
    assert {r.case_id for r in subsample(tr, 0.5, 1)} != {r.case_id for r in subsample(tr, 0.5, 2)} or len(tr) <= 4


def test_transfer_sweep_table_and_plot(trained_run, tuab_csv, nmt_csv, tmp_path, eeg_cfg):
    from medtransfer.apps.eeg.transfer import sweep

    cfg = eeg_cfg(tmp_path / "cache", epochs=2)
    res = sweep(
        tuab_csv,
        nmt_csv,
        tmp_path / "sw",
        cfg,
        strategies=["full", "linear_probe"],
        fractions=[0.25, 1.0],
        seeds=[0],
        source_run=trained_run,
    )
    rows = list(csv.DictReader(open(res["table"])))
    assert len(rows) == 2 * 3  # fractions x (scratch + 2 strategies)
    assert {r["mode"] for r in rows} == {"scratch", "transfer_full", "transfer_linear_probe"}
    for r in rows:
        assert 0.0 <= float(r["target_balanced_accuracy"]) <= 1.0
        assert (r["forgetting"] == "") == (r["mode"] == "scratch")
    assert res["plot"].stat().st_size > 5000
    summ = list(csv.DictReader(open(res["summary"])))
    assert len(summ) == 6 and "target_auroc_mean" in summ[0]


def test_cli_train_evaluate_json(tuab_csv, tmp_path):
    r = CliRunner().invoke(
        app,
        [
            "train",
            "--manifest",
            str(tuab_csv),
            "--out",
            str(tmp_path / "run"),
            "--model",
            "eegnet",
            "--epochs",
            "1",
            "--sfreq",
            "50",
            "--window-seconds",
            "4",
            "--crop-start",
            "4",
            "--crop-max",
            "0",
            "--cache-dir",
            str(tmp_path / "c"),
            "--set",
            "train.progress=false",
        ],
    )
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), "--manifest", str(tuab_csv)])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output.strip().splitlines()[-1])
    assert {"balanced_accuracy", "auroc", "n_recordings"} <= set(m) and m["n_recordings"] == 6


def _main(args: list[str], capsys) -> tuple[int, str]:
    """(exit code, stderr) of the console entry point run in-process."""
    code, _, err = run_main(args, capsys)
    return code, err


def test_cli_errors_are_one_line(tmp_path, capsys):
    code, err = _main(["eeg", "evaluate", str(tmp_path), "--manifest", str(tmp_path / "none.csv")], capsys)
    assert code == 2 and err.count("\n") == 1 and "not a run folder" in err, err
    code, err = _main(
        ["eeg", "train", "--manifest", str(tmp_path / "none.csv"), "--out", str(tmp_path / "r"), "--model", "resnet"],
        capsys,
    )
    assert code == 2 and err.count("\n") == 1 and "model.name" in err, err
    code, err = _main(["eeg", "synth", "bogus", "-o", str(tmp_path / "s")], capsys)
    assert code == 2 and err.startswith("error: kind must be tuab or nmt"), err


def test_top_level_cli_import_export_predict(tuab_root, trained_run, tmp_path):
    """`medtransfer data import tuab`, `medtransfer export`, `medtransfer predict --plot` (the core CLI)."""
    from medtransfer.shared.cli.main import app as main_app

    runner = CliRunner()
    r = runner.invoke(
        main_app,
        [
            "data",
            "import",
            "tuab",
            str(tuab_root),
            "--out",
            str(tmp_path / "m.csv"),
            "--opt",
            "window_seconds=4",
            "--opt",
            "crop_start_s=4",
            "--opt",
            "sfreq=50",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(read_manifest(tmp_path / "m.csv")) == 16
    r = runner.invoke(main_app, ["export", str(trained_run), "--out", str(tmp_path / "b")])
    beats = json.loads((trained_run / "run.json").read_text())["baseline"]["beats_baseline"]
    if not beats:  # the tiny run does not beat its trivial baseline: refused, then forced
        assert r.exit_code == 2 and "baseline" in r.output
        r = runner.invoke(main_app, ["export", str(trained_run), "--out", str(tmp_path / "b"), "--force"])
    assert r.exit_code == 0, r.output
    f = sorted((tuab_root / "v3.0.1" / "edf" / "eval" / "abnormal").rglob("*.edf"))[0]
    bad = tmp_path / "bad.edf"
    bad.write_bytes(f.read_bytes()[:3000])
    r = runner.invoke(
        main_app, ["predict", str(tmp_path / "b"), str(f), str(bad), "--plot", "--out", str(tmp_path / "p")]
    )
    assert r.exit_code == 1  # one input failed, the other still answered
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert lines[0]["status"] == "ok" and lines[0]["label"] in ("normal", "abnormal")
    assert lines[1]["status"] == "error" and "truncated" in lines[1]["error"]
    plot = Path(lines[0]["plot"])  # out_dir/<input path relative to the inputs' common folder>/trace.png
    assert plot.is_file() and plot.name == "trace.png" and plot.parent.name == f.stem
    assert tmp_path / "p" in plot.parents


def test_eeg_init_from_another_apps_run_is_refused(tmp_path):
    import json

    import pytest

    from medtransfer.apps.eeg.train import _read_init
    from medtransfer.shared.utils.errors import InputError

    (tmp_path / "cview").mkdir()
    (tmp_path / "cview" / "run.json").write_text(json.dumps({"app": "cardiac", "task": "view"}))
    with pytest.raises(InputError, match="cview: a run of app 'cardiac', not of app 'eeg'"):
        _read_init(tmp_path / "cview")
