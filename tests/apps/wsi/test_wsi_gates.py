"""WSI plausibility gates (bags, encoder output, training), per-slide outputs that never collide,
header content kept out of messages, and the TCGA importer's relative paths."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from medtransfer.apps.wsi.features import ImplausibleBagError, extract_many, find_bags, read_bag, write_bag
from medtransfer.apps.wsi.labels import find_studies, import_tcga, read_table, slide_stem
from medtransfer.apps.wsi.synthetic import make_slide, make_survpath_tables, planted_bags
from medtransfer.apps.wsi.train import load_cohort, make_config, train_run
from medtransfer.shared.utils.errors import InputError, MedTransferError

FAST = ["train.epochs=2", "min_steps=0", "model.hidden=16", "model.attn_dim=8"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Synthetic SurvPath tables, one 16-d bag per slide, and a small exported MIL bundle (with a risk threshold)."""
    from medtransfer.apps.wsi.export import export_run

    d = tmp_path_factory.mktemp("wsigates")
    root = make_survpath_tables(d / "labels", studies=("tcga_aaa",), n_cases=30)
    cases = read_table(find_studies(root)["tcga_aaa"], "dss")[0]
    train_run(
        root,
        "tcga_aaa",
        d / "run",
        make_config(overrides=FAST),
        bags=planted_bags(cases, dim=16, seed=0, n_patches=(4, 8)),
        fold=0,
    )
    slides = planted_bags(cases, dim=16, seed=0, n_patches=(4, 8), per_slide=True)
    bundle = export_run(d / "run", d / "bundle", force=True)  # tiny run: may be below its baseline
    return {"root": root, "cases": cases, "slides": slides, "bundle": bundle, "dir": d}


def _bag(path: Path, feats: np.ndarray) -> Path:
    return write_bag(path, np.zeros((len(feats), 2), np.int64), np.asarray(feats, np.float32), {"complete": True})


def _predictor(bundle, **opts):
    from medtransfer.shared.runtime.bundle import load_bundle
    from medtransfer.shared.runtime.predictor import build_predictor

    return build_predictor(load_bundle(bundle), **opts)


# ------------------------------------------------------------------------------ bag gates
def test_nan_bag_is_an_error_not_a_low_risk_answer(cohort, tmp_path):
    """Reproduction: an .h5 bag with NaN features came out ``risk_group: "low"``."""
    p = _predictor(cohort["bundle"])
    x = np.random.default_rng(0).standard_normal((10, 16)).astype(np.float32)
    assert p.predict(_bag(tmp_path / "ok.h5", x))["risk_group"] in ("low", "high")
    x[3, 5] = np.nan
    with pytest.raises(InputError, match="NaN/inf") as e:
        p.predict(_bag(tmp_path / "nan.h5", x))
    assert "\n" not in str(e.value) and "nan.h5" in str(e.value)


@pytest.mark.parametrize(
    "bad,pattern",
    [
        ("inf", "NaN/inf"),
        ("huge", "exceed"),
        ("empty", "non-empty"),
    ],
)
def test_implausible_bags_are_errors(cohort, tmp_path, bad, pattern):
    x = np.random.default_rng(1).standard_normal((6, 16)).astype(np.float32)
    if bad == "inf":
        x[0, 0] = np.inf
    elif bad == "huge":
        x[2, 2] = 1e6
    else:
        x = x[:0]
    with pytest.raises(InputError, match=pattern):
        _predictor(cohort["bundle"]).predict(_bag(tmp_path / f"{bad}.h5", x))


