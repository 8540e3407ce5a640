"""The fast propagation path (non-spinning session pools, reused memory buffers, encoder prefetch)
gives the same masks as the previous loop on the previous ONNX Runtime settings, on the demo videos."""

from __future__ import annotations

import threading
from collections import deque

import numpy as np
import pytest

from medtransfer.apps.videoseg.propagate import StreamingPropagator, check_box, preprocess


def reference_loop(backend, frames, n_frames, box=None, mask=None):
    """The previous streaming loop, kept verbatim (per-frame concatenation, no prefetch)."""
    import cv2

    p = StreamingPropagator(backend)
    S, C, nm = p.size, p.mem_dim, p.num_maskmem
    cond = {}
    mems = deque(maxlen=nm - 1)
    max_ptrs = min(n_frames, p.max_obj_ptrs)
    ptrs = deque(maxlen=max(max_ptrs - 1, 1))
    for t, fr in enumerate(frames):
        H, W = fr.shape
        feat, pos, hr0, hr1 = backend.encode_image(preprocess(fr, S))
        if t == 0:
            if box is not None:
                b = check_box(box, H, W)
                pts = np.array([[[b[0] * S / W, b[1] * S / H], [b[2] * S / W, b[3] * S / H]]], np.float32)
                lab = np.array([[2, 3]], np.int32)
                low, high, ptr, score = backend.decode("box", feat + p.no_mem_embed, hr0, hr1, pts, lab)
            else:
                m = cv2.resize(mask.astype(np.float32), (S, S), interpolation=cv2.INTER_AREA) >= 0.5
                low, high, ptr, score = backend.decode("mask", feat, hr0, hr1, m[None, None].astype(np.float32))
            mf, mp = backend.encode_memory(feat, high, score)
            cond = {"feat": mf, "pos": mp, "ptr": ptr}
        else:
            hw = feat.shape[2] * feat.shape[3]
            chosen = [(0, cond["feat"], cond["pos"])]
            for tt, f_, p_ in mems:
                t_pos = nm - (t - tt)
                if t_pos >= 1:
                    chosen.append((t_pos, f_, p_))
            mem = np.concatenate([f_.reshape(C, hw).T for _, f_, _ in chosen], 0)[:, None]
            mem_pos = np.concatenate([p_.reshape(C, hw).T + p.tpos_enc[nm - tp - 1] for tp, _, p_ in chosen], 0)[
                :, None
            ]
            pl = [(t - 0, cond["ptr"])] + [(t - tt, q) for tt, q in reversed(ptrs) if 1 <= t - tt < max_ptrs]
            pos_arr = np.array([q for q, _ in pl], np.float32)
            ptr_arr = np.concatenate([q for _, q in pl], 0)
            k = ptr_arr.shape[1] // C
            ptr_tok = ptr_arr.reshape(-1, k, C).reshape(-1, 1, C)
            ptr_pos = np.repeat(p._obj_pos(pos_arr, max_ptrs), k, axis=0)[:, None]
            curr = feat.reshape(1, -1, hw).transpose(2, 0, 1)
            curr_pos = pos.reshape(1, -1, hw).transpose(2, 0, 1)
            pix = backend.attend(
                curr,
                curr_pos,
                mem.astype(np.float32),
                mem_pos.astype(np.float32),
                ptr_tok.astype(np.float32),
                ptr_pos.astype(np.float32),
            )
            pix = pix.transpose(1, 2, 0).reshape(feat.shape)
            low, high, ptr, score = backend.decode("track", pix, hr0, hr1)
            mf, mp = backend.encode_memory(feat, high, score)
            mems.append((t, mf, mp))
            ptrs.append((t, ptr))
        yield (
            t,
            high[0, 0].copy(),
            (cv2.resize(high[0, 0], (W, H), interpolation=cv2.INTER_LINEAR) > 0).astype(np.uint8),
        )


