"""Cardiac on CUDA at the CACTUS recipe's full size (ResNet18, 224 px): a few steps, ms/step, then export.

Run on a CUDA machine with ``pytest -m gpu tests/gpu/test_gpu_cardiac.py -s``; skipped elsewhere.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.gpu

RECIPE = Path(__file__).resolve().parents[2] / "apps" / "cardiac" / "recipes" / "cactus.yaml"


def test_cardiac_recipe_steps_on_cuda_then_export(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from medtransfer.apps.cardiac.export import export_run
    from medtransfer.apps.cardiac.model import build_model
    from medtransfer.apps.cardiac.train import _forward, _loss, make_config, metrics_for
    from medtransfer.shared.export.guard import baseline_record
    from medtransfer.shared.finetune import fit
    from medtransfer.shared.rundir import RunDir, model_spec

    cfg = make_config(RECIPE, ["train.epochs=2", "train.batch_size=32", "train.device=cuda", "train.progress=false"])
    s = int(cfg["preprocessing"]["size"])
    assert s == 224 and cfg["model"]["backbone"] == "resnet18"
    g = torch.Generator().manual_seed(0)
    n = 128
    ds = torch.utils.data.TensorDataset(
        torch.randn(n, 3, s, s, generator=g),
        torch.randint(0, 6, (n,), generator=g),
        10 * torch.rand(n, generator=g),
    )
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    res = fit(
        build_model(cfg),
        ds,
        ds,
        cfg=cfg,
        run_dir=tmp_path / "run",
        app="cardiac",
        task="view",
        loss_fn=_loss(1.0, 0.0),
        metric_fn=metrics_for(cfg["model"]["views"]),
        forward_fn=_forward,
        head=["view_head", "grade_head"],
        monitor="val_accuracy",
        mode="max",
        extra_state={"labels": cfg["model"]["views"], "preprocessing": cfg["preprocessing"]},
        model_spec=model_spec(builder="medtransfer.apps.cardiac.model:CardiacNet", backbone="resnet18", n_views=6),
    )
    torch.cuda.synchronize()
    steps = 2 * (n // 32)
    ms = (time.perf_counter() - t0) / steps * 1000
    steady = res.history[-1]["seconds"] / (n // 32) * 1000  # epoch 2's training steps: after cuDNN warm-up
    print(
        f"cardiac resnet18@224 on {torch.cuda.get_device_name()}: {steady:.1f} ms/step steady (epoch 2, training), "
        f"{ms:.1f} ms/step overall (batch 32, warm-up and validation included)"
    )
    acc = res.best_metrics.get("val_accuracy", float("nan"))
    majority = float(torch.bincount(ds.tensors[1], minlength=6).max()) / n
    RunDir(res.run_dir).update_info(stage="view", baseline=baseline_record("accuracy", acc, majority, "majority view"))
    b = export_run(res.run_dir, tmp_path / "bundle", force=True)  # random labels: may sit below the baseline
    meta = json.loads((b / "metadata.json").read_text())
    assert meta["outputs"]["view_logits"]["shape"] == [-1, 6] and (b / "model.onnx").is_file()
