"""wsi reference statistics for ``medtransfer estimate``: runs record their validation bags, export writes a
drift-only reference (feature-bag statistics, risk), ``estimate`` flags shifted bags and not the validation ones."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.wsi.labels import find_studies, read_table
from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags
from medtransfer.apps.wsi.train import Cohort, load_cohort, make_config, record_reference, train_run
from medtransfer.shared.rundir import RunDir
from medtransfer.shared.utils.errors import BundleError, MedTransferError

TINY = ["train.epochs=1", "min_steps=0", "model.hidden=16", "model.attn_dim=8", "data.val_fraction=0.4"]


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def wsi_run(tmp_path_factory) -> dict:
    """A tiny synthetic-bag run (fold 0, 40 % of the fold's training patients held out) and its bundle."""
    from medtransfer.apps.wsi.export import export_run

    d = tmp_path_factory.mktemp("wsi_reference")
    root = make_survpath_tables(d / "labels", studies=("tcga_aaa",), n_cases=60)
    cases = read_table(find_studies(root)["tcga_aaa"], "dss", "tcga_aaa")[0]
    bags = planted_bags(cases, dim=16, seed=0, n_patches=(8, 24))
    train_run(root, "tcga_aaa", d / "run", make_config(overrides=TINY), bags=bags, fold=0)
    bundle = export_run(d / "run", d / "bundle", force=True)  # one epoch: may be below the baseline
    return {"root": root, "bags": bags, "run": d / "run", "bundle": Path(bundle), "dir": d}


def test_run_records_validation_bags_and_bundle_reference_is_drift_only(wsi_run):
    info = RunDir(wsi_run["run"]).info()
    man = Path(info["manifest"])
    assert man.is_file() and man.parent == wsi_run["run"] / "reference_bags"
    rows = _rows(man)
    val = [r for r in rows if r["split"] == "val"]
    test = [r for r in rows if r["split"] == "test"]
    assert len(val) == len(info["wsi"]["val_ids"]) >= 10 and test
    # files carry no patient identifier; each is the patient's in-memory bag
    assert all(r["path"].startswith(("val_", "test_")) and "TCGA" not in r["path"] for r in rows)
    val_bags = {wsi_run["bags"][cid].tobytes() for cid in info["wsi"]["val_ids"]}
    import h5py

    for r in val:
        with h5py.File(man.parent / r["path"], "r") as f:
            assert f["features"][()].tobytes() in val_bags
    meta = json.loads((wsi_run["bundle"] / "metadata.json").read_text())
    assert meta["reference"]["available"] and meta["reference"]["kind"] == "survival"
    assert meta["reference"]["n_cases"] == len(val)  # validation only, never the test fold
    ref = json.loads((wsi_run["bundle"] / "reference.json").read_text())
    assert ref["kind"] == "survival" and ref["split"] == "val"
    assert len(ref["outputs"]["risk"]) == len(val) and np.all(np.isfinite(ref["outputs"]["risk"]))
    assert {"feature_mean", "feature_std", "feature_norm", "n_patches_log10"} <= set(ref["stats"])
    assert "val_cases" not in ref and "accuracy" not in ref


def test_estimate_flags_shifted_bags_not_the_validation_bags(wsi_run):
    from medtransfer.shared.runtime.estimate_shift import drift_check, split_cases

    rows = split_cases(RunDir(wsi_run["run"]).info()["manifest"], "val")
    levels = drift_check(wsi_run["bundle"], rows, wsi_run["dir"] / "drift", ("scale_offset", 0.25))
    none, shifted = levels
    assert none["n_cases"] == shifted["n_cases"] == len(rows) and not none["n_errors"]
    assert none["status"] != "insufficient data" and not none["flag"], none["summary"]
    assert shifted["flag"] and "input.feature_std" in shifted["drifted"], shifted["summary"]
    res = json.loads((wsi_run["dir"] / "drift" / "scale_offset_0.25.json").read_text())
    assert res["kind"] == "survival" and res["estimated_accuracy"] is None and res["interval"] is None
    assert "survival" in res["reason"] and "drift" in res["reason"]


def test_demo_section_reports_drift_rows_for_a_survival_bundle(wsi_run, tmp_path):
    from medtransfer.shared.runtime.estimate_shift import demo_section

    demo = tmp_path / "demo"
    shutil.copytree(wsi_run["bundle"], demo / "bundles" / "wsi")
    md = demo_section(demo, fast=True)
    rows = [line for line in md.splitlines() if line.startswith("| wsi |")]
    assert len(rows) == 2, md
    none, shifted = (r.split("|")[1:-1] for r in rows)
    assert none[1].strip() == "none 0" and shifted[1].strip() == "scale_offset 0.25"
    n_test = sum(r["split"] == "test" for r in _rows(Path(RunDir(wsi_run["run"]).info()["manifest"])))
    assert int(none[4]) == int(shifted[4]) == n_test
    assert shifted[2].strip() == "yes" and "feature" in shifted[3]


def test_a_run_from_before_the_recording_exports_and_estimate_refuses_it(wsi_run, tmp_path):
    from medtransfer.apps.wsi.export import export_run
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.estimate import estimate

    old = tmp_path / "old_run"
    shutil.copytree(wsi_run["run"], old)
    shutil.rmtree(old / "reference_bags")
    info = RunDir(old).info()
    info.pop("manifest")
    info["wsi"].pop("reference")
    RunDir(old).write_info(info)
    b = Path(export_run(old, tmp_path / "b", force=True))
    assert load_bundle(b).app == "wsi"
    assert "predates" in json.loads((b / "metadata.json").read_text())["reference"]["reason"]
    val = split_val_manifest(wsi_run["run"], tmp_path / "val.csv")
    with pytest.raises(BundleError, match="no reference statistics in this bundle"):
        estimate(b, tmp_path / "e.json", manifest=val, progress=False)


def split_val_manifest(run: Path, out: Path) -> Path:
    """The run's validation rows as a manifest with absolute paths."""
    man = Path(RunDir(run).info()["manifest"])
    with open(out, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path"])
        w.writerows([str(man.parent / r["path"])] for r in _rows(man) if r["split"] == "val")
    return out


def test_record_reference_lists_files_links_shared_bags_and_says_why_none(tmp_path):
    from medtransfer.apps.wsi.reference import reference_cases

    root = make_survpath_tables(tmp_path / "labels", studies=("tcga_aaa",), n_cases=12)
    coh = load_cohort(
        root, "tcga_aaa", bags=planted_bags(read_table(find_studies(root)["tcga_aaa"], "dss", "tcga_aaa")[0], dim=4)
    )
    val, test = coh.cases[:3], coh.cases[3:5]
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for run in (a, b, c):
        run.mkdir()
        RunDir(run, must_exist=False).write_info({"app": "wsi"})
    record_reference(a, coh, val, test)
    record_reference(b, coh, val, test, share_from=a)
    for name in ("val_0000.h5", "test_0001.h5"):
        assert (b / "reference_bags" / name).stat().st_ino == (a / "reference_bags" / name).stat().st_ino
    cases = reference_cases(b)
    assert [Path(c["path"]).name for c in cases] == ["val_0000.h5", "val_0001.h5", "val_0002.h5"]
    # bags read from a features folder are listed where they are (one row per slide), nothing copied
    files = {c.case_id: [tmp_path / f"{c.case_id}_{k}.h5" for k in range(2)] for c in coh.cases}
    record_reference(c, Cohort(coh.cases, coh.bags, [], files), val, test)
    assert not list((c / "reference_bags").glob("*.h5"))
    assert [x["path"] for x in reference_cases(c)] == [str(p) for v in val for p in files[v.case_id]]
    # load_cohort from a features folder remembers each patient's bag files (what the manifest lists)
    from medtransfer.apps.wsi.features import write_bag
    from medtransfer.apps.wsi.labels import slide_stem

    c0 = coh.cases[0]
    want = [(tmp_path / "feats" / f"{slide_stem(sid)}.h5") for sid in c0.slides]
    for p in want:
        write_bag(p, np.zeros((5, 2), np.int64), np.ones((5, 4), np.float32), {"complete": True})
    assert load_cohort(root, "tcga_aaa", features=tmp_path / "feats").files == {c0.case_id: [p.resolve() for p in want]}
    # no validation patients: no manifest, and the reason reaches the bundle's note
    record_reference(c, coh, [], test, no_val_reason="every patient was drawn")
    assert "manifest" not in RunDir(c).info()
    with pytest.raises(MedTransferError, match="every patient was drawn"):
        reference_cases(c)
