import json

import numpy as np
import pytest
import torch
from torch import nn

from medtransfer.shared.export import ParityError, export_onnx, write_bundle
from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.utils.errors import BundleError


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3)))


def test_export_dynamic_batch_parity_and_bundle(tmp_path):
    torch.manual_seed(0)
    m = Small()
    par = export_onnx(
        m,
        (torch.randn(2, 1, 16, 16),),
        tmp_path / "model.onnx",
        ["image"],
        ["logits"],
        {"image": {0: "batch"}},
        parity_args=[(torch.randn(7, 1, 16, 16),)],
    )
    assert par["max_abs_diff"] < 1e-4 and par["checked_inputs"] == 2
    write_bundle(
        tmp_path,
        name="t",
        app="image",
        task="classification",
        files=["model.onnx"],
        inputs={"image": {"shape": [-1, 1, 16, 16]}},
        outputs={"logits": {"shape": [-1, 3]}},
        preprocessing={"size": 16, "grayscale": True, "mean": 0.5, "std": 0.25},
        labels=["a", "b", "c"],
        metrics={"val": 1.0},
    )
    meta = json.loads((tmp_path / "metadata.json").read_text())
    assert len(meta["files"]["model.onnx"]) == 64 and "onnxruntime" in meta["libraries"]
    assert "Preprocessing" in (tmp_path / "README.md").read_text()
    b = load_bundle(tmp_path)
    out = b.run({"image": np.zeros((5, 1, 16, 16), np.float32)})["logits"]
    assert out.shape == (5, 3)
    # tampering is refused
    with open(tmp_path / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(tmp_path)


def test_parity_failure_raises(tmp_path):
    class Noisy(Small):
        def forward(self, x):
            return super().forward(x) + (1.0 if torch.compiler.is_exporting() else 0.0)

    with pytest.raises(ParityError):
        export_onnx(
            Noisy(), (torch.randn(2, 1, 8, 8),), tmp_path / "m.onnx", ["image"], ["logits"], {"image": {0: "batch"}}
        )
