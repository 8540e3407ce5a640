"""export_onnx's parity inputs: ``check_example=False`` checks only ``parity_args`` (big models)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medtransfer.shared.export import ParityError, export_onnx


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).tanh()


class _Drifts(_Tiny):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the exported graph differs from eager
        return super().forward(x) + (1.0 if torch.compiler.is_exporting() else 0.0)


def test_only_parity_args_are_checked_and_still_catch_a_difference(tmp_path):
    torch.manual_seed(0)
    args = dict(input_names=["x"], output_names=["y"], dynamic={"x": {0: "batch"}})
    rep = export_onnx(
        _Tiny(),
        (torch.randn(2, 6),),
        tmp_path / "a.onnx",
        **args,
        parity_args=[(torch.randn(1, 6),)],
        check_example=False,
    )
    assert rep["checked_inputs"] == 1 and rep["max_abs_diff"] < 1e-5
    with pytest.raises(ParityError, match="differs"):
        export_onnx(
            _Drifts(),
            (torch.randn(2, 6),),
            tmp_path / "b.onnx",
            **args,
            parity_args=[(torch.randn(3, 6),)],
            check_example=False,
        )


def test_no_parity_input_is_refused_before_exporting(tmp_path):
    with pytest.raises(ParityError, match="no inputs to check"):
        export_onnx(_Tiny(), (torch.randn(2, 6),), tmp_path / "c.onnx", ["x"], ["y"], check_example=False)
    assert not (tmp_path / "c.onnx").exists()