def test_score_gives_an_error_row_for_a_nan_bag(cohort, tmp_path):
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    d = tmp_path / "bags"
    x = np.random.default_rng(2).standard_normal((5, 16)).astype(np.float32)
    _bag(d / "good.h5", x)
    x[0, 0] = np.nan
    _bag(d / "nan.h5", x)
    r = CliRunner().invoke(
        app, ["score", str(cohort["bundle"]), "--input-dir", str(d), "--out", str(tmp_path / "s.csv"), "--quiet"]
    )
    rows = {Path(row["case"]).name: row for row in csv.DictReader(open(tmp_path / "s.csv"))}
    assert rows["nan.h5"]["status"] == "error" and "NaN" in rows["nan.h5"]["error"], r.output
    assert rows["good.h5"]["status"] == "ok" and json.loads(rows["good.h5"]["result"])["risk_group"] in ("low", "high")


def test_training_refuses_a_folder_of_two_extractions(cohort, tmp_path):
    """Bags of two extractions of one feature size (e.g. an int8 ``wsi extract`` interrupted over
    an fp32 folder) were trained on together, the encoder taken from the first bag only: now one
    line naming the bag and how it differs.  Attributes only one bag records are not compared."""
    feats = tmp_path / "feats"
    stems = sorted(cohort["slides"])
    fp32 = {"complete": True, "encoder": "resnet18", "mpp": 0.5, "patch_size": 224}
    for st in stems:
        write_bag(feats / f"{st}.h5", np.zeros((len(cohort["slides"][st]), 2), np.int64), cohort["slides"][st], fp32)
    _bag(feats / f"{stems[1]}.h5", cohort["slides"][stems[1]])  # another tool's bag: no attributes
    assert len(load_cohort(cohort["root"], "tcga_aaa", feats).cases) == len(cohort["cases"])
    int8 = {**fp32, "encoder": "resnet18+int8", "int8_sha256": "ab" * 32}
    write_bag(feats / f"{stems[5]}.h5", np.zeros((len(cohort["slides"][stems[5]]), 2), np.int64),
              cohort["slides"][stems[5]], int8)  # fmt: skip
    with pytest.raises(MedTransferError, match="another extraction") as e:
        load_cohort(cohort["root"], "tcga_aaa", feats)
    msg = str(e.value)
    assert f"{stems[5]}.h5" in msg and "encoder 'resnet18+int8' vs 'resnet18'" in msg and "\n" not in msg
    for st in stems:  # all int8, one model: fine; two int8 models: refused
        write_bag(feats / f"{st}.h5", np.zeros((len(cohort["slides"][st]), 2), np.int64), cohort["slides"][st], int8)
    assert len(load_cohort(cohort["root"], "tcga_aaa", feats).cases) == len(cohort["cases"])
    write_bag(feats / f"{stems[7]}.h5", np.zeros((len(cohort["slides"][stems[7]]), 2), np.int64),
              cohort["slides"][stems[7]], {**int8, "int8_sha256": "cd" * 32})  # fmt: skip
    with pytest.raises(MedTransferError, match="int8_sha256 'cdcdcdcdcdcdcdcd' vs 'abababababababab'"):
        load_cohort(cohort["root"], "tcga_aaa", feats)


