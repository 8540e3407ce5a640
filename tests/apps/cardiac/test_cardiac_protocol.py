"""CACTUS protocol: grading by pure transfer (default), adding a view by fine-tuning, trivial baselines."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from medtransfer.shared.manifest import read_manifest

TINY = ["preprocessing.size=48", "train.epochs=1", "train.batch_size=16", "train.lr=0.002", "train.progress=false"]

FIVE = ["A4C", "PL", "PSAV", "SC", "Random"]


def _best(run):
    from medtransfer.shared.rundir import RunDir

    return RunDir(run).load_checkpoint("best")


def test_grade_stage_is_pure_transfer_by_default(runs):
    """Default grade.view_weight=0: stage 2 fine-tunes for grade only, the view head gets no loss (unchanged)."""
    v, g = _best(runs["dir"] / "view"), _best(runs["dir"] / "grade")
    assert g["config"]["grade"]["view_weight"] == 0.0
    assert torch.equal(v["model"]["view_head.weight"], g["model"]["view_head.weight"])
    assert not torch.equal(v["model"]["grade_head.weight"], g["model"]["grade_head.weight"])


def test_baselines_recorded_on_validation(runs, manifest):
    """run.json["baseline"]: majority training view (accuracy) / mean training grade (MSE), on val."""
    recs = read_manifest(manifest)
    tr = [r for r in recs if r.split == "train"]
    va = [r for r in recs if r.split == "val"]
    labels = [r.label for r in tr]
    majority = max(
        sorted(set(labels)), key=lambda c: (labels.count(c), -["A4C", "PL", "PSAV", "PSMV", "SC", "Random"].index(c))
    )
    vinfo = json.loads((runs["dir"] / "view" / "run.json").read_text())
    b = vinfo["baseline"]
    assert b["metric"] == "accuracy" and b["split"] == "val" and b["higher_is_better"]
    assert b["baseline_name"] == f"majority view '{majority}'"
    assert b["baseline"] == pytest.approx(np.mean([r.label == majority for r in va]))
    assert b["model"] == pytest.approx(runs["view"]["val"]["val_accuracy"])
    assert b["beats_baseline"] == (b["model"] > b["baseline"])

    ginfo = json.loads((runs["dir"] / "grade" / "run.json").read_text())
    gb = ginfo["baseline"]
    gtr = np.array([float(r.extra["grade"]) for r in tr if r.extra.get("grade", "") != ""])
    gva = np.array([float(r.extra["grade"]) for r in va if r.extra.get("grade", "") != ""])
    assert gb["metric"] == "mse" and not gb["higher_is_better"] and gb["split"] == "val"
    assert gb["baseline"] == pytest.approx(np.mean((gva - gtr.mean()) ** 2), rel=1e-4)
    assert gb["model"] == pytest.approx(runs["grade"]["val"]["val_mse"])
    # the test metrics carry both baselines beside the model
    assert set(runs["grade"]["test"]["baseline"]) == {"view", "grade"}


def test_evaluate_prints_both_baselines(runs, manifest):
    """`cardiac evaluate` on val: the baseline numbers equal the ones recorded at the end of training."""
    from medtransfer.apps.cardiac.cli import _evaluate

    r = _evaluate(runs["dir"] / "grade", manifest, "val")
    rec = json.loads((runs["dir"] / "grade" / "run.json").read_text())["baseline"]
    assert r["baseline"]["grade"]["mse"] == pytest.approx(rec["baseline"], rel=1e-4)
    assert r["baseline"]["grade"]["name"].startswith("mean training grade")
    assert r["baseline"]["view"]["name"].startswith("majority view")
    assert r["val_baseline_record"]["metric"] == "mse"
    rv = _evaluate(runs["dir"] / "view", manifest, "val")
    assert "grade" not in rv["baseline"] and 0 <= rv["baseline"]["view"]["accuracy"] <= 1


def test_export_refuses_run_below_baseline(runs, tmp_path):
    from medtransfer.apps.cardiac.export import export_run
    from medtransfer.shared.export.guard import BelowBaselineError, baseline_record
    from medtransfer.shared.rundir import RunDir

    run = tmp_path / "run"
    shutil.copytree(runs["dir"] / "view", run)
    RunDir(run).update_info(baseline=baseline_record("accuracy", 0.2, 0.4, "majority view 'A4C'"))
    with pytest.raises(BelowBaselineError, match="majority view"):
        export_run(run, tmp_path / "b")
    b = export_run(run, tmp_path / "b", force=True)
    meta = json.loads((b / "metadata.json").read_text())
    assert "does not beat" in json.dumps(meta)


def test_extend_view_head_keeps_old_classes():
    from medtransfer.apps.cardiac.model import CardiacNet, extend_view_head

    torch.manual_seed(0)
    m = CardiacNet("resnet18", n_views=5).eval()
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        before, grade_before = m(x)
    extend_view_head(m, 1)
    with torch.no_grad():
        after, grade_after = m(x)
    assert after.shape == (2, 6)
    assert torch.allclose(after[:, :5], before) and torch.allclose(grade_after, grade_before)
    assert torch.isfinite(after[:, 5]).all()


@pytest.fixture(scope="module")
def added(manifest, tmp_path_factory):
    from medtransfer.apps.cardiac.train import add_view, train_view

    d = tmp_path_factory.mktemp("addview")
    quick = TINY
    v5 = train_view(manifest, d / "view5", [*quick, f"model.views=[{','.join(FIVE)}]"])
    v6 = add_view(manifest, d / "view5", "PSMV", d / "view6", quick)
    return {"dir": d, "v5": v5, "v6": v6}


def test_add_view_extends_a_five_view_model(added, manifest):
    """The paper's PSMV step: a 5-view run gains PSMV by fine-tuning; old classes keep their order."""
    d = added["dir"]
    assert set(k for k in added["v5"]["test"] if k.startswith("f1_")) == {f"f1_{c}" for c in FIVE}
    st = _best(d / "view6")
    assert st["model"]["view_head.weight"].shape[0] == 6
    assert st["config"]["model"]["views"] == [*FIVE, "PSMV"]
    info = json.loads((d / "view6" / "run.json").read_text())
    assert info["stage"] == "add_view" and info["added_view"] == "PSMV" and info["old_views"] == FIVE
    assert info["labels"] == [*FIVE, "PSMV"] and info["baseline"]["metric"] == "accuracy"
    assert "f1_PSMV" in added["v6"]["test"]


