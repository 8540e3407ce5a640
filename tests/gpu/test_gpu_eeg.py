"""EEG on CUDA at the paper recipe's size: cropped Deep4Net on 21 x 6000 windows, batch 64, AMP.

Run on a CUDA machine with ``pytest -m gpu tests/gpu/test_gpu_eeg.py -s``; skipped elsewhere.
Prints ms/step, then exports the CUDA-trained run (forced: a few random steps do not beat the
trivial baseline) and checks the ONNX bundle answers one prediction per window.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

RECIPE = Path(__file__).resolve().parents[2] / "apps" / "eeg" / "recipes" / "tuab_nmt.yaml"


def test_gpu_eeg_cropped_deep4_paper_size_steps_then_export(tmp_path):
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from medtransfer.apps.eeg.cropped import cropped_loss
    from medtransfer.apps.eeg.export import export_run
    from medtransfer.apps.eeg.train import build_model, make_config
    from medtransfer.shared.finetune import fit
    from medtransfer.shared.rundir import RunDir, model_spec

    steps, bs = 4, 64
    cfg = make_config(RECIPE, ["train.epochs=2", "train.progress=false", "train.device=cuda"])
    assert cfg["train"]["batch_size"] == bs
    g = np.random.default_rng(0)
    items = [(g.normal(0, 20, (21, 6000)).astype(np.float32), np.int64(i % 2)) for i in range(steps * bs)]
    model = build_model(cfg)
    run = tmp_path / "run"
    t0 = time.perf_counter()
    res = fit(
        model,
        items,
        None,
        cfg=cfg,
        run_dir=run,
        app="eeg",
        task="pathology",
        loss_fn=cropped_loss(),
        head=["final_layer"],
        monitor="epoch",
        mode="max",
        extra_state={"labels": ["normal", "abnormal"], "model_name": "deep4"},
        model_spec=model_spec(
            builder="medtransfer.apps.eeg.train:build_model",
            cfg={"data": dict(cfg["data"]), "model": dict(cfg["model"])},
        ),
    )
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / (2 * steps) * 1000
    steady = res.history[-1]["seconds"] / steps * 1000  # epoch 2: after cuDNN autotuning and AMP warm-up
    print(
        f"eeg cropped Deep4 21x6000 batch {bs} on {torch.cuda.get_device_name()}: {steady:.1f} ms/step steady "
        f"(epoch 2), {ms:.1f} ms/step overall (warm-up included)"
    )
    assert np.isfinite(res.history[0]["train_loss"])
    from medtransfer.shared.export.guard import baseline_record

    RunDir(run).update_info(baseline=baseline_record("balanced_accuracy", 0.5, 0.5, "majority class 'normal'"))
    b = export_run(run, tmp_path / "bundle", force=True)
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["outputs"]["logits"]["shape"] == [-1, 2] and "unreliable" in meta