def test_scoring_refuses_a_bag_of_another_extraction(cohort, tmp_path):
    """A bundle trained on resnet18 bags at 0.5 um/px scored resnet34 bags (also 512-d) or bags
    tiled at 0.25 um/px without a word: meaningless risks.  The run records its bags' extraction,
    the bundle carries it, and predict / score refuse a bag that differs (an int8 extraction of
    the same encoder and bags of tools that record nothing are scored); the pkt command refuses
    sources and target of two extractions before training; an export that would pair the model
    with another encoder is refused."""
    import shutil

    from typer.testing import CliRunner

    from medtransfer.apps.wsi.export import export_run
    from medtransfer.apps.wsi.train import check_same_extraction
    from medtransfer.shared.cli.main import app

    feats = tmp_path / "feats"
    ours = {"complete": True, "encoder": "onnx:enc16", "mpp": 0.5, "patch_size": 224}  # 16-d bags
    for st, x in cohort["slides"].items():
        write_bag(feats / f"{st}.h5", np.zeros((len(x), 2), np.int64), x, ours)
    train_run(cohort["root"], "tcga_aaa", tmp_path / "run", make_config(overrides=FAST), feats, fold=0)
    info = json.loads((tmp_path / "run" / "run.json").read_text())["wsi"]
    assert info["bag_extraction"] == {"encoder": "onnx:enc16", "mpp": 0.5, "patch_size": 224}
    bundle = export_run(tmp_path / "run", tmp_path / "bundle", force=True)  # bags-only (not a registry encoder)
    meta = json.loads((bundle / "metadata.json").read_text())
    assert meta["preprocessing"]["bag_extraction"] == info["bag_extraction"]

    x = next(iter(cohort["slides"].values()))
    q = tmp_path / "q"
    cases = {
        "same.h5": ours,
        "int8.h5": {**ours, "encoder": "onnx:enc16+int8", "int8_sha256": "ab" * 32},
        "other_tool.h5": {"complete": True},
        "bytes_attr.h5": {**ours, "encoder": np.bytes_(b"onnx:enc16")},  # another writer's fixed-length string
        "resnet34.h5": {**ours, "encoder": "onnx:other16"},
        "at40x.h5": {**ours, "mpp": 0.25},
        "tiles256.h5": {**ours, "patch_size": 256},
        "named.h5": {**ours, "encoder": "Jane Doe 1970-01-01"},
    }
    for name, attrs in cases.items():
        write_bag(q / name, np.zeros((len(x), 2), np.int64), x, attrs)
    p = _predictor(bundle)
    for ok in ("same.h5", "int8.h5", "other_tool.h5", "bytes_attr.h5"):
        assert np.isfinite(p.predict(q / ok)["risk"]), ok
    for bad, diff in (
        ("resnet34.h5", "encoder 'onnx:other16' vs 'onnx:enc16'"),
        ("at40x.h5", "mpp '0.25' vs '0.5'"),
        ("tiles256.h5", "patch_size '256' vs '224'"),
        ("named.h5", "encoder '(not a name)' vs 'onnx:enc16'"),
    ):
        with pytest.raises(InputError, match="extracted otherwise than the model's training bags") as e:
            p.predict(q / bad)
        msg = str(e.value)
        assert diff in msg and bad in msg and "encoder onnx:enc16, target MPP 0.5, patch size 224" in msg
        assert "\n" not in msg and "Jane" not in msg

    # score: one error row per such bag, the others scored
    r = CliRunner().invoke(
        app, ["score", str(bundle), "--input-dir", str(q), "--out", str(tmp_path / "s.csv"), "--quiet"]
    )
    with open(tmp_path / "s.csv") as fh:
        rows = {Path(x["case"]).name: x for x in csv.DictReader(fh)}
    assert len(rows) == len(cases), r.output
    assert {k for k, v in rows.items() if v["status"] == "ok"} == {
        "same.h5",
        "int8.h5",
        "other_tool.h5",
        "bytes_attr.h5",
    }
    assert all("extracted otherwise" in rows[k]["error"] for k in ("resnet34.h5", "at40x.h5", "tiles256.h5"))

    # export with another encoder than the bags': refused
    run2 = tmp_path / "run2"
    shutil.copytree(tmp_path / "run", run2)
    with pytest.raises(MedTransferError, match="not the one the run's bags came from"):
        export_run(run2, tmp_path / "bundle2", force=True, encoder="resnet34")

    # Path-PKT: sources and target of two extractions are refused before training
    a = load_cohort(cohort["root"], "tcga_aaa", feats)
    assert a.extraction == info["bag_extraction"]
    for st, x in cohort["slides"].items():
        write_bag(tmp_path / "f2" / f"{st}.h5", np.zeros((len(x), 2), np.int64), x, {**ours, "mpp": 0.25})
    b = load_cohort(cohort["root"], "tcga_aaa", tmp_path / "f2")
    check_same_extraction({"tcga_aaa": a, "tcga_bbb": a})
    with pytest.raises(MedTransferError, match="tcga_bbb: its bags come from another extraction than tcga_aaa's"):
        check_same_extraction({"tcga_aaa": a, "tcga_bbb": b})


