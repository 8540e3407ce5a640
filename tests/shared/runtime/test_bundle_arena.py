"""One CPU arena shared by the sessions that ask for it (shared.runtime.bundle.share_cpu_arena)."""

from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")


def _model() -> bytes:
    from onnx import TensorProto, helper

    w = helper.make_tensor("w", TensorProto.FLOAT, [8, 4], np.arange(32, dtype=np.float32).tolist())
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("Relu", ["m"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [w],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 9
    return m.SerializeToString()


def test_sessions_share_one_arena_with_the_same_answers_and_it_can_be_turned_off(monkeypatch):
    from medtransfer.shared.runtime.bundle import share_cpu_arena

    monkeypatch.delenv("MEDTRANSFER_ORT_SHARED_ARENA", raising=False)
    x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    plain = ort.InferenceSession(_model(), ort.SessionOptions(), providers=["CPUExecutionProvider"])
    outs = []
    for _ in range(2):  # two sessions on the one arena (registered once, asked twice)
        so = ort.SessionOptions()
        assert share_cpu_arena(so) is True
        sess = ort.InferenceSession(_model(), so, providers=["CPUExecutionProvider"])
        assert sess.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
        outs.append(sess.run(None, {"x": x})[0])
    want = plain.run(None, {"x": x})[0]
    assert np.array_equal(outs[0], want) and np.array_equal(outs[1], want)

    monkeypatch.setenv("MEDTRANSFER_ORT_SHARED_ARENA", "0")
    so = ort.SessionOptions()
    assert share_cpu_arena(so) is False
    with pytest.raises(RuntimeError, match="does not have configuration"):  # left unset: own arena
        so.get_session_config_entry("session.use_env_allocators")
