"""Trivial-baseline guard: a run below its baseline is not exported unless forced; forced = flagged everywhere."""

from __future__ import annotations

import json
import shutil

import pytest
from cliutil import run_main

from medtransfer.shared.export.guard import BelowBaselineError, baseline_record, baseline_verdict
from medtransfer.shared.rundir import RunDir


def test_baseline_record_directions():
    assert baseline_record("accuracy", 0.9, 0.5, "majority")["beats_baseline"]
    assert not baseline_record("accuracy", 0.5, 0.5, "majority")["beats_baseline"]  # a tie is not better
    assert baseline_record("mse", 1.0, 2.0, "mean grade", higher_is_better=False)["beats_baseline"]
    assert not baseline_record("dice", float("nan"), 0.9, "copy first mask")["beats_baseline"]


def test_verdict_refuses_unless_forced():
    rec = baseline_record("dice", 0.002, 0.90, "copy first mask")
    with pytest.raises(
        BelowBaselineError, match=r"dice 0.002 does not beat the trivial baseline \(copy first mask: 0.9\)"
    ):
        baseline_verdict(rec, "RUN", force=False)
    assert "does not beat" in baseline_verdict(rec, "RUN", force=True)["unreliable"]


def test_a_run_without_validation_by_design_says_so_and_exports(capsys):
    """A PKT source model trains on every patient of its study: it records why, and exports."""
    assert baseline_verdict({"no_validation": "a source model is trained on every patient"}, "RUN", False) is None
    assert "no baseline comparison: a source model" in capsys.readouterr().err


def test_a_run_without_a_baseline_comparison_is_not_exported_as_if_it_passed(image_run, tmp_path, capsys):
    """A wsi training that died after its checkpoints (before comparing with its baseline) exported
    with exit 0, no baseline and no unreliable mark: a missing record read as a pass."""
    from medtransfer.shared.runtime.bundle import load_bundle

    with pytest.raises(BelowBaselineError, match="records no comparison with a trivial baseline"):
        baseline_verdict(None, "RUN", force=False)
    run = tmp_path / "run"
    shutil.copytree(image_run["run"], run)
    info = RunDir(run).info()
    del info["baseline"]
    RunDir(run).write_info(info)
    code, _, err = run_main(["export", str(run), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "training did not finish" in err and not (tmp_path / "b").exists()
    assert run_main(["export", str(run), "--out", str(tmp_path / "b"), "--force"], capsys)[0] == 0
    assert "records no comparison" in load_bundle(tmp_path / "b").unreliable


def test_image_run_records_its_baseline(image_run):
    b = RunDir(image_run["run"]).info()["baseline"]
    assert b["metric"] == "accuracy" and b["baseline_name"].startswith("majority class") and 0 < b["baseline"] < 1
    assert b["beats_baseline"] == (b["model"] > b["baseline"])


def test_below_baseline_export_refused_then_forced_and_flagged(image_run, tmp_path, capsys):
    from medtransfer.shared.imagetask.predict import ImagePredictor  # noqa: F401  (the app's predictor)
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    run = tmp_path / "run"
    shutil.copytree(image_run["run"], run)
    r = RunDir(run)
    r.update_info(baseline=baseline_record("accuracy", 0.3, 0.5, "majority class 'x'"))

    def main(*args):
        return run_main(list(args), capsys)[0]

    code, _, err = run_main(["export", str(run), "--out", str(tmp_path / "b")], capsys)
    assert code == 2
    assert "does not beat the trivial baseline" in err and "--force" in err and not (tmp_path / "b").exists()
    assert main("export", str(run), "--out", str(tmp_path / "b"), "--force") == 0
    b = load_bundle(tmp_path / "b")
    assert "does not beat" in b.unreliable and b.meta["baseline"]["model"] == 0.3
    assert "UNRELIABLE" in (tmp_path / "b" / "README.md").read_text()
    img = next(p for p in image_run["root"].rglob("*.png"))
    ans = build_predictor(b).answer(img)
    assert ans["unreliable"] is True and any(x.startswith("bundle: ") for x in ans["reasons"])
    # and through score: every row's result is flagged
    from medtransfer.shared.runtime.score import Case, score

    score(tmp_path / "b", [Case("a", str(img), {})], tmp_path / "s.csv", progress=False)
    row = (tmp_path / "s.csv").read_text().splitlines()[1]
    assert "unreliable" in row and "true" in row
    # a run that beats its baseline exports without --force and answers are not flagged by the bundle
    r.update_info(baseline=baseline_record("accuracy", 0.9, 0.5, "majority class 'x'"))
    assert main("export", str(run), "--out", str(tmp_path / "ok")) == 0
    ok = load_bundle(tmp_path / "ok")
    assert ok.unreliable == "" and ok.meta["baseline"]["beats_baseline"]
    assert not any(str(x).startswith("bundle: ") for x in build_predictor(ok).answer(img).get("reasons", []))
    json.loads((tmp_path / "ok" / "metadata.json").read_text())


def test_a_resealed_bundle_with_its_flag_taken_out_still_flags_every_answer(image_run, tmp_path, capsys):
    from medtransfer.shared.export.bundle_writer import write_checksums
    from medtransfer.shared.runtime.bundle import load_bundle

    run = tmp_path / "run"
    shutil.copytree(image_run["run"], run)
    RunDir(run).update_info(baseline=baseline_record("accuracy", 0.3, 0.5, "majority class 'x'"))
    assert run_main(["export", str(run), "--out", str(tmp_path / "b"), "--force"], capsys)[0] == 0
    meta_path = tmp_path / "b" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta["unreliable"]  # an edit that hides the flag; the checksums are made again by hand
    meta_path.write_text(json.dumps(meta))
    write_checksums(tmp_path / "b", [p.name for p in (tmp_path / "b").iterdir() if p.name != "checksums.sha256"])
    assert "does not beat the trivial baseline" in load_bundle(tmp_path / "b").unreliable