def test_training_refuses_a_nan_bag_naming_the_file(cohort, tmp_path):
    feats = tmp_path / "feats"
    stems = sorted(cohort["slides"])
    for st in stems:
        _bag(feats / f"{st}.h5", cohort["slides"][st])
    assert len(load_cohort(cohort["root"], "tcga_aaa", feats).cases) == len(cohort["cases"])
    x = cohort["slides"][stems[4]].copy()
    x[1, 1] = np.nan
    _bag(feats / f"{stems[4]}.h5", x)
    with pytest.raises(ImplausibleBagError, match="NaN") as e:
        load_cohort(cohort["root"], "tcga_aaa", feats)
    assert f"{stems[4]}.h5" in str(e.value)
    # in-memory bags pass the same gate
    bags = planted_bags(cohort["cases"], dim=16, seed=0, n_patches=(4, 8))
    cid = cohort["cases"][0].case_id
    bags[cid][0, 0] = np.inf
    with pytest.raises(ImplausibleBagError, match=cid):
        load_cohort(cohort["root"], "tcga_aaa", bags=bags)


# ----------------------------------------------------------------------- extract outputs
def test_extract_outputs_follow_the_relative_path(tmp_path, tile_opts):
    """Reproduction: ``wsi extract DIR`` with a/s1.svs and b/s1.tif credited the second slide with the
    first one's tiles.  Now each slide has its own bag, named by its path relative to DIR."""
    src = tmp_path / "slides"
    make_slide(src / "a" / "s1.tif", size=(1024, 768), seed=1)
    make_slide(src / "b" / "s1.tif", size=(512, 512), seed=2)
    (src / "b" / "s1.tif").rename(src / "b" / "s1.svs")
    out = tmp_path / "bags"
    res = extract_many(
        src, out, "resnet18", None, tile_opts["target_mpp"], tile_opts["patch_size"], batch_size=8, show_progress=False
    )
    by = {r.slide: r for r in res}
    assert set(by) == {"a/s1", "b/s1"} and all(r.status == "done" for r in res)
    assert Path(by["a/s1"].h5) == out / "a" / "s1.h5" and Path(by["b/s1"].h5) == out / "b" / "s1.h5"
    n_a, n_b = (read_bag(out / k / "s1.h5")[0].shape[0] for k in ("a", "b"))
    assert n_a == by["a/s1"].n_tiles and n_b == by["b/s1"].n_tiles and n_a != n_b
    with h5py.File(out / "b" / "s1.h5") as f:
        assert f.attrs["slide"] == "s1.svs" and f.attrs["key"] == "b/s1"
    assert (out / "thumbnails" / "a" / "s1.png").is_file() and (out / "thumbnails" / "b" / "s1.png").is_file()
    # a re-run skips both, each with its own tile count
    again = {
        r.slide: r
        for r in extract_many(
            src, out, "resnet18", None, tile_opts["target_mpp"], tile_opts["patch_size"], show_progress=False
        )
    }
    assert again["a/s1"].status == again["b/s1"].status == "skipped"
    assert (again["a/s1"].n_tiles, again["b/s1"].n_tiles) == (n_a, n_b)


def test_extract_refuses_a_name_clash_before_any_work(tmp_path, tile_opts):
    src = tmp_path / "slides"
    make_slide(src / "s1.tif", size=(512, 512), seed=1)
    (src / "s1.svs").write_bytes((src / "s1.tif").read_bytes())
    with pytest.raises(MedTransferError, match="same output") as e:
        extract_many(
            src,
            tmp_path / "bags",
            "resnet18",
            None,
            tile_opts["target_mpp"],
            tile_opts["patch_size"],
            show_progress=False,
        )
    assert "\n" not in str(e.value)
    assert not (tmp_path / "bags").exists() or not any((tmp_path / "bags").iterdir())


