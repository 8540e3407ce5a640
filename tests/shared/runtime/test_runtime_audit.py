"""``medtransfer audit``: severity 0 is the plain ``score``, perturbations reach the model, bad cases are
rows, the metrics are right, the CLI is torch-free without --run."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.runtime import audit as A


def _manifest_with_labels(image_run, tmp_path: Path, extra_rows: list[tuple[str, str]] = ()) -> Path:
    """The image run's test split plus ``extra_rows`` (path, label), absolute paths."""
    from medtransfer.shared.manifest import read_manifest

    recs = [r for r in read_manifest(image_run["manifest"]) if r.split in ("test", "val")]
    out = tmp_path / "audit_manifest.csv"
    with open(out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for r in recs:
            w.writerow([str(r.path), r.label])
        for row in extra_rows:
            w.writerow(row)
    return out


def test_severity_zero_is_the_plain_score_and_perturbations_reach_the_model(image_run, tmp_path):
    from medtransfer.shared.runtime import score as sc
    from medtransfer.shared.runtime.bundle import load_bundle

    man = _manifest_with_labels(image_run, tmp_path)
    rep = A.run_audit(
        image_run["bundle"], man, tmp_path / "audit", perturbations=["gain", "blur"], severities=3, progress=False
    )
    # the plain score of the same manifest, its answers through the same metric
    sc.score(image_run["bundle"], sc.cases_from_manifest(man), tmp_path / "s.csv", progress=False, overwrite=True)
    with open(tmp_path / "s.csv", newline="") as f:
        rows = {r["case"]: json.loads(r["result"]) for r in csv.DictReader(f) if r["status"] == "ok"}
    cases = A.load_cases(man, "classification")
    labels = list(load_bundle(image_run["bundle"]).labels)
    plain = A.metric_from_answers(
        "classification", [A.outcome("classification", rows[c.case_id], labels) for c in cases], cases
    )
    assert rep["severity0"]["metric"] == plain["metric"] and rep["severity0"]["ece"] == plain["ece"]
    assert rep["severity0"]["accuracy"] == plain["accuracy"]
    sev = {(r["perturbation"], r["severity"]) for r in rep["results"]}
    assert sev == {("image/gain", 0.0), ("image/gain", 6.0), ("image/gain", 10.0)} | {
        ("image/blur", 0.0), ("image/blur", 2.0), ("image/blur", 4.0)
    }  # fmt: skip
    # the perturbation reaches the model: a 4 px blur of a 32 px shape changes the confidences
    with open(tmp_path / "audit" / "audit_cases.csv", newline="") as f:
        crow = list(csv.DictReader(f))
    base = {r["case"]: r["confidence"] for r in crow if r["perturbation"] == ""}
    blurred = {r["case"]: r["confidence"] for r in crow if r["perturbation"] == "image/blur" and r["severity"] == "4.0"}
    assert blurred and any(blurred[k] != base[k] for k in blurred)
    for f in ("audit.json", "audit.md", "robustness.png", "reliability.png"):
        assert (tmp_path / "audit" / f).is_file(), f
    md = (tmp_path / "audit" / "audit.md").read_text()
    assert "image/blur" in md and "robustness.png" in md


def test_bad_cases_are_error_rows_and_the_rest_is_audited(image_run, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    man = _manifest_with_labels(
        image_run, tmp_path, [(str(tmp_path / "missing.png"), "circle"), (str(broken), "circle")]
    )
    rep = A.run_audit(
        image_run["bundle"], man, tmp_path / "a", perturbations=["image/gain"], severities=2, progress=False
    )
    n_good = rep["n_cases"] - 2
    assert rep["n_error"] == 2 and rep["n_ok"] == n_good
    with open(tmp_path / "a" / "audit_cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    err = [r for r in rows if r["status"] == "error"]
    assert {Path(r["case"]).name for r in err} == {"missing.png", "broken.png"}
    assert all(r["error"] and "\n" not in r["error"] for r in err)
    assert sum(r["status"] == "ok" and r["perturbation"] == "image/gain" for r in rows) == n_good
    assert all(r["n"] == n_good for r in rep["results"])


def test_calibration_and_task_metrics_are_right(tmp_path):
    # two bins: 0.9-confidence answers half right (gap 0.4), 0.6-confidence all right (gap 0.4)
    ece = A.expected_calibration_error(np.array([0.95, 0.95, 0.65, 0.65]), np.array([1, 0, 1, 1]))
    assert ece == pytest.approx(0.5 * 0.45 + 0.5 * 0.35)
    cases = [A.AuditCase(str(i), tmp_path / f"{i}", lab) for i, lab in enumerate(["a", "a", "a", "b"])]
    outs = [{"pred": p, "conf": 0.8} for p in ["a", "a", "b", "b"]]
    m = A.metric_from_answers("classification", outs, cases)
    assert m["accuracy"] == 0.75 and m["metric"] == pytest.approx((2 / 3 + 1) / 2)  # balanced accuracy
    # survival: risk ordered exactly against time -> c-index 1; reversed -> 0
    sc = [A.AuditCase(str(i), tmp_path / f"{i}", "", {"time": str(t), "event": "1"}) for i, t in enumerate([5, 10, 20])]
    assert A.metric_from_answers("survival", [{"risk": r} for r in (3.0, 2.0, 1.0)], sc)["metric"] == 1.0
    assert A.metric_from_answers("survival", [{"risk": r} for r in (1.0, 2.0, 3.0)], sc)["metric"] == 0.0
    # segmentation: Dice on the labelled frames after the prompt frame
    lab = np.zeros((2, 8, 8), np.uint8)
    lab[:, :4] = 1
    np.savez(tmp_path / "lab.npz", masks=lab, frames=np.array([0, 3]))
    pred = np.zeros((4, 8, 8), bool)
    pred[3, :2] = True  # half the label's area, all inside it: Dice 2*16/(16+32)
    assert A.case_dice(pred, tmp_path / "lab.npz") == pytest.approx(2 / 3)


def test_adversarial_audit_reports_accuracy_per_epsilon(image_run, tmp_path):
    pytest.importorskip("torch")
    man = _manifest_with_labels(image_run, tmp_path)
    rep = A.run_audit(
        image_run["bundle"],
        man,
        tmp_path / "adv",
        perturbations=["gain"],
        severities=2,
        run_dir=image_run["run"],
        epsilons=[0.0, 16.0],
        pgd_steps=3,
        progress=False,
    )
    adv = rep["adversarial"]
    assert adv["unit"] == "intensity (0-255)" and adv["n_samples"] == rep["n_ok"]
    clean, strong = adv["results"]
    assert clean["fgsm_accuracy"] == clean["pgd_accuracy"] == pytest.approx(rep["severity0"]["accuracy"])
    assert strong["pgd_accuracy"] <= clean["pgd_accuracy"]  # (a 2-epoch model may be near-constant: no strict drop)
    assert "PGD accuracy" in (tmp_path / "adv" / "audit.md").read_text()
    assert (tmp_path / "adv" / "adversarial.png").is_file()


def test_fgsm_and_pgd_stay_in_budget_and_fool_a_linear_model():
    torch = pytest.importorskip("torch")
    from medtransfer.shared.audit.adversarial import attack, input_units

    torch.manual_seed(0)
    model = torch.nn.Linear(8, 2)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0] * 8, [-1.0] * 8]))
        model.bias.zero_()
    x = torch.full((4, 8), 0.05)  # class 0 by a margin of 0.8; eps 0.1 per input flips it (margin -0.8)
    y = torch.zeros(4, dtype=torch.long)
    for pgd in (False, True):
        xa = attack(model, x, y, 0.1, 5, None, pgd)
        assert float((xa - x).abs().max()) <= 0.1 + 1e-6
        assert bool((model(xa).argmax(1) == 1).all())
    assert bool(torch.equal(attack(model, x, y, 0.0, 5, None, True), x))
    clamped = attack(model, x, y, 0.1, 5, (0.0, 0.08), True)
    assert float(clamped.min()) >= 0.0 and float(clamped.max()) <= 0.08
    assert input_units({"mean": 0.5, "std": 0.25}) == ("intensity (0-255)", 1 / (255 * 0.25), (-2.0, 2.0))
    assert input_units({"scale": 1e6})[:2] == ("µV", 1.0)