@pytest.fixture(scope="module")
def demo_video(vs_echo):
    """The frames of one demo video (make_echonet_like) and a box / mask prompt on its first frame."""
    from medtransfer.apps.videoseg.io import open_video

    avi = sorted((vs_echo["root"]).rglob("*.avi"))[0]
    rd = open_video(avi)
    frames = list(rd.frames(0, rd.n_frames))
    H, W = frames[0].shape
    box = np.array([W * 0.3, H * 0.25, W * 0.7, H * 0.75], np.float32)
    mask = np.zeros((H, W), np.uint8)
    mask[H // 3 : 2 * H // 3, W // 3 : 2 * W // 3] = 1
    return frames, box, mask


@pytest.mark.parametrize("prompt,encoder", [("box", "fp32"), ("mask", "fp32"), ("box", "auto")])
def test_fast_loop_equals_previous_loop(vs_bundle, demo_video, prompt, encoder):
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.shared.runtime.bundle import Bundle

    frames, box, mask = demo_video
    kw = {"box": box} if prompt == "box" else {"mask": mask}
    n = len(frames)
    ref = list(reference_loop(OnnxBackend(Bundle(vs_bundle), fast=False, encoder=encoder), iter(frames), n, **kw))
    backend = OnnxBackend(Bundle(vs_bundle), fast=True, threads=2, encoder=encoder, prefetch=True)
    # prefetch: the encoder works in its own thread, the 2 threads split 1 + 1
    assert backend.prefetch and backend.threads == {"encoder": 1, "tracker": 1}
    assert set(backend.dec) == {"track"}  # prompt decoders open on first use
    fast = StreamingPropagator(backend)
    got = list(fast.run(iter(frames), n, **kw))
    assert set(backend.dec) == {"track", prompt}  # the other prompt's decoder never opened
    logits = [lg for _, lg in fast.run(iter(frames), n, return_logits=True, **kw)]
    assert [t for t, _ in got] == list(range(n)) == [t for t, _, _ in ref]
    assert sum(int(m.sum()) for _, _, m in ref) > 0  # a non-trivial track
    for (_, m_ref_logits, m_ref), (_, m_new), lg in zip(ref, got, logits):
        assert np.array_equal(m_ref, m_new)  # Dice 1.0 on every frame
        np.testing.assert_allclose(lg, m_ref_logits, atol=1e-4)


class _ThreadSpy:
    """Records which thread runs the image encoder and how far reading runs ahead of tracking."""

    def __init__(self, inner):
        self.inner, self.consts = inner, inner.consts
        self.encoder_threads, self.read, self.ahead = set(), 0, []

    def encode_image(self, x):
        self.encoder_threads.add(threading.get_ident())
        return self.inner.encode_image(x)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_prefetch_overlaps_and_stays_bounded(vs_bundle, demo_video):
    from medtransfer.apps.videoseg.predict import OnnxBackend
    from medtransfer.shared.runtime.bundle import Bundle

    frames, box, _ = demo_video
    spy = _ThreadSpy(OnnxBackend(Bundle(vs_bundle)))

    def reader():
        for fr in frames[:6]:
            spy.read += 1
            yield fr

    out = []
    for t, m in StreamingPropagator(spy).run(reader(), 6, box=box, prefetch=True):
        spy.ahead.append(spy.read - t)
        out.append(m)
    assert len(out) == 6
    assert threading.get_ident() not in spy.encoder_threads  # encoded in the prefetch thread
    assert max(spy.ahead) <= 2  # at most the next frame read ahead: memory stays flat
    seq = [m for _, m in StreamingPropagator(spy.inner).run(iter(frames[:6]), 6, box=box)]
    assert all(np.array_equal(a, b) for a, b in zip(out, seq))


def test_make_session_settings(vs_bundle):
    from medtransfer.apps.videoseg.predict import OnnxBackend, backend_options, make_session, resolve_prefetch
    from medtransfer.shared.runtime.bundle import Bundle
    from medtransfer.shared.utils.errors import InputError

    b = Bundle(vs_bundle)
    s = make_session(b, "memory_encoder.onnx", threads=1, shared_pool=False, opt="basic")
    assert [i.name for i in s.get_inputs()] == ["vision_feat", "mask_logits", "object_score"]
    # the loop's graphs share one CPU arena (peak about the largest graph's, not the sum)
    assert s.get_session_options().get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(InputError, match="not a model file"):
        make_session(b, "metadata.json")
    assert backend_options({"fast": "false", "threads": "3", "encoder": "fp32"}) == {
        "prefetch": False,
        "fast": False,
        "threads": 3,
        "shared_pool": False,
        "encoder": "fp32",
        "spin": False,
    }
    assert backend_options({})["encoder"] == "auto" and backend_options({"spin": "true"})["spin"] is True
    # prefetch: off by default; on, fast sessions split the threads (at least 1 each)
    assert backend_options({"prefetch": "true"})["prefetch"] is True
    assert resolve_prefetch(None) is False and resolve_prefetch("on") is True and resolve_prefetch("0") is False
    with pytest.raises(InputError, match="not one of true, false"):
        resolve_prefetch("auto")
    assert OnnxBackend(b, threads=2).threads == {"encoder": 2, "tracker": 2}
    assert OnnxBackend(b, threads=1, prefetch=True).threads == {"encoder": 1, "tracker": 1}
    assert OnnxBackend(b, threads=3, prefetch=True).threads == {"encoder": 2, "tracker": 1}
    assert OnnxBackend(b, fast=False, threads=2, prefetch=True).prefetch  # plain sessions keep their pools
    # the fast sessions leave per-session pools usable (no process-wide pool made behind the caller's back)
    assert b.session("memory_encoder.onnx") is not None


def test_int8_image_encoder_records_dice_change(vs_run, vs_bundle, tmp_path):
    import shutil

    import onnx

    from medtransfer.apps.videoseg.export import propagation_parity, quantize_image_encoder
    from medtransfer.apps.videoseg.propagate import mask_to_box
    from medtransfer.apps.videoseg.synthetic import make_cine
    from medtransfer.apps.videoseg.train import load_run_model

    b = shutil.copytree(vs_bundle, tmp_path / "b")
    sam, _ = load_run_model(vs_run["run_dir"])
    frames, masks, _ = make_cine(96, 5, seed=3)
    box = mask_to_box(masks[0])
    fp32 = propagation_parity(sam, b, frames, box)
    rep = quantize_image_encoder(sam, b, frames, box, fp32)
    ops = {n.op_type for n in onnx.load(str(b / "image_encoder.onnx")).graph.node}
    assert ops & {"DynamicQuantizeLinear", "MatMulInteger", "DynamicQuantizeMatMul"}  # really int8 now
    assert rep["size_mb"]["int8"] < rep["size_mb"]["float32"]
    assert rep["float32"]["min_dice"] == fp32["min_dice"] and rep["frames"] == 5
    assert 0.0 <= rep["int8"]["mean_dice"] <= 1.0
    assert rep["mean_dice_change"] == round(rep["int8"]["mean_dice"] - rep["float32"]["mean_dice"], 5)


def test_int8_encoder_beside_float32_is_default_only_when_it_agrees(vs_bundle, demo_video, monkeypatch, tmp_path):
    import shutil
    from types import SimpleNamespace

    import onnx

    from medtransfer.apps.videoseg import export as vx
    from medtransfer.apps.videoseg.predict import ENCODER_FILES, OnnxBackend, attention_file, encoder_file
    from medtransfer.shared.runtime import bundle as bundle_mod
    from medtransfer.shared.runtime.bundle import Bundle
    from medtransfer.shared.utils.errors import InputError

    b = Bundle(vs_bundle)
    agree = b.meta["metrics"]["int8_encoder_agreement"]
    assert agree["frames"] == 16 and 0.0 <= agree["min_dice"] <= agree["mean_dice"] <= 1.0
    assert b.meta["encoder_default"] == ("int8" if agree["min_dice"] >= vx.INT8_DEFAULT_MIN_DICE else "fp32")
    ops = {n.op_type for n in onnx.load(str(vs_bundle / vx.INT8_ENCODER)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul"} and "ConvInteger" not in ops  # MatMuls only
    # the choice reaches the session: auto follows the metadata, fp32 / int8 as asked
    assert encoder_file(b, "auto") == ENCODER_FILES[b.meta["encoder_default"]]
    with monkeypatch.context() as mp:  # on a GPU provider auto keeps float32 (int8 has no GPU kernels)
        mp.setattr(bundle_mod, "_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
        assert encoder_file(b, "auto") == "image_encoder.onnx"
        assert encoder_file(b, "int8") == vx.INT8_ENCODER
    assert OnnxBackend(b, encoder="fp32").encoder_file == "image_encoder.onnx"
    assert OnnxBackend(b, encoder="int8").encoder_file == vx.INT8_ENCODER
    # the int8 memory attention goes with the int8 encoder: linear layers int8, attention float32
    ops = [n.op_type for n in onnx.load(str(vs_bundle / vx.INT8_ATTENTION)).graph.node]
    assert {"MatMulInteger", "DynamicQuantizeMatMul"} & set(ops) and ops.count("Attention") >= 2
    assert OnnxBackend(b, encoder="int8").attention_file == vx.INT8_ATTENTION
    assert OnnxBackend(b, encoder="fp32").attention_file == "memory_attention.onnx"
    older = SimpleNamespace(description=SimpleNamespace(files={vx.INT8_ENCODER: ""}))
    assert attention_file(older, vx.INT8_ENCODER) == "memory_attention.onnx"  # bundles from before
    frames = demo_video[0]
    img = preprocess(frames[0], int(b.meta["preprocessing"]["image_size"]))
    f32 = OnnxBackend(b, encoder="fp32").encode_image(img)[0]
    i8 = OnnxBackend(b, encoder="int8").encode_image(img)[0]
    assert not np.array_equal(f32, i8) and np.abs(f32 - i8).max() < 0.5 * np.abs(f32).max()  # int8 ran
    with pytest.raises(InputError, match="not one of"):
        encoder_file(b, "fp16")
    bare = SimpleNamespace(meta={}, description=SimpleNamespace(files={"image_encoder.onnx": ""}), path=vs_bundle)
    assert encoder_file(bare, "auto") == "image_encoder.onnx"  # bundles from before: float32
    with pytest.raises(InputError, match="no int8 image encoder"):
        encoder_file(bare, "int8")
    # an impossible threshold keeps float32 the default; the measured Dice is the bundle's own
    c = shutil.copytree(vs_bundle, tmp_path / "c")
    monkeypatch.setattr(vx, "INT8_DEFAULT_MIN_DICE", 1.01)
    rep = vx.int8_encoder_agreement(c, *vx.agreement_clip())
    assert rep["default"] == "fp32" and rep["min_dice"] == agree["min_dice"] and rep["mean_dice"] == agree["mean_dice"]
    assert vx.encoder_metadata(rep) == {
        "encoders": {"fp32": "image_encoder.onnx", "int8": vx.INT8_ENCODER},
        "encoder_default": "fp32",
    }
    assert vx.encoder_metadata({}) == {}


def test_timed_wrapper_passes_plain_attributes_through():
    """The bench's per-graph timer must not turn ``prefetch`` into a (truthy) function: the loop
    would then prefetch in profiled runs and the per-graph times would overlap."""
    from medtransfer.apps.videoseg.bench import _Timed

    class Backend:
        consts: dict = {}
        prefetch = False

        def encode_image(self, x):
            return (x,)

    totals: dict = {}
    t = _Timed(Backend(), totals)
    assert t.prefetch is False and t.encode_image(1) == (1,) and "encode_image" in totals


def test_bench_repeats_take_the_median_of_each_side():
    """With repeats the bench reports each side's median run and every repeat's seconds, and a
    failed repeat is reported as the error (never a median over fewer runs)."""
    from medtransfer.apps.videoseg.bench import _median_run

    runs = {
        "512px/48f/ours": {"seconds": 30.0, "peak_rss_mb": 600.0},
        "512px/48f/ours#1": {"seconds": 26.0, "peak_rss_mb": 610.0},
        "512px/48f/ours#2": {"seconds": 28.0, "peak_rss_mb": 620.0},
    }
    med = _median_run(runs, "512px/48f/ours", 3)
    assert med["seconds"] == 28.0 and med["peak_rss_mb"] == 620.0
    assert med["seconds_repeats"] == [30.0, 26.0, 28.0]
    assert _median_run(runs, "512px/48f/ours", 1) == runs["512px/48f/ours"]  # one run: as it was
    runs["512px/48f/ours#1"] = {"error": "killed"}
    assert _median_run(runs, "512px/48f/ours", 3) == {"error": "killed"}