def test_add_view_bundle_labels(added, tmp_path):
    from medtransfer.apps.cardiac.export import export_run

    b = export_run(added["dir"] / "view6", tmp_path / "b", force=True)
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["labels"] == [*FIVE, "PSMV"] and meta["outputs"]["view_logits"]["shape"] == [-1, 6]


def test_add_view_refuses_known_view_and_grade_runs(added, runs, manifest, tmp_path):
    from medtransfer.apps.cardiac.train import add_view
    from medtransfer.shared.utils.errors import ConfigError, InputError

    with pytest.raises(ConfigError, match="already a class"):
        add_view(manifest, added["dir"] / "view6", "PSMV", tmp_path / "x")
    with pytest.raises(ConfigError, match="--view must be one of"):
        add_view(manifest, added["dir"] / "view5", "Apical2", tmp_path / "x")
    with pytest.raises(InputError, match="grade run"):
        add_view(manifest, runs["dir"] / "grade", "PSMV", tmp_path / "x")
    with pytest.raises(InputError, match="not a"):  # no run.json / no best checkpoint
        add_view(manifest, tmp_path, "PSMV", tmp_path / "x")


def test_pure_transfer_bundle_says_view_head_untrained(bundle, tmp_path):
    """A default (pure transfer) grade bundle marks its view output untrained, and every answer says so."""
    from medtransfer.apps.cardiac.predict import CardiacPredictor
    from medtransfer.apps.cardiac.synthetic import cine, write_dicom
    from medtransfer.shared.runtime.bundle import load_bundle

    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["outputs"]["view_logits"]["trained"] is False and meta["outputs"]["grade"]["trained"] is True
    p = CardiacPredictor(load_bundle(bundle), out_dir=str(tmp_path), max_frames=2)
    r = p.predict(write_dicom(tmp_path / "c.dcm", cine("A4C", 9, 2, seed=5, size=(96, 128)), "jpeg_ybr"))
    assert r["trained_heads"] == {"view": False, "grade": True}
