"""Training (k-fold CV, MoE-PKT), export to ONNX and torch-free scoring of bags and slides."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.wsi.features import write_bag
from medtransfer.apps.wsi.labels import find_studies, read_table
from medtransfer.apps.wsi.synthetic import make_survpath_tables, planted_bags
from medtransfer.apps.wsi.train import cross_validate, load_cohort, make_config, pkt_compare, train_run, train_sources

FAST = ["train.epochs=4", "min_steps=120", "model.hidden=32", "model.attn_dim=16"]


@pytest.mark.realdata
def test_cv_on_real_tables_with_planted_signal(labels_root: Path, tmp_path: Path) -> None:
    cases, _ = read_table(find_studies(labels_root)["tcga_blca"], "dss", "tcga_blca")
    bags = planted_bags(cases, dim=32, seed=0)
    coh = load_cohort(labels_root, "tcga_blca", bags=bags)
    res = cross_validate(coh, labels_root, "tcga_blca", make_config(overrides=["train.epochs=15"]), tmp_path / "cv")
    assert len(res["folds"]) == 5
    assert res["c_index_mean"] >= 0.75, res["folds"]
    assert 0.5 < res["td_auc_mean"] <= 1
    assert res["km"]["logrank_p"] < 0.01 and Path(res["km"]["png"]).is_file()
    assert json.loads((tmp_path / "cv" / "cv.json").read_text())["c_index_sd"] >= 0


@pytest.fixture(scope="module")
def moe_setup(tmp_path_factory):
    """Synthetic SurvPath tables (3 cohorts), planted bags, sources + one MoE-PKT fold, exported."""
    from medtransfer.apps.wsi.export import export_run

    d = tmp_path_factory.mktemp("moe")
    root = make_survpath_tables(d / "labels", studies=("tcga_aaa", "tcga_bbb", "tcga_ccc"), n_cases=60)
    cases = []
    for s, p in find_studies(root).items():
        cases += read_table(p, "dss", s)[0]
    bags = planted_bags(cases, dim=16, seed=0, n_patches=(8, 24))
    cfg = make_config(overrides=FAST + ["moe.top_k=1"])
    sources = train_sources({s: load_cohort(root, s, bags=bags) for s in ("tcga_aaa", "tcga_bbb")}, cfg, d / "pkt")
    res = pkt_compare(
        load_cohort(root, "tcga_ccc", bags=bags),
        sources,
        root,
        "tcga_ccc",
        cfg,
        d / "pkt",
        n_train=30,
        folds=1,
        finetune="best",
    )
    bundle = export_run(d / "pkt" / "fold0" / "moe", d / "bundle", force=True)  # tiny run: may be below baseline
    feats = d / "feats"
    for cid in list(bags)[:3]:
        write_bag(feats / f"{cid}.h5", np.zeros((len(bags[cid]), 2), np.int64), bags[cid], {"complete": True})
    return {"root": root, "res": res, "bundle": bundle, "feats": feats, "bags": bags}


def test_pkt_compare_reports_all_methods(moe_setup) -> None:
    res = moe_setup["res"]
    assert set(res["methods"]) == {"cancer-specific", "moe-pkt", "finetune (best source)"}
    assert all(len(v["c_index"]) == 1 and 0 <= v["mean"] <= 1 for v in res["methods"].values())
    assert res["finetune_source_per_fold"][0] in ("tcga_aaa", "tcga_bbb")
    sel = res["routing"]["selected_fraction"]
    assert sum(sel.values()) == pytest.approx(1.0)  # top-1 routing: one expert per slide
    assert Path(res["png"]).stat().st_size > 5000


def test_moe_bundle_matches_torch_and_predicts_torch_free(moe_setup) -> None:
    import onnx
    import torch

    from medtransfer.apps.wsi.export import rebuild
    from medtransfer.apps.wsi.model import SurvivalHead

    b = moe_setup["bundle"]
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["app"] == "wsi" and meta["model_kind"] == "moe" and meta["sources"] == ["tcga_aaa", "tcga_bbb"]
    g = onnx.load(str(b / "model.onnx")).graph
    assert [i.name for i in g.input] == ["features", "mask"]
    assert g.input[0].type.tensor_type.shape.dim[1].dim_param  # n_patches is dynamic
    # the experts live inside the one graph: parity on a bag length never seen at export
    model, _, _ = rebuild(b.parent / "pkt" / "fold0" / "moe")
    x = np.random.default_rng(0).standard_normal((1, 37, 16)).astype(np.float32)
    import onnxruntime as ort

    got = ort.InferenceSession(str(b / "model.onnx")).run(None, {"features": x, "mask": np.ones((1, 37), np.float32)})
    with torch.no_grad():
        ref = SurvivalHead(model)(torch.from_numpy(x), torch.ones(1, 37))
    np.testing.assert_allclose(got[0], ref[0].numpy(), atol=1e-4)
    # torch-free scoring in a fresh process
    code = f"""