def test_cli_extract_clash_is_one_line(tmp_path, tile_opts, monkeypatch, capsys):
    import sys

    from medtransfer.shared.cli.main import main

    src = tmp_path / "slides"
    make_slide(src / "s1.tif", size=(512, 512), seed=1)
    (src / "s1.svs").write_bytes((src / "s1.tif").read_bytes())
    monkeypatch.setattr(sys, "argv", ["medtransfer", "wsi", "extract", str(src), "--out", str(tmp_path / "bags")])
    with pytest.raises(SystemExit) as ex:
        main()  # known errors propagate from the app group and end in main(): one line, exit 2
    err = capsys.readouterr().err
    assert ex.value.code == 2 and err.count("\n") == 1 and "same output" in err, err


def test_training_and_import_find_nested_bags(cohort, tmp_path, monkeypatch):
    """Bags laid out by sub-folder (as extract writes them) are still matched to label rows by slide name;
    the TCGA importer writes their paths relative to the CSV, from any working directory."""
    feats = tmp_path / "data" / "feats"
    stems = sorted(cohort["slides"])
    for i, st in enumerate(stems):
        _bag(feats / ("site1" if i % 2 else "site2") / f"{st}.h5", cohort["slides"][st])
    assert len(load_cohort(cohort["root"], "tcga_aaa", feats).cases) == len(cohort["cases"])
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    out = import_tcga(cohort["root"], Path("../out/m.csv"), features="../data/feats", fold=0)
    rows = list(csv.DictReader(open(tmp_path / "out" / "m.csv")))
    assert len(rows) == len(stems)
    for row in rows:
        assert not os.path.isabs(row["path"]) and (tmp_path / "out" / row["path"]).is_file()
        assert slide_stem(row["slide_id"]) == Path(row["path"]).stem
    assert out == Path("../out/m.csv")
    # the same slide name twice is ambiguous: refused with one line naming both files
    _bag(feats / "site3" / f"{stems[0]}.h5", cohort["slides"][stems[0]])
    with pytest.raises(MedTransferError, match="both bags of slide") as e:
        find_bags(feats)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------- header content
def test_tiff_and_h5_messages_never_quote_file_content(tmp_path):
    from medtransfer.apps.wsi.slide import open_slide

    bad = tmp_path / "x.svs"
    bad.write_bytes(b"Zq7SECRET" + b"\x00" * 400)
    with pytest.raises(InputError, match="cannot read as a slide") as e:
        open_slide(bad)
    assert "zq7" not in str(e.value).lower()
    h5 = tmp_path / "x.h5"
    h5.write_bytes(b"\x89HDF\r\n\x1a\nZq7SECRET" * 20)
    with pytest.raises(InputError, match="HDF5") as e:
        read_bag(h5)
    assert "zq7" not in str(e.value).lower() and "superblock" not in str(e.value)


# --------------------------------------------------------------------------- plot folders
def test_bag_plots_never_collide(cohort, tmp_path):
    x = np.random.default_rng(3).standard_normal((6, 16)).astype(np.float32)
    a, b = _bag(tmp_path / "in" / "a" / "s1.h5", x), _bag(tmp_path / "in" / "b" / "s1.h5", x + 1)
    p = _predictor(cohort["bundle"], plot=True, out_dir=str(tmp_path / "out"), input_root=str(tmp_path / "in"))
    pa, pb = p.predict(a)["plots"][0], p.predict(b)["plots"][0]
    assert Path(pa) == tmp_path / "out" / "a" / "s1" / "survival.png" and Path(pb).parent.name == "s1"
    assert Path(pa).is_file() and Path(pb).is_file() and Path(pa) != Path(pb)
    q = _predictor(cohort["bundle"], plot=True, out_dir=str(tmp_path / "out2"))
    q.predict(a)
    with pytest.raises(InputError, match="overwrite"):
        q.predict(b)
    assert json.dumps(q.predict(a))
