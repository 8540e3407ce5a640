"""GPU path of the shared engine: a few steps on CUDA with AMP, then export of the CUDA-trained run on CPU.

Run on a CUDA machine with ``pytest -m gpu tests/gpu``; skipped elsewhere.  Each app adds its own
``tests/gpu/test_gpu_<app>.py`` with a few training steps at its paper recipe's size.
"""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from medtransfer.shared.finetune import TRAIN_DEFAULTS, fit
from medtransfer.shared.rundir import RunDir

pytestmark = pytest.mark.gpu


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1)
        )
        self.head = nn.Linear(16, 2)
        self.transfer_head = ["head"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stem(x).flatten(1))


def test_fit_on_cuda_with_amp_then_cpu_export(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 224, 224, generator=g)
    y = (x.mean((1, 2, 3)) > 0).long()
    ds = torch.utils.data.TensorDataset(x, y)
    cfg = {"train": {**TRAIN_DEFAULTS, "epochs": 2, "batch_size": 16, "device": "cuda", "progress": False}}
    t0 = time.perf_counter()
    res = fit(_Net(), ds, ds, cfg=cfg, run_dir=tmp_path / "run", app="t", task="c", loss_fn=nn.functional.cross_entropy)
    per_step = (time.perf_counter() - t0) / (2 * 4)
    print(f"engine on {torch.cuda.get_device_name()}: {per_step * 1000:.1f} ms/step incl. validation")
    st = RunDir(res.run_dir).load_checkpoint("best")  # map_location cpu: loads on a CPU-only machine
    assert all(v.device.type == "cpu" for v in st["model"].values())
    m = _Net()
    m.load_state_dict(st["model"])
    assert torch.isfinite(m(torch.randn(2, 3, 224, 224))).all()
