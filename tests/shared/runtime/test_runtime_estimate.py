"""`medtransfer estimate`: label-free accuracy (ATC, DoC), drift, reference statistics at export.

The end-to-end part uses a small fixed EEG case that needs no training: a hand-written ONNX
classifier (relative low-frequency power of each window -> P(abnormal)) on synthetic recordings
whose abnormality severity varies, so that the model is right on most but not all of them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.runtime import estimate as est


# ------------------------------------------------------------------------------------ estimators
def test_atc_threshold_leaves_the_validation_accuracy_above_it():
    rng = np.random.default_rng(0)
    s = rng.uniform(size=101)
    for acc in (0.0, 0.3, 0.77, 1.0):
        t = est.atc_threshold(s, acc)
        assert np.mean(s > t) == pytest.approx(round(acc * 101) / 101)


def _calibrated(rng, n, a, b):
    """Binary cases whose max-softmax c ~ 0.5 + Beta(a, b) / 2 is calibrated: correct ~ Bernoulli(c)."""
    c = 0.5 + rng.beta(a, b, size=n) / 2
    correct = rng.uniform(size=n) < c
    p = np.stack([c, 1 - c], 1)
    y = np.where(correct, 0, 1)
    ent = np.sum(p * np.log(p), 1)
    return {"pred": np.zeros(n, int), "label": y, "max_softmax": c, "neg_entropy": ent}


def _ref(val):
    return {"labels": ["a", "b"], "val_cases": {k: list(v) for k, v in val.items()}}


def _site(case):
    return {k: case[k] for k in ("pred", "max_softmax", "neg_entropy")}


def test_doc_tracks_accuracy_of_a_calibrated_model_under_shift():
    """Calibrated confidences: mean confidence is accuracy, so DoC follows the true accuracy as it drops."""
    rng = np.random.default_rng(1)
    ref = _ref(_calibrated(rng, 3000, 5, 1))
    errs = []
    for a, b in ((5, 1), (3, 1), (2, 2), (1, 3)):
        site = _calibrated(rng, 3000, a, b)
        res = est.estimate_accuracy(ref, _site(site), n_boot=20)
        errs.append(abs(res["methods"]["doc"] - float(np.mean(site["label"] == site["pred"]))))
        lo, hi = res["interval"]["accuracy"]
        assert lo <= res["estimated_accuracy"] <= hi
    assert np.mean(errs) < 0.03, errs


def test_atc_is_exact_when_confidence_separates_right_from_wrong():
    """Cases are right exactly when their confidence exceeds 0.7: ATC recovers the site accuracy at any mix."""
    rng = np.random.default_rng(4)

    def cases(n, a, b):
        c = 0.5 + rng.beta(a, b, size=n) / 2
        case = _calibrated(rng, n, 1, 1)
        p = np.stack([c, 1 - c], 1)
        case.update(max_softmax=c, neg_entropy=np.sum(p * np.log(p), 1), label=np.where(c > 0.7, 0, 1))
        return case

    ref = _ref(cases(3000, 3, 1))
    errs = []
    for a, b in ((3, 1), (2, 2), (1, 3)):
        site = cases(3000, a, b)
        res = est.estimate_accuracy(ref, _site(site), n_boot=0)
        errs.append(abs(res["estimated_accuracy"] - float(np.mean(site["label"] == 0))))
        assert res["methods"]["atc_max_softmax"] == pytest.approx(res["estimated_accuracy"], abs=0.01)
    assert np.mean(errs) < 0.02, errs


def test_balanced_accuracy_estimate_uses_the_validation_confusion():
    rng = np.random.default_rng(2)
    val = _calibrated(rng, 4000, 4, 1)
    val["pred"] = rng.integers(0, 2, size=4000)  # predicted class varies; correct where label == pred
    wrong = val["label"] == 1
    val["label"] = np.where(wrong, 1 - val["pred"], val["pred"])
    ref = {"labels": ["a", "b"], "val_cases": {k: list(v) for k, v in val.items()}}
    res = est.estimate_accuracy(ref, {k: val[k] for k in ("pred", "max_softmax", "neg_entropy")}, n_boot=0)
    true = est.balanced_accuracy(val["label"], val["pred"], 2)
    assert res["estimated_balanced_accuracy"] == pytest.approx(true, abs=0.03)
    assert res["interval"]["accuracy"] is None


def test_drift_flags_a_shifted_statistic_only():
    rng = np.random.default_rng(3)
    ref = {
        "stats": {"x": est.reference_sample(rng.normal(0, 1, 300)), "y": est.reference_sample(rng.normal(0, 1, 300))}
    }
    site = {"input.x": list(rng.normal(0, 1, 200)), "input.y": list(rng.normal(1.5, 1, 200))}
    d = est.drift_report(ref, site)
    assert d["flag"] is True
    assert d["drifted"] == ["input.y"]
    assert d["statistics"]["input.x"]["drift"] is False
    assert "input.y" in d["summary"]
    same = est.drift_report(ref, {"input.x": site["input.x"]})
    assert same["flag"] is False and same["summary"].startswith("no drift")


def test_reference_schema_refuses_bad_files():
    from medtransfer.shared.runtime.schema import validate_reference
    from medtransfer.shared.utils.errors import BundleError

    good = {"schema": "medtransfer-reference/1", "kind": "other", "split": "val", "n_cases": 3, "n_errors": 0}
    assert validate_reference(good, "r.json").kind == "other"
    for bad in ({**good, "split": "test"}, {**good, "kind": "classifier"}, {**good, "schema": "x/9"}):
        with pytest.raises(BundleError, match=r"^r\.json: field"):
            validate_reference(bad, "r.json")


# ------------------------------------------------------------------------------------ a fixed EEG case
def _lowpower_onnx(path: Path, c: int, t: int, centre: float, scale: float) -> None:
    """logits = [0, scale * (log(mean low-passed power / mean power) - centre)] per window."""
    import onnx
    from onnx import TensorProto, helper

    consts = [
        helper.make_tensor("centre", TensorProto.FLOAT, [], [centre]),
        helper.make_tensor("scale", TensorProto.FLOAT, [], [scale]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("ax1", TensorProto.INT64, [1], [1]),
    ]
    nodes = [
        helper.make_node("AveragePool", ["eeg"], ["low"], kernel_shape=[10]),
        helper.make_node("Mul", ["low", "low"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["pw"], axes=[1, 2], keepdims=0),
        helper.make_node("Mul", ["eeg", "eeg"], ["sq_all"]),
        helper.make_node("ReduceMean", ["sq_all"], ["pw_all"], axes=[1, 2], keepdims=0),
        helper.make_node("Div", ["pw", "pw_all"], ["ratio"]),
        helper.make_node("Log", ["ratio"], ["lr"]),
        helper.make_node("Sub", ["lr", "centre"], ["d"]),
        helper.make_node("Mul", ["d", "scale"], ["z"]),
        helper.make_node("Unsqueeze", ["z", "ax1"], ["z1"]),
        helper.make_node("Mul", ["z1", "zero"], ["z0"]),
        helper.make_node("Concat", ["z0", "z1"], ["logits"], axis=1),
    ]
    g = helper.make_graph(
        nodes,
        "lowpower",
        [helper.make_tensor_value_info("eeg", TensorProto.FLOAT, ["batch", c, t])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        consts,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


@pytest.fixture(scope="module")
def eeg_case(tmp_path_factory) -> dict:
    """16 validation + 16 test synthetic recordings, an EEG bundle exported with reference statistics."""
    from medtransfer.apps.eeg.io import pp_config, preprocess_recording, window_samples
    from medtransfer.apps.eeg.synthetic import PAPER_CHANNELS, synth_signals, write_edf
    from medtransfer.shared.export.bundle_writer import write_bundle
    from medtransfer.shared.export.reference import attach_reference

    d = tmp_path_factory.mktemp("estimate_eeg")
    rng = np.random.default_rng(0)
    labs = [f"EEG {c}-REF" for c in PAPER_CHANNELS]
    rows: dict[str, list[dict[str, str]]] = {"val": [], "test": []}
    for split in rows:
        for i in range(16):
            ab = i % 2 == 1
            x = synth_signals(rng, ab, 16.0, 100.0, severity=float(rng.uniform(0.0, 1.0)) if ab else 0.0)
            p = write_edf(d / split / f"{split}{i:02d}.edf", x, 100.0, labs)
            rows[split].append({"path": str(p), "label": "abnormal" if ab else "normal"})
    man = d / "m.csv"
    man.write_text("path,label,split\n" + "".join(f"{r['path']},{r['label']},{s}\n" for s in rows for r in rows[s]))
    pp = pp_config({"window_seconds": 4.0, "crop_start_s": 0.0, "crop_max_s": 0.0, "sfreq": 50.0, "car": False})
    feats: dict[str, list[float]] = {}
    for r in rows["val"]:
        w, _ = preprocess_recording(r["path"], pp)
        lo = np.array([np.convolve(ch, np.ones(10) / 10, "valid") for ch in w.reshape(-1, w.shape[-1])])
        feats.setdefault(r["label"], []).append(float(np.log(np.mean(lo**2) / np.mean(w**2))))
    mn, ma = np.median(feats["normal"]), np.median(feats["abnormal"])
    b = d / "bundle"
    b.mkdir()
    c, t = len(pp["channels"]), window_samples(pp)
    _lowpower_onnx(b / "model.onnx", c, t, float(mn + ma) / 2, 2.0 / max(float(ma - mn), 1e-3))
    write_bundle(
        b,
        name="eeg-lowpower",
        app="eeg",
        task="pathology",
        files=["model.onnx"],
        inputs={"eeg": {"shape": [-1, c, t], "dtype": "float32"}},
        outputs={"logits": {"shape": [-1, 2], "dtype": "float32"}},
        preprocessing={**pp, "threshold": 0.5},
        labels=["normal", "abnormal"],
    )
    run = d / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"manifest": str(man)}))
    summary = attach_reference(run, b, progress=False)
    return {"dir": d, "bundle": b, "rows": rows, "summary": summary, "manifest": man}


def test_export_step_writes_checked_reference_from_validation_only(eeg_case):
    from medtransfer.shared.runtime.bundle import Bundle

    b = Bundle(eeg_case["bundle"])  # verifies every file, reference.json included
    assert "reference.json" in b.description.files
    assert "reference.json" in (eeg_case["bundle"] / "checksums.sha256").read_text()
    ref = est.read_reference(b)
    assert ref["kind"] == "classifier" and ref["split"] == "val" and ref["n_cases"] == 16
    y, pred = np.array(ref["val_cases"]["label"]), np.array(ref["val_cases"]["pred"])
    assert ref["accuracy"] == pytest.approx(float(np.mean(y == pred)))
    ne = np.array(ref["val_cases"]["neg_entropy"])
    assert np.mean(ne > ref["score_functions"]["neg_entropy"]["atc_threshold"]) == pytest.approx(ref["accuracy"])
    assert {"delta_relative", "alpha_log_power", "total_log_power_O1"} <= set(ref["stats"])
    assert b.meta["reference"]["n_cases"] == 16
    assert "path" not in json.dumps(ref)  # no case paths in the bundle


def test_estimate_cli_is_torch_free_and_keeps_bad_cases_as_rows(eeg_case, tmp_path):
    d = eeg_case["dir"]
    bad = tmp_path / "broken.edf"
    bad.write_bytes(b"0       not an edf header")
    man = tmp_path / "site.csv"
    man.write_text("path\n" + "".join(f"{r['path']}\n" for r in eeg_case["rows"]["test"]) + f"{bad}\n")
    out = tmp_path / "est.json"
    code = textwrap.dedent(f"""
        import sys, json
        from typer.testing import CliRunner
        from medtransfer.shared.cli.main import app
        r = CliRunner().invoke(app, ["estimate", r"{eeg_case["bundle"]}", "-m", r"{man}", "-o", r"{out}", "-q",
                                     "--bootstrap", "100"])
        assert r.exit_code == 0, r.output
        print(json.dumps({{"torch": "torch" in sys.modules}}))
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["torch"] is False
    res = json.loads(out.read_text())
    for k in ("estimated_accuracy", "estimated_balanced_accuracy", "interval", "n_cases", "drift"):
        assert k in res
    assert res["n_cases"] == 16 and res["n_errors"] == 1
    assert "broken.edf" in res["errors"][0]["case"]
    with open(tmp_path / "est.cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 17 and [r["status"] for r in rows].count("error") == 1
    assert res["drift"]["flag"] is False, res["drift"]["summary"]


def test_estimate_error_on_bundle_without_reference(eeg_case, tmp_path, kit):
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    b = kit.make_bundle(tmp_path / "old")
    man = tmp_path / "m.csv"
    man.write_text(f"path\n{eeg_case['rows']['test'][0]['path']}\n")
    r = CliRunner().invoke(app, ["estimate", str(b), "-m", str(man), "-o", str(tmp_path / "e.json")])
    assert r.exit_code == 2
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("error:") and "re-export" in line and str(b) in line


def test_estimate_error_is_small_across_shifts_and_gain_is_flagged(eeg_case):
    """MAE of ATC-NE against true accuracy over shift levels stays under a bound; a 6 dB gain drifts."""
    from medtransfer.shared.runtime.estimate_shift import validate

    res = validate(
        eeg_case["bundle"],
        eeg_case["rows"]["test"],
        eeg_case["dir"] / "shifts",
        [("gain", (6.0,)), ("white_noise", (4.0,))],
        n_boot=30,
    )
    by = {r["shift"]: r for r in res["levels"]}
    assert set(by) == {"none", "gain", "white_noise"}
    assert by["gain"]["drift"] is True and by["none"]["drift"] is False
    assert by["gain"]["estimate_reliable"] is False and by["none"]["estimate_reliable"] is True
    assert res["mae"]["atc_neg_entropy"] < 0.25, res["levels"]
    assert Path(res["plot"]).is_file()


def test_estimate_resumes_its_rows_and_refuses_to_clobber_them(eeg_case, tmp_path):
    from medtransfer.shared.utils.errors import MedTransferError

    man = tmp_path / "site.csv"
    man.write_text("path\n" + "".join(f"{r['path']}\n" for r in eeg_case["rows"]["test"][:3]))
    out = tmp_path / "e.json"
    first = est.estimate(eeg_case["bundle"], out, manifest=man, progress=False, n_boot=10)
    with pytest.raises(MedTransferError, match="--resume"):
        est.estimate(eeg_case["bundle"], out, manifest=man, progress=False, n_boot=10)
    man.write_text(man.read_text() + f"{eeg_case['rows']['test'][3]['path']}\n")
    again = est.estimate(eeg_case["bundle"], out, manifest=man, resume=True, progress=False, n_boot=10)
    with open(tmp_path / "e.cases.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4  # the 3 done cases were not scored again
    assert (first["n_cases"], again["n_cases"]) == (3, 4)


def test_estimate_of_nothing_and_outs_it_must_not_write_are_refused(eeg_case, tmp_path):
    import shutil

    from lockutil import lock_held_elsewhere

    from medtransfer.shared.utils.errors import MedTransferError

    bad = tmp_path / "broken.edf"
    bad.write_bytes(b"0       not an edf header")
    man = tmp_path / "site.csv"
    man.write_text(f"path\n{bad}\n")
    with pytest.raises(MedTransferError, match="no case could be answered \\(1 error rows"):
        est.estimate(eeg_case["bundle"], tmp_path / "e.json", manifest=man, progress=False, n_boot=0)
    assert not (tmp_path / "e.json").exists() and (tmp_path / "e.cases.csv").is_file()  # the error row stays
    good = tmp_path / "good.csv"
    good.write_text("path\n" + "".join(f"{r['path']}\n" for r in eeg_case["rows"]["test"][:2]))
    other = tmp_path / "other_bundle"
    shutil.copytree(eeg_case["bundle"], other)
    with pytest.raises(MedTransferError, match="inside the bundle"):
        est.estimate(
            eeg_case["bundle"],
            other / "metadata.json",
            manifest=good,
            rows_csv=tmp_path / "r.csv",
            progress=False,
            n_boot=0,
        )
    (tmp_path / "adir").mkdir()
    with pytest.raises(MedTransferError, match="--out is a folder"):
        est.estimate(
            eeg_case["bundle"], tmp_path / "adir", manifest=good, rows_csv=tmp_path / "r2.csv", progress=False, n_boot=0
        )
    out = tmp_path / "x.json"
    with lock_held_elsewhere(tmp_path / "x.json.lock", out):  # another job writing this estimate
        with pytest.raises(MedTransferError, match="already being written by pid"):
            est.estimate(eeg_case["bundle"], out, manifest=good, rows_csv=tmp_path / "b.csv", progress=False, n_boot=0)
    assert not out.exists()
