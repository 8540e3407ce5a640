"""The streaming loop: equal to SAM2's own track_step, bounded memory, prompt checks, metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtransfer.apps.videoseg.propagate import StreamingPropagator, check_box, mask_to_box, preprocess
from medtransfer.apps.videoseg.synthetic import make_cine
from medtransfer.shared.utils.errors import InputError


@pytest.fixture(scope="module")
def micro_model(vs_micro):
    from medtransfer.apps.videoseg.model import build_model

    torch.manual_seed(1)
    m, _ = build_model(vs_micro)
    return m.eval()


class _Spy:
    """Wraps a backend and records the memory sizes the loop hands to memory attention."""

    def __init__(self, inner):
        self.inner, self.consts, self.sizes = inner, inner.consts, []

    def encode_image(self, x):
        return self.inner.encode_image(x)

    def decode(self, *a):
        return self.inner.decode(*a)

    def encode_memory(self, *a):
        return self.inner.encode_memory(*a)

    def attend(self, curr, curr_pos, mem, mem_pos, ptr, ptr_pos):
        self.sizes.append((mem.shape[0], ptr.shape[0]))
        return self.inner.attend(curr, curr_pos, mem, mem_pos, ptr, ptr_pos)


def test_streaming_equals_sam2_track_step(micro_model):
    from medtransfer.apps.videoseg.model import TorchBackend, clip_forward

    frames, masks, _ = make_cine(112, 9, seed=2)
    box = mask_to_box(masks[0])
    S = 128
    x = torch.from_numpy(np.concatenate([preprocess(f, S) for f in frames]))
    with torch.no_grad():
        ref, _ = clip_forward(micro_model, x, box=torch.from_numpy(box * S / 112))
    spy = _Spy(TorchBackend(micro_model))
    got = [lg for _, lg in StreamingPropagator(spy).run(iter(frames), len(frames), box=box, return_logits=True)]
    assert len(got) == 9
    diff = max(float(np.abs(ref[i, 0].numpy() - g).max()) for i, g in enumerate(got))
    assert diff < 1e-3
    hw = (S // 16) ** 2
    # memory never exceeds the prompt frame + 6 previous frames, pointers 16 x 4 tokens
    assert max(m for m, _ in spy.sizes) == 7 * hw
    assert [m for m, _ in spy.sizes][:3] == [1 * hw, 2 * hw, 3 * hw]
    assert all(p <= 16 * 4 for _, p in spy.sizes)


class _ShapeBackend:
    """Stand-in networks with SAM2's shapes (zeros), to test the loop's bookkeeping quickly."""

    def __init__(self, consts, S=128):
        self.consts, self.S, self.g = consts, S, S // 16
        self.sizes = []

    def encode_image(self, x):
        g = self.g
        return (
            np.zeros((1, 256, g, g), np.float32),
            np.zeros((1, 256, g, g), np.float32),
            np.zeros((1, 32, 4 * g, 4 * g), np.float32),
            np.zeros((1, 64, 2 * g, 2 * g), np.float32),
        )

    def decode(self, kind, pix, hr0, hr1, *prompt):
        return (
            np.zeros((1, 1, 4 * self.g, 4 * self.g), np.float32),
            np.ones((1, 1, self.S, self.S), np.float32),
            np.zeros((1, 256), np.float32),
            np.ones((1, 1), np.float32),
        )

    def encode_memory(self, feat, mask, score):
        return np.zeros((1, 64, self.g, self.g), np.float32), np.zeros((1, 64, self.g, self.g), np.float32)

    def attend(self, curr, curr_pos, mem, mem_pos, ptr, ptr_pos):
        self.sizes.append((mem.shape[0], ptr.shape[0]))
        return np.zeros_like(curr)


def test_memory_is_bounded_on_long_stream(micro_model):
    from medtransfer.apps.videoseg.model import model_constants

    fb = _ShapeBackend(model_constants(micro_model))
    n = sum(
        1
        for _ in StreamingPropagator(fb).run((np.zeros((40, 40), np.uint8) for _ in range(48)), 48, box=[5, 5, 20, 20])
    )
    assert n == 48
    hw = 64
    mems = [m for m, _ in fb.sizes]
    ptrs = [p for _, p in fb.sizes]
    assert mems[:7] == [k * hw for k in range(1, 8)] and set(mems[6:]) == {7 * hw}
    # prompt-frame pointer + up to 15 recent ones, 4 tokens each
    assert ptrs[:3] == [4, 8, 12] and ptrs[-1] == ptrs[20] == 16 * 4 and max(ptrs) == 16 * 4


def test_prompt_errors(micro_model):
    from medtransfer.apps.videoseg.model import TorchBackend

    frames, masks, _ = make_cine(64, 2, seed=4)
    prop = StreamingPropagator(TorchBackend(micro_model))
    with pytest.raises(InputError, match="outside"):
        list(prop.run(iter(frames), 2, box=[10, 10, 90, 30]))
    with pytest.raises(InputError, match="empty"):
        list(prop.run(iter(frames), 2, mask=np.zeros((64, 64), np.uint8)))
    with pytest.raises(InputError, match="differs"):
        list(prop.run(iter(frames), 2, mask=np.ones((32, 64), np.uint8)))
    with pytest.raises(InputError, match="empty"):
        check_box([5, 5, 5, 9], 64, 64)
    # a mask prompt is reproduced on the prompt frame
    out = [m for _, m in prop.run(iter(frames), 2, mask=masks[0])]
    assert (out[0] == masks[0]).mean() > 0.97


def test_metrics_known_values():
    from medtransfer.apps.videoseg.evaluate import frame_metrics

    a = np.zeros((2, 40, 40), np.uint8)
    a[:, 10:30, 10:30] = 1
    b = a.copy()
    b[1] = 0
    b[1, 12:32, 10:30] = 1  # shifted by 2 px
    m = frame_metrics(b, a)
    assert m["dice"][0] == pytest.approx(1.0) and m["hd95"][0] == pytest.approx(0.0)
    assert m["nsd"][0] == pytest.approx(1.0) and m["asd"][0] == pytest.approx(0.0)
    assert m["dice"][1] == pytest.approx(2 * 18 * 20 / 800)
    assert m["hd95"][1] == pytest.approx(2.0)
    assert 0 < m["asd"][1] <= 2.0


def test_bundle_preprocessing_is_what_the_runtime_does(vs_bundle):
    """The bundle's preprocessing block comes from the runtime's constants, and reproduces preprocess()."""
    import cv2

    from medtransfer.apps.videoseg.propagate import preprocess, preprocessing_spec
    from medtransfer.shared.runtime.bundle import load_bundle

    pre = load_bundle(vs_bundle).preprocessing
    S = int(pre["image_size"])
    assert pre == preprocessing_spec(S)
    frame = (np.arange(37 * 53) % 251).astype(np.uint8).reshape(37, 53)
    assert pre["scale"] == "1/255" and pre["resize"].startswith("cv2.INTER_LINEAR")
    x = cv2.resize(frame, (S, S), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    want = (np.repeat(x[None], 3, 0) - np.array(pre["mean"], np.float32)[:, None, None]) / np.array(
        pre["std"], np.float32
    )[:, None, None]
    np.testing.assert_allclose(preprocess(frame, S)[0], want, rtol=1e-6, atol=1e-6)