import json, sys
from pathlib import Path
import medtransfer.apps.wsi.plugin, medtransfer.apps.wsi.predict, medtransfer.apps.wsi.cli
from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.runtime.predictor import build_predictor
from medtransfer.shared.utils.errors import InputError
p = build_predictor(load_bundle({str(b)!r}), out_dir={str(b.parent / "pred")!r}, plot=True)
rows = [p.predict(f) for f in sorted(Path({str(moe_setup["feats"])!r}).glob('*.h5'))]
try:
    p.predict(Path({str(b / "metadata.json")!r}))
    bad = 'accepted'
except InputError as e:
    bad = str(e)
print(json.dumps({{"rows": rows, "bad": bad, "torch": "torch" in sys.modules}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["torch"] is False
    assert len(r["rows"]) == 3
    for row in r["rows"]:
        assert np.isfinite(row["risk"]) and len(row["survival"]) == 4 and row["risk_group"] == ""
        assert all(a >= b for a, b in zip(row["survival"], row["survival"][1:]))
        assert Path(row["plots"][0]).is_file()
    assert "not a feature bag" in r["bad"]


@pytest.fixture(scope="module")
def slide_bundle(tmp_path_factory, tile_opts):
    """A 512-d MIL run (bags of resnet18 size) exported with the resnet18 patch encoder."""
    from medtransfer.apps.wsi.export import export_run

    d = tmp_path_factory.mktemp("e2e")
    root = make_survpath_tables(d / "labels", studies=("tcga_aaa",), n_cases=30)
    cases = read_table(find_studies(root)["tcga_aaa"], "dss")[0]
    bags = planted_bags(cases, dim=512, seed=0, n_patches=(4, 8))
    run = d / "run"
    m = train_run(
        root, "tcga_aaa", run, make_config(overrides=FAST + ["train.epochs=2", "min_steps=0"]), bags=bags, fold=0
    )
    assert 0 <= m["test_c_index"] <= 1
    info = json.loads((run / "run.json").read_text())
    info["wsi"].update(
        {"encoder": "resnet18", "patch_size": tile_opts["patch_size"], "target_mpp": tile_opts["target_mpp"]}
    )
    (run / "run.json").write_text(json.dumps(info))
    return export_run(run, d / "bundle", force=True)  # tiny run: may be below baseline


def test_slide_scoring_end_to_end(slide_bundle: Path, slide_dir: Path, tmp_path: Path) -> None:
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor
    from medtransfer.shared.utils.errors import InputError

    meta = json.loads((slide_bundle / "metadata.json").read_text())
    # reference.json: the validation bags' drift statistics the run records (``medtransfer estimate``)
    assert set(meta["files"]) == {"model.onnx", "encoder.onnx", "reference.json"}
    assert meta["preprocessing"]["encoder"] == "resnet18"
    p = build_predictor(load_bundle(slide_bundle), out_dir=str(tmp_path), plot=True)
    r = p.predict(slide_dir / "good_a.tif")
    assert np.isfinite(r["risk"]) and r["risk_group"] in ("low", "high") and r["n_patches"] > 0
    assert any(Path(x) == tmp_path / "good_a" / "attention.png" for x in r["plots"])  # out_dir/<input key>/
    with pytest.raises(InputError, match="--mpp"):
        p.predict(slide_dir / "no_mpp.tif")
    p2 = build_predictor(load_bundle(slide_bundle), mpp=0.5)
    assert p2.predict(slide_dir / "no_mpp.tif")["n_patches"] > 0
    with pytest.raises(InputError):
        p.predict(slide_dir / "corrupt.svs")


def test_export_adds_only_an_encoder_that_gives_the_bags_features(slide_bundle: Path, tmp_path: Path, capsys) -> None:
    """A run trained on bags of pretrained weights it does not record was exported with a
    random-init encoder (every slide then got a risk from meaningless features); a run on int8
    bags failed ("unknown model 'resnet18+int8'"), as did one on bags of an --encoder-onnx file.
    Now: the fp32 registry encoder for int8 bags, and no encoder (one line; bags still scored)
    when export cannot rebuild the one the bags came from."""
    import shutil

    from medtransfer.apps.wsi.export import export_run

    def export(**wsi) -> dict:
        run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
        shutil.copytree(slide_bundle.parent / "run", run)
        info = json.loads((run / "run.json").read_text())
        info["wsi"].update(wsi)
        (run / "run.json").write_text(json.dumps(info))
        return json.loads((export_run(run, run.with_name(run.name + "_b"), force=True) / "metadata.json").read_text())

    m = export(encoder="resnet18+int8", encoder_pretrained=False)
    assert "encoder.onnx" in m["files"] and m["preprocessing"]["encoder"] == "resnet18"
    capsys.readouterr()
    for wsi, why in (
        (
            {"encoder": "resnet18", "encoder_pretrained": True},
            "pretrained resnet18 weights that the run does not record",
        ),
        ({"encoder": "onnx:my_encoder"}, "'onnx:my_encoder' is not a registry encoder"),
    ):
        m = export(**wsi)
        err = capsys.readouterr().err
        assert "encoder.onnx" not in m["files"] and "encoder" not in m["preprocessing"], wsi
        assert why in err and "scores feature bags (.h5), not slides" in err and len(err.strip().splitlines()) == 1


def test_cli_predict_and_score_bags(moe_setup, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    runner = CliRunner()
    bags = sorted(moe_setup["feats"].glob("*.h5"))
    r = runner.invoke(app, ["predict", str(moe_setup["bundle"]), str(bags[0])])
    assert r.exit_code == 0, r.output
    row = json.loads(r.output.strip().splitlines()[0])
    assert row["status"] == "ok" and np.isfinite(row["risk"])
    (moe_setup["feats"] / "broken.h5").write_bytes(b"junk")
    try:
        r = runner.invoke(
            app,
            [
                "score",
                str(moe_setup["bundle"]),
                "--input-dir",
                str(moe_setup["feats"]),
                "--out",
                str(tmp_path / "scores.csv"),
                "--quiet",
            ],
        )
    finally:
        (moe_setup["feats"] / "broken.h5").unlink()
    assert (tmp_path / "scores.csv").is_file(), r.output
    import csv

    with open(tmp_path / "scores.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    assert sum(1 for x in rows if x.get("status") == "error") == 1  # the broken bag is an error row, the rest scored


def test_bags_record_their_weights_and_export_ships_them(slide_bundle: Path, slide_dir: Path, tmp_path, capsys):
    """Bags did not say which weights made them: a job rerun with other ``--weights`` skipped the
    finished bags (one folder, two networks' features, one name), and export could never ship a
    pretrained patch encoder (the run did not know the weights).  Now every bag records the
    weights' sha256 and path: other weights redo the bag, export finds the weights where the bags
    were made and ships them when unchanged (else one line and a bags-only bundle), and scoring
    refuses a bag of other weights."""
    import shutil

    import timm
    import torch

    from medtransfer.apps.wsi.export import export_run
    from medtransfer.apps.wsi.features import extract_many, file_sha256, read_bag
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor
    from medtransfer.shared.utils.errors import InputError

    w1, w2 = tmp_path / "w1.pt", tmp_path / "w2.pt"
    for seed, p in ((1, w1), (2, w2)):
        torch.manual_seed(seed)
        torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), str(p))
    src = tmp_path / "slides"
    src.mkdir()
    shutil.copy(slide_dir / "good_a.tif", src / "a.tif")
    opts = dict(target_mpp=2.0, patch_size=64, batch_size=8, show_progress=False, device="cpu")
    out = tmp_path / "bags"
    assert [r.status for r in extract_many(src, out, "resnet18", str(w1), **opts)] == ["done"]
    f1, _, a1 = read_bag(out / "a.h5")
    assert a1["weights_sha256"] == file_sha256(w1) and a1["weights_path"] == str(w1.resolve()) and a1["pretrained"]
    assert [r.status for r in extract_many(src, out, "resnet18", str(w1), **opts)] == ["skipped"]
    assert [r.status for r in extract_many(src, out, "resnet18", str(w2), **opts)] == ["done"]  # skipped before
    f2, _, a2 = read_bag(out / "a.h5")
    assert a2["weights_sha256"] == file_sha256(w2) and not np.allclose(f1, f2, atol=1e-3)

    def export(name: str) -> dict:
        run = tmp_path / name
        shutil.copytree(slide_bundle.parent / "run", run)
        info = json.loads((run / "run.json").read_text())
        bagx = {k: a1[k] for k in ("encoder", "mpp", "patch_size", "weights_sha256", "weights_path")}
        info["wsi"].update(encoder="resnet18", encoder_pretrained=True, patch_size=64, target_mpp=2.0,
                           bag_extraction=bagx)  # fmt: skip
        (run / "run.json").write_text(json.dumps(info))
        b = export_run(run, tmp_path / f"{name}_bundle", force=True)
        return {"dir": b, **json.loads((b / "metadata.json").read_text())}

    m = export("run_w1")
    pre = m["preprocessing"]
    assert (
        "encoder.onnx" in m["files"] and pre["encoder_pretrained"] and pre["encoder_weights_sha256"] == file_sha256(w1)
    )
    assert "weights_path" not in pre["bag_extraction"]  # no local path in a shipped bundle
    # the shipped encoder is w1's: the bundle's encoder.onnx gives w1's bag
    extract_many(src, tmp_path / "via_bundle", encoder_onnx=m["dir"], **opts)
    np.testing.assert_allclose(read_bag(tmp_path / "via_bundle" / "a.h5")[0], f1, atol=1e-3)
    # scoring: w1's bag is scored, w2's refused
    p = build_predictor(load_bundle(m["dir"]))
    assert np.isfinite(p.predict(tmp_path / "via_bundle" / "a.h5")["risk"])
    with pytest.raises(InputError, match="weights_sha256"):
        p.predict(out / "a.h5")

    capsys.readouterr()
    w1.write_bytes(w2.read_bytes())  # the file at the recorded path now holds other weights
    m = export("run_changed")
    assert "encoder.onnx" not in m["files"] and "sha256 differs" in capsys.readouterr().err
    w1.unlink()
    m = export("run_moved")
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("export: no patch encoder")]
    assert "encoder.onnx" not in m["files"] and len(lines) == 1 and "no longer at" in lines[0]
