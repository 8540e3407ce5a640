"""Train -> export -> torch-free predict -> evaluate, and the CLI, on one micro run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from medtransfer.apps.videoseg.io import write_avi
from medtransfer.apps.videoseg.synthetic import make_cine
from medtransfer.shared.utils.errors import InputError


def test_run_dir_layout(vs_run):
    run = Path(vs_run["run_dir"])
    for f in ("run.json", "config.yaml", "checkpoints/best.pt", "checkpoints/last.pt", "metrics.csv", "metrics.json"):
        assert (run / f).is_file(), f
    info = json.loads((run / "run.json").read_text())
    assert info["app"] == "videoseg" and info["params"]["adapter"] > 0
    assert info["params"]["trainable"] == info["params"]["adapter"] + info["params"]["decoder"]
    hist = json.loads((run / "metrics.json").read_text())
    assert "val_dice" in hist[0] and 0.0 <= hist[0]["val_dice"] <= 1.0
    assert np.isfinite(hist[0]["train_loss"])


def test_bundle_and_onnx_propagation_parity(vs_bundle, vs_run):
    import onnx

    from medtransfer.apps.videoseg.export import GRAPHS, INT8_FILES, propagation_parity
    from medtransfer.apps.videoseg.propagate import mask_to_box
    from medtransfer.apps.videoseg.train import load_run_model
    from medtransfer.shared.runtime.bundle import Bundle

    b = Bundle(vs_bundle)
    files = set(b.meta["files"])
    assert {f for f in files if f.endswith(".onnx")} == {f"{g}.onnx" for g in GRAPHS} | set(INT8_FILES)
    assert "constants.npz" in files
    assert b.meta["metrics"]["propagation_parity"]["min_dice"] >= 0.99
    assert all(v < 1e-3 for v in b.meta["metrics"]["onnx_parity"].values())
    # independent check on another clip, with a mask prompt too
    sam, _ = load_run_model(vs_run["run_dir"])
    ma = onnx.load(str(vs_bundle / "memory_attention.onnx"))
    # one fused Attention op per self- and cross-attention of each layer
    assert sum(n.op_type == "Attention" for n in ma.graph.node) == 2 * len(sam.memory_attention.layers)
    # and one per Hiera block in the image encoder (exported at the same opset)
    enc = onnx.load(str(vs_bundle / "image_encoder.onnx"))
    blocks = len(sam.image_encoder.trunk.blocks)
    assert sum(n.op_type == "Attention" for n in enc.graph.node) == blocks
    # each block's Attention reads its own q/k/v projections as 3-D tensors: no packed-qkv Slice or
    # Transpose left between the projections and the fused op (shared onnx_passes.split_packed_qkv)
    prod = {o: n for n in enc.graph.node for o in n.output}
    atts = [n for n in enc.graph.node if n.op_type == "Attention"]
    assert all(any(a.name == "q_num_heads" for a in n.attribute) for n in atts)
    assert {prod[i].op_type for n in atts for i in n.input} <= {"Reshape"}
    assert b.meta["metrics"]["graph_passes"]["image_encoder"] == {"split_packed_qkv": blocks}
    frames, masks, _ = make_cine(96, 6, seed=11)
    par = propagation_parity(sam, vs_bundle, frames, mask_to_box(masks[0]))
    assert par["frames"] == 6 and par["min_dice"] >= 0.99


def test_memory_attention_part_equals_sam2(vs_run):
    """The exported memory attention (queries in groups over one key/value head, value projection
    after attending over the 64-d memory) computes what sam2's own module computes."""
    import torch

    from medtransfer.apps.videoseg.model import MemoryAttentionPart, query_groups
    from medtransfer.apps.videoseg.train import load_run_model

    assert [query_groups(n) for n in (256, 1024, 4096, 36, 6, 9)] == [8, 8, 8, 4, 2, 1]
    sam, _ = load_run_model(vs_run["run_dir"])
    g = int(sam.image_size) // 16
    hw, C, M = g * g, int(sam.hidden_dim), int(sam.mem_dim)
    part = MemoryAttentionPart(sam.eval(), g)
    assert part.q_groups == query_groups(hw) > 1
    assert part.folded  # one head each: the rotary encoding folded into the projections
    torch.manual_seed(3)
    for n_mem, n_ptr, folded in ((1, 4, True), (7, 64, True), (7, 64, False)):
        part.folded = folded  # False: the general path (any number of heads)
        curr, cpos = torch.randn(hw, 1, C), torch.randn(hw, 1, C)
        mem, mpos = torch.randn(n_mem * hw, 1, M), torch.randn(n_mem * hw, 1, M)
        ptr, ppos = torch.randn(n_ptr, 1, M), torch.randn(n_ptr, 1, M)
        with torch.no_grad():
            ours = part(curr, cpos, mem, mpos, ptr, ppos)
            ref = sam.memory_attention(
                curr=[curr],
                curr_pos=[cpos],
                memory=torch.cat([mem, ptr]),
                memory_pos=torch.cat([mpos, ppos]),
                num_obj_ptr_tokens=n_ptr,
            )
        assert ours.shape == ref.shape
        assert torch.allclose(ours, ref, atol=1e-4, rtol=1e-4), (ours - ref).abs().max()