def test_cli_audit_is_torch_free_and_refuses_unknown_perturbations(image_run, tmp_path):
    man = _manifest_with_labels(image_run, tmp_path)
    code = textwrap.dedent(f"""
        import sys, json
        from typer.testing import CliRunner
        from medtransfer.shared.cli.main import app
        r = CliRunner().invoke(app, ["audit", r"{image_run["bundle"]}", "-m", r"{man}", "-o", r"{tmp_path / "cli"}",
                                     "--perturb", "rotation", "--severities", "2", "-q"])
        assert r.exit_code == 0, r.output
        print(json.dumps({{"torch": "torch" in sys.modules, "out": json.loads(r.output.strip().splitlines()[-1])}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["torch"] is False and res["out"]["perturbations"] == 1
    bad = subprocess.run(
        [sys.executable, "-m", "medtransfer.shared.cli.main", "audit", str(image_run["bundle"]), "-m", str(man),
         "-o", str(tmp_path / "x"), "--perturb", "nope"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert bad.returncode == 2 and "nope" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_export_audit_puts_the_summary_into_the_sealed_model_card(image_run, tmp_path):
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app
    from medtransfer.shared.runtime.bundle import load_bundle

    man = _manifest_with_labels(image_run, tmp_path)
    r = CliRunner().invoke(
        app, ["export", str(image_run["run"]), "-o", str(tmp_path / "b"), "--force", "--audit", str(man)]
    )
    assert r.exit_code == 0, r.output
    b = load_bundle(tmp_path / "b")  # re-sealed: every checksum still holds
    card = (tmp_path / "b" / "README.md").read_text()
    summary = b.meta["audit"]
    assert summary["n_cases"] == len(A.load_cases(man, "classification")) and summary["manifest"] == man.name
    assert "## Robustness audit" in card and "| image/rotation | 20 | degrees |" in card
    assert {row["perturbation"] for row in summary["rows"]} == {f"image/{n}" for n in A.PERTURBATIONS["image"]}
    assert str(tmp_path) not in json.dumps(summary)  # no paths in the bundle


def test_demo_section_audits_each_bundle_of_a_demo_folder(image_run, tmp_path):
    import shutil

    from medtransfer.shared.utils.errors import InputError

    demo = tmp_path / "demo"
    shutil.copytree(image_run["bundle"], demo / "bundles" / "image")
    (demo / "work" / "image").mkdir(parents=True)
    _manifest_with_labels(image_run, demo / "work" / "image")
    (demo / "work" / "image" / "metrics.csv").write_text("epoch,loss\n0,1.0\n")  # not a manifest: skipped
    md = A.demo_section(demo, fast=True)
    assert "### image" in md and "work/image/audit_manifest.csv" in md
    assert "(audit/image/robustness.png)" in md and (demo / "audit" / "image" / "robustness.png").is_file()
    rep = json.loads((demo / "audit" / "image" / "audit.json").read_text())
    assert rep["n_cases"] == 8 and {r["severity"] for r in rep["results"] if r["perturbation"] == "image/blur"} == {
        0.0, 2.0, 4.0
    }  # fmt: skip
    with pytest.raises(InputError, match="run folder not found"):
        A.run_audit(demo / "bundles" / "image", demo / "work" / "image" / "audit_manifest.csv", tmp_path / "r",
                    run_dir=tmp_path / "no_run", progress=False)  # fmt: skip


# ------------------------------------------------------------------ the report folder and the truth
def test_the_report_folder_is_one_unit_and_never_an_input_or_a_bundle(image_run, tmp_path):
    import shutil

    from medtransfer.shared.utils.errors import MedTransferError

    man = _manifest_with_labels(image_run, tmp_path)
    kw = {"perturbations": ["image/gain"], "severities": 2, "progress": False}
    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "adversarial.png").write_bytes(b"an earlier report's plot")
    A.run_audit(image_run["bundle"], man, out, **kw)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["audit.json", "audit.md", "audit_cases.csv", "notes.txt", "reliability.png", "robustness.png"]
    before = (out / "audit.json").read_bytes()
    # every case fails: the error rows are kept beside the earlier report, which stays whole
    bad = tmp_path / "bad.csv"
    bad.write_text(f"path,label\n{tmp_path / 'nope.png'},circle\n")
    with pytest.raises(A.AuditError, match="every case failed"):
        A.run_audit(image_run["bundle"], bad, out, **kw)
    assert (out / "audit.json").read_bytes() == before and (out / A.ERRORS_FILE).is_file()
    assert not [p for p in out.iterdir() if p.name.startswith(".audit-")]  # no staging left
    # -o inside a bundle (it would be refused for an unlisted file) or over the manifest
    b = tmp_path / "b"
    shutil.copytree(image_run["bundle"], b)
    with pytest.raises(MedTransferError, match="inside the bundle"):
        A.run_audit(b, man, b, **kw)
    m2 = tmp_path / "m2"
    m2.mkdir()
    shutil.copy(man, m2 / "audit_cases.csv")
    with pytest.raises(MedTransferError, match="audit_cases.csv would overwrite an input"):
        A.run_audit(image_run["bundle"], m2 / "audit_cases.csv", m2, **kw)
    assert sorted(p.name for p in m2.iterdir()) == ["audit_cases.csv"]


def test_labels_the_bundle_cannot_answer_and_duplicates(image_run, tmp_path):
    man = _manifest_with_labels(image_run, tmp_path)
    text = man.read_text().splitlines()
    wrong = tmp_path / "wrong.csv"
    wrong.write_text("\n".join([text[0], *(line.rsplit(",", 1)[0] + ",Circle" for line in text[1:])]) + "\n")
    with pytest.raises(A.AuditError, match="label 'Circle' is not one of the bundle's classes"):
        A.run_audit(image_run["bundle"], wrong, tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()
    first = text[1].split(",")[0]
    dup = tmp_path / "dup.csv"
    dup.write_text("\n".join([*text, text[1], first.replace("/", "/./", 1) + "," + text[1].split(",")[1]]) + "\n")
    rep = A.run_audit(
        image_run["bundle"], dup, tmp_path / "d", perturbations=["image/gain"], severities=2, progress=False
    )
    assert rep["n_cases"] == len(text) - 1  # one file listed three ways is one case


@pytest.mark.parametrize(
    "time,event,words",
    [
        ("nan", "1", "not a finite time"),
        ("-5", "1", "not a finite time"),
        ("3", "2", "event must be 0 or 1"),
        ("3", None, "need time,event"),
        ("3", "", "need time,event"),
    ],
)
def test_survival_truth_that_cannot_be_scored_is_one_line(tmp_path, time, event, words):
    extra = {"time": time} if event is None else {"time": time, "event": event}
    case = A.AuditCase("c", tmp_path / "c.h5", "", extra)
    with pytest.raises(A.InputError, match=words):
        A._survival_truth(case)
    censored = [A.AuditCase(f"c{i}", tmp_path / f"c{i}.h5", "", {"time": "3", "event": "0"}) for i in range(3)]
    with pytest.raises(A.AuditError, match="no case has an event"):
        A.check_labels(censored, "survival", [], tmp_path / "m.csv")
