"""The paper recipe (tuab_nmt.yaml): authors' values, full-size cropped Deep4 step, cropped decoding,
the trivial baseline, and the paper's concat / source-scaling baselines of ``eeg transfer``."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medtransfer.shared.config import load_yaml

RECIPE = Path(__file__).resolve().parents[3] / "apps" / "eeg" / "recipes" / "tuab_nmt.yaml"

#: MohammadJavadD/APD_EEG (commit 0617437): s1_data_preparation.ipynb and s2_supervised_learning.ipynb
AUTHORS = {
    "data.channels": sorted(
        ["A1", "A2", "FP1", "FP2", "F3", "F4", "C3", "C4", "P3", "P4", "O1", "O2"]
        + ["F7", "F8", "T3", "T4", "T5", "T6", "FZ", "CZ", "PZ"]
    ),  # s1 short_ch_names (as a set: the order is ours)
    "data.crop_start_s": 60.0,  # s1 tmin = 1 * 60
    "data.crop_max_s": 300.0,  # s1 tmax = 6 * 60
    "data.scale": 1e6,  # s1 multiply(data, 1e6)
    "data.clip_uv": 800.0,  # s1 np.clip(-800, 800)
    "data.sfreq": 100.0,  # s1 resample sfreq = 100
    "data.car": True,  # s1 set_eeg_reference('average')
    "data.window_seconds": 60.0,  # s2 input_window_samples = 6000 at 100 Hz
    "model.name": "deep4",
    "model.cropped": True,  # s2 EEGClassifier(cropped=True, criterion=CroppedLoss)
    "model.drop_prob": 0.5,
    "model.kwargs.n_filters_time": 25,
    "model.kwargs.n_filters_spat": 25,
    "model.kwargs.n_filters_2": 50,
    "model.kwargs.n_filters_3": 100,
    "model.kwargs.n_filters_4": 200,
    "model.kwargs.final_conv_length": 1,
    "model.kwargs.stride_before_pool": True,
    "train.optimizer": "adamw",
    "train.lr": 0.0625 * 0.01,
    "train.weight_decay": 0.5 * 0.001,
    "train.batch_size": 64,
    "train.epochs": 10,
    "train.scheduler": "cosine",
    "train.seed": 2024,
    "train.monitor": "epoch",  # the last epoch's model (clf.module after fit)
    "train.mode": "max",
    "train.patience": 0,
}


def _get(d, dotted):
    for k in dotted.split("."):
        d = d[k]
    return d


def test_tuab_nmt_recipe_values_are_the_authors():
    raw = load_yaml(RECIPE)
    for key, want in AUTHORS.items():
        got = _get(raw, key)
        if key == "data.channels":
            got = sorted(got)
        if isinstance(want, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key
    from medtransfer.apps.eeg.cli import _cfg

    cfg = _cfg(RECIPE, None, {})  # resolves and validates against the app's defaults
    assert cfg["model"]["cropped"] is True and cfg["train"]["lr"] == pytest.approx(6.25e-4)


def test_tuab_nmt_recipe_full_size_cropped_deep4_one_step(tmp_path):
    """Deep4 (cropped, dense) at 21 x 6000 from the recipe, random init, one optimisation step (CPU, batch 2)."""
    import torch

    from medtransfer.apps.eeg.cropped import cropped_loss, n_preds_per_input
    from medtransfer.apps.eeg.train import build_model, make_config
    from medtransfer.shared.finetune import fit
    from medtransfer.shared.rundir import RunDir

    cfg = make_config(RECIPE, ["train.epochs=1", "train.batch_size=2", "train.progress=false", "train.device=cpu"])
    model = build_model(cfg)
    assert type(model).__name__ == "Deep4Net"
    n_preds = n_preds_per_input(model, 21, 6000)
    assert 1 < n_preds < 6000  # dense: one prediction per crop, not one per window
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = np.random.default_rng(0)
    items = [(g.normal(0, 20, (21, 6000)).astype(np.float32), np.int64(i % 2)) for i in range(2)]
    res = fit(
        model,
        items,
        None,
        cfg=cfg,
        run_dir=tmp_path / "run",
        app="eeg",
        task="pathology",
        loss_fn=cropped_loss(),
        head=["final_layer"],
        monitor=cfg["train"]["monitor"],
        mode=cfg["train"]["mode"],
    )
    assert np.isfinite(res.history[0]["train_loss"])
    after = model.state_dict()
    assert not torch.equal(before["final_layer.conv_classifier.weight"], after["final_layer.conv_classifier.weight"])
    with torch.no_grad():
        out = model.eval()(torch.zeros(2, 21, 6000))
    assert tuple(out.shape) == (2, 2, n_preds)
    assert RunDir(tmp_path / "run").has_checkpoint("best")


def test_cropped_loss_is_braindecode_mean_over_crops():
    import torch
    import torch.nn.functional as F

    from medtransfer.apps.eeg.cropped import cropped_loss, window_logits

    g = torch.Generator().manual_seed(0)
    out = torch.randn(3, 2, 7, generator=g)
    y = torch.tensor([0, 1, 1])
    want = F.nll_loss(F.log_softmax(out, dim=1).mean(dim=2), y)
    assert float(cropped_loss()(out, y)) == pytest.approx(float(want), rel=1e-6)
    assert float(cropped_loss()(out, y)) != pytest.approx(float(F.cross_entropy(out.mean(dim=2), y)), rel=1e-6)
    np.testing.assert_allclose(window_logits(out.numpy()), F.log_softmax(out, 1).mean(2).numpy(), rtol=1e-5)


def test_cropped_config_needs_deep4_or_shallow():
    from medtransfer.apps.eeg.train import make_config
    from medtransfer.shared.utils.errors import MedTransferError

    with pytest.raises(MedTransferError, match="cropped"):
        make_config(overrides={"model": {"name": "eegnet", "cropped": True}})


def test_cropped_training_evaluate_export_tiny(tuab_csv, tmp_path, eeg_cfg):
    """model.cropped on the tiny synthetic set: dense training, stride n_preds, window answers, ONNX [batch, 2]."""
    from medtransfer.apps.eeg.export import export_run
    from medtransfer.apps.eeg.train import evaluate, load_run, train

    cfg = eeg_cfg(tmp_path / "cache", epochs=1)
    cfg["model"]["cropped"] = True  # ShallowFBCSPNet: Deep4's receptive field exceeds the 200-sample test windows
    res = train(tuab_csv, tmp_path / "run", cfg, progress=False)
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    n_preds = info["n_preds_per_input"]
    assert info["cropped"] is True and 1 < n_preds < 200
    per_rec = 1 + (5 * 200 - 200) // n_preds  # 5 windows of 200 samples cached, training starts every n_preds
    assert info["n_train_windows"] == per_rec * info["n_train_recordings"]
    model, _ = load_run(tmp_path / "run")
    import torch

    assert tuple(model(torch.zeros(3, 21, 200)).shape) == (3, 2)
    m = evaluate(tmp_path / "run", tuab_csv, split="test", write=False)
    assert 0 <= m["balanced_accuracy"] <= 1 and m["baseline"]["balanced_accuracy"] == 0.5
    rec = info["baseline"]
    assert rec["split"] == "val" and rec["baseline"] == 0.5 and rec["metric"] == "balanced_accuracy"
    assert rec["model"] == pytest.approx(res["val"]["balanced_accuracy"])
    b = export_run(tmp_path / "run", tmp_path / "bundle", force=True)  # tiny run: may be below its baseline
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["outputs"]["logits"]["shape"] == [-1, 2]


def test_baseline_record_and_export_guard(trained_run, tuab_csv, tmp_path):
    from medtransfer.apps.eeg.export import export_run
    from medtransfer.apps.eeg.train import evaluate
    from medtransfer.shared.export.guard import BelowBaselineError, baseline_record
    from medtransfer.shared.rundir import RunDir

    rec = RunDir(trained_run).info()["baseline"]
    assert rec["metric"] == "balanced_accuracy" and rec["split"] == "val" and rec["baseline"] == 0.5
    assert rec["baseline_name"].startswith("majority class")
    m = evaluate(trained_run, tuab_csv, split="val", write=False)
    assert m["baseline"]["balanced_accuracy"] == 0.5 and m["baseline"]["auroc"] == 0.5
    assert rec["model"] == pytest.approx(m["balanced_accuracy"] if m["threshold"] == 0.5 else rec["model"])
    run = tmp_path / "below"
    shutil.copytree(trained_run, run)
    RunDir(run).update_info(baseline=baseline_record("balanced_accuracy", 0.4, 0.5, "majority class 'normal'"))
    with pytest.raises(BelowBaselineError):
        export_run(run, tmp_path / "b1")
    b = export_run(run, tmp_path / "b2", force=True)
    assert "does not beat" in json.loads((b / "metadata.json").read_text())["unreliable"]


def test_majority_baseline_single_class():
    from medtransfer.apps.eeg.train import majority_baseline

    assert majority_baseline(np.array([0, 0, 1]), "normal")["balanced_accuracy"] == 0.5
    assert majority_baseline(np.array([1, 1]), "abnormal")["balanced_accuracy"] == 0.5  # sens 1, spec 0 (no normals)
    assert majority_baseline(np.array([0, 1, 1]), "abnormal")["accuracy"] == pytest.approx(2 / 3)


def test_transfer_concat_and_source_scaling_baselines(trained_run, tuab_csv, nmt_csv, tmp_path, eeg_cfg):
    from medtransfer.apps.eeg.transfer import sweep
    from medtransfer.shared.manifest import read_manifest
    from medtransfer.shared.utils.errors import MedTransferError

    cfg = eeg_cfg(tmp_path / "cache", epochs=1)
    res = sweep(
        tuab_csv,
        nmt_csv,
        tmp_path / "sw",
        cfg,
        strategies=["full"],
        fractions=[0.25],
        seeds=[0],
        source_run=trained_run,
        baselines=["concat", "scaling"],
        source_fractions=[0.25],
    )
    rows = list(csv.DictReader(open(res["table"])))
    modes = [r["mode"] for r in rows]
    assert modes == ["scratch", "transfer_full", "concat", "source_scaling_0.25"]
    concat_recs = read_manifest(tmp_path / "sw" / "manifests" / "concat_f0.25_s0.csv")
    n_src = sum(r.split == "train" for r in concat_recs)
    # patient ids are each dataset's own: two sites' "p11" stay two patients (the leak check refused it)
    assert {r.group.split(":")[0] for r in concat_recs if r.group} == {"source", "target"}
    concat, scaling = rows[2], rows[3]
    assert int(concat["n_source_train"]) + int(concat["n_target_train"]) == n_src
    assert 0 < int(scaling["n_source_train"]) < int(concat["n_source_train"])
    assert float(scaling["source_fraction"]) == 0.25 and scaling["forgetting"] != ""
    for r in rows:
        assert 0.0 <= float(r["target_balanced_accuracy"]) <= 1.0
    assert (tmp_path / "sw" / "runs" / "source_scaling_src0.25_s0_ft" / "run.json").is_file()
    with pytest.raises(MedTransferError, match="baseline"):
        sweep(tuab_csv, nmt_csv, tmp_path / "x", cfg, source_run=trained_run, baselines=["nope"])


def test_cli_transfer_baselines_option_reaches_the_sweep(tuab_csv, nmt_csv, tmp_path, capsys):
    from cliutil import run_main

    args = ["eeg", "transfer", "--source", str(tuab_csv), "--target", str(nmt_csv), "--out", str(tmp_path / "o")]
    code, _, err = run_main([*args, "--baselines", "concat,nope", "--source-run", str(tmp_path)], capsys)
    assert code == 2 and "unknown baseline 'nope'" in err and err.count("\n") == 1, err
    code, _, err = run_main([*args, "--baselines", "scaling", "--source-fractions", "0,1"], capsys)
    assert code == 2 and "--source-fractions" in err and err.count("\n") == 1, err