def test_predict_is_torch_free_and_writes_outputs(vs_bundle, tmp_path):
    frames, masks, _ = make_cine(80, 7, seed=5)
    avi = write_avi(tmp_path / "clip.avi", frames)
    np.save(tmp_path / "first.npy", masks[0])
    code = f"""
import sys, json
from pathlib import Path
from medtransfer.shared.runtime.bundle import load_bundle
from medtransfer.shared.runtime.predictor import build_predictor
p = build_predictor(load_bundle({str(vs_bundle)!r}), out_dir={str(tmp_path / "out")!r})
r1 = p.predict(Path({str(avi)!r}), box="10,10,60,60")
r2 = p.predict(Path({str(avi)!r}), mask={str(tmp_path / "first.npy")!r})
print(json.dumps({{"torch": "torch" in sys.modules, "r1": r1, "r2": r2}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["torch"] is False
    m = np.load(res["r2"]["masks"])["masks"]
    assert m.shape == (7, 80, 80) and m.dtype == np.uint8
    assert (m[0] == masks[0]).mean() > 0.97  # mask prompt kept on the first frame
    assert Path(res["r1"]["overlay"]).is_file() and Path(res["r1"]["overlay"]).suffix == ".gif"
    assert res["r1"]["frames"] == 7 and res["r1"]["bundle_sha256"]


def test_predict_bad_inputs(vs_bundle, tmp_path):
    from medtransfer.apps.videoseg.predict import VideoSegPredictor
    from medtransfer.shared.runtime.bundle import Bundle

    p = VideoSegPredictor(Bundle(vs_bundle), out_dir=str(tmp_path / "o"))
    frames, masks, _ = make_cine(64, 4, seed=6)
    avi = write_avi(tmp_path / "v.avi", frames)
    with pytest.raises(InputError, match="outside"):
        p.predict(avi, box="0,0,200,30")
    with pytest.raises(InputError, match="no prompt"):
        p.predict(avi)
    np.save(tmp_path / "small.npy", masks[0][:32])
    with pytest.raises(InputError, match="differs"):
        p.predict(avi, mask=str(tmp_path / "small.npy"))
    np.save(tmp_path / "empty.npy", np.zeros((64, 64), np.uint8))
    with pytest.raises(InputError, match="empty"):
        p.predict(avi, mask=str(tmp_path / "empty.npy"))
    bad = tmp_path / "broken.avi"
    bad.write_bytes(avi.read_bytes()[:600])
    with pytest.raises(InputError, match="broken.avi"):
        p.predict(bad, box="5,5,30,30")


def test_evaluate_reports_metrics_and_copy_baseline(vs_bundle, vs_echo, tmp_path):
    from medtransfer.apps.videoseg.evaluate import evaluate

    res = evaluate(vs_echo["manifest"], vs_bundle, split="test", out=tmp_path)
    assert res["n_cases"] == 1 and res["first_frame_excluded"]
    for k in ("model", "copy_first"):
        assert set(res[k]) == {"dice", "hd95", "nsd", "asd"}
        assert 0.0 <= res[k]["dice"] <= 1.0
    # the copy baseline on a beating ellipse is imperfect but not useless
    assert 0.3 < res["copy_first"]["dice"] < 0.99
    assert (tmp_path / "metrics.json").is_file()


def test_plugin_hooks_resolve():
    from medtransfer.shared.plugins import get_app, load_object

    spec = get_app("videoseg")
    for ref in (spec.cli, spec.predictor, spec.exporter, spec.demo, spec.bench, *spec.importers.values()):
        assert callable(load_object(ref))
    root = Path(__file__).resolve().parents[3] / "data_cards"
    assert all((root / c).is_file() for c in spec.data_cards)


def test_cli_predict_and_import(vs_bundle, tmp_path):
    from typer.testing import CliRunner

    from medtransfer.shared.cli.main import app

    r = CliRunner()
    res = r.invoke(app, ["videoseg", "--help"])
    assert res.exit_code == 0 and "train" in res.output and "evaluate" in res.output
    frames, masks, _ = make_cine(64, 4, seed=8)
    avi = write_avi(tmp_path / "c.avi", frames)
    res = r.invoke(app, ["predict", str(vs_bundle), str(avi), "--box", "8,8,50,50", "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    row = json.loads(res.output.strip().splitlines()[-1])
    assert row["status"] == "ok" and np.load(row["masks"])["masks"].shape == (4, 64, 64)
    res = r.invoke(app, ["predict", str(vs_bundle), str(avi), "--box", "8,8,500,50"])
    assert res.exit_code == 1 and "outside" in res.output
    from medtransfer.apps.videoseg.synthetic import make_echonet_like

    root = make_echonet_like(tmp_path / "E", n_videos=2, n_frames=12)
    res = r.invoke(app, ["data", "import", "echonet_dynamic", str(root), "--out", str(tmp_path / "m.csv")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "m.csv").read_text().count("\n") == 3
