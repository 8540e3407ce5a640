"""Tiny real bundles for the bundle tests (an ONNX graph built with onnx.helper; no torch, no training)."""

from __future__ import annotations

import hashlib
import json
import types
from pathlib import Path
from typing import Any

import pytest


def tiny_onnx(path: Path, n_out: int = 3, scale: float = 1.0) -> Path:
    """``logits = image[:, :n_out] * scale`` with a dynamic batch: a real ONNX model file."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_out])
    w = helper.make_tensor(
        "w", TensorProto.FLOAT, [4, n_out], [scale if i == j else 0.0 for i in range(4) for j in range(n_out)]
    )
    g = helper.make_graph([helper.make_node("MatMul", ["image", "w"], ["logits"])], "tiny", [x], [y], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def make_bundle(folder: Path, extra_models: tuple[str, ...] = (), **meta: Any) -> Path:
    """A valid schema-2 bundle written by the real writer: model.onnx (+ extra_models)."""
    from medtransfer.shared.export.bundle_writer import write_bundle

    folder.mkdir(parents=True, exist_ok=True)
    tiny_onnx(folder / "model.onnx")
    for i, n in enumerate(extra_models):
        tiny_onnx(folder / n, scale=2.0 + i)
    kw: dict[str, Any] = dict(
        name="tiny",
        app="image",
        task="classification",
        files=["model.onnx", *extra_models],
        inputs={"image": {"shape": [-1, 4], "dtype": "float32"}},
        outputs={"logits": {"shape": [-1, 3], "dtype": "float32"}},
        preprocessing={"size": 4, "threshold": 0.5},
        labels=["a", "b", "c"],
        extra={"ood": {"msp_threshold": 0.4}},
    )
    kw.update(meta)
    write_bundle(folder, **kw)
    return folder


def read_meta(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "metadata.json").read_text())


def write_meta(folder: Path, meta: Any) -> None:
    (folder / "metadata.json").write_text(json.dumps(meta, indent=2))


def reseal(folder: Path) -> None:
    """Rewrite checksums.sha256 over every regular file now in the folder (what a careless or
    malicious editor would do after changing something); keeps the bundle's own rules out of it."""
    lines = []
    for p in sorted(folder.iterdir()):
        if p.name != "checksums.sha256" and p.is_file() and not p.is_symlink():
            lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.name}\n")
    (folder / "checksums.sha256").write_text("".join(lines))


@pytest.fixture
def kit() -> types.SimpleNamespace:
    """The helpers above: ``kit.make_bundle(folder)``, ``kit.read_meta``, ``kit.write_meta``, ``kit.reseal``."""
    return types.SimpleNamespace(
        make_bundle=make_bundle, read_meta=read_meta, write_meta=write_meta, reseal=reseal, tiny_onnx=tiny_onnx
    )
